"""Snapshot stores: where resumable sessions live once they leave the pool."""

from __future__ import annotations

from lifecycle.settings import Settings
from lifecycle.stores.base import Mark, MarkOutcome, SessionRecord, SnapshotStore

__all__ = ['Mark', 'MarkOutcome', 'SessionRecord', 'SnapshotStore', 'store_from_settings']


def store_from_settings(settings: Settings) -> SnapshotStore | None:
    """The MongoDB store `mongo_url` names (connected on first use), or None when persistence is off."""
    if settings.mongo_url is None:
        return None
    from lifecycle.stores.mongo import MongoSnapshotStore  # pymongo only where persistence is on

    return MongoSnapshotStore(
        settings.mongo_url,
        settings.mongo_database,
        timeout_ms=settings.mongo_timeout_ms,
        write_concern=settings.mongo_write_concern,
    )
