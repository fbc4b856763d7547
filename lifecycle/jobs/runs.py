"""Finished-run retention: each run (one turn's event frames) is a capped stream, kept for late reconnects.

Finished runs are dropped `run_retention_s` after they finish and beyond `max_finished_runs`, oldest
finish first; running runs are never dropped nor counted. Pruning happens in the same atomic step as a
finish, and in a sweep; a finished run's keys also expire on their own should every worker be down.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from lifecycle import validate
from lifecycle.errors import InvalidArgument, RunStateError
from lifecycle.pool import calls
from lifecycle.pool.calls import NOW, Call, Steps, as_int
from lifecycle.pool.executor import AsyncExecutor, Executor
from lifecycle.pool.keys import Keys
from lifecycle.settings import Settings

BACKSTOP_MARGIN_S = 60  # the keys' own expiry trails the retention window, so pruning normally wins
MAX_REPLAY = 100_000  # frames one replay call returns at most
MAX_FRAME_BYTES = 1024 * 1024  # one frame's JSON: a run holds up to max_events_per_run of them in Redis


class RunStatus(StrEnum):
    RUNNING = 'running'
    COMPLETED = 'completed'
    FAILED = 'failed'
    CANCELLED = 'cancelled'


def terminal_status(status: object) -> RunStatus:
    """`status` as a terminal RunStatus; InvalidArgument naming it otherwise."""
    terminal = [s.value for s in RunStatus if s is not RunStatus.RUNNING]
    if not isinstance(status, str) or status not in terminal:
        raise InvalidArgument(f'a run finishes as one of {terminal}, not {status!r:.80}')
    return RunStatus(status)


@dataclass(frozen=True)
class Frame:
    """One event frame of a run; `id` is the stream id to replay after."""

    id: str
    data: Any


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    status: RunStatus
    session_id: str | None
    started_ms: int
    finished_ms: int | None


class RunIndex:
    """Builds the Redis calls of runs; every key of a run goes through KEYS."""

    def __init__(self, settings: Settings, keys: Keys) -> None:
        self.settings = settings
        self.keys = keys

    def _run_keys(self, run_id: str) -> tuple[str, str]:
        run_id = validate.identifier('run_id', run_id)
        return self.keys.run(run_id), self.keys.run_events(run_id)

    def start(self, run_id: str, session_id: str | None, now_ms: int) -> Call[None]:
        session_id = validate.optional_identifier('session_id', session_id)

        def parse(reply: Any) -> None:
            if as_int(reply) != 1:
                raise RunStateError(f'run {run_id!r} is already running')

        return Call(
            parse, 'start_run', (*self._run_keys(run_id), self.keys.runs_terminal), (run_id, session_id or '', now_ms)
        )

    def append(self, run_id: str, frame: Any) -> Call[str]:
        run_keys = self._run_keys(run_id)
        try:
            encoded = json.dumps(frame, separators=(',', ':'), allow_nan=False)
        except (TypeError, ValueError, RecursionError) as exc:
            raise InvalidArgument(f'frame of run {run_id!r} is not JSON-serializable: {exc}') from exc
        if len(encoded) > MAX_FRAME_BYTES:
            raise InvalidArgument(
                f'frame of run {run_id!r} is {len(encoded):,} bytes of JSON; at most {MAX_FRAME_BYTES:,} is kept'
            )

        def parse(reply: Any) -> str:
            if reply is None:
                raise RunStateError(f'run {run_id!r} is not running (finished, dropped or never started)')
            return str(reply)

        return Call(parse, 'append_event', run_keys, (encoded, self.settings.max_events_per_run))

    def finish(self, run_id: str, status: RunStatus, now_ms: int) -> Call[tuple[int, list[str]]]:
        """Returns (1 first terminal transition | 0 already finished | -1 unknown, dropped run ids)."""
        status = terminal_status(status)
        s = self.settings
        backstop_ms = (s.run_retention_s + BACKSTOP_MARGIN_S) * 1000
        return Call(
            lambda reply: (as_int(reply[0]), [str(r) for r in reply[1:]]),
            'finish_run',
            (*self._run_keys(run_id), self.keys.runs_terminal),
            (run_id, status.value, now_ms, s.run_retention_s * 1000, s.max_finished_runs, backstop_ms),
        )

    def prune(self, now_ms: int) -> Call[list[str]]:
        s = self.settings
        return Call(
            lambda reply: [str(r) for r in reply],
            'prune_runs',
            (self.keys.runs_terminal,),
            (now_ms, s.run_retention_s * 1000, s.max_finished_runs),
        )

    def drop(self, run_ids: Sequence[str]) -> Call[int]:
        keys = [key for run_id in run_ids for key in self._run_keys(run_id)]
        return Call(as_int, 'drop_runs', keys, ())

    def replay(self, run_id: str, after: str, count: int) -> Call[list[Frame]]:
        _, events = self._run_keys(run_id)
        after = after if after == '-' else validate.stream_id('after', after)
        count = validate.count('count', count, MAX_REPLAY)
        return Call(
            lambda reply: [Frame(entry_id, json.loads(fields['f'])) for entry_id, fields in reply],
            command=('XRANGE', events, f'({after}' if after != '-' else '-', '+', 'COUNT', count),
        )

    def info(self, run_id: str) -> Call[RunInfo | None]:
        run, _ = self._run_keys(run_id)

        def parse(reply: Any) -> RunInfo | None:
            fields = dict(zip(reply[::2], reply[1::2], strict=True)) if isinstance(reply, list) else reply
            if not fields:
                return None
            finished = fields.get('finished_ms')
            return RunInfo(run_id, RunStatus(fields['status']), fields.get('session_id') or None,
                           as_int(fields['started_ms']), as_int(finished) if finished else None)  # fmt: skip

        return Call(parse, command=('HGETALL', run))

    # -- operations of several round trips, as steps (see `pool.calls`) ------------------------------

    def starting(self, run_id: str, session_id: str | None) -> Steps[None]:
        yield self.start(run_id, session_id, (yield NOW))

    def finishing(self, run_id: str, status: RunStatus | str) -> Steps[bool]:
        first, dropped = yield self.finish(run_id, terminal_status(status), (yield NOW))
        if dropped:
            yield self.drop(dropped)
        return bool(first == 1)

    def pruning(self) -> Steps[list[str]]:
        dropped: list[str] = yield self.prune((yield NOW))
        if dropped:
            yield self.drop(dropped)
        return dropped

    def prunable(self) -> Steps[list[str]]:
        """The finished runs a prune would drop now (read only: for dry runs)."""
        s, terminal = self.settings, self.keys.runs_terminal
        expired: list[str] = yield calls.members_by_score(terminal, '-inf', (yield NOW) - s.run_retention_s * 1000)
        over = (yield calls.cardinality(terminal)) - len(expired) - s.max_finished_runs
        return expired + ((yield calls.by_rank(terminal, len(expired), len(expired) + over - 1)) if over > 0 else [])


class Runs:
    """The runs of the pool, for the web tier: `lc.runs.start(...)`, `append`, `finish`, `replay`."""

    def __init__(self, pool: Executor) -> None:
        self.pool = pool
        self.index = RunIndex(pool.settings, pool.keys)

    def start(self, run_id: str, session_id: str | None = None) -> None:
        """Begin a run; a run whose old one finished or was dropped can start again. RunStateError if running."""
        self.pool.do(self.index.starting(run_id, session_id))

    def append(self, run_id: str, frame: Any) -> str:
        """Buffer one JSON frame; returns its stream id. RunStateError once the run finished or was dropped."""
        return self.pool.run(self.index.append(run_id, frame))

    def finish(self, run_id: str, status: RunStatus | str) -> bool:
        """End the run; True on its first terminal transition (the finish time is stamped only then)."""
        return self.pool.do(self.index.finishing(run_id, status))

    def replay(self, run_id: str, after: str = '-', count: int = 10_000) -> list[Frame]:
        """The buffered frames after stream id `after` (all of them by default), oldest first."""
        return self.pool.run(self.index.replay(run_id, after, count))

    def info(self, run_id: str) -> RunInfo | None:
        return self.pool.run(self.index.info(run_id))

    def prune(self) -> list[str]:
        """Drop finished runs past retention or beyond the cap now; returns their ids."""
        return self.pool.do(self.index.pruning())

    def prunable(self) -> list[str]:
        """The finished runs a prune would drop now (read only: for dry runs)."""
        return self.pool.do(self.index.prunable())


class AsyncRuns:
    """`Runs` for asyncio: the same steps, awaited."""

    def __init__(self, pool: AsyncExecutor) -> None:
        self.pool = pool
        self.index = RunIndex(pool.settings, pool.keys)

    async def start(self, run_id: str, session_id: str | None = None) -> None:
        await self.pool.do(self.index.starting(run_id, session_id))

    async def append(self, run_id: str, frame: Any) -> str:
        return await self.pool.run(self.index.append(run_id, frame))

    async def finish(self, run_id: str, status: RunStatus | str) -> bool:
        return await self.pool.do(self.index.finishing(run_id, status))

    async def replay(self, run_id: str, after: str = '-', count: int = 10_000) -> list[Frame]:
        return await self.pool.run(self.index.replay(run_id, after, count))

    async def info(self, run_id: str) -> RunInfo | None:
        return await self.pool.run(self.index.info(run_id))

    async def prune(self) -> list[str]:
        return await self.pool.do(self.index.pruning())
