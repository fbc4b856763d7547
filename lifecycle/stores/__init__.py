"""Snapshot stores: where resumable sessions live once they leave the pool."""

from lifecycle.stores.base import Mark, MarkOutcome, SessionRecord, SnapshotStore

__all__ = ['Mark', 'MarkOutcome', 'SessionRecord', 'SnapshotStore']
