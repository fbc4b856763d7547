"""Orphan worktree cleanup: remove clean worktrees of dead sessions, move the rest to a trash folder.

Safety first (DESIGN invariant 9): only git worktrees (a `.git` file naming a `worktrees/` entry of a repository that
points back), never a plain folder or a main repository; never a root such as `/`, a home folder or a repository's
top; never a path outside the root, never through a symlink, never the root or its trash; never a worktree whose
session is live (re-checked under a claim that also blocks the session's activation while the cleaner acts), never a
worktree with uncommitted, untracked or unpushed work (that one is moved to `<root>/.trash/` with a note saying why
and how to put it back, which works even after a `git worktree prune`). One bad worktree is reported, never fatal.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import pwd
import re
import shlex
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from lifecycle import validate
from lifecycle.errors import BackendUnavailable, ConfigurationError, InvalidArgument
from lifecycle.pool import calls
from lifecycle.pool.calls import Call, as_int
from lifecycle.pool.executor import Executor

log = logging.getLogger(__name__)
TRASH = '.trash'
GIT_TIMEOUT_S = 60
CLAIM_LEASE_S = 300  # longer than any git command the cleaner runs on one worktree
CLAIMED = 1  # claim_cleaning's reply; the others say why the cleaner must leave the worktree alone
MAX_POINTER_BYTES = 4096  # a `.git` file or an entry's `gitdir` file is one short line; anything longer is not git's
CONTROL_CHARACTERS = re.compile(r'[\x00-\x1f\x7f]')
# Variables that would point every git command at some other repository than the worktree's own.
GIT_REDIRECTS = ('GIT_DIR', 'GIT_WORK_TREE', 'GIT_COMMON_DIR', 'GIT_INDEX_FILE', 'GIT_OBJECT_DIRECTORY')


class Verdict(StrEnum):
    REMOVED = 'removed'  # clean: `git worktree remove`, then `prune`
    TRASHED = 'trashed'  # had work on it: `git worktree move`d to the trash with a note
    KEPT_LIVE = 'kept_live'
    KEPT_YOUNG = 'kept_young'
    KEPT_LOCKED = 'kept_locked'  # `git worktree lock`ed: someone asked for it to be kept
    KEPT_CLEANING = 'kept_cleaning'  # another cleaner is acting on this session's worktree right now
    SKIPPED_UNSAFE = 'skipped_unsafe'  # a symlink, outside the root, not a directory
    SKIPPED_NOT_WORKTREE = 'skipped_not_worktree'  # a plain folder, a repository, a forged `.git`: never touched
    GONE = 'gone'  # registered, but its directory no longer exists: the registration is dropped
    FAILED = 'failed'  # judging or acting on it raised (the reason says what); the sweep went on


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

    main_repository: Path | None  # None: git does not list it as one of a repository's linked worktrees
    locked: bool = False
    uncommitted: bool = False
    untracked: bool = False
    ignored: bool = False  # gitignored files (a .env, build output): `git worktree remove` would delete them
    unpushed: bool = False
    no_remote: bool = False
    git_failed: str = ''  # a git command that could not answer: nothing about the worktree is known

    def blockers(self) -> tuple[str, ...]:
        """Why the worktree cannot simply be removed; () when it can."""
        reasons = []
        if self.git_failed:
            reasons.append(f'git could not check it: {self.git_failed}')
        if self.ignored:
            reasons.append('ignored files')
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
    env = {key: value for key, value in os.environ.items() if key not in GIT_REDIRECTS}
    env |= {'GIT_TERMINAL_PROMPT': '0', 'GIT_OPTIONAL_LOCKS': '0'}
    return subprocess.run(
        ['git', *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=GIT_TIMEOUT_S, check=False
    )


def preflight(path: Path) -> Preflight:
    """Ask git whether the worktree at `path` holds work that is not safe elsewhere."""
    listing = git('worktree', 'list', '--porcelain', cwd=path).stdout
    blocks = [block.splitlines() for block in listing.split('\n\n')]
    mine = [lines for lines in blocks[1:] if lines and lines[0] == f'worktree {path}']
    if not mine or not blocks[0]:
        return Preflight(main_repository=None)  # the main checkout (git lists it first), or unknown to git
    checks = {
        'status': git('status', '--porcelain', '--untracked-files=all', '--ignored=matching', cwd=path),
        'remote': git('remote', cwd=path),
    }
    remotes = checks['remote'].stdout.split()
    if remotes:
        checks['rev-list'] = git('rev-list', '--max-count=1', 'HEAD', '--not', '--remotes', cwd=path)
    failed = [f'git {name}: {run.stderr.strip()[:200]}' for name, run in checks.items() if run.returncode != 0]
    status = checks['status'].stdout.splitlines()
    return Preflight(
        main_repository=Path(blocks[0][0].removeprefix('worktree ')),
        locked=any(line == 'locked' or line.startswith('locked ') for line in mine[0][1:]),
        uncommitted=any(not line.startswith(('??', '!!')) for line in status),
        untracked=any(line.startswith('??') for line in status),
        ignored=any(line.startswith('!!') for line in status),
        unpushed=bool(remotes) and bool(checks['rev-list'].stdout.strip()),
        no_remote=not remotes,
        git_failed='; '.join(failed),
    )


def why_not_a_worktree(path: Path) -> str | None:
    """Why the directory `path` is not a linked git worktree, or None if it is one.

    A worktree's `.git` is a regular file saying `gitdir: <repository git dir>/worktrees/<name>`, and that entry's
    own `gitdir` file points back at this `.git`. Read here rather than asked of git, which would climb to any
    repository enclosing a plain folder and answer for it.
    """
    marker = path / '.git'
    try:
        mode = marker.lstat().st_mode
    except FileNotFoundError:
        return 'no .git: a plain folder'
    if stat.S_ISLNK(mode):
        return '.git is a symlink'
    if stat.S_ISDIR(mode):
        return '.git is a directory: a repository, not a worktree'
    pointer = _pointer(marker, 'gitdir: ')
    if pointer is None:
        return '.git does not name a gitdir'
    entry = Path(os.path.normpath(path / pointer))  # a relative gitdir is relative to the worktree
    if entry.parent.name != 'worktrees' or not (entry / 'commondir').is_file():
        return 'gitdir is not a worktrees/ entry of a repository'
    back = _pointer(entry / 'gitdir', '')
    if back is None or os.path.realpath(entry / back) != str(marker):
        return 'the worktree entry it names belongs to another directory'
    return None


def _pointer(file: Path, prefix: str) -> str | None:
    """The path a one-line git pointer file gives after `prefix`; None if `file` is no such regular file."""
    try:
        # O_NOFOLLOW: a symlink swapped in is refused; O_NONBLOCK: a planted FIFO cannot hang the sweep.
        fd = os.open(file, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
            return None
        raise
    with os.fdopen(fd, 'rb') as opened:
        if not stat.S_ISREG(os.fstat(opened.fileno()).st_mode):
            return None
        raw = opened.read(MAX_POINTER_BYTES + 1)
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        return None
    value = text.removesuffix('\n')
    if len(raw) > MAX_POINTER_BYTES or not value.startswith(prefix) or CONTROL_CHARACTERS.search(value):
        return None
    return value.removeprefix(prefix) or None


def contained(root: Path, path: Path) -> bool:
    """Whether `path` lies strictly inside `root`, outside its trash, with no symlink on the way."""
    if CONTROL_CHARACTERS.search(str(path)):
        return False  # a planted record: a NUL would make every os call on it raise
    if os.path.realpath(path) != os.path.normpath(path):
        return False  # a symlink somewhere on the path, or '..'
    try:
        relative = path.relative_to(root)
    except ValueError:
        return False
    return bool(relative.parts) and relative.parts[0] != TRASH


def checked_root(root: str | os.PathLike[str]) -> Path:
    """`root` as a worktree root the cleaner may sweep; ConfigurationError, naming it, if it must never be one."""
    raw = os.fspath(root)
    if not os.path.isabs(raw) or CONTROL_CHARACTERS.search(raw):
        raise ConfigurationError(f'worktree root {raw!r} must be an absolute path')
    normal = os.path.normpath(raw)
    real = os.path.realpath(normal)
    # Refused, not resolved: a symlink can be re-pointed (at a home folder, say) between this check and the
    # sweep, and every containment check compares real paths, so nothing registered under the link would match.
    if real != normal:
        raise ConfigurationError(f'worktree root {raw!r} goes through a symlink (to {real!r}); give its real path')
    path = Path(normal)
    if path.parent == path:
        raise ConfigurationError(f'worktree root {raw!r} is a filesystem root')
    if path.parent.parent == path.parent:  # /home, /var, /opt, /tmp: where the system keeps its own things
        raise ConfigurationError(f'worktree root {raw!r} is a top-level directory; use a folder of its own')
    for home in _home_folders():
        if path == home or path in home.parents:
            raise ConfigurationError(f'worktree root {raw!r} is the home folder {str(home)!r} or one of its ancestors')
    # A root deeper inside a repository's work tree (a `.worktrees/` folder, say) is a common layout and stays
    # allowed: only worktrees are ever touched in it. Its top, or its git directory, is never a root.
    if os.path.lexists(path / '.git') or '.git' in path.parts:
        raise ConfigurationError(f'worktree root {raw!r} is the top of a git repository, or inside its .git')
    return path


def _home_folders() -> set[Path]:
    """Every home folder: this user's as each source names it (HOME, Path.home()) and every account's in the
    password database, real and as given."""
    named = [os.environ.get('HOME')]  # read here, not in Settings: a safety net, not configuration
    with contextlib.suppress(RuntimeError):
        named.append(str(Path.home()))
    named += [entry.pw_dir for entry in pwd.getpwall()]
    homes = set()
    for home in named:
        if home and os.path.isabs(home):
            homes |= {Path(os.path.normpath(home)), Path(os.path.realpath(home))}
    return homes


def restore_command(main: Path, trashed: Path, path: Path, note: Path) -> str:
    """The shell command that moves a trashed worktree back to `path`, as a worktree git knows, then drops its note."""
    quoted = [shlex.quote(str(p)) for p in (main, trashed, path, note)]
    return 'git -C {} worktree move {} {} && rm -f -- {}'.format(*quoted)


class WorktreeCleaner:
    """Sweeps one host's worktree root; `pool` gives the registrations, liveness and the claims.

    ConfigurationError, before anything is touched, for a root it must never sweep (see `checked_root`).
    """

    def __init__(self, pool: Executor, root: str | os.PathLike[str]) -> None:
        self.pool = pool
        self.keys = pool.keys
        self.root = checked_root(root)
        self.grace_s = pool.settings.worktree_grace_s
        self.trash_retention_s = pool.settings.trash_retention_s

    def sweep(self, *, dry_run: bool = False) -> WorktreeReport:
        checked_root(self.root)  # again: the root may have changed (a `git init` in it, say) since construction
        report = WorktreeReport()
        entries = self.pool.run(calls.hash_all(self.keys.worktrees)).items()
        registered = {Path(path): session for path, session in entries}
        for path, session_id in self._candidates(registered):
            action = self._judge_safely(path, session_id, dry_run)
            report.actions.append(action)
            log.info(
                'worktree %r (session %s): %s %s', str(path), session_id, action.verdict, ', '.join(action.reasons)
            )
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

    def _judge_safely(self, path: Path, session_id: str | None, dry_run: bool) -> Action:
        """`_judge`, with an error turned into a FAILED action: one bad worktree never ends the sweep."""
        try:
            return self._judge(path, session_id, dry_run)
        except BackendUnavailable:
            raise  # Redis gone is no bad record: every other worktree would fail the same way
        except Exception as exc:
            log.warning('worktree %r (session %s) failed', str(path), session_id, exc_info=True)
            return Action(str(path), session_id, Verdict.FAILED, (f'{type(exc).__name__}: {exc}',))

    def _judge(self, path: Path, session_id: str | None, dry_run: bool) -> Action:
        screened = self._screen(path, session_id, dry_run)
        if screened is not None:
            return screened
        if session_id is not None and self.pool.run(calls.score(self.keys.live, session_id)) is not None:
            return Action(str(path), session_id, Verdict.KEPT_LIVE)
        if time.time() - self._last_change(path) < self.grace_s:
            return Action(str(path), session_id, Verdict.KEPT_YOUNG)
        checked = preflight(path)
        main = checked.main_repository
        if main is None:
            return Action(str(path), session_id, Verdict.SKIPPED_NOT_WORKTREE, ('git does not list it as a worktree',))
        if checked.locked:
            return Action(str(path), session_id, Verdict.KEPT_LOCKED, ('locked',))
        blockers = checked.blockers()
        if dry_run:
            return Action(str(path), session_id, Verdict.TRASHED if blockers else Verdict.REMOVED, blockers)
        claimed = self._claim(session_id) if session_id is not None else CLAIMED
        if claimed != CLAIMED:
            return Action(str(path), session_id, *CLAIM_REFUSED[claimed])
        try:
            return self._act(path, session_id, main, blockers)
        finally:
            if session_id is not None:
                self.pool.run(calls.remove(self.keys.cleaning, [session_id]))

    def _screen(self, path: Path, session_id: str | None, dry_run: bool) -> Action | None:
        """The action for a path the cleaner must not judge any further (unsafe, gone, not a worktree), else None."""
        if path.is_symlink() or not contained(self.root, path):
            return Action(str(path), session_id, Verdict.SKIPPED_UNSAFE, ('symlink or outside the root',))
        if not path.exists():
            if not dry_run:
                self.pool.run(calls.hash_delete(self.keys.worktrees, [str(path)]))
            return Action(str(path), session_id, Verdict.GONE)
        if not path.is_dir():
            return Action(str(path), session_id, Verdict.SKIPPED_UNSAFE, ('not a directory',))
        unfit = why_not_a_worktree(path)
        if unfit is not None:
            return Action(str(path), session_id, Verdict.SKIPPED_NOT_WORKTREE, (unfit,))
        return None

    def _claim(self, session_id: str) -> int:
        """Re-check liveness atomically and hold off activation while the cleaner acts; CLAIMED or why not."""
        now = self.pool.now_ms()
        call = Call(
            as_int,
            'claim_cleaning',
            (self.keys.live, self.keys.cleaning),
            (session_id, now, now + CLAIM_LEASE_S * 1000),
        )
        return self.pool.run(call)

    def _act(self, path: Path, session_id: str | None, main: Path, blockers: tuple[str, ...]) -> Action:
        if not blockers:
            removed = git('worktree', 'remove', str(path), cwd=main)
            if removed.returncode == 0:
                git('worktree', 'prune', cwd=main)
                self.pool.run(calls.hash_delete(self.keys.worktrees, [str(path)]))
                return Action(str(path), session_id, Verdict.REMOVED)
            blockers = (f'git worktree remove failed: {removed.stderr.strip()}',)
        failure = self._move_to_trash(path, session_id, main, blockers)
        if failure is not None:
            return Action(str(path), session_id, Verdict.FAILED, (failure, *blockers))
        self.pool.run(calls.hash_delete(self.keys.worktrees, [str(path)]))
        return Action(str(path), session_id, Verdict.TRASHED, blockers)

    def _move_to_trash(self, path: Path, session_id: str | None, main: Path, reasons: tuple[str, ...]) -> str | None:
        """Move the worktree into the trash beside a note saying why and how to put it back; None, or why not."""
        trash = self.root / TRASH
        if trash.is_symlink() or (trash.exists() and not trash.is_dir()):
            return f'{str(trash)!r} is not a plain directory: nothing is moved into the trash'
        trash.mkdir(exist_ok=True)
        moved_at = datetime.now(UTC)
        target = trash / f'{moved_at:%Y%m%dT%H%M%S%fZ}-{path.name}'
        written = target.with_name(target.name + '.json')
        note: dict[str, Any] = {
            'from': str(path),
            'session_id': session_id,
            'reasons': list(reasons),
            'moved_at': moved_at.isoformat(),
            'main_repository': str(main),
            'restore': restore_command(main, target, path, written),
        }
        written.write_text(json.dumps(note, indent=2))
        # `git worktree move`, not a rename: git's entry follows the worktree into the trash, so a `git worktree
        # prune` (or gc) meanwhile keeps it, the same move puts it back as a worktree git knows, and the original
        # path is free for a new worktree until then. Within one filesystem git renames: the work is untouched.
        moved = git('worktree', 'move', str(path), str(target), cwd=main)
        if moved.returncode != 0:
            written.unlink()
            return f'git worktree move to the trash failed: {moved.stderr.strip()}'
        return None

    def _empty_trash(self) -> list[str]:
        """Delete trash entries (and their notes) older than the retention, with git's entry for each; a planted
        symlink is unlinked, never followed."""
        trash = self.root / TRASH
        if not trash.is_dir() or trash.is_symlink():
            return []
        emptied = []
        cutoff = time.time() - self.trash_retention_s
        for note in sorted(trash.glob('*.json')):
            entry = note.with_suffix('')
            if entry == note or note.is_symlink() or note.stat().st_mtime > cutoff:
                continue  # '.json' alone is nobody's note; a planted link is never followed
            try:
                self._discard(entry, _noted_main_repository(note))
            except (OSError, subprocess.SubprocessError):
                log.warning('trash entry %r not emptied; next sweep retries', str(entry), exc_info=True)
                continue
            note.unlink()
            emptied.append(entry.name)
        return emptied

    @staticmethod
    def _discard(entry: Path, main: Path | None) -> None:
        if entry.is_symlink() or entry.is_file():
            entry.unlink()
        elif entry.is_dir():
            shutil.rmtree(entry)
        if main is not None and main.is_dir():
            git('worktree', 'prune', cwd=main)  # git's entry now names a missing directory: prune drops it

    @staticmethod
    def _last_change(path: Path) -> float:
        """The latest of the directory's and its `.git` file's modification times (no symlink followed)."""
        times = [path.lstat().st_mtime]
        marker = path / '.git'
        if marker.exists() or marker.is_symlink():
            times.append(marker.lstat().st_mtime)
        return max(times)


def _noted_main_repository(note: Path) -> Path | None:
    """The main repository a trash note names; None for a note written before it recorded one, or a broken one."""
    try:
        main = json.loads(note.read_text()).get('main_repository')
    except (OSError, ValueError, AttributeError):
        return None
    return Path(main) if isinstance(main, str) and os.path.isabs(main) else None


def registration(session_id: str, path: str | os.PathLike[str], root: str | None) -> tuple[str, str]:
    """The checked (normalised path, session id) to record for a worktree under `root`; InvalidArgument, naming the
    value, if the path is unsafe. ConfigurationError if there is no root, or one the cleaner would refuse."""
    if root is None:
        raise ConfigurationError('register_worktree needs LIFECYCLE_WORKTREE_ROOT: worktrees are recorded under a root')
    base = checked_root(root)
    session_id = validate.identifier('session_id', session_id)
    try:
        raw = os.fspath(path) if isinstance(path, str | os.PathLike) else None
        if isinstance(raw, str):
            raw.encode()  # a lone surrogate (an undecodable file name) cannot be stored
    except Exception as exc:  # whatever a caller's __fspath__ raises is bad input
        raise InvalidArgument(f'worktree path {path!r:.80} cannot be used: {exc}') from exc
    if not isinstance(raw, str):
        raise InvalidArgument(f'worktree path must be a str or a str path, got {type(path).__name__} {path!r:.80}')
    unsafe = _why_unsafe(raw, base)
    if unsafe is not None:
        raise InvalidArgument(f'worktree path {raw!r} {unsafe}')
    return os.path.normpath(raw), session_id


def _why_unsafe(raw: str, root: Path) -> str | None:
    if CONTROL_CHARACTERS.search(raw):
        return 'contains control characters'
    if not os.path.isabs(raw):
        return 'must be absolute'
    if '..' in Path(raw).parts:
        return 'must not have ".." components'
    normal = Path(os.path.normpath(raw))
    if root not in normal.parents:
        return f'is outside the worktree root {str(root)!r}'
    if normal.relative_to(root).parts[0] == TRASH:
        return 'is inside the trash'
    if os.path.realpath(normal) != str(normal):
        return 'goes through a symlink'
    return None
