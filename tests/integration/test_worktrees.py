"""The orphan worktree cleaner on real git repositories, real worktrees and a real bare remote."""

from __future__ import annotations

import json
import os
import pwd
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from lifecycle import ConfigurationError, InvalidArgument, Lifecycle, SessionReaping
from lifecycle.jobs import worktrees as worktrees_module
from lifecycle.jobs.worktrees import Verdict, WorktreeCleaner
from tests.conftest import SettingsFactory

LONG_AGO = time.time() - 2 * 3600


def run_git(*args: str, cwd: Path) -> str:
    env = {**os.environ, 'GIT_AUTHOR_NAME': 't', 'GIT_AUTHOR_EMAIL': 't@x', 'GIT_COMMITTER_NAME': 't',
           'GIT_COMMITTER_EMAIL': 't@x', 'GIT_CONFIG_NOSYSTEM': '1', 'HOME': str(cwd)}  # fmt: skip
    return subprocess.run(['git', *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


class Host:
    """A bare remote, a main clone, and a worktree root, under tmp_path."""

    def __init__(self, tmp_path: Path, lc: Lifecycle) -> None:
        self.lc = lc
        self.remote = tmp_path / 'remote.git'
        self.main = tmp_path / 'main'
        self.root = tmp_path / 'worktrees'
        self.root.mkdir()
        run_git('init', '--bare', '-b', 'main', str(self.remote), cwd=tmp_path)
        run_git('clone', str(self.remote), str(self.main), cwd=tmp_path)
        (self.main / 'README').write_text('hello\n')
        run_git('add', 'README', cwd=self.main)
        run_git('commit', '-m', 'first', cwd=self.main)
        run_git('push', 'origin', 'main', cwd=self.main)

    def worktree(self, name: str, *, register: bool = True, age: float = LONG_AGO) -> Path:
        path = self.root / name
        branch = 'branch-' + name.replace('..', '-dots-')  # '..' is fine in a directory, not in a ref
        run_git('worktree', 'add', '-b', branch, str(path), 'origin/main', cwd=self.main)
        if register:
            self.lc.register_worktree(name, path)
        self.age(path, age)
        return path

    @staticmethod
    def age(path: Path, when: float = LONG_AGO) -> None:
        for target in (path / '.git', path):
            if target.exists():
                os.utime(target, (when, when), follow_symlinks=False)

    def listed(self) -> str:
        return run_git('worktree', 'list', '--porcelain', cwd=self.main)


@pytest.fixture
def host(make_settings: SettingsFactory, real_redis: Any, tmp_path: Path) -> Host:
    settings = make_settings(worktree_grace_s=3600, trash_retention_s=86_400, worktree_root=str(tmp_path / 'worktrees'))
    return Host(tmp_path, Lifecycle(settings))


def sweep(host: Host, **kwargs: Any) -> dict[str, tuple[Verdict, tuple[str, ...]]]:
    report = WorktreeCleaner(host.lc.pool, host.root).sweep(**kwargs)
    return {Path(a.path).name: (a.verdict, a.reasons) for a in report.actions}


def worktree_branches(host: Host) -> dict[str, str]:
    """Each worktree git lists in the main repository -> its checked-out branch."""
    blocks = [
        dict(line.split(' ', 1) for line in block.splitlines() if ' ' in line) for block in host.listed().split('\n\n')
    ]
    return {block['worktree']: block.get('branch', '') for block in blocks if 'worktree' in block}


def trash_notes(host: Host) -> list[dict[str, Any]]:
    return [json.loads(note.read_text()) for note in sorted((host.root / '.trash').glob('*.json'))]


def test_a_clean_orphan_is_removed_with_git_and_pruned(host: Host) -> None:
    path = host.worktree('clean')
    assert sweep(host) == {'clean': (Verdict.REMOVED, ())}
    assert not path.exists()
    assert str(path) not in host.listed()
    assert host.lc.redis.hlen(host.lc.index.keys.worktrees) == 0


def ignore_and_write_env(path: Path) -> None:
    """A .env file that the repository ignores (through its info/exclude, shared by its worktrees)."""
    exclude = Path(run_git('rev-parse', '--git-path', 'info/exclude', cwd=path).strip())
    exclude = exclude if exclude.is_absolute() else path / exclude
    exclude.parent.mkdir(parents=True, exist_ok=True)
    exclude.write_text('.env\n')
    (path / '.env').write_text('SECRET=1\n')


@pytest.mark.parametrize(
    ('make_work', 'reason'),
    [
        (lambda p: (p / 'README').write_text('edited\n'), 'uncommitted changes'),
        (lambda p: (p / 'notes.txt').write_text('new\n'), 'untracked files'),
        (lambda p: ((p / 'f').write_text('x'), run_git('add', 'f', cwd=p), run_git('commit', '-m', 'wip', cwd=p)),
         'commits not on any remote'),
        # A gitignored .env is work too: `git worktree remove` would have deleted it for good.
        (ignore_and_write_env, 'ignored files'),
    ],
    ids=['dirty', 'untracked', 'unpushed', 'ignored'],
)  # fmt: skip
def test_work_that_is_not_safe_elsewhere_goes_to_the_trash_with_a_note(host: Host, make_work: Any, reason: str) -> None:
    path = host.worktree('work')
    make_work(path)
    host.age(path)
    assert sweep(host) == {'work': (Verdict.TRASHED, (reason,))}
    assert not path.exists()
    [note] = trash_notes(host)
    assert (note['from'], note['session_id'], note['reasons']) == (str(path), 'work', [reason])
    [kept] = [p for p in (host.root / '.trash').iterdir() if p.is_dir()]
    assert (kept / 'README').exists()  # the work itself is intact


def test_pushed_work_on_a_branch_counts_as_safe(host: Host) -> None:
    path = host.worktree('pushed')
    (path / 'f').write_text('x')
    run_git('add', 'f', cwd=path)
    run_git('commit', '-m', 'done', cwd=path)
    run_git('push', 'origin', 'branch-pushed', cwd=path)
    host.age(path)
    assert sweep(host) == {'pushed': (Verdict.REMOVED, ())}


def test_locked_live_and_young_worktrees_are_kept(host: Host) -> None:
    locked = host.worktree('locked')
    run_git('worktree', 'lock', str(locked), cwd=host.main)
    host.lc.activate(host.lc.reserve('api-1'), 'live')
    host.worktree('live')
    host.worktree('young', age=time.time() - 60)
    assert sweep(host) == {
        'locked': (Verdict.KEPT_LOCKED, ('locked',)),
        'live': (Verdict.KEPT_LIVE, ()),
        'young': (Verdict.KEPT_YOUNG, ()),
    }
    assert all((host.root / name).exists() for name in ('locked', 'live', 'young'))


def test_an_unregistered_worktree_is_judged_by_age_and_a_plain_folder_is_left_alone(host: Host) -> None:
    host.worktree('stray', register=False)
    (host.root / 'plain-dir').mkdir()
    host.age(host.root / 'plain-dir')
    result = sweep(host)
    assert result['stray'] == (Verdict.REMOVED, ())
    assert result['plain-dir'] == (Verdict.SKIPPED_NOT_WORKTREE, ('no .git: a plain folder',))
    assert (host.root / 'plain-dir').is_dir()


def test_plain_folders_in_a_misconfigured_root_are_never_trashed(host: Host) -> None:
    # The incident: a root that held a user's tool folders and a clone, all long untouched.
    for name in ('.cargo', '.m2', '.rustup'):
        (host.root / name / 'bin').mkdir(parents=True)
        (host.root / name / 'bin' / 'tool').write_text('#!/bin/sh\n')
        host.age(host.root / name)
    run_git('clone', str(host.remote), str(host.root / 'project'), cwd=host.root)
    host.age(host.root / 'project')
    host.lc.redis.hset(host.lc.index.keys.worktrees, str(host.root / '.m2'), 'm2')  # even when registered
    result = sweep(host)
    assert all((host.root / name / 'bin' / 'tool').exists() for name in ('.cargo', '.m2', '.rustup'))
    assert (host.root / 'project' / 'README').exists()
    assert not (host.root / '.trash').exists()
    assert {name: verdict for name, (verdict, _) in result.items()} == {
        name: Verdict.SKIPPED_NOT_WORKTREE for name in ('.cargo', '.m2', '.rustup', 'project')
    }
    assert result['project'][1] == ('.git is a directory: a repository, not a worktree',)


def forge_gitdir_elsewhere(host: Host, path: Path) -> None:
    (path / '.git').write_text(f'gitdir: {host.main / ".git"}\n')  # the main repository's own git dir


def forge_other_worktrees_entry(host: Host, path: Path) -> None:
    other = host.worktree('other', register=False, age=time.time())  # young: left alone itself
    (path / '.git').write_text((other / '.git').read_text())  # its admin entry points back at `other`


def forge_symlinked_git_file(host: Host, path: Path) -> None:
    other = host.worktree('other', register=False, age=time.time())
    (path / '.git').symlink_to(other / '.git')


def forge_garbage_git_file(host: Host, path: Path) -> None:
    (path / '.git').write_text('not a pointer at all\n')


@pytest.mark.parametrize(
    ('forge', 'reason'),
    [
        (forge_gitdir_elsewhere, 'gitdir is not a worktrees/ entry of a repository'),
        (forge_other_worktrees_entry, 'the worktree entry it names belongs to another directory'),
        (forge_symlinked_git_file, '.git is a symlink'),
        (forge_garbage_git_file, '.git does not name a gitdir'),
    ],
    ids=['gitdir-elsewhere', 'another-worktrees-entry', 'symlinked-git-file', 'garbage'],
)
def test_a_folder_with_a_forged_git_file_is_not_a_worktree(host: Host, forge: Any, reason: str) -> None:
    path = host.root / 'forged'
    path.mkdir()
    (path / 'data').write_text('keep me')
    forge(host, path)
    host.age(path)
    result = sweep(host)
    assert (path / 'data').read_text() == 'keep me'
    assert not (host.root / '.trash').exists()
    assert result['forged'] == (Verdict.SKIPPED_NOT_WORKTREE, (reason,))


def test_an_already_deleted_worktree_drops_its_registration(host: Host) -> None:
    host.lc.register_worktree('vanished', host.root / 'vanished')
    assert sweep(host) == {'vanished': (Verdict.GONE, ())}
    assert host.lc.redis.hlen(host.lc.index.keys.worktrees) == 0


def test_a_planted_symlink_is_never_followed_and_its_target_survives(host: Host, tmp_path: Path) -> None:
    precious = tmp_path / 'precious'
    precious.mkdir()
    (precious / 'data').write_text('keep me')
    os.utime(precious, (LONG_AGO, LONG_AGO))
    (host.root / 'evil').symlink_to(precious, target_is_directory=True)
    # registration refuses it now, but a record planted by hand (or an older version) is still judged
    host.lc.redis.hset(host.lc.index.keys.worktrees, str(host.root / 'evil' / 'sub'), 'evil2')
    (host.root / '.trash').mkdir()
    (host.root / '.trash' / 'old').symlink_to(precious, target_is_directory=True)
    note = host.root / '.trash' / 'old.json'
    note.write_text('{}')
    os.utime(note, (0, 0))
    result = sweep(host)
    assert result['evil'][0] is Verdict.SKIPPED_UNSAFE
    assert result['sub'][0] is Verdict.SKIPPED_UNSAFE
    assert (precious / 'data').read_text() == 'keep me'  # even the trash only unlinks the link
    assert not (host.root / '.trash' / 'old').exists()


def test_paths_with_dot_dot_are_refused_and_odd_names_are_fine(host: Host) -> None:
    with pytest.raises(InvalidArgument, match=r'\.\.'):
        host.lc.register_worktree('s1', host.root / '..' / 'main')
    with pytest.raises(InvalidArgument, match='absolute'):
        host.lc.register_worktree('s1', 'relative/path')
    host.worktree('a..b', register=False)
    assert sweep(host) == {'a..b': (Verdict.REMOVED, ())}
    assert host.main.exists()


def test_a_main_repository_under_the_root_is_never_touched(host: Host) -> None:
    run_git('clone', str(host.remote), str(host.root / 'checkout'), cwd=host.root)
    host.age(host.root / 'checkout')
    assert sweep(host)['checkout'][0] is Verdict.SKIPPED_NOT_WORKTREE
    assert (host.root / 'checkout' / 'README').exists()


def test_a_session_restored_during_the_sweep_keeps_its_worktree(host: Host, monkeypatch: pytest.MonkeyPatch) -> None:
    path = host.worktree('comeback')
    original = WorktreeCleaner._claim

    def restore_first(self: WorktreeCleaner, session_id: str) -> int:
        host.lc.activate(host.lc.reserve('api-1'), session_id)  # the restore wins the race
        return original(self, session_id)

    monkeypatch.setattr(WorktreeCleaner, '_claim', restore_first)
    assert sweep(host) == {'comeback': (Verdict.KEPT_LIVE, ('became live during the sweep',))}
    assert path.exists()


def test_a_session_another_cleaner_holds_is_left_to_it(host: Host, monkeypatch: pytest.MonkeyPatch) -> None:
    path = host.worktree('shared')
    original = WorktreeCleaner._claim

    def other_host_first(self: WorktreeCleaner, session_id: str) -> int:
        assert original(self, session_id) == 1  # another host's cleaner claims the session first ...
        return original(self, session_id)  # ... so this one is refused

    monkeypatch.setattr(WorktreeCleaner, '_claim', other_host_first)
    assert sweep(host) == {'shared': (Verdict.KEPT_CLEANING, ('another cleaner holds the session',))}
    assert path.exists()


def test_activation_waits_while_the_cleaner_holds_the_session(host: Host, monkeypatch: pytest.MonkeyPatch) -> None:
    host.worktree('racing')
    original = WorktreeCleaner._act
    refused: list[Exception] = []

    def activate_during_act(self: WorktreeCleaner, *args: Any) -> Any:
        try:
            host.lc.activate(host.lc.reserve('api-1'), 'racing')
        except SessionReaping as exc:
            refused.append(exc)
        return original(self, *args)

    monkeypatch.setattr(WorktreeCleaner, '_act', activate_during_act)
    assert sweep(host)['racing'][0] is Verdict.REMOVED
    assert len(refused) == 1
    monkeypatch.undo()
    host.lc.activate(host.lc.reserve('api-1'), 'racing')  # once the cleaner is done, it activates


def test_dry_run_only_reports(host: Host) -> None:
    clean = host.worktree('clean')
    dirty = host.worktree('dirty')
    (dirty / 'x').write_text('x')
    host.age(dirty)
    assert sweep(host, dry_run=True) == {
        'clean': (Verdict.REMOVED, ()),
        'dirty': (Verdict.TRASHED, ('untracked files',)),
    }
    assert clean.exists()
    assert dirty.exists()
    assert not (host.root / '.trash').exists()


def test_the_trash_is_emptied_after_its_retention(host: Host) -> None:
    dirty = host.worktree('dirty')
    (dirty / 'x').write_text('x')
    host.age(dirty)
    sweep(host)
    [note] = list((host.root / '.trash').glob('*.json'))
    report = WorktreeCleaner(host.lc.pool, host.root).sweep()
    assert report.trash_emptied == []
    os.utime(note, (time.time() - 86_401, time.time() - 86_401))
    report = WorktreeCleaner(host.lc.pool, host.root).sweep()
    assert len(report.trash_emptied) == 1
    assert list((host.root / '.trash').iterdir()) == []


def test_a_refused_registration_writes_nothing(host: Host, make_settings: SettingsFactory) -> None:
    for bad in (host.main, host.root / 'a\nb', host.root / '.trash' / 'x'):
        with pytest.raises(InvalidArgument, match=re.escape(repr(str(bad)))):
            host.lc.register_worktree('s1', bad)
    assert host.lc.redis.hlen(host.lc.index.keys.worktrees) == 0
    rootless = Lifecycle(make_settings())
    with pytest.raises(ConfigurationError, match='LIFECYCLE_WORKTREE_ROOT'):
        rootless.register_worktree('s1', host.root / 's1')
    assert rootless.redis.hlen(rootless.index.keys.worktrees) == 0


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / 'home' / 'me'
    for name in ('.cargo', '.m2', '.rustup'):
        (home / name).mkdir(parents=True)
        Host.age(home / name)
    monkeypatch.setenv('HOME', str(home))
    monkeypatch.setattr(Path, 'home', lambda: home)
    return home


@pytest.mark.parametrize('which', ['home', 'parent-of-home'])
def test_the_cleaner_refuses_a_home_folder_or_an_ancestor_of_it_as_root(host: Host, home: Path, which: str) -> None:
    root = home if which == 'home' else home.parent
    with pytest.raises(ConfigurationError, match=re.escape(str(root))):
        WorktreeCleaner(host.lc.pool, root).sweep()
    assert all((home / name).is_dir() for name in ('.cargo', '.m2', '.rustup'))
    assert not (home / '.trash').exists()


def test_the_cleaner_refuses_the_filesystem_root(host: Host) -> None:
    # Construction alone must refuse: a cleaner that accepted '/' is never swept here, even by a broken build.
    with pytest.raises(ConfigurationError, match="'/'"):
        WorktreeCleaner(host.lc.pool, '/')


@pytest.mark.parametrize('root', ['/home', '/var', '/tmp', '/opt', '/usr', '/etc'])
def test_the_cleaner_refuses_top_level_folders(host: Host, root: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(repr(root))):
        WorktreeCleaner(host.lc.pool, root)  # construction only: none of these is ever swept here


@pytest.mark.parametrize('root', ['/srv/apps/app-home', '/srv/apps/app-home/.', '/srv/apps'])
def test_the_cleaner_refuses_every_accounts_home_and_its_ancestors(
    host: Host, root: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    account = pwd.struct_passwd(('app', 'x', 1234, 1234, '', '/srv/apps/app-home', '/bin/sh'))
    monkeypatch.setattr(pwd, 'getpwall', lambda: [account])  # another account than the one running this
    with pytest.raises(ConfigurationError, match='home folder'):
        WorktreeCleaner(host.lc.pool, root)


def test_a_stray_note_named_only_json_never_stops_the_trash_from_emptying(host: Host) -> None:
    path = host.worktree('work')
    (path / 'notes.txt').write_text('new\n')
    host.age(path)
    assert sweep(host)['work'][0] is Verdict.TRASHED
    (host.root / '.trash' / '.json').write_text('{}')
    for note in (host.root / '.trash').glob('*.json'):
        os.utime(note, (0, 0))
    report = WorktreeCleaner(host.lc.pool, host.root).sweep()
    assert len(report.trash_emptied) == 1
    assert (host.root / '.trash' / '.json').exists()


def test_the_cleaner_refuses_a_repository_top_as_root(host: Host) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(str(host.main))):
        WorktreeCleaner(host.lc.pool, host.main).sweep()
    with pytest.raises(ConfigurationError, match=re.escape(str(host.main / '.git'))):
        WorktreeCleaner(host.lc.pool, host.main / '.git').sweep()


def test_the_cleaner_refuses_a_root_reached_through_a_symlink(host: Host, tmp_path: Path) -> None:
    host.worktree('clean')
    (tmp_path / 'link').symlink_to(host.root, target_is_directory=True)
    with pytest.raises(ConfigurationError, match='symlink'):
        WorktreeCleaner(host.lc.pool, tmp_path / 'link').sweep()
    assert (host.root / 'clean').exists()


def test_a_root_that_became_a_repository_is_refused_when_the_sweep_starts(host: Host) -> None:
    clean = host.worktree('clean')
    cleaner = WorktreeCleaner(host.lc.pool, host.root)
    run_git('init', '-q', str(host.root), cwd=host.root)
    with pytest.raises(ConfigurationError, match=re.escape(str(host.root))):
        cleaner.sweep()
    assert clean.exists()


def test_a_trashed_worktree_is_restored_by_its_note_even_after_git_worktree_prune(host: Host) -> None:
    path = host.worktree('work')
    (path / 'README').write_text('edited\n')
    (path / 'notes.txt').write_text('new\n')
    host.age(path)
    assert sweep(host)['work'][0] is Verdict.TRASHED
    run_git('worktree', 'prune', cwd=host.main)
    [note] = trash_notes(host)
    subprocess.run(note['restore'], shell=True, check=True, capture_output=True)
    assert worktree_branches(host).get(str(path)) == 'refs/heads/branch-work'
    assert run_git('status', '--porcelain', cwd=path).splitlines() == [' M README', '?? notes.txt']
    assert run_git('branch', '--show-current', cwd=path).strip() == 'branch-work'
    assert (path / 'notes.txt').read_text() == 'new\n'
    assert note['main_repository'] == str(host.main)
    assert list((host.root / '.trash').iterdir()) == []  # the restore took its note along


def test_an_emptied_trash_entry_leaves_nothing_behind_in_the_main_repository(host: Host) -> None:
    path = host.worktree('dirty')
    (path / 'x').write_text('x')
    host.age(path)
    sweep(host)
    [note] = list((host.root / '.trash').glob('*.json'))
    os.utime(note, (time.time() - 86_401, time.time() - 86_401))
    assert len(WorktreeCleaner(host.lc.pool, host.root).sweep().trash_emptied) == 1
    assert list((host.root / '.trash').iterdir()) == []
    assert worktree_branches(host) == {str(host.main): 'refs/heads/main'}
    admin = host.main / '.git' / 'worktrees'
    assert not admin.exists() or list(admin.iterdir()) == []
    run_git('worktree', 'add', str(path), 'branch-dirty', cwd=host.main)  # its path and branch are free again


def test_a_planted_trash_symlink_is_never_moved_into(host: Host, tmp_path: Path) -> None:
    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    (host.root / '.trash').symlink_to(elsewhere, target_is_directory=True)
    path = host.worktree('dirty')
    (path / 'x').write_text('x')
    host.age(path)
    verdict, reasons = sweep(host)['dirty']
    assert (path / 'x').exists()
    assert list(elsewhere.iterdir()) == []
    assert verdict is Verdict.FAILED
    assert 'trash' in reasons[0]


def test_an_error_on_one_worktree_is_reported_and_the_sweep_goes_on(
    host: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    host.worktree('a-slow')
    good = host.worktree('b-good')
    host.lc.redis.hset(host.lc.index.keys.worktrees, f'{host.root}/c\x00nul', 'c')  # planted: os calls raise on it
    original = worktrees_module.preflight

    def git_times_out(path: Path) -> Any:
        if path.name == 'a-slow':
            raise subprocess.TimeoutExpired(['git', 'status'], 60)
        return original(path)

    monkeypatch.setattr(worktrees_module, 'preflight', git_times_out)
    result = sweep(host)
    assert (host.root / 'a-slow').exists()
    assert not good.exists()
    assert result['b-good'] == (Verdict.REMOVED, ())
    assert result['c\x00nul'][0] is Verdict.SKIPPED_UNSAFE
    assert result['a-slow'][0] is Verdict.FAILED
    assert 'TimeoutExpired' in result['a-slow'][1][0]
