"""The `lifecycle` console command: the operator tools, which need the `cli` extra (rich, prometheus-client)."""

from __future__ import annotations

import sys


def main() -> int:
    try:
        from lifecycle.ops.cli import main as run
    except ImportError as missing:
        print(f"lifecycle: the command needs the 'cli' extra: pip install 'lifecycle[cli]' ({missing})",
              file=sys.stderr)  # fmt: skip
        return 2
    return run()
