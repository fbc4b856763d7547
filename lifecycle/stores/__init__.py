"""Snapshot stores: where resumable sessions live once they leave the pool."""

from lifecycle.stores.base import MarkOutcome, SessionRecord, SnapshotStore

__all__ = ['MarkOutcome', 'SessionRecord', 'SnapshotStore']
