"""Lifecycle: a distributed session reaper; the web-tier client and the pieces workers drive."""

from lifecycle.aio import AsyncLifecycle
from lifecycle.client import Lifecycle, Turn
from lifecycle.clock import Clock, FixedClock, RedisClock, SystemClock
from lifecycle.errors import (
    BackendUnavailable,
    CapacityExceeded,
    ConfigurationError,
    InvalidArgument,
    InvalidTTL,
    LifecycleError,
    PersistenceError,
    ReservationLost,
    SessionExists,
    SessionNotLive,
    SessionReaping,
)
from lifecycle.models import PoolStats, Reservation, SessionInfo, SessionState
from lifecycle.settings import ProfilePolicy, Settings

__all__ = [
    'AsyncLifecycle',
    'BackendUnavailable',
    'CapacityExceeded',
    'Clock',
    'ConfigurationError',
    'FixedClock',
    'InvalidArgument',
    'InvalidTTL',
    'Lifecycle',
    'LifecycleError',
    'PersistenceError',
    'PoolStats',
    'ProfilePolicy',
    'RedisClock',
    'Reservation',
    'ReservationLost',
    'SessionExists',
    'SessionInfo',
    'SessionNotLive',
    'SessionReaping',
    'SessionState',
    'Settings',
    'SystemClock',
    'Turn',
]
