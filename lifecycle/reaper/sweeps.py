"""The sweeps: each finds who is due with range queries, in batches, under its own lock, and dispatches orders.

A sweep reads; the evictions it orders run elsewhere (Celery tasks across workers, or inline for the
CLI). Its cost grows with the sessions that are due, not with the pool: every selection is a
`ZRANGEBYSCORE ... LIMIT` on a sorted set scored by time.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from lifecycle import policy, validate
from lifecycle.errors import LifecycleError, SessionDamaged
from lifecycle.jobs.runs import BACKSTOP_MARGIN_S, Runs
from lifecycle.jobs.worktrees import WorktreeCleaner, WorktreeReport
from lifecycle.models import NoticeKind, ReapReason, SweepKind, to_datetime
from lifecycle.policy import Candidate, Order
from lifecycle.pool import calls, trail
from lifecycle.pool.claims import ClaimIndex, Drift
from lifecycle.pool.executor import Executor, first_error
from lifecycle.pool.lock import SweepLock, sweep_lock
from lifecycle.pool.records import read_records, record_calls
from lifecycle.pool.sessions import Meta, SessionIndex
from lifecycle.reaper.eviction import EvictionResult, Evictor, grace_starts
from lifecycle.reaper.rebuild import Rebuilder, Rebuilt
from lifecycle.reaper.reconcile import Reconciler
from lifecycle.sandboxes.base import SandboxLease, leftover_leases, release_lease

__all__ = ['Dispatch', 'SweepKind', 'SweepReport', 'Sweeper']
log = logging.getLogger(__name__)
Dispatch = Callable[[Sequence[Order]], None]
REPORTED_ORDERS = 1_000
RETENTION_BATCH = 100  # resumable sessions deleted per MongoDB round (one update, one delete of their messages)
DURATION_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)  # fmt: skip


@dataclass
class SweepReport:
    """What one sweep did; `ran` is False when another sweep of its kind held the lock or just ran."""

    kind: SweepKind
    ran: bool = True
    skipped: str = ''
    ordered: int = 0  # every order dispatched (or, dry, due)
    orders: list[Order] = field(default_factory=list)  # the first REPORTED_ORDERS of them: memory stays flat
    refused: int = 0  # dry run: due, but the durable write would refuse them (the first few are in `kept`)
    kept: list[tuple[Order, str]] = field(default_factory=list)
    recovered: list[EvictionResult] = field(default_factory=list)
    released_sandboxes: list[str] = field(default_factory=list)
    notices: int = 0
    drift: Drift | None = None
    rebuilt: Rebuilt | None = None
    dropped_runs: list[str] = field(default_factory=list)
    deleted_sessions: int = 0  # resumable sessions past their retention (dry: due)
    worktrees: WorktreeReport | None = None
    duration_ms: int = 0


class Sweeper:
    """Runs sweeps for one process; `dispatch` sends the orders (to Celery, or to an inline evictor)."""

    def __init__(self, pool: Executor, evictor: Evictor, dispatch: Dispatch) -> None:
        self.pool = pool
        self.settings = pool.settings
        self.keys = pool.keys
        self.evictor = evictor
        self.dispatch = dispatch
        self.claims = ClaimIndex(pool.settings, self.keys)
        self.runs = Runs(pool)
        self._sweeps: dict[SweepKind, Callable[[SweepReport, SweepLock, bool], None]] = {
            SweepKind.IDLE: self._sweep_idle,
            SweepKind.LRU: self._sweep_lru,
            SweepKind.EXPIRED: self._sweep_expired,
            SweepKind.OWNER_LOST: self._sweep_owner_lost,
            SweepKind.WARNINGS: self._sweep_warnings,
            SweepKind.RECONCILE: self._sweep_reconcile,
            SweepKind.RUNS: self._sweep_runs,
            SweepKind.WORKTREES: self._sweep_worktrees,
            SweepKind.RETENTION: self._sweep_retention,
        }

    def sweep(self, kind: SweepKind, *, dry_run: bool = False, dedupe: bool = True) -> SweepReport:
        """Run one sweep now unless one of its kind is running, or (with `dedupe`) ran within half an interval."""
        started = time.monotonic()
        report = SweepReport(kind)
        scope = kind.value
        if kind is SweepKind.WORKTREES:
            # Every host sweeps its own root: one sweep at a time per host and root, not per pool.
            root_tag = hashlib.sha1(str(self.settings.worktree_root).encode()).hexdigest()[:8]
            scope = f'{kind}:{socket.gethostname()}:{root_tag}'
        with sweep_lock(self.pool, self.keys.lock(scope), self.settings.sweep_lock_timeout_s) as lock:
            if lock is None:
                log.info('%s sweep skipped: another one holds the lock', kind)
                return self._skipped(kind, 'locked')
            half_interval_ms = self.settings.interval_s(kind) * 500
            if dedupe and not self.pool.run(calls.set_once(self.keys.swept(scope), 1, half_interval_ms)):
                log.info('%s sweep skipped: one ran moments ago (a duplicate delivery)', kind)
                return self._skipped(kind, 'duplicate')
            if not dry_run:
                self.pool.run(calls.increment(self.keys.counters, f'sweep:{kind}'))
            self._sweeps[kind](report, lock, dry_run)
        report.duration_ms = int((time.monotonic() - started) * 1000)
        if not dry_run:
            self._record_duration(kind, report.duration_ms)
        log.info(
            '%s sweep: %d ordered, %d recovered, %d notices%s (%d ms)',
            kind, report.ordered, len(report.recovered), report.notices,
            f', skipped: {report.skipped}' if report.skipped else '', report.duration_ms,
        )  # fmt: skip
        return report

    def _record_duration(self, kind: SweepKind, duration_ms: int) -> None:
        """When the sweep last ran, and its duration in the shared histogram the exporter serves."""
        k = self.keys
        writes: list[calls.Call[Any]] = [
            calls.hash_set(k.sweep_stats, {f'{kind}:last_ms': self.pool.now_ms(), f'{kind}:duration_ms': duration_ms}),
            *[calls.increment(k.sweep_durations, f'{kind}|le|{bound}')
              for bound in DURATION_BUCKETS_S if duration_ms <= bound * 1000],
            calls.increment(k.sweep_durations, f'{kind}|count'),
            calls.increment_float(k.sweep_durations, f'{kind}|sum', duration_ms / 1000),
        ]  # fmt: skip
        self.pool.run_many(writes)

    def _skipped(self, kind: SweepKind, why: str) -> SweepReport:
        self.pool.run(calls.increment(self.keys.counters, f'sweep_skipped:{kind}'))
        return SweepReport(kind, ran=False, skipped=why)

    # -- reading ------------------------------------------------------------------------------------

    def _pages(self, key: str, low: float | str, high: float | str, lock: SweepLock) -> Iterator[list[tuple[str, int]]]:
        """(session_id, score) pages of a sorted set by score, oldest first (see `_scored_pages`); a member no
        session could be (a hand edit, bytes that are not UTF-8) is left out here, and reconcile removes it."""
        for page in self._scored_pages(key, low, high, lock):
            yield [(member, score) for member, score in page if validate.is_identifier(member)]

    def _scored_pages(
        self, key: str, low: float | str, high: float | str, lock: SweepLock
    ) -> Iterator[list[tuple[str, int]]]:
        """(member, score) pages of a sorted set by score, oldest first; O(log n + page) each.

        The cursor is the last score seen, exclusive; the rest of the members tied at it are read by member
        (see read_tied.lua): no offsets, so sessions evicted (removed) while the sweep pages on never make it
        skip one, however many share a millisecond.
        """
        batch = self.settings.sweep_batch_size
        while True:
            reply = self.pool.run(calls.by_score(key, low, high, batch))
            page = [(member, int(score)) for member, score in reply]
            if page:
                yield page
            if len(page) < batch:
                return
            member, last = reply[-1]
            while True:
                tied = self.pool.run(calls.tied_after(key, last, member, batch))
                if tied:
                    yield [(m, int(last)) for m in tied]
                    member = tied[-1]
                if len(tied) < batch:
                    break
                lock.extend()
            low = f'({last!r}'
            lock.extend()

    def _candidates(self, page: list[tuple[str, int]]) -> list[Candidate]:
        ids = [member for member, _ in page]
        reads, gather = record_calls(self.keys, ids)
        k = self.keys
        busy_at, claimed_at, pinned_at, *replies = self.pool.run_each(
            [calls.scores(k.busy, ids), calls.scores(k.reaping, ids), calls.scores(k.pinned, ids), *reads])  # fmt: skip
        busy, reaping, pins = first_error([busy_at, claimed_at, pinned_at])
        records = gather(replies)
        candidates = []
        for (session_id, last_active), record, busy_until, claimed, pinned in zip(page, records, busy, reaping, pins,
                                                                                 strict=True):  # fmt: skip
            if record is None:
                continue  # left the pool between the two reads (or lost: reconcile rebuilds it)
            try:
                meta = Meta.unpack(record)
            except SessionDamaged:
                log.warning('session %s skipped: its record %r is malformed', session_id, record)
                continue
            busy_ms = int(busy_until) if busy_until is not None else None
            candidates.append(Candidate(session_id, last_active, meta.owner, meta.profile, busy_ms, claimed is not None,
                                        pinned is not None))  # fmt: skip
        return candidates

    def _order(self, report: SweepReport, orders: Sequence[Order], dry_run: bool) -> None:
        if dry_run:
            orders, kept = self._gate(orders)
            report.refused += len(kept)
            report.kept.extend(kept[: max(0, REPORTED_ORDERS - len(report.kept))])
        report.ordered += len(orders)
        report.orders.extend(orders[: max(0, REPORTED_ORDERS - len(report.orders))])
        if orders and not dry_run:
            self.dispatch(orders)

    def _gate(self, orders: Sequence[Order]) -> tuple[list[Order], list[tuple[Order, str]]]:
        """A dry run's answer to what the durable write would say: the orders it would let through, and
        those it would refuse with why (no covering checkpoint, already ended; or the pool is not verified since
        Redis restarted or failed over, see claim_session.lua). One read of each side."""
        store = self.evictor.store
        gated = [o for o in orders if o.reason is not ReapReason.EXPIRED]
        if store is None or not gated:
            return list(orders), []
        if not self.pool.run(SessionIndex(self.settings, self.keys).pool_state()).ready:
            return [o for o in orders if o.reason is ReapReason.EXPIRED], [(o, 'unverified') for o in gated]
        records = read_records(self.pool, [o.session_id for o in gated])
        documents = store.load_many([o.session_id for o in gated])
        lost = [o.owner if o.reason is ReapReason.OWNER_LOST else None for o in gated]
        starts = grace_starts(self.pool, self.claims, [o.session_id for o in gated], lost)
        s, now = self.settings, self.pool.now_ms()
        refusals = {}
        for order, record, asked in zip(gated, records, starts, strict=True):
            try:
                turn_seq = Meta.unpack(record).turn_seq if record is not None else 0
            except SessionDamaged:
                refusals[order.session_id] = 'damaged'
                continue
            waive_after_s = s.waive_after_s(owner_lost=order.reason is ReapReason.OWNER_LOST)
            needs = policy.needs_checkpoint(turn_seq, asked, now, required=s.require_checkpoint,
                                            waive_after_s=waive_after_s)  # fmt: skip
            why = policy.mark_refusal(documents.get(order.session_id), turn_seq, needs)
            if why is not None:
                refusals[order.session_id] = why
        return ([o for o in orders if o.session_id not in refusals],
                [(o, refusals[o.session_id]) for o in orders if o.session_id in refusals])  # fmt: skip

    def _recover_claims(self, report: SweepReport, dry_run: bool) -> None:
        """Resolve every eviction claim whose lease ran out (a crashed or paused worker's)."""
        if dry_run:
            return
        for session_id in self.pool.run(calls.members_by_score(self.keys.reaping, '-inf', self.pool.now_ms())):
            if not validate.is_identifier(session_id):
                continue  # no session has such an id (a hand edit, bytes that are not UTF-8): reconcile removes it
            result = self.evictor.recover(session_id)
            if result is not None:
                report.recovered.append(result)

    def _needs_persistence(self, report: SweepReport) -> bool:
        if self.evictor.store is None:
            log.info('%s sweep skipped: persistence is off (no mongo_url), only expiry ends sessions', report.kind)
            report.skipped = 'persistence is off'
            return False
        return True

    # -- the sweeps ---------------------------------------------------------------------------------

    def _sweep_idle(self, report: SweepReport, lock: SweepLock, dry_run: bool) -> None:
        """Read, for each idle timeout in force, only the sessions that went past it since the last sweep (a
        cursor per timeout), and again those an earlier sweep kept (the recheck set): a sweep costs the
        sessions due, not the sessions idle. What it finds past a timeout that is not its profile's, it
        leaves to that timeout's own pass."""
        if not self._needs_persistence(report):
            return
        self._recover_claims(report, dry_run)
        now = self.pool.now_ms()
        timeouts = {name or '': self.settings.limits(name).idle_ttl_s for name in (None, *self.settings.profiles)}
        tag = policy.idle_timeouts_tag(timeouts)
        # A cursor never passes what Redis's own clock has seen cross: a sweeper whose clock runs ahead (a fixed
        # one in a test) would otherwise pass over sessions stamped after it swept. One ahead of Redis's clock (a
        # hand edit, the clock stepped back) would stop its pass: that pass starts over.
        server_now = now if dry_run else self.pool.server_ms()
        cursors = {ttl: cursor for ttl, cursor in self._idle_cursors(tag, dry_run).items()
                   if cursor <= policy.idle_cutoff_ms(server_now, ttl)}  # fmt: skip

        def unseen(c: Candidate) -> bool:  # kept earlier, and not active since (else its timeout's pass reads it)
            cursor = cursors.get(self.settings.limits(c.profile).idle_ttl_s)
            return cursor is not None and c.last_active_ms <= cursor

        if cursors:  # before now: what this sweep keeps is looked at again from the next one on
            for page in self._pages(self.keys.idle_recheck, '-inf', f'({now}', lock):
                self._look_idle(report, page, unseen, now, dry_run, rechecked=True)
        for idle_ttl_s in sorted(set(timeouts.values())):
            cutoff = policy.idle_cutoff_ms(now, idle_ttl_s)
            cursor = cursors.get(idle_ttl_s)
            low = '-inf' if cursor is None else f'({cursor}'

            def owns(c: Candidate, ttl: int = idle_ttl_s) -> bool:
                return self.settings.limits(c.profile).idle_ttl_s == ttl

            for page in self._pages(self.keys.live, low, cutoff, lock):
                self._look_idle(report, page, owns, now, dry_run, rechecked=False)
            read_up_to = min(cutoff, policy.idle_cutoff_ms(server_now, idle_ttl_s))
            if not dry_run and (cursor is None or read_up_to > cursor):
                self.pool.run(calls.hash_set(self.keys.idle_cursor, {str(idle_ttl_s): read_up_to}))
        if not dry_run:
            self.pool.run(calls.hash_set(self.keys.idle_cursor, {'#': tag}))

    def _idle_cursors(self, tag: str, dry_run: bool) -> dict[int, int]:
        """idle_ttl_s -> the last_active up to which its pass has read; none (read from the start) on the first
        sweep, after the timeouts changed, or when the recheck set was lost (what it kept would be forgotten)
        or either key holds another type (a hand edit): then both start over."""
        k = self.keys
        reads: list[calls.Call[Any]] = [calls.hash_all(k.idle_cursor), calls.score(k.idle_recheck, '#')]
        replies = self.pool.run_each(reads)
        damaged = [str(reply) for reply in replies if isinstance(reply, LifecycleError) and 'WRONGTYPE' in str(reply)]
        if damaged:
            log.warning('idle sweep reads from the start: its cursors or recheck set were damaged (%s)', damaged)
        else:
            stored, marker = first_error(replies)
        if damaged or marker is None or stored.get('#') != tag:
            if not dry_run:
                self.pool.run_many([calls.delete(k.idle_cursor, k.idle_recheck), calls.add(k.idle_recheck, [('#', 0)])])
            return {}
        cursors = {}
        for ttl, cursor in stored.items():
            if all(n.isascii() and n.isdigit() for n in (ttl, cursor)):  # else a hand edit: that pass starts over
                cursors[int(ttl)] = int(cursor)
        return cursors

    def _look_idle(
        self, report: SweepReport, page: list[tuple[str, int]], judged: Callable[[Candidate], bool], now: int,
        dry_run: bool, *, rechecked: bool,
    ) -> None:  # fmt: skip
        """Order the idle evictions of the page's sessions this pass judges, and keep in the recheck set what
        could stay behind: those sessions (an eviction can be refused) and live ones whose record is unreadable.
        A page of the recheck set is scored by when to look again: its sessions' activity is read from live."""
        if rechecked:
            held = self.pool.run(calls.scores(self.keys.live, [session_id for session_id, _ in page]))
            live = [(session_id, at) for (session_id, _), at in zip(page, held, strict=True) if at is not None]
        else:
            live = page
        candidates = self._candidates(live)
        mine = [c for c in candidates if judged(c)]
        self._order(report, policy.idle_orders(mine, self.settings.limits, now), dry_run)
        if dry_run:
            return
        read = {c.session_id for c in candidates}
        # Live, but no record a sweep can read (lost, or a hand edit): reconcile rebuilds it, then it is judged.
        again = dict.fromkeys([c.session_id for c in mine] + [s for s, _ in live if s not in read], now)
        writes: list[calls.Call[Any]] = [calls.add(self.keys.idle_recheck, list(again.items()))] if again else []
        kept = policy.idle_kept(mine, self.settings.limits, now)
        writes += self.evictor.trail.appends(now, [(s, trail.entry('kept', 'idle', why)) for s, why in kept])
        if rechecked:  # what left the pool, or was active since, is off the list (added back first: never lost)
            writes.append(calls.remove(self.keys.idle_recheck, [s for s, _ in page if s not in again]))
        self.pool.run_many(writes)

    def _sweep_lru(self, report: SweepReport, lock: SweepLock, dry_run: bool) -> None:
        max_live = self.settings.max_live
        if max_live is None:
            report.skipped = 'no max_live'
            return
        if not self._needs_persistence(report):
            return
        self._recover_claims(report, dry_run)
        now = self.pool.now_ms()
        live, reaping = self.pool.run_many([calls.cardinality(self.keys.live), calls.cardinality(self.keys.reaping)])
        wanted = policy.lru_excess(live, reaping, max_live)
        for page in self._pages(self.keys.live, '-inf', '+inf', lock):
            if wanted <= 0:
                return
            orders = policy.lru_orders(self._candidates(page), wanted, max_live, now)
            wanted -= len(orders)
            self._order(report, orders, dry_run)

    def _sweep_expired(self, report: SweepReport, lock: SweepLock, dry_run: bool) -> None:
        store = self.evictor.store
        if not dry_run and store is not None:
            rebuilder = Rebuilder(self.pool, store, self.evictor.driver)
            if (state := rebuilder.due()) is not None:
                # Redis lost the pool, restarted or failed over (or the pool is new): admission fails closed
                # until this has run.
                report.rebuilt = rebuilder.rebuild(state, lock.extend)
        if not dry_run and self._tenant_index_lost():
            # Reservations of capped tenants are refused until the index is rebuilt: do it now, not in 5 min.
            log.warning('the tenant index was lost: reconciling now')
            try:
                report.drift = self.sweep(SweepKind.RECONCILE, dedupe=False).drift
            except LifecycleError as exc:  # expiry goes on whatever reconciliation runs into
                log.warning('reconcile from the expiry sweep failed: %s', exc)
        self._recover_claims(report, dry_run)
        now = self.pool.now_ms()
        for page in self._pages(self.keys.deadline, '-inf', now, lock):
            self._order(report, [Order(session_id, ReapReason.EXPIRED) for session_id, _ in page], dry_run)
        if not dry_run:
            self._release_leftover_sandboxes(report, now, lock)

    def _tenant_index_lost(self) -> bool:
        """The tenant index has lost its marker while the pool holds something (see `Keys.tenants`)."""
        marker = self.pool.run(calls.score(self.keys.tenants, '#'))
        live, reserved = self.pool.run_many([calls.cardinality(self.keys.live),
                                             calls.cardinality(self.keys.reservations)])  # fmt: skip
        return marker is None and live + reserved > 0

    def _release_leftover_sandboxes(self, report: SweepReport, now_ms: int, lock: SweepLock) -> None:
        """Retry the releases that failed (and release the orphans a rebuild found, once due), and release the
        sandboxes past their deadline or past the orphan grace whose session the pool does not hold (live or
        being evicted). Each release is judged again just before it is made; a driver that can list releases
        exactly the sandboxes it judged, never one a session started since. A driver that cannot list (its
        engine down) leaves everything for the next sweep; a slow one gets half the sweep lock's time."""
        driver = self.evictor.driver
        try:
            leases = driver.leases()
        except Exception:
            log.warning('the sandbox driver could not list its sandboxes; retried at the next expiry sweep',
                        exc_info=True)  # fmt: skip
            return
        retried = self.pool.run(calls.by_score(self.keys.orphans, '-inf', now_ms))
        grace_ms = self.settings.orphan_grace_s * 1000
        releases: list[tuple[str, int | SandboxLease]] = [
            (s, int(at)) for s, at in retried if validate.is_identifier(s)
        ]
        releases += [(lease.session_id, lease) for lease in leftover_leases(leases, now_ms, grace_ms)]
        budget = time.monotonic() + self.settings.sweep_lock_timeout_s / 2
        for session_id, what in releases:
            if time.monotonic() > budget:
                log.warning('sandbox releases ran out of time; the rest wait for the next expiry sweep')
                return
            live, reaping = self.pool.run_many([calls.score(self.keys.live, session_id),
                                                calls.score(self.keys.reaping, session_id)])  # fmt: skip
            if reaping is not None:
                continue  # its eviction releases it (or undoes itself): judge it again next time
            if live is not None:
                if not isinstance(what, SandboxLease):
                    self.pool.run(calls.remove(self.keys.orphans, [session_id]))  # restored: its sandbox is in use
                continue
            try:
                released = self._release_leftover(session_id, what, leases)
            except Exception:
                log.warning('sandbox of %s still not released', session_id, exc_info=True)
                continue
            finally:
                lock.extend()
            if not isinstance(what, SandboxLease):
                self.pool.run(calls.remove(self.keys.orphans, [session_id]))
            if released and session_id not in report.released_sandboxes:
                report.released_sandboxes.append(session_id)

    def _release_leftover(self, session_id: str, what: int | SandboxLease, leases: list[SandboxLease]) -> bool:
        """Release the lease judged leftover, or retry a failed release (put on the orphan list at `what`):
        exactly the sandboxes of the session that existed then, where the driver can tell; False if none did."""
        driver = self.evictor.driver
        reason = ReapReason.EXPIRED.value
        if isinstance(what, SandboxLease):
            release_lease(driver, what, reason)
            return True
        if getattr(driver, 'release_lease', None) is None:
            driver.release(session_id, reason)
            return True
        then = [lease for lease in leases if lease.session_id == session_id
                and (lease.started_at_ms is None or lease.started_at_ms <= what)]  # fmt: skip
        for lease in then:
            release_lease(driver, lease, reason)
        return bool(then)

    def _sweep_owner_lost(self, report: SweepReport, lock: SweepLock, dry_run: bool) -> None:
        """Evict the sessions of each replica whose heartbeat lapsed, read from its own set (see Keys.owned):
        the cost is the lost replica's sessions, not the pool. An entry whose record names another owner now
        (or none) is dropped. Reconcile forgets a replica left with nothing: a missing set proves nothing here
        (a pool upgraded in place has none until reconcile puts them back)."""
        now = self.pool.now_ms()
        lost = self.pool.run(self.claims.lost_replicas(now))
        if not lost or not self._needs_persistence(report):
            return
        self._recover_claims(report, dry_run)
        batch = self.settings.sweep_batch_size
        for owner in lost:
            owned = self.keys.owned(owner)
            for page in self.pool.pages(functools.partial(calls.sscan, owned, count=batch)):
                ids = [session_id for session_id in page if validate.is_identifier(session_id)]
                records = read_records(self.pool, ids)
                mine = [s for s, record in zip(ids, records, strict=True)
                        if record is not None and record.split('|', 1)[0] == owner]  # fmt: skip
                self._order(report, [Order(s, ReapReason.OWNER_LOST, owner=owner) for s in mine], dry_run)
                if not dry_run:
                    self.pool.run(calls.set_remove(owned, sorted(set(page) - set(mine))))
                lock.extend()

    def _sweep_warnings(self, report: SweepReport, lock: SweepLock, dry_run: bool) -> None:
        now = self.pool.now_ms()
        cursors = self.pool.run(calls.hash_all(self.keys.warn_cursor))
        warned: list[tuple[str, str]] = []
        for idle_ttl_s in sorted(self.settings.idle_ttls_s):
            cursor = cursors.get(str(idle_ttl_s))
            low, high = policy.warning_window(
                int(cursor) if cursor else None, now, idle_ttl_s, self.settings.warn_before_s
            )
            for page in self._pages(self.keys.live, f'({low}', high, lock):
                for c in self._candidates(page):
                    kept = c.is_busy(now) or c.reaping or c.pinned
                    if kept or self.settings.limits(c.profile).idle_ttl_s != idle_ttl_s:
                        continue
                    report.notices += 1
                    if not dry_run:
                        self.pool.run(self.claims.notice(c.owner, NoticeKind.WARNING, c.session_id, 'idle', now))
                        warned.append((c.session_id, trail.entry('warned', 'idle')))
            if not dry_run:
                self.pool.run(calls.hash_set(self.keys.warn_cursor, {str(idle_ttl_s): high}))
        self.pool.run_many(self.evictor.trail.appends(now, warned))

    def _sweep_reconcile(self, report: SweepReport, lock: SweepLock, dry_run: bool) -> None:
        if dry_run:
            return
        self._migrate_legacy_records(lock)
        self._expire_legacy_run_streams()
        report.drift = Reconciler(self.pool, self.evictor.store).repair(lock.extend)

    def _migrate_legacy_records(self, lock: SweepLock) -> None:
        """Move records left in the first layout's single hash (a pool upgraded in place) into their buckets.

        Until moved, their sessions look gone to every script: this gives them back to the sweeps.
        """
        moved, batch = 0, self.settings.sweep_batch_size
        # One HSCAN pass: records a stale writer adds meanwhile wait for the next reconcile.
        for page in self.pool.pages(lambda cursor: calls.hscan(self.keys.legacy_meta, cursor, batch)):
            moved += self.pool.run(self.claims.migrate_records(page))
            lock.extend()
        if moved:
            log.warning('moved %d session records from %s into their buckets', moved, self.keys.legacy_meta)

    def _expire_legacy_run_streams(self) -> None:
        """Give the event streams of runs that were running when the run key layout changed ('{lc}:run:<id>:events',
        which nothing reads any more) the backstop expiry their finish would have: once per pool."""
        if self.pool.run(calls.hash_get(self.keys.migrations, 'run_events')):
            return
        ttl_ms = (self.settings.run_retention_s + BACKSTOP_MARGIN_S) * 1000
        pattern = self.keys.run('*') + ':events'
        for page in self.pool.pages(lambda cursor: calls.scan(cursor, pattern, 1000, 'stream')):
            self.pool.run_many([calls.expire_if_none(key, ttl_ms) for key in page])
        self.pool.run(calls.hash_set(self.keys.migrations, {'run_events': self.pool.now_ms()}))

    def _sweep_runs(self, report: SweepReport, lock: SweepLock, dry_run: bool) -> None:
        report.dropped_runs = self.runs.prunable() if dry_run else self.runs.prune()

    def _sweep_retention(self, report: SweepReport, lock: SweepLock, dry_run: bool) -> None:
        """Delete resumable sessions evicted more than `resumable_retention_s` ago, RETENTION_BATCH at a time:
        each document becomes a 'deleted' tombstone (restore refuses it, status says so), then its messages go."""
        store, retention_s = self.evictor.store, self.settings.resumable_retention_s
        if retention_s is None:
            report.skipped = 'resumable_retention_s is unset: resumable sessions are kept'
            return
        if not self._needs_persistence(report) or store is None:
            return
        # Lifecycle time, as the eviction's `evicted_at`: one clock, whatever this worker's says.
        before = to_datetime(self.pool.now_ms()) - timedelta(seconds=retention_s)
        if dry_run:
            report.deleted_sessions = len(store.resumable_before(self.keys.prefix, before, RETENTION_BATCH))
            return
        while True:
            deleted, purged = store.delete_resumable(self.keys.prefix, before, RETENTION_BATCH)
            report.deleted_sessions += deleted
            lock.extend()
            if deleted < RETENTION_BATCH and purged < RETENTION_BATCH:
                break
        if report.deleted_sessions:
            self.pool.run(calls.increment(self.keys.counters, 'deleted:retention', report.deleted_sessions))
            log.info('retention deleted %d resumable sessions evicted before %s', report.deleted_sessions,
                     before.isoformat())  # fmt: skip

    def _sweep_worktrees(self, report: SweepReport, lock: SweepLock, dry_run: bool) -> None:
        root = self.settings.worktree_root
        if root is None:
            report.skipped = 'no worktree_root on this host'
            return
        report.worktrees = WorktreeCleaner(self.pool, root).sweep(dry_run=dry_run)
