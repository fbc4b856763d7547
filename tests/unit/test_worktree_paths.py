"""Which worktree paths `registration` accepts, and how it refuses the others, with no Redis involved."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from lifecycle import ConfigurationError, InvalidArgument
from lifecycle.jobs.worktrees import registration


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / 'worktrees'
    root.mkdir()
    (tmp_path / 'elsewhere').mkdir()
    (root / 'link').symlink_to(tmp_path / 'elsewhere', target_is_directory=True)
    return root


def test_a_path_inside_the_root_is_recorded_normalised(root: Path) -> None:
    assert registration('chat-1', f'{root}/./chat-1', str(root)) == (str(root / 'chat-1'), 'chat-1')
    assert registration('chat-2', root / 'deep' / 'chat-2', str(root)) == (str(root / 'deep' / 'chat-2'), 'chat-2')


@pytest.mark.parametrize(
    ('make_path', 'reason'),
    [
        (lambda root: 'relative/chat-1', 'absolute'),
        (lambda root: f'{root}/../worktrees/chat-1', r'\.\.'),
        (lambda root: f'{root}/chat-1/../chat-2', r'\.\.'),
        (lambda root: str(root.parent / 'chat-1'), 'outside'),
        (lambda root: '/etc/chat-1', 'outside'),
        (lambda root: str(root), 'outside'),
        (lambda root: f'{root}-other/chat-1', 'outside'),
        (lambda root: str(root / '.trash' / 'chat-1'), 'trash'),
        (lambda root: str(root / 'link'), 'symlink'),
        (lambda root: str(root / 'link' / 'chat-1'), 'symlink'),
        (lambda root: f'{root}/chat\x00-1', 'control'),
        (lambda root: f'{root}/chat\n-1', 'control'),
        (lambda root: f'{root}/chat\r-1', 'control'),
        (lambda root: f'{root}/chat\x1b[2J-1', 'control'),
        (lambda root: f'{root}/chat\x7f-1', 'control'),
    ],
    ids=[
        'relative', 'dot-dot-back-in', 'dot-dot-inside', 'sibling-of-root', 'elsewhere', 'the-root-itself',
        'prefix-of-root', 'the-trash', 'symlink', 'through-symlink', 'nul', 'newline', 'return', 'escape', 'del',
    ],
)  # fmt: skip
def test_an_unsafe_path_is_refused_naming_it(root: Path, make_path: Callable[[Path], str], reason: str) -> None:
    path = make_path(root)
    with pytest.raises(InvalidArgument, match=reason) as info:
        registration('chat-1', path, str(root))
    assert repr(path) in str(info.value)


def test_a_bad_session_id_is_refused(root: Path) -> None:
    with pytest.raises(InvalidArgument, match='session_id'):
        registration('a|b', root / 'chat-1', str(root))


def test_registration_without_a_configured_root_is_a_configuration_error(root: Path) -> None:
    with pytest.raises(ConfigurationError, match='LIFECYCLE_WORKTREE_ROOT'):
        registration('chat-1', root / 'chat-1', None)


def test_registration_under_a_root_the_cleaner_would_refuse_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="'/'"):
        registration('chat-1', '/chat-1', '/')
    (tmp_path / 'repo' / '.git').mkdir(parents=True)
    with pytest.raises(ConfigurationError, match='repository'):
        registration('chat-1', tmp_path / 'repo' / 'chat-1', str(tmp_path / 'repo'))
