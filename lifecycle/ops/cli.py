"""The `lifecycle` command: demo, status, inspect, sweep, check, exporter, bench.

Exit codes a script can rely on: 0 fine, 1 problems found (check, demo verification, unknown session),
2 bad usage or input, 3 Redis or MongoDB unavailable, 4 invalid configuration.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import logging
import sys
import threading
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from lifecycle import policy
from lifecycle.client import Lifecycle
from lifecycle.errors import (
    BackendUnavailable,
    ConfigurationError,
    InvalidArgument,
    LifecycleError,
    PersistenceError,
    SessionDamaged,
)
from lifecycle.logs import use_json
from lifecycle.models import SessionInfo, SessionState, to_datetime
from lifecycle.ops import checks
from lifecycle.policy import Order
from lifecycle.pool import calls
from lifecycle.pool.records import read_records
from lifecycle.pool.sessions import Meta
from lifecycle.reaper.eviction import EvictionResult, Evictor
from lifecycle.reaper.sweeps import Sweeper, SweepKind, SweepReport
from lifecycle.settings import Settings, describe_error

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_CONFIG = 0, 1, 2, 3, 4
console = Console()


def emit(args: argparse.Namespace, data: Any, render: Any) -> None:
    """Print `data` as JSON with --json, else call `render()` for people."""
    if getattr(args, 'json', False):
        print(json.dumps(data, default=str, indent=2))
    else:
        render()


def client() -> Lifecycle:
    return Lifecycle(Settings())


# -- status / inspect ---------------------------------------------------------------------------------


def readable(record: str | None) -> Meta | None:
    """The record's fields, or None when it is missing or unreadable (outside damage: status lists it anyway)."""
    try:
        return Meta.unpack(record) if record is not None else None
    except SessionDamaged:
        return None


def cmd_status(args: argparse.Namespace) -> int:
    with client() as lc:
        stats = lc.stats()
        now = lc.now_ms()
        k = lc.index.keys
        idlest = lc.pool.run(calls.by_score(k.live, '-inf', '+inf', args.top))
        ids = [member for member, _ in idlest]
        records = read_records(lc.pool, ids)
        deadlines, busy = lc.pool.run_many([calls.scores(k.deadline, ids), calls.scores(k.busy, ids)])
        sessions = []
        for (session_id, last_active), record, deadline, lease in zip(idlest, records, deadlines, busy, strict=True):
            meta = readable(record)
            sessions.append({
                'session_id': session_id,
                'owner': meta.owner if meta else '(damaged: see inspect)',
                'tenant': meta.tenant if meta else None,
                'idle_s': round((now - int(last_active)) / 1000, 1),
                'expires_in_s': round((int(deadline or 0) - now) / 1000, 1),
                'busy': lease is not None and lease > now,
            })  # fmt: skip
        data = {'pool': asdict(stats), 'most_idle': sessions}

    def render() -> None:
        pool = Table(title='pool')
        for column in ('live', 'busy', 'reserved', 'reaping', 'cap', 'slots'):
            pool.add_column(column, justify='right')
        pool.add_row(*(str(getattr(stats, c)) for c in ('live', 'busy', 'reserved', 'reaping', 'cap', 'slots')))
        console.print(pool)
        table = Table(title=f'the {args.top} most idle sessions')
        for column in ('session', 'owner', 'tenant', 'idle (s)', 'expires in (s)', 'busy'):
            table.add_column(column)
        for s in sessions:
            table.add_row(str(s['session_id']), str(s['owner']), str(s['tenant'] or ''), str(s['idle_s']),
                          str(s['expires_in_s']), 'yes' if s['busy'] else '')  # fmt: skip
        console.print(table)

    emit(args, data, render)
    return EXIT_OK


def cmd_inspect(args: argparse.Namespace) -> int:
    damaged: dict[str, Any] | None = None
    with client() as lc:
        try:
            info = lc.status(args.session)
        except SessionDamaged as exc:
            info, damaged = None, {'damage': str(exc), **raw_state(lc, args.session)}
        document = dict(lc.store.load(args.session) or {}) if lc.store is not None else {}
        claim = lc.pool.run(calls.hash_get(lc.index.keys.claims, args.session))
        why = explain(lc, info, document) if info is not None and info.state in ('live', 'reaping') else None
        trail = lc.trail(args.session) if damaged is None else None
    if info is None and not document and damaged is None:
        print(f'lifecycle: unknown session {args.session!r}', file=sys.stderr)
        return EXIT_PROBLEMS
    document.pop('snapshot', None)  # the app's own data: not ours to print
    document.pop('trail', None)  # shown as the trail below
    data: dict[str, Any] = {'session': asdict(info) if info else damaged, 'document': document, 'claim': claim,
                            'due': why.due if why else None, 'why': list(why.reasons) if why else [],
                            'trail': asdict(trail) if trail else None}  # fmt: skip

    def render() -> None:
        table = Table(title=f'session {args.session}', show_header=False)
        if why is not None:
            table.add_row('verdict', f'due: {why.due}' if why.due else 'kept')
            for reason in why.reasons:
                table.add_row('', reason)
        for key, value in (data['session'] or {}).items():
            table.add_row(key, when(key, value))
        if claim:
            table.add_row('claim (token|reason)', str(claim))
        if trail is not None:
            table.add_row('last stamped by', trail.source or 'unknown')
            for d in trail.decisions:
                repeat = f' (x{d.count})' if d.count > 1 else ''
                table.add_row('decision', f'{when("at_ms", d.at_ms)}: {d.decision} ({d.reason}) {d.detail}{repeat}')
        for key, value in document.items():
            table.add_row(f'mongo.{key}', str(value))
        console.print(table)

    emit(args, data, render)
    return EXIT_OK


def explain(lc: Lifecycle, info: SessionInfo, document: dict[str, Any]) -> policy.Verdict:
    """What the sweeps make of this live session now, and why."""
    s = lc.settings
    now = lc.now_ms()
    requested, heartbeat = lc.pool.run_many([calls.score(lc.index.keys.unsaved, info.session_id),
                                             calls.score(lc.index.keys.replicas, info.owner)])  # fmt: skip
    owner_lost = heartbeat is not None and heartbeat <= now
    return policy.verdict(
        now_ms=now, last_active_ms=info.last_active_ms, expires_at_ms=info.expires_at_ms, busy=info.busy,
        reaping=info.state is SessionState.REAPING, idle_ttl_s=s.limits(info.profile).idle_ttl_s,
        turn_seq=info.turn_seq, checkpoint_seq=document.get('checkpoint_seq') if document else None,
        requested_ms=policy.grace_start(requested, heartbeat if owner_lost else None), required=s.require_checkpoint,
        waive_after_s=s.waive_after_s(owner_lost=owner_lost), persistence=lc.store is not None,
        owner_lost=owner_lost, pinned=info.pinned, verified=lc.pool.run(lc.index.pool_state()).ready,
    )  # fmt: skip


def when(key: str, value: object) -> str:
    """A field for people: epoch-ms times also as UTC dates."""
    if key.endswith('_ms') and isinstance(value, int) and value > 10**12:
        return f'{to_datetime(value):%Y-%m-%d %H:%M:%S} UTC ({value})'
    return str(value)


def raw_state(lc: Lifecycle, session_id: str) -> dict[str, Any]:
    """What Redis holds of a damaged session, entry by entry (None where an entry is missing)."""
    k = lc.index.keys
    record = lc.pool.run(calls.hash_get(k.meta_of(session_id), session_id))
    last_active, deadline, busy, reaping = lc.pool.run_many(
        [calls.score(key, session_id) for key in (k.live, k.deadline, k.busy, k.reaping)]
    )
    return {'record': record, 'last_active_ms': last_active, 'expires_at_ms': deadline, 'busy_until_ms': busy,
            'reaping_until_ms': reaping, 'repair': 'lifecycle sweep reconcile'}  # fmt: skip


# -- sweep ------------------------------------------------------------------------------------------


def order_row(order: Order, now_ms: int) -> dict[str, Any]:
    """One order, with why: how long the session has been idle, or the lost owner."""
    why = {'reason': order.reason.value}
    if order.observed_ms:
        why['idle_s'] = str(round((now_ms - order.observed_ms) / 1000, 1))
    if order.owner is not None:
        why['owner'] = order.owner
    return {'session_id': order.session_id, **why}


def cmd_sweep(args: argparse.Namespace) -> int:
    kind = SweepKind(args.kind.replace('-', '_'))
    results: list[EvictionResult] = []
    with client() as lc:
        evictor = Evictor(lc.pool, lc.store, lc.driver)

        def evict_inline(orders: Sequence[Order]) -> None:
            results.extend(evictor.evict_many(orders))

        report = Sweeper(lc.pool, evictor, evict_inline).sweep(kind, dry_run=args.dry_run, dedupe=False)
        now = lc.now_ms()
    data = sweep_data(report, results, now, args.dry_run)

    def render() -> None:
        if not report.ran or report.skipped:
            console.print(f'{kind} sweep skipped: {report.skipped}')
        verb = 'would evict' if args.dry_run else 'ordered'
        table = Table(title=f'{kind} sweep: {report.ordered} {verb} ({report.duration_ms} ms)')
        for column in ('session', 'reason', 'why', 'outcome'):
            table.add_column(column)
        outcomes = {r.session_id: f'{r.outcome} {r.detail}'.strip() for r in results}
        outcomes.update({row['session_id']: f'would keep: {row["refused"]}' for row in data['kept']})
        for row in data['orders'] + data['kept']:
            why = ', '.join(f'{k} {v}' for k, v in row.items() if k not in ('session_id', 'reason', 'refused'))
            table.add_row(row['session_id'], row['reason'], why, outcomes.get(row['session_id'], ''))
        console.print(table)
        for line in data['details']:
            console.print(line)

    emit(args, data, render)
    return EXIT_OK


def sweep_data(report: SweepReport, results: list[EvictionResult], now_ms: int, dry_run: bool) -> dict[str, Any]:
    details = [f'recovered {r.session_id}: {r.outcome}' for r in report.recovered]
    if report.notices:
        details.append(f'{report.notices} warning notices {"due" if dry_run else "posted"}')
    if report.drift is not None:
        details.append(f'damage repaired: {report.drift.describe()}')
    if report.dropped_runs:
        details.append(f'{"would drop" if dry_run else "dropped"} runs: {", ".join(report.dropped_runs)}')
    if report.worktrees is not None:
        details += [f'worktree {a.path}: {a.verdict} {", ".join(a.reasons)}' for a in report.worktrees.actions]
    details += [f'released sandbox of {s}' for s in report.released_sandboxes]
    return {
        'kind': report.kind.value,
        'dry_run': dry_run,
        'ran': report.ran,
        'skipped': report.skipped,
        'ordered': report.ordered,
        'orders': [order_row(o, now_ms) for o in report.orders],
        'kept': [{**order_row(o, now_ms), 'refused': why} for o, why in report.kept],
        'drift': dataclasses.asdict(report.drift) if report.drift is not None else None,
        'results': [{'session_id': r.session_id, 'outcome': r.outcome.value, 'detail': r.detail} for r in results],
        'details': details,
        'duration_ms': report.duration_ms,
    }


# -- check ------------------------------------------------------------------------------------------


def cmd_check(args: argparse.Namespace) -> int:
    settings = Settings()
    problems: list[str] = []
    notes: list[str] = []
    unreachable = False
    with Lifecycle(settings) as lc:
        try:
            problems += checks.redis_problems(lc.pool)
            version = lc.pool.run(calls.server_info('server'))['redis_version']
            notes.append(f'redis: {version} at {settings.redis_url.split("@")[-1]}')
        except BackendUnavailable as exc:
            problems.append(str(exc))
            unreachable = True
        except Exception as exc:
            problems.append(f'redis: {exc}')
        if lc.store is not None:
            found = checks.mongo_problems(lc.store)
            unreachable |= any(problem.startswith('mongo: unreachable') for problem in found)
            problems += found
        found = checks.sandbox_problems(lc.driver)
        unreachable |= bool(found)
        problems += found
        warnings = reaping_warnings(lc) if not problems else []
    data = {'ok': not problems, 'problems': problems, 'warnings': warnings, 'notes': notes,
            'settings': public_settings(settings)}  # fmt: skip

    def render() -> None:
        for note in notes:
            console.print(f'[green]ok[/green]   {note}')
        for warning in warnings:
            console.print(f'[bold yellow]WARN[/bold yellow] {warning}')
        for problem in problems:
            console.print(f'[red]FAIL[/red] {problem}')
        console.print('all checks passed' if not problems else f'{len(problems)} problem(s)')

    emit(args, data, render)
    if unreachable:  # as every other command: 3 when Redis, MongoDB (or the sandboxes' engine) cannot be reached
        return EXIT_UNAVAILABLE
    return EXIT_OK if not problems else EXIT_PROBLEMS


def reaping_warnings(lc: Lifecycle) -> list[str]:
    """Why idle reaping is not happening, or will not: what an operator must hear about before the pool fills."""
    s, now, warnings = lc.settings, lc.now_ms(), []
    if lc.pool.do(lc.flows.lost(lc.store)):
        warnings.append('POOL NOT VERIFIED: Redis lost this pool (a restart without persistence, a flush) or '
                        'restarted or failed over since it was verified (writes may be missing) while MongoDB '
                        'recorded it; admission is refused, and no session is evicted but by its hard deadline, '
                        'until the expiry sweep rebuilds it from MongoDB: is a worker and a beat running?')  # fmt: skip
    if lc.store is None:
        warnings.append('IDLE REAPING IS OFF: no LIFECYCLE_MONGO_URL, so idle, LRU and owner-lost sweeps skip '
                        'everything and only the hard TTL ends sessions')  # fmt: skip
    waiting = lc.pool.run(calls.count_by_score(lc.index.keys.unsaved, '-inf', now - s.checkpoint_grace_s * 1000))
    if waiting and s.on_missing_checkpoint == 'keep':
        warnings.append(f'{waiting} idle session(s) kept for a checkpoint their owner was asked for over '
                        f'{policy.human(s.checkpoint_grace_s)} ago (on_missing_checkpoint=keep): serve '
                        'checkpoint_requested notices (serve_notices) or they hold their slots for good')  # fmt: skip
    stats = lc.pool.run(calls.hash_all(lc.index.keys.sweep_stats))
    last = stats.get(f'{SweepKind.IDLE}:last_ms')
    if lc.store is not None and (last is None or now - int(float(last)) > 3 * s.idle_interval_s * 1000):
        ago = 'never ran' if last is None else f'last ran {policy.human((now - int(float(last))) / 1000)} ago'
        warnings.append(f'the idle sweep {ago}: is a worker and a beat running?')
    return warnings


def public_settings(settings: Settings) -> dict[str, Any]:
    """Settings without secrets (passwords in URLs, the webhook secret)."""
    from lifecycle.settings import redacted

    data = settings.model_dump(mode='json')
    for key in ('redis_url', 'mongo_url', 'broker_url'):
        if data.get(key):
            data[key] = redacted(data[key])
    data['sandbox_webhook_secret'] = '***' if settings.sandbox_webhook_secret else None
    return data


# -- exporter ---------------------------------------------------------------------------------------


def cmd_exporter(args: argparse.Namespace) -> int:
    from prometheus_client import start_http_server

    from lifecycle.ops.metrics import registry_for

    lc = client()
    server, thread = start_http_server(args.port, addr=args.addr, registry=registry_for(lc))
    console.print(f'lifecycle exporter on http://{args.addr}:{server.server_port}/metrics')
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        thread.join()
        lc.disconnect()
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from lifecycle.ops.demo import run_demo

    return (
        EXIT_OK
        if run_demo(duration_s=args.duration, replicas=args.replicas, sandboxes=args.sandboxes)
        else EXIT_PROBLEMS
    )


def cmd_bench(args: argparse.Namespace) -> int:
    from lifecycle.ops.bench import run_bench

    figures = run_bench(quick=args.quick, processes=args.processes, as_json=args.json, as_markdown=args.markdown)
    return EXIT_OK if all(f.ok is not False for f in figures) else EXIT_PROBLEMS


def package_version() -> str:
    try:
        return importlib.metadata.version('lifecycle')
    except importlib.metadata.PackageNotFoundError:
        return 'unknown (not installed)'


def bounded(low: int, high: int) -> Any:
    """An argparse type: a whole number in low..high (argparse then exits 2 naming the bad value)."""

    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise ValueError(text)
        return value

    parse.__name__ = f'whole number in {low}..{high}'  # what argparse names in its error
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='lifecycle', description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument('--version', action='version', version=f'lifecycle {package_version()}')
    parser.add_argument('--log-level', default='WARNING', type=str.upper, help='logging level (default WARNING)',
                        choices=['DEBUG', 'INFO', 'WARNING', 'ERROR', 'CRITICAL'])  # fmt: skip
    commands = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')

    demo = commands.add_parser('demo', help='run the whole system on embedded defaults and verify it')
    demo.add_argument('--duration', type=float, default=60.0, help='seconds of traffic (default 60)')
    demo.add_argument('--replicas', type=int, default=3, help='API replica processes (default 3)')
    demo.add_argument('--sandboxes', choices=('auto', 'docker', 'none'), default='auto',
                      help='a container per session on a container engine (docker: required; auto: when an '
                           'engine answers or Podman can be started; default auto)')  # fmt: skip
    demo.set_defaults(handler=cmd_demo)

    status = commands.add_parser('status', help='the pool, and its most idle sessions')
    status.add_argument('--top', type=bounded(1, 10_000), default=10, help='how many idle sessions to list (1..10000)')
    status.add_argument('--json', action='store_true')
    status.set_defaults(handler=cmd_status)

    inspect = commands.add_parser('inspect', help='one session: Redis, its claim, its MongoDB document')
    inspect.add_argument('session')
    inspect.add_argument('--json', action='store_true')
    inspect.set_defaults(handler=cmd_inspect)

    sweep = commands.add_parser('sweep', help='run one sweep now, in this process')
    sweep.add_argument('kind', choices=[*(kind.value for kind in SweepKind), 'owner-lost'])
    sweep.add_argument('--dry-run', action='store_true', help='say what would be evicted and why; change nothing')
    sweep.add_argument('--json', action='store_true')
    sweep.set_defaults(handler=cmd_sweep)

    check = commands.add_parser('check', help='connectivity, Redis eviction policy, MongoDB indexes, settings')
    check.add_argument('--json', action='store_true')
    check.set_defaults(handler=cmd_check)

    exporter = commands.add_parser('exporter', help='serve Prometheus metrics of the pool')
    exporter.add_argument('--port', type=bounded(1, 65_535), default=9464)
    exporter.add_argument(
        '--addr',
        default='127.0.0.1',
        help='address to bind (default loopback only: its '
        'metrics name sessions and workers; give 0.0.0.0 where a scraper must reach it)',
    )
    exporter.set_defaults(handler=cmd_exporter)

    bench = commands.add_parser('bench', help='measure against the raw speed of the same Redis and MongoDB')
    bench.add_argument('--quick', action='store_true', help='small sizes and short intervals (a smoke run)')
    bench.add_argument('--processes', type=int, default=4, help='processes for the parallel figures (default 4)')
    bench.add_argument('--json', action='store_true')
    bench.add_argument('--markdown', action='store_true', help="the README's performance table")
    bench.set_defaults(handler=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; every failure is its documented exit code and one line, never a traceback."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format='%(asctime)s %(levelname)s %(name)s: %(message)s')
    try:
        if Settings().log_format == 'json':
            use_json()
        code: int = args.handler(args)
    except BrokenPipeError:  # `lifecycle status | head`: the reader left; nothing to say
        sys.stderr.close()
        return EXIT_OK
    except Exception as exc:
        code, message = failure(exc)
        if getattr(args, 'json', False):
            print(json.dumps({'error': message, 'exit_code': code}))
        print(f'lifecycle: {message}', file=sys.stderr)
        return code
    return code


def failure(exc: Exception) -> tuple[int, str]:
    """The exit code and the one line for an error (unexpected ones are re-raised: those are bugs)."""
    if isinstance(exc, ValidationError):
        return EXIT_CONFIG, describe_error(exc)
    if isinstance(exc, ConfigurationError):
        return EXIT_CONFIG, str(exc)
    if isinstance(exc, BackendUnavailable | PersistenceError):
        return EXIT_UNAVAILABLE, str(exc)
    if isinstance(exc, InvalidArgument):
        return EXIT_USAGE, str(exc)
    if isinstance(exc, LifecycleError):  # damage, a command Redis refused: a problem
        return EXIT_PROBLEMS, str(exc)
    if isinstance(exc, OSError):  # the exporter's port is taken, say
        return EXIT_USAGE, str(exc)
    raise exc


if __name__ == '__main__':
    sys.exit(main())
