"""FastAPI / Starlette integration (the `web` extra): a lifespan, error handlers, activity, turns around streams.

    app = FastAPI(lifespan=lifecycle_lifespan('api-1', snapshot=save_agent))
    install_error_handlers(app)

The lifespan connects an AsyncLifecycle (`app.state.lifecycle`), keeps this replica's heartbeat and answers
its notices (`checkpoint_requested` through `snapshot`) until shutdown. Only this module imports a framework.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from lifecycle.aio import AsyncLifecycle
from lifecycle.client import Turn
from lifecycle.errors import (
    BackendUnavailable,
    CapacityExceeded,
    InvalidArgument,
    PersistenceError,
    PoolRecovering,
    SessionDamaged,
    SessionExists,
    SessionNotLive,
    SessionReaping,
)
from lifecycle.models import Notice
from lifecycle.settings import Settings

REAPING_RETRY_S = 1  # an eviction in flight finishes (or is undone) within moments; then restore
UNAVAILABLE_RETRY_S = 5


def lifecycle_lifespan(
    owner: str,
    *,
    settings: Settings | None = None,
    snapshot: Callable[[str], object] | None = None,
    on_notice: Callable[[Notice], object] | None = None,
    client: AsyncLifecycle | None = None,
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """A lifespan for `FastAPI(lifespan=...)`: the client in `app.state.lifecycle`, this replica's heartbeat,
    and (with `snapshot` or `on_notice`) its notices answered, all stopped on shutdown."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        lc = client or AsyncLifecycle(settings)
        app.state.lifecycle = lc
        heartbeat = await lc.start_heartbeat(owner)
        notices = None
        if snapshot is not None or on_notice is not None:
            notices = await lc.serve_notices(owner, snapshot=snapshot or (lambda session_id: None), on_notice=on_notice)
        try:
            yield
        finally:
            if notices is not None:
                await notices.stop()
            await heartbeat.stop()
            await lc.disconnect()

    return lifespan


def lifecycle_of(request: Request) -> AsyncLifecycle:
    """The client the lifespan connected."""
    lc: AsyncLifecycle = request.app.state.lifecycle
    return lc


def touch_session(param: str = 'session_id') -> Callable[[Request], Awaitable[None]]:
    """A dependency stamping activity on the session named by path parameter `param`: put it on the routes
    that are genuine activity (a user's message), never on status polls or page loads."""

    async def touch(request: Request) -> None:
        await lifecycle_of(request).touch(request.path_params[param])

    return touch


async def stream_turn(
    lc: AsyncLifecycle,
    session_id: str,
    chunks: Callable[[Turn], AsyncIterable[Any]],
    *,
    after: Callable[[Turn], Awaitable[None]] | None = None,
) -> AsyncIterator[Any]:
    """Begin a turn now (so a refusal becomes an error response, not a broken stream), and return the body of a
    StreamingResponse that yields `chunks(turn)` and ends the turn when the stream ends: finished, failed,
    or the client gone. The session stays busy (never evicted) for as long as the reply streams. `after` runs
    once a turn ended well (checkpoint there: the checkpoint then covers the turn)."""
    turn_context = lc.turn(session_id)
    turn = await turn_context.__aenter__()

    async def body() -> AsyncIterator[Any]:
        try:
            async for chunk in chunks(turn):
                yield chunk
        except BaseException as exc:
            if not await turn_context.__aexit__(type(exc), exc, exc.__traceback__):
                raise
        else:
            await turn_context.__aexit__(None, None, None)
            if after is not None:
                await after(turn)

    return body()


def _refusal(status: int, error: str, detail: str, retry_after_s: int | None = None, **extra: Any) -> JSONResponse:
    headers = {'Retry-After': str(retry_after_s)} if retry_after_s is not None else None
    return JSONResponse({'error': error, 'detail': detail, **extra}, status_code=status, headers=headers)


async def _capacity(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, CapacityExceeded)
    lc = lifecycle_of(request)
    wait_s = await lc.pool.run(lc.index.retry_after(await lc.now_ms()))
    return _refusal(429, 'capacity', str(exc), wait_s, live=exc.live, reserved=exc.reserved, cap=exc.cap,
                    tenant=exc.tenant)  # fmt: skip


async def _reaping(request: Request, exc: Exception) -> JSONResponse:
    return _refusal(503, 'reaping', f'{exc}; retry, then restore it', REAPING_RETRY_S)


async def _recovering(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, PoolRecovering)
    return _refusal(503, 'recovering', str(exc), exc.retry_after_s)


async def _not_live(request: Request, exc: Exception) -> JSONResponse:
    return _refusal(410, 'not_live', str(exc), hint='if it is resumable, restore it (lifecycle restore())')


async def _damaged(request: Request, exc: Exception) -> JSONResponse:
    return _refusal(503, 'damaged', str(exc), lifecycle_of(request).settings.expired_interval_s)


async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
    return _refusal(503, 'unavailable', str(exc), UNAVAILABLE_RETRY_S)


async def _invalid(request: Request, exc: Exception) -> JSONResponse:
    return _refusal(422, 'invalid', str(exc))


async def _exists(request: Request, exc: Exception) -> JSONResponse:
    return _refusal(409, 'exists', str(exc))


async def _persistence(request: Request, exc: Exception) -> JSONResponse:
    return _refusal(503, 'persistence', str(exc), UNAVAILABLE_RETRY_S)


def install_error_handlers(app: FastAPI) -> None:
    """Lifecycle's errors as HTTP answers: 429 at capacity with a Retry-After computed from the pool (the
    nearest reservation lease or idle deadline), 503 + Retry-After while a session is being evicted, the
    pool recovers, Redis or MongoDB is down, 409 for a session that is already live (a restore raced
    another), 410 for a session that is not live (restore it), 422 for bad input."""
    handlers: dict[type[Exception], Callable[[Request, Exception], Awaitable[JSONResponse]]] = {
        CapacityExceeded: _capacity,
        SessionReaping: _reaping,
        PoolRecovering: _recovering,
        SessionNotLive: _not_live,
        SessionDamaged: _damaged,
        BackendUnavailable: _unavailable,
        PersistenceError: _persistence,
        SessionExists: _exists,
        InvalidArgument: _invalid,
    }
    for error, handler in handlers.items():
        app.add_exception_handler(error, handler)
