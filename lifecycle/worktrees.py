"""Orphan worktree cleanup: remove clean worktrees of dead sessions, move the rest to a trash folder.

Safety first: never a path outside the root, never through a symlink, never the root or its trash,
never a main repository, never a worktree whose session is live (re-checked under a claim that also
blocks the session's activation while the cleaner acts), never a worktree with uncommitted,
untracked or unpushed work (that one is moved to `<root>/.trash/` with a note saying why).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lifecycle import validate
from lifecycle.errors import InvalidArgument
from lifecycle.state import Call, _int

if TYPE_CHECKING:
    from lifecycle.client import Lifecycle

log = logging.getLogger(__name__)
TRASH = '.trash'
GIT_TIMEOUT_S = 60
CLAIM_LEASE_S = 300  # longer than any git command the cleaner runs on one worktree
CLAIMED = 1  # claim_cleaning's reply; the others say why the cleaner must leave the worktree alone


class Verdict(StrEnum):
    REMOVED = 'removed'  # clean: `git worktree remove`, then `prune`
    TRASHED = 'trashed'  # had work on it: moved to the trash with a note
    KEPT_LIVE = 'kept_live'
    KEPT_YOUNG = 'kept_young'
    KEPT_LOCKED = 'kept_locked'  # `git worktree lock`ed: someone asked for it to be kept
    KEPT_CLEANING = 'kept_cleaning'  # another cleaner is acting on this session's worktree right now
    SKIPPED_UNSAFE = 'skipped_unsafe'  # a symlink, outside the root, a main repository
    GONE = 'gone'  # registered, but its directory no longer exists: the registration is dropped


CLAIM_REFUSED = {
    0: (Verdict.KEPT_LIVE, ('became live during the sweep',)),
    -1: (Verdict.KEPT_CLEANING, ('another cleaner holds the session',)),
}


@dataclass(frozen=True)
class Action:
    path: str
    session_id: str | None
    verdict: Verdict
    reasons: tuple[str, ...] = ()


@dataclass
class WorktreeReport:
    actions: list[Action] = field(default_factory=list)
    trash_emptied: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Preflight:
    """What git says of a worktree."""

    main_repository: Path | None  # None: not a git worktree
    is_main_checkout: bool = False
    locked: bool = False
    uncommitted: bool = False
    untracked: bool = False
    unpushed: bool = False
    no_remote: bool = False

    def blockers(self) -> tuple[str, ...]:
        """Why the worktree cannot simply be removed; () when it can."""
        reasons = []
        if self.main_repository is None:
            reasons.append('not a git worktree')
        if self.uncommitted:
            reasons.append('uncommitted changes')
        if self.untracked:
            reasons.append('untracked files')
        if self.unpushed:
            reasons.append('commits not on any remote')
        if self.no_remote:
            reasons.append('repository has no remote')
        return tuple(reasons)


def git(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, 'GIT_TERMINAL_PROMPT': '0', 'GIT_OPTIONAL_LOCKS': '0'}
    return subprocess.run(
        ['git', *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=GIT_TIMEOUT_S, check=False
    )


def preflight(path: Path) -> Preflight:
    """Ask git whether the worktree at `path` holds work that is not safe elsewhere."""
    common = git('rev-parse', '--path-format=absolute', '--git-common-dir', cwd=path)
    if common.returncode != 0:
        return Preflight(main_repository=None)
    git_dir = git('rev-parse', '--path-format=absolute', '--git-dir', cwd=path).stdout.strip()
    main = Path(common.stdout.strip()).parent
    if Path(git_dir) == Path(common.stdout.strip()):
        return Preflight(main_repository=main, is_main_checkout=True)
    status = git('status', '--porcelain', '--untracked-files=all', cwd=path).stdout.splitlines()
    remotes = git('remote', cwd=path).stdout.split()
    unpushed = bool(remotes) and git('rev-list', '--max-count=1', 'HEAD', '--not', '--remotes', cwd=path).stdout.strip()
    return Preflight(
        main_repository=main,
        locked=_is_locked(main, path),
        uncommitted=any(not line.startswith('??') for line in status),
        untracked=any(line.startswith('??') for line in status),
        unpushed=bool(unpushed),
        no_remote=not remotes,
    )


def _is_locked(main: Path, path: Path) -> bool:
    listing = git('worktree', 'list', '--porcelain', cwd=main).stdout
    for block in listing.split('\n\n'):
        lines = block.splitlines()
        if lines and lines[0] == f'worktree {path}':
            return any(line == 'locked' or line.startswith('locked ') for line in lines[1:])
    return False


def contained(root: Path, path: Path) -> bool:
    """Whether `path` lies strictly inside `root`, outside its trash, with no symlink on the way."""
    if os.path.realpath(path) != os.path.normpath(path):
        return False  # a symlink somewhere on the path, or '..'
    try:
        relative = path.relative_to(root)
    except ValueError:
        return False
    return bool(relative.parts) and relative.parts[0] != TRASH


class WorktreeCleaner:
    """Sweeps one host's worktree root; `lc` gives the registrations, liveness and the claims."""

    def __init__(self, lc: Lifecycle, root: str | Path) -> None:
        self.lc = lc
        self.keys = lc.index.keys
        self.root = Path(os.path.realpath(root))
        self.grace_s = lc.settings.worktree_grace_s
        self.trash_retention_s = lc.settings.trash_retention_s

    def sweep(self, *, dry_run: bool = False) -> WorktreeReport:
        report = WorktreeReport()
        entries = self.lc.redis.hgetall(self.keys.worktrees).items()
        registered = {Path(str(path)): str(session) for path, session in entries}
        for path, session_id in self._candidates(registered):
            action = self._judge(path, session_id, dry_run)
            report.actions.append(action)
            log.info('worktree %s (session %s): %s %s', path, session_id, action.verdict, ', '.join(action.reasons))
        if not dry_run:
            report.trash_emptied = self._empty_trash()
        return report

    def _candidates(self, registered: dict[Path, str]) -> Iterator[tuple[Path, str | None]]:
        seen = set()
        for path, session_id in registered.items():
            if self.root in path.parents or path == self.root:
                seen.add(path)
                yield path, session_id
        if not self.root.is_dir():
            return
        for entry in sorted(os.scandir(self.root), key=lambda e: e.name):
            path = self.root / entry.name
            if entry.name == TRASH or path in seen:
                continue
            # Never registered: the directory name is the best guess at its session.
            yield path, entry.name if validate.is_identifier(entry.name) else None

    def _judge(self, path: Path, session_id: str | None, dry_run: bool) -> Action:
        if path.is_symlink() or not contained(self.root, path):
            return Action(str(path), session_id, Verdict.SKIPPED_UNSAFE, ('symlink or outside the root',))
        if not path.exists():
            if not dry_run:
                self.lc.redis.hdel(self.keys.worktrees, str(path))
            return Action(str(path), session_id, Verdict.GONE)
        if not path.is_dir():
            return Action(str(path), session_id, Verdict.SKIPPED_UNSAFE, ('not a directory',))
        if session_id is not None and self.lc.redis.zscore(self.keys.live, session_id) is not None:
            return Action(str(path), session_id, Verdict.KEPT_LIVE)
        if time.time() - self._last_change(path) < self.grace_s:
            return Action(str(path), session_id, Verdict.KEPT_YOUNG)
        checked = preflight(path)
        if checked.is_main_checkout:
            return Action(str(path), session_id, Verdict.SKIPPED_UNSAFE, ('a main repository, not a worktree',))
        if checked.locked:
            return Action(str(path), session_id, Verdict.KEPT_LOCKED, ('locked',))
        blockers = checked.blockers()
        verdict = Verdict.TRASHED if blockers else Verdict.REMOVED
        if dry_run:
            return Action(str(path), session_id, verdict, blockers)
        claimed = self._claim(session_id) if session_id is not None else CLAIMED
        if claimed != CLAIMED:
            return Action(str(path), session_id, *CLAIM_REFUSED[claimed])
        try:
            return self._act(path, session_id, checked, blockers)
        finally:
            if session_id is not None:
                self.lc.redis.zrem(self.keys.cleaning, session_id)

    def _claim(self, session_id: str) -> int:
        """Re-check liveness atomically and hold off activation while the cleaner acts; CLAIMED or why not."""
        now = self.lc.now_ms()
        call = Call(
            _int,
            'claim_cleaning',
            (self.keys.live, self.keys.cleaning),
            (session_id, now, now + CLAIM_LEASE_S * 1000),
        )
        return self.lc.run(call)

    def _act(self, path: Path, session_id: str | None, checked: Preflight, blockers: tuple[str, ...]) -> Action:
        if not blockers and checked.main_repository is not None:
            removed = git('worktree', 'remove', str(path), cwd=checked.main_repository)
            if removed.returncode == 0:
                git('worktree', 'prune', cwd=checked.main_repository)
                self.lc.redis.hdel(self.keys.worktrees, str(path))
                return Action(str(path), session_id, Verdict.REMOVED)
            blockers = (f'git worktree remove failed: {removed.stderr.strip()}',)
        self._move_to_trash(path, session_id, blockers)
        self.lc.redis.hdel(self.keys.worktrees, str(path))
        return Action(str(path), session_id, Verdict.TRASHED, blockers)

    def _move_to_trash(self, path: Path, session_id: str | None, reasons: tuple[str, ...]) -> None:
        trash = self.root / TRASH
        trash.mkdir(exist_ok=True)
        moved_at = datetime.now(UTC)
        target = trash / f'{moved_at:%Y%m%dT%H%M%S%fZ}-{path.name}'
        note: dict[str, Any] = {
            'from': str(path),
            'session_id': session_id,
            'reasons': list(reasons),
            'moved_at': moved_at.isoformat(),
            'restore': f'mv {target} {path}',
        }
        os.rename(path, target)  # same filesystem: atomic, and the work inside is untouched
        target.with_name(target.name + '.json').write_text(json.dumps(note, indent=2))

    def _empty_trash(self) -> list[str]:
        """Delete trash entries (and their notes) older than the retention; a planted symlink is unlinked,
        never followed."""
        trash = self.root / TRASH
        if not trash.is_dir() or trash.is_symlink():
            return []
        emptied = []
        cutoff = time.time() - self.trash_retention_s
        for note in trash.glob('*.json'):
            if note.is_symlink() or note.stat().st_mtime > cutoff:
                continue
            entry = note.with_suffix('')
            if entry.is_symlink() or entry.is_file():
                entry.unlink()
            elif entry.is_dir():
                shutil.rmtree(entry)
            note.unlink()
            emptied.append(entry.name)
        return emptied

    @staticmethod
    def _last_change(path: Path) -> float:
        """The latest of the directory's and its `.git` file's modification times (no symlink followed)."""
        times = [path.lstat().st_mtime]
        marker = path / '.git'
        if marker.exists() or marker.is_symlink():
            times.append(marker.lstat().st_mtime)
        return max(times)


def registration(session_id: str, path: str | os.PathLike[str]) -> tuple[str, str]:
    """The checked (normalised path, session id) to record for a worktree; InvalidArgument if unsafe."""
    session_id = validate.identifier('session_id', session_id)
    raw = os.fspath(path)
    if not os.path.isabs(raw) or '..' in Path(raw).parts:
        raise InvalidArgument(f'worktree path {raw!r} must be absolute, without ".." components')
    return os.path.normpath(raw), session_id
