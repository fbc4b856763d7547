"""Steps: an operation of several round trips written once, as a generator, and driven by a sync or an async
runner. The generator yields what it needs done (a Redis call, a MongoDB operation), gets each result back,
or the error it ended with thrown in, and returns its value. Nothing here does I/O."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar('T')
S = TypeVar('S')


@dataclass(frozen=True)
class Done(Generic[T]):
    value: T


def advance(steps: Generator[S, Any, T], sent: Any = None, error: BaseException | None = None) -> S | Done[T]:
    """Resume `steps` with the previous step's result (or its error), to its next step or its result."""
    try:
        return steps.throw(error) if error is not None else steps.send(sent)
    except StopIteration as stop:
        return Done(stop.value)
