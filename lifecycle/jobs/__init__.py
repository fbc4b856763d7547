"""Maintenance jobs beside the pool: finished-run retention and orphan-worktree cleanup."""
