"""Pure decisions of the sweeps: (candidates, limits, now_ms) -> eviction orders. No I/O, no clock."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import KW_ONLY, dataclass

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
    pinned: bool = False

    def is_busy(self, now_ms: int) -> bool:
        return self.busy_until_ms is not None and self.busy_until_ms > now_ms


@dataclass(frozen=True)
class Order:
    """Evict `session_id` for `reason` if, when claimed, it is still due (see ClaimIndex.claim): each reason has
    its one condition, named; the claim script gets it as `bound`."""

    session_id: str
    reason: ReapReason
    _: KW_ONLY
    idle_cutoff_ms: int | None = None  # IDLE, MAKE_ROOM: due while last active at or before this
    max_live: int | None = None  # LRU: due while the pool holds more live sessions than this
    owner: str | None = None  # OWNER_LOST: due while this lost replica still owns it
    observed_ms: int = 0  # the activity the sweep saw; a touch since (a later stamp) keeps the session

    @property
    def bound(self) -> int | str:
        """The claim script's argument: the reason's condition (0 for expiry: the deadline speaks for itself)."""
        if self.reason is ReapReason.OWNER_LOST:
            return self.owner or ''
        if self.reason is ReapReason.LRU:
            return self.max_live or 0
        if self.reason in (ReapReason.IDLE, ReapReason.MAKE_ROOM):
            return self.idle_cutoff_ms or 0
        return 0

    @classmethod
    def of(cls, session_id: str, reason: ReapReason, bound: int | str = 0, observed_ms: int = 0) -> Order:
        """An order from its wire form (a Celery message: session, reason, bound, observed)."""
        if reason is ReapReason.OWNER_LOST:
            return cls(session_id, reason, owner=str(bound), observed_ms=observed_ms)
        if reason is ReapReason.LRU:
            return cls(session_id, reason, max_live=int(bound), observed_ms=observed_ms)
        if reason in (ReapReason.IDLE, ReapReason.MAKE_ROOM):
            return cls(session_id, reason, idle_cutoff_ms=int(bound), observed_ms=observed_ms)
        return cls(session_id, reason, observed_ms=observed_ms)


def idle_kept(candidates: Iterable[Candidate], limits: Callable[[str | None], Limits], now_ms: int
              ) -> list[tuple[str, str]]:  # fmt: skip
    """Sessions idle past their profile's timeout that the idle sweep keeps, with why (busy, pinned)."""
    kept = []
    for c in candidates:
        if c.last_active_ms <= idle_cutoff_ms(now_ms, limits(c.profile).idle_ttl_s) and not c.reaping:
            why = 'busy' if c.is_busy(now_ms) else 'pinned' if c.pinned else None
            if why is not None:
                kept.append((c.session_id, why))
    return kept


def idle_cutoff_ms(now_ms: int, idle_ttl_s: int) -> int:
    """The latest last_active at which a session with this idle timeout is due."""
    return now_ms - idle_ttl_s * 1000


def idle_orders(candidates: Iterable[Candidate], limits: Callable[[str | None], Limits], now_ms: int) -> list[Order]:
    """Sessions idle past their profile's timeout, not busy, not pinned, not already being reaped."""
    orders: list[Order] = []
    for c in candidates:
        cutoff = idle_cutoff_ms(now_ms, limits(c.profile).idle_ttl_s)
        if c.last_active_ms <= cutoff and not c.is_busy(now_ms) and not c.reaping and not c.pinned:
            orders.append(Order(c.session_id, ReapReason.IDLE, idle_cutoff_ms=cutoff, observed_ms=c.last_active_ms))
    return orders


def idle_timeouts_tag(timeouts: Mapping[str, int]) -> str:
    """The idle timeouts in force, profile -> seconds ('' the global one), as one string: the idle sweep's
    cursors hold only while it is unchanged (a profile whose timeout moved would fall between them)."""
    return ','.join(f'{name}={seconds}' for name, seconds in sorted(timeouts.items()))


def lru_excess(live: int, reaping: int, max_live: int) -> int:
    """How many sessions the LRU sweep should evict: live ones beyond the soft cap, less those already going."""
    return max(0, live - reaping - max_live)


def lru_orders(candidates: Iterable[Candidate], wanted: int, max_live: int, now_ms: int) -> list[Order]:
    """The `wanted` least recently active sessions (candidates arrive oldest first) that are not busy or pinned."""
    orders: list[Order] = []
    for c in candidates:
        if len(orders) >= wanted:
            break
        if not c.is_busy(now_ms) and not c.reaping and not c.pinned:
            orders.append(Order(c.session_id, ReapReason.LRU, max_live=max_live, observed_ms=c.last_active_ms))
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


def human(seconds: float) -> str:
    """A duration for people: '45 s', '12 min', '3.5 h', '2.0 d'."""
    magnitude = abs(seconds)
    if magnitude < 120:
        return f'{seconds:.0f} s'
    if magnitude < 7_200:
        return f'{seconds / 60:.0f} min'
    if magnitude < 172_800:
        return f'{seconds / 3_600:.1f} h'
    return f'{seconds / 86_400:.1f} d'


@dataclass(frozen=True)
class Verdict:
    """Why a live session is kept, or what it is due for, as an operator reads it."""

    due: str | None  # 'idle', 'expired': what the next sweep would order; None: kept
    reasons: tuple[str, ...]


def verdict(
    *, now_ms: int, last_active_ms: int, expires_at_ms: int, busy: bool, reaping: bool, idle_ttl_s: int,
    turn_seq: int, checkpoint_seq: int | None, requested_ms: int | None, required: bool, waive_after_s: int | None,
    persistence: bool = True, owner_lost: bool = False, pinned: bool = False, verified: bool = True,
) -> Verdict:  # fmt: skip
    """What the sweeps make of a live session now, with why: its hard deadline, whether persistence is on,
    its owner's heartbeat, its profile's idle timeout, its busy lease, and whether the durable write would find
    a checkpoint covering its last turn. In a pool not `verified` since Redis restarted or failed over, only the
    hard deadline (claim_session.lua answers the others 'unverified')."""
    if reaping:
        return Verdict(None, ('being evicted right now (a claim is in flight)',))
    if expires_at_ms <= now_ms:
        return Verdict('expired', (f'past its hard deadline by {human((now_ms - expires_at_ms) / 1000)}',))
    reasons = [f'hard deadline in {human((expires_at_ms - now_ms) / 1000)}']
    if not verified:
        return Verdict(None, ('the pool is not verified since Redis restarted or failed over (turns or an eviction '
                              'may be lost): only its hard deadline ends it until the expiry sweep rebuilds the pool',
                              *reasons))  # fmt: skip
    if not persistence:
        return Verdict(None, ('persistence is off (no LIFECYCLE_MONGO_URL): only its hard deadline ends it', *reasons))
    idle_due_ms = last_active_ms + idle_ttl_s * 1000
    if owner_lost:
        due, ready = 'owner_lost', 'its replica stopped heartbeating: the next owner-lost sweep evicts it'
    elif idle_due_ms > now_ms:
        reasons.insert(0, f'idle for {human((now_ms - last_active_ms) / 1000)}, due at {human(idle_ttl_s)} of '
                          f'idle (its profile): in {human((idle_due_ms - now_ms) / 1000)}')  # fmt: skip
        return Verdict(None, tuple(reasons))
    elif pinned:
        reasons.insert(0, f'pinned: idle for {human((now_ms - last_active_ms) / 1000)}, but idle and LRU eviction '
                          'leave it alone until unpin()')  # fmt: skip
        return Verdict(None, tuple(reasons))
    else:
        due, ready = 'idle', f'idle for {human((now_ms - last_active_ms) / 1000)}: the next idle sweep evicts it'
    if busy:
        return Verdict(None, (f'due ({due}), but a turn holds a busy lease', *reasons))
    needs = needs_checkpoint(turn_seq, requested_ms, now_ms, required=required, waive_after_s=waive_after_s)
    covered = checkpoint_seq is not None and checkpoint_seq >= turn_seq
    if needs and not covered:
        unsaved = turn_seq - (checkpoint_seq or 0)
        wait = 'its owner has not been asked yet' if requested_ms is None else (
            f'asked {human((now_ms - requested_ms) / 1000)} ago'
            + (f'; evicted anyway in {human((requested_ms + waive_after_s * 1000 - now_ms) / 1000)}'
               if waive_after_s is not None else '; kept until it answers (on_missing_checkpoint=keep)'))  # fmt: skip
        return Verdict(None, (f'due ({due}), but {unsaved} finished turn(s) no checkpoint covers: {wait}', *reasons))
    return Verdict(due, (ready, *reasons))


def grace_start(requested_ms: int | None, owner_lapsed_ms: int | None) -> int | None:
    """When the grace of a checkpoint request runs from: the request; for a lost replica's session (the time its
    heartbeat lapsed given), not before that lapse: a request it could have answered while it lived does not count
    against a replica lost for a moment (a pause, a network blip)."""
    if requested_ms is None or owner_lapsed_ms is None:
        return requested_ms
    return max(requested_ms, owner_lapsed_ms)


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
