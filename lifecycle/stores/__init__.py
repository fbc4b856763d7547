"""Snapshot stores: where resumable sessions live once they leave the pool."""

from __future__ import annotations

from lifecycle.settings import Settings
from lifecycle.stores.base import Mark, MarkOutcome, SessionRecord, SnapshotStore

__all__ = ['Mark', 'MarkOutcome', 'SessionRecord', 'SnapshotStore', 'store_from_settings']


def store_from_settings(settings: Settings, *, asynchronous: bool = False) -> SnapshotStore | None:
    """The MongoDB store `mongo_url` names (connected on first use), or None when persistence is off; with
    `asynchronous`, the one on pymongo's AsyncMongoClient (its methods are coroutine functions, which the
    async executor awaits: typed as the protocol they mirror)."""
    if settings.mongo_url is None:
        return None
    from lifecycle.stores.mongo import AsyncMongoSnapshotStore, MongoSnapshotStore  # pymongo only where it is used

    kind = AsyncMongoSnapshotStore if asynchronous else MongoSnapshotStore
    store = kind(settings.mongo_url, settings.mongo_database, timeout_ms=settings.mongo_timeout_ms,
                 write_concern=settings.mongo_write_concern)  # fmt: skip
    return store  # type: ignore[return-value]
