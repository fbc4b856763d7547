"""Pure decisions of the sweeps: (candidates, limits, now_ms) -> eviction orders. No I/O, no clock."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from lifecycle.models import Limits, ReapReason


@dataclass(frozen=True)
class Candidate:
    """A live session as a sweep read it."""

    session_id: str
    last_active_ms: int
    owner: str
    profile: str | None
    busy_until_ms: int | None
    reaping: bool

    def is_busy(self, now_ms: int) -> bool:
        return self.busy_until_ms is not None and self.busy_until_ms > now_ms


@dataclass(frozen=True)
class Order:
    """Evict `session_id` for `reason` if, when claimed, it is still due by `bound` (see ClaimIndex.claim)."""

    session_id: str
    reason: ReapReason
    bound: int | str = 0
    observed_ms: int = 0


def idle_cutoff_ms(now_ms: int, idle_ttl_s: int) -> int:
    """The latest last_active at which a session with this idle timeout is due."""
    return now_ms - idle_ttl_s * 1000


def idle_orders(candidates: Iterable[Candidate], limits: Callable[[str | None], Limits], now_ms: int) -> list[Order]:
    """Sessions idle past their profile's timeout, not busy, not already being reaped."""
    orders: list[Order] = []
    for c in candidates:
        cutoff = idle_cutoff_ms(now_ms, limits(c.profile).idle_ttl_s)
        if c.last_active_ms <= cutoff and not c.is_busy(now_ms) and not c.reaping:
            orders.append(Order(c.session_id, ReapReason.IDLE, cutoff, c.last_active_ms))
    return orders


def lru_excess(live: int, reaping: int, max_live: int) -> int:
    """How many sessions the LRU sweep should evict: live ones beyond the soft cap, less those already going."""
    return max(0, live - reaping - max_live)


def lru_orders(candidates: Iterable[Candidate], wanted: int, max_live: int, now_ms: int) -> list[Order]:
    """The `wanted` least recently active sessions (candidates arrive oldest first) that are not busy."""
    orders: list[Order] = []
    for c in candidates:
        if len(orders) >= wanted:
            break
        if not c.is_busy(now_ms) and not c.reaping:
            orders.append(Order(c.session_id, ReapReason.LRU, max_live, c.last_active_ms))
    return orders


def warning_window(cursor_ms: int | None, now_ms: int, idle_ttl_s: int, warn_before_s: int) -> tuple[int, int]:
    """The last_active range (exclusive low, inclusive high) whose owners are due a warning now.

    High: sessions whose idle deadline is at most `warn_before_s` away. Low: where the previous sweep
    stopped, but never sessions already past their deadline (they are being reaped, not warned).
    """
    high = now_ms + (warn_before_s - idle_ttl_s) * 1000
    low = max(cursor_ms if cursor_ms is not None else high - warn_before_s * 1000, idle_cutoff_ms(now_ms, idle_ttl_s))
    return low, high


def is_durably_evicted(document: Mapping[str, object] | None, token: int) -> bool:
    """Whether a session document (before recovery raised its fence) holds the eviction write of `token`."""
    return document is not None and document.get('state') == 'resumable' and document.get('fence') == token


def covers(document: Mapping[str, object], turn_seq: int) -> bool:
    """Whether an eviction write (which records the turn sequence its claim saw) covers `turn_seq`, the
    session's sequence now: False when a turn finished after the claim."""
    marked = document.get('turn_seq', 0)
    return isinstance(marked, int) and marked >= turn_seq


def needs_checkpoint(
    turn_seq: int, requested_ms: int | None, now_ms: int, *, required: bool, waive_after_s: int | None
) -> bool:
    """Whether evicting a session as resumable needs a checkpoint covering `turn_seq`.

    Not when the app persists elsewhere (`required` off), nor for a session that finished no turn (it has
    nothing to lose), nor, with `waive_after_s` (on_missing_checkpoint=evict), once its owner was asked for
    one (`requested_ms`) that long ago without answering: the pool must not fill with sessions nobody saves.
    """
    if not required or turn_seq == 0:
        return False
    if waive_after_s is None or requested_ms is None:
        return True
    return now_ms - requested_ms < waive_after_s * 1000


def mark_refusal(document: Mapping[str, object] | None, turn_seq: int, needs: bool) -> str | None:
    """Why the eviction write would be refused for a session at `turn_seq` (the MarkOutcome value), or None
    when it would land: what a dry run asks, the same conditions as the store's conditional write."""
    if document is None:
        return 'not_checkpointed' if needs else None
    if document.get('state') in ('expired', 'closed'):
        return 'ended'
    covered = document.get('checkpoint_seq')
    if needs and not (isinstance(covered, int) and covered >= turn_seq):
        return 'not_checkpointed'
    return None
