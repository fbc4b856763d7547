"""Lua scripts of lifecycle: loaded once, with the helpers of `_lib.lua` each one uses, and bound per client."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal, get_args

_HERE = Path(__file__).parent
# A helper starts at a top-level `local function NAME` or `local NAME =`, with the comment lines above it.
_DEFINITION = re.compile(r'^local (?:function )?([A-Za-z_]\w*)', re.MULTILINE)


def _helpers(prelude: str) -> dict[str, str]:
    """The prelude's definitions by name, in order, each with its leading comment."""
    starts = [match for match in _DEFINITION.finditer(prelude)]
    helpers = {}
    for match, following in zip(starts, [*starts[1:], None], strict=True):
        begin = prelude.rfind('\n\n', 0, match.start()) + 2  # the comment block above it
        end = following.start() if following is not None else len(prelude)
        end = prelude.rfind('\n\n', begin, end) if following is not None else end
        helpers[match.group(1)] = prelude[begin:end].strip() + '\n'
    return helpers


def _uses(text: str, names: dict[str, str]) -> set[str]:
    return {name for name in names if re.search(rf'\b{name}\b', text)}


def _with_helpers(script: str, helpers: dict[str, str]) -> str:
    """`script` preceded by the helpers it uses, and theirs: every EVALSHA runs its whole source, so one that
    defined every helper would create closures it never calls on each call (about 5 µs of server time)."""
    needed = _uses(script, helpers)
    while True:
        more = set().union(*(_uses(helpers[name], helpers) for name in needed)) - needed
        if not more:
            break
        needed |= more
    return ''.join(text for name, text in helpers.items() if name in needed) + '\n' + script


_HELPERS = _helpers((_HERE / '_lib.lua').read_text())

# Every script, by the name of its file: a call names one of these, and the files must match (checked below).
ScriptName = Literal[
    'abort_claim',
    'activate_session',
    'append_event',
    'append_trail',
    'begin_turn',
    'claim_cleaning',
    'claim_session',
    'close_session',
    'drop_runs',
    'drop_stray_tenants',
    'end_turn',
    'extend_claim',
    'extend_session',
    'finish_eviction',
    'finish_run',
    'forget_gone',
    'forget_replicas',
    'mark_verified',
    'next_token',
    'pin_session',
    'migrate_records',
    'pool_state',
    'prune_runs',
    'read_next_free',
    'raise_epoch',
    'read_session',
    'readmit_sessions',
    'read_stats',
    'read_tied',
    'rebuild_records',
    'reclaim_session',
    'reconcile_counters',
    'release_slot',
    'renew_turn',
    'repair_records',
    'reserve_slot',
    'start_run',
    'touch_sessions',
    'unpin_session',
]

# name -> full source: each script stays one self-contained EVALSHA.
SOURCES: dict[ScriptName, str] = {
    path.stem: _with_helpers(path.read_text(), _HELPERS)  # type: ignore[misc]  # checked just below
    for path in sorted(_HERE.glob('*.lua'))
    if path.stem != '_lib'
}
if set(SOURCES) != set(get_args(ScriptName)):  # a script file added, renamed or removed without its name here
    raise ImportError(f'lifecycle scripts {sorted(SOURCES)} do not match ScriptName {sorted(get_args(ScriptName))}')
