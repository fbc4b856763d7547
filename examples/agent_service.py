"""An agent chat service on FastAPI with lifecycle: create, message with a streamed reply, restore.

    pip install 'lifecycle[web]' uvicorn
    LIFECYCLE_REDIS_URL=... LIFECYCLE_MONGO_URL=... APP_OWNER=api-1 uvicorn examples.agent_service:app

The "agent" is a toy that echoes word by word; what matters is where lifecycle's calls go: a slot under the
cap before the sandbox is made, a turn around the streamed reply (never evicted mid-stream), a checkpoint
after each turn and on request, the runtime dropped from RAM when the session is evicted, and a restore
that tells the agent its sandbox was reset.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from lifecycle import Settings
from lifecycle.client import Turn
from lifecycle.models import Notice, NoticeKind
from lifecycle.web import install_error_handlers, lifecycle_lifespan, lifecycle_of, stream_turn, touch_session


@dataclass
class Runtime:
    """One session's agent in this replica's RAM (its sandbox would sit beside it)."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    approval_pending: bool = False

    def snapshot(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        return {'approval_pending': self.approval_pending, 'count': len(self.messages)}, list(self.messages)

    def add(self, role: str, text: str, session_id: str) -> None:
        self.messages.append({'id': f'{session_id}-{len(self.messages)}', 'role': role, 'text': text})


class NewSession(BaseModel):
    tenant: str | None = None
    ttl_seconds: int | None = None


class Message(BaseModel):
    text: str
    delay_s: float = 0.0  # between streamed words: lets a test hold a turn open


class AgentService:
    """The routes, around this replica's runtimes; `owner` names the replica (its heartbeat, its inbox)."""

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.runtimes: dict[str, Runtime] = {}

    def snapshot(self, session_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        """What serve_notices checkpoints when lifecycle asks (checkpoint_requested)."""
        runtime = self.runtimes.get(session_id)
        return runtime.snapshot() if runtime is not None else None

    def on_notice(self, notice: Notice) -> None:
        if notice.kind in (NoticeKind.EVICTED, NoticeKind.EXPIRED):
            self.runtimes.pop(notice.session_id, None)  # its state is in MongoDB (or it ended): free the RAM

    async def create(self, request: Request, body: NewSession) -> dict[str, Any]:
        lc = lifecycle_of(request)
        reservation = await lc.reserve(self.owner, body.tenant)  # 429 with a Retry-After when full
        session_id = f'chat-{secrets.token_hex(6)}'
        try:
            await asyncio.sleep(0)  # ... create the sandbox here: slow, the app's job ...
            info = await lc.activate(reservation, session_id, ttl_seconds=body.ttl_seconds)
        except BaseException:
            await lc.release(reservation)
            raise
        self.runtimes[session_id] = Runtime()
        return {'session_id': session_id, 'expires_at': info.expires_at.isoformat()}

    async def message(self, request: Request, session_id: str, body: Message) -> StreamingResponse:
        lc = lifecycle_of(request)
        runtime = self.runtimes.setdefault(session_id, Runtime())

        async def reply(turn: Turn) -> AsyncIterator[str]:
            runtime.add('user', body.text, session_id)
            words = []
            for word in body.text.split():
                await asyncio.sleep(body.delay_s)
                words.append(word)
                yield word + ' '
            runtime.add('agent', ' '.join(words), session_id)

        async def save(turn: Turn) -> None:
            state, messages = runtime.snapshot()
            await lc.checkpoint(session_id, state, messages)  # covers the turn that just ended

        # 410 if the session is not live (restore it), 503 while it is being evicted: before any byte is sent.
        return StreamingResponse(await stream_turn(lc, session_id, reply, after=save), media_type='text/plain')

    async def restore(self, request: Request, session_id: str) -> dict[str, Any]:
        restored = await lifecycle_of(request).restore(session_id, self.owner)
        state = restored.snapshot or {}
        runtime = Runtime(messages=list(restored.messages), approval_pending=bool(state.get('approval_pending')))
        # The library's note (the sandbox was reset; a turn cut off, if any), unless an approval is pending: a
        # message now would orphan its tool result. (An app that keeps that state outside the snapshot passes
        # restore(..., approval_pending=...) and gets note=None instead.)
        note = restored.note if not runtime.approval_pending else None
        if note is not None:
            runtime.add('system', note, session_id)
        self.runtimes[session_id] = runtime
        return {'session_id': session_id, 'messages': len(runtime.messages), 'note': note}

    async def status(self, request: Request, session_id: str) -> dict[str, Any]:
        info = await lifecycle_of(request).status(session_id)  # never counts as activity
        if info is None:
            return {'session_id': session_id, 'state': 'unknown'}
        return {'session_id': session_id, 'state': info.state.value, 'busy': info.busy, 'turns': info.turn_seq,
                'in_memory': session_id in self.runtimes}  # fmt: skip

    async def close(self, request: Request, session_id: str) -> None:
        await lifecycle_of(request).close(session_id)
        self.runtimes.pop(session_id, None)


def create_app(settings: Settings | None = None, owner: str | None = None) -> FastAPI:
    """The service, with lifecycle's lifespan and error handlers."""
    service = AgentService(owner or os.environ.get('APP_OWNER', 'api-1'))
    lifespan = lifecycle_lifespan(service.owner, settings=settings, snapshot=service.snapshot,
                                  on_notice=service.on_notice)  # fmt: skip
    app = FastAPI(lifespan=lifespan)
    install_error_handlers(app)
    app.post('/sessions', status_code=201)(service.create)
    # Posting a message is genuine activity: the dependency stamps it. Status reads are not.
    app.post('/sessions/{session_id}/messages', dependencies=[Depends(touch_session())])(service.message)
    app.post('/sessions/{session_id}/restore')(service.restore)
    app.get('/sessions/{session_id}')(service.status)
    app.delete('/sessions/{session_id}', status_code=204)(service.close)
    return app


if __name__ != '__main__' and os.environ.get('LIFECYCLE_REDIS_URL'):
    app = create_app()  # for `uvicorn examples.agent_service:app`
