"""Lua scripts of lifecycle: loaded once, with the shared `_lib.lua` prelude, and bound per client."""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).parent
_PRELUDE = (_HERE / '_lib.lua').read_text()

# name -> full source; the prelude is prepended so each script stays one self-contained EVALSHA.
SOURCES: dict[str, str] = {
    path.stem: _PRELUDE + '\n' + path.read_text() for path in sorted(_HERE.glob('*.lua')) if path.stem != '_lib'
}
