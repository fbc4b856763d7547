"""Lifecycle: a distributed session reaper; the web-tier client and the pieces workers drive."""

from lifecycle.aio import AsyncLifecycle
from lifecycle.client import Lifecycle, Turn
from lifecycle.clock import Clock, FixedClock, RedisClock, SystemClock
from lifecycle.errors import (
    BackendUnavailable,
    CapacityExceeded,
    ConfigurationError,
    Fenced,
    InvalidArgument,
    InvalidTTL,
    LifecycleError,
    PersistenceError,
    PinLimitReached,
    PoolRecovering,
    ReservationLost,
    ScriptFailed,
    SessionDamaged,
    SessionExists,
    SessionNotLive,
    SessionReaping,
)
from lifecycle.models import InterruptedTurn, PoolStats, Reservation, Restored, SessionInfo, SessionState
from lifecycle.pool.trail import Decision, Trail
from lifecycle.settings import ProfilePolicy, Settings

__all__ = [
    'AsyncLifecycle',
    'BackendUnavailable',
    'CapacityExceeded',
    'Clock',
    'ConfigurationError',
    'Decision',
    'Fenced',
    'FixedClock',
    'InterruptedTurn',
    'InvalidArgument',
    'InvalidTTL',
    'Lifecycle',
    'LifecycleError',
    'PersistenceError',
    'PinLimitReached',
    'PoolRecovering',
    'PoolStats',
    'ProfilePolicy',
    'RedisClock',
    'Reservation',
    'ReservationLost',
    'Restored',
    'ScriptFailed',
    'SessionDamaged',
    'SessionExists',
    'SessionInfo',
    'SessionNotLive',
    'SessionReaping',
    'SessionState',
    'Settings',
    'SystemClock',
    'Trail',
    'Turn',
]
