"""The layout is the design: imports point down the layers, never round in a circle, and only the executor
(and the few places named below, each for its reason) talks to redis-py."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import get_args

from lifecycle.pool.scripts import SOURCES, ScriptName

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / 'lifecycle'

# Lower layers never import higher ones. A module's layer is its package's (or, at the top, its own).
LAYERS: dict[str, int] = {
    'lifecycle.errors': 0, 'lifecycle.models': 0, 'lifecycle.clock': 0, 'lifecycle.logs': 0,
    'lifecycle.background': 0, 'lifecycle.steps': 0, 'lifecycle.validate': 0, 'lifecycle.settings': 0,
    'lifecycle.policy': 0,
    'lifecycle.pool': 1, 'lifecycle.stores': 1, 'lifecycle.sandboxes': 1,
    'lifecycle.jobs': 2,
    'lifecycle.reaper': 3,
    'lifecycle.flows': 4, 'lifecycle.client': 4, 'lifecycle.aio': 4,
    'lifecycle': 5,  # __init__: the public names
    'lifecycle.web': 5,
    'lifecycle.ops': 6,
}  # fmt: skip

# redis-py itself, beyond the executor: each for a reason no Call can serve.
REDIS_ALLOWED = {
    'lifecycle.pool.executor',  # the executor: connection, scripts, pipelines, error translation
    'lifecycle.pool.lock',  # redis-py's Lock, used as the sweep lock
    'lifecycle.pool.servers',  # builds the clients: one server, a Sentinel group's master, or a Cluster
    'lifecycle.client',  # the type of an injected client
    'lifecycle.aio',  # the type of an injected asyncio client
    'lifecycle.ops.bench',  # the raw baselines every figure is measured against
    'lifecycle.ops.demo',  # the demo's watcher checks the invariants from outside the library
    'lifecycle.ops.embedded',  # starts a Redis for the demo and waits for it to answer
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix('').parts
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def layer(module: str) -> int:
    name = module
    while name not in LAYERS:
        assert '.' in name, f'{module} is in no layer: add its package to LAYERS'
        name = name.rsplit('.', 1)[0]
    return LAYERS[name]


def imports(path: Path) -> set[str]:
    """Every lifecycle module `path` imports, at the top or inside a function (a lazy import is an import)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith('lifecycle'):
            for alias in node.names:
                candidate = f'{node.module}.{alias.name}'
                is_module = (PACKAGE.parent / candidate.replace('.', '/')).with_suffix('.py').exists() or (
                    PACKAGE.parent / candidate.replace('.', '/') / '__init__.py'
                ).exists()
                found.add(candidate if is_module else node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith('lifecycle')}
    return found


def graph() -> dict[str, set[str]]:
    return {module_name(path): imports(path) for path in PACKAGE.rglob('*.py')}


def test_no_module_imports_a_module_above_it() -> None:
    upward = sorted(
        f'{module} (layer {layer(module)}) imports {target} (layer {layer(target)})'
        for module, targets in graph().items()
        for target in targets
        if layer(target) > layer(module)
    )
    assert upward == []


def test_there_is_no_import_circle() -> None:
    edges = graph()
    edges = {module: {t for t in targets if t in edges and t != module} for module, targets in edges.items()}
    # Package __init__ files re-export their children: an edge from a package to its own child is no circle.
    edges = {m: {t for t in ts if not t.startswith(m + '.')} for m, ts in edges.items()}
    visiting: list[str] = []
    done: set[str] = set()
    circles = []

    def visit(module: str) -> None:
        if module in done:
            return
        if module in visiting:
            circles.append(' -> '.join([*visiting[visiting.index(module) :], module]))
            return
        visiting.append(module)
        for target in sorted(edges[module]):
            visit(target)
        visiting.pop()
        done.add(module)

    for module in sorted(edges):
        visit(module)
    assert circles == []


def test_only_the_executor_and_the_named_exceptions_use_redis_py() -> None:
    users = set()
    for path in [*PACKAGE.rglob('*.py'), *(ROOT / 'workers').rglob('*.py')]:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            named = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or '']
                if isinstance(node, ast.ImportFrom)
                else []
            )
            if any(name == 'redis' or name.startswith('redis.') for name in named):
                users.add(module_name(path))
            # A call through a client's attribute: `<anything>.redis.<method>(...)`.
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Attribute)
                and node.func.value.attr == 'redis'
            ):
                users.add(module_name(path))
    assert sorted(users - REDIS_ALLOWED - {'workers.beat'}) == []  # beat: RedBeat's own lock errors


def test_every_script_file_has_a_name_and_every_name_a_file() -> None:
    assert set(get_args(ScriptName)) == set(SOURCES)
    assert {path.stem for path in (PACKAGE / 'pool' / 'scripts').glob('*.lua')} - {'_lib'} == set(SOURCES)
