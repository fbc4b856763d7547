"""Reconciliation: find and repair outside damage to the pool (a lost key, a hand edit), in atomic pages.

Normal running never needs it: every transition moves the sets, the records, the tenant index and the
counter together. What a lost or edited key leaves behind, each page repairs atomically and counts:

- a record whose live entry is gone: put back in the pool (it still runs for its user; the pool may
  then sit over its cap, and admission refuses until it is under);
- a live session without its deadline: the latest deadline its profile allows (`created + max_ttl_s`);
- a live session without a record it can read (lost, or edited by hand): a stand-in record whose turn
  sequence is one past anything MongoDB holds for it, so it must checkpoint again before it can be
  evicted as resumable;
- tenant index members missing (added) or backed by nothing (dropped), then the index marked complete;
- the slot counter, recomputed from the sets.

Pages are atomic and transitions keep running between them: a transition adds or removes exactly its
own entries, so whatever it does between two pages is already right, and the passes converge.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Iterator

from lifecycle import validate
from lifecycle.errors import PersistenceError, ScriptFailed, SessionDamaged
from lifecycle.pool import calls
from lifecycle.pool.claims import ClaimIndex, Drift
from lifecycle.pool.executor import Executor
from lifecycle.pool.keys import META_BUCKETS
from lifecycle.pool.records import read_records
from lifecycle.pool.sessions import UNKNOWN_TENANT, Meta
from lifecycle.stores import SnapshotStore

log = logging.getLogger(__name__)
PAGE = 100  # live sessions or lost replicas per read: each command stays short
SCRIPT_PAGE = 25  # records or tenant index members (about) per repair script: under a millisecond of Redis each
MAX_BUCKETS = 256  # meta buckets one repair script reads at most (an almost empty pool)


def buckets_per_page(live: int) -> int:
    """Meta buckets one repair script walks: about SCRIPT_PAGE records at this pool size (records spread evenly
    over the buckets); at least one, which `Reconciler._record_pages` splits (about 61 records at 1,000,000)."""
    return max(1, min(MAX_BUCKETS, SCRIPT_PAGE * META_BUCKETS // max(live, 1)))


def is_record(record: str | None) -> bool:
    """Whether `record` is one the scripts can read (not missing, not a hand edit)."""
    try:
        return record is not None and Meta.unpack(record) is not None
    except SessionDamaged:
        return False


class Reconciler:
    """Runs one reconciliation of the pool; `extend` is called between pages (the sweep lock's)."""

    def __init__(self, pool: Executor, store: SnapshotStore | None) -> None:
        self.pool = pool
        self.store = store
        self.keys = pool.keys
        self.claims = ClaimIndex(pool.settings, self.keys)
        self.foreign = 0  # live entries no session could be (invalid ids) the last run removed

    def repair(self, extend: Callable[[], None]) -> Drift:
        now = self.pool.now_ms()
        upgrade = self.pool.run(calls.exists(self.keys.legacy_tenant_slots))  # a pool the previous layout wrote
        lost_index = self.pool.run(calls.score(self.keys.tenants, '#')) is None
        # Marks this run's start in the index: if the index is deleted while the passes run, it is gone, and
        # the index is not marked complete (the next expiry sweep reconciles again).
        rebuild_marker = f'#rebuild:{secrets.token_hex(6)}'
        self.pool.run(calls.add(self.keys.tenants, [(rebuild_marker, 0)]))
        totals, failed = [0, 0, 0, 0], 0  # relinked, deadlines restored, tenant members added, malformed records
        per_page = buckets_per_page(self.pool.run(calls.cardinality(self.keys.live)))
        for start in range(0, META_BUCKETS, per_page):
            buckets = range(start, min(start + per_page, META_BUCKETS))
            for fields in self._record_pages(buckets):
                try:
                    page = self.pool.run(self.claims.repair_records(buckets, now, fields))
                except ScriptFailed as exc:  # one bad page never stops the rest
                    log.warning('reconcile could not repair buckets %d..%d: %s', buckets[0], buckets[-1], exc)
                    failed += 1
                    continue
                totals = [total + n for total, n in zip(totals, page, strict=True)]
                extend()
        relinked, deadlines, members, malformed = totals
        if not failed:  # a page not repaired may hold sessions whose owner set is still missing
            self._forget_lost_replicas(now)
        rebuilt = self._rebuild_missing_records(now, lost_index, extend)
        dropped = self._drop_stray_tenants(extend)
        self._forget_requests_of_gone_sessions()
        self._forget_what_gone_sessions_left()
        if failed:
            self.pool.run(calls.remove(self.keys.tenants, [rebuild_marker]))  # some records were not indexed
        purged, counter, truth, reserved_members, _ = self.pool.run(self.claims.reconcile_counters(now, rebuild_marker))
        if upgrade:
            self.pool.run(calls.delete(self.keys.legacy_tenant_slots))
            log.info('the tenant index replaced the tenant counters of the previous layout')
        drift = Drift(
            purged_reservations=purged,
            pool_drift=max(counter, 0) - truth,
            counter_missing=counter < 0 and truth > 0,  # an empty pool that never held anything has none yet
            tenant_drift=0 if upgrade else members + reserved_members + dropped,
            tenant_index_rebuilt=lost_index and truth > 0 and not upgrade,
            relinked=relinked,
            deadlines_restored=deadlines,
            records_rebuilt=rebuilt,
            malformed_records=malformed,
            unrepaired_pages=failed,
            foreign_entries=self.foreign,
        )
        if drift.found:
            log.warning('reconcile repaired outside damage: %s', drift.describe())
            self.pool.run_many([calls.increment(self.keys.counters, f'damage:{kind}', n)
                                for kind, n in drift.counts().items()])  # fmt: skip
        return drift

    def _record_pages(self, buckets: range) -> Iterator[list[str]]:
        """The record names each repair script of these buckets takes: none (the whole buckets, one script), or,
        for one bucket (a large pool: it may hold more than SCRIPT_PAGE), its names, SCRIPT_PAGE a script.
        Records written meanwhile are their writers' to index (a transition keeps every index in step)."""
        if len(buckets) > 1:
            yield []
            return
        try:
            names = self.pool.run(calls.hash_keys(self.keys.meta_bucket(buckets[0])))
        except ScriptFailed:  # another type (a hand edit): the whole-bucket script reports it, and skips it
            yield []
            return
        for start in range(0, len(names), SCRIPT_PAGE):
            yield names[start : start + SCRIPT_PAGE]

    def _forget_lost_replicas(self, now_ms: int) -> None:
        """Forget the lost replicas that own nothing, now that the record pass put back every owner's set."""
        lost = self.pool.run(self.claims.lost_replicas(now_ms))
        forgotten = sum(self.pool.run(self.claims.forget_replicas(lost[start : start + PAGE], now_ms))
                        for start in range(0, len(lost), PAGE))  # fmt: skip
        if forgotten:
            log.info('reconcile forgot %d lost replicas that own no session', forgotten)

    def _live_pages(self) -> Iterator[list[str]]:
        """Every live session id, a page at a time (ZSCAN: each one present throughout is seen); entries no
        session could be are removed on the way (counted in `foreign`)."""
        page: list[str] = []
        foreign: list[str] = []
        for member in self._scan(self.keys.live):
            (page if validate.is_identifier(member) else foreign).append(member)
            if len(page) == PAGE:
                yield page
                page = []
        if page:
            yield page
        self.foreign += self._remove(self.keys.live, foreign)

    def _remove_foreign_entries(self, key: str) -> int:
        """Remove the members of a session index that no session could be (activation checks every id)."""
        return self._remove(key, [m for m in self._scan(key) if not validate.is_identifier(m)])

    def _scan(self, key: str) -> Iterator[str]:
        """Every member of sorted set `key` (ZSCAN: each one present throughout is seen)."""
        for page in self.pool.pages(lambda cursor: calls.zscan(key, cursor, PAGE)):
            yield from page

    def _remove(self, key: str, members: list[str]) -> int:
        if not members:
            return 0
        raw = [calls.as_read(member) for member in members]
        self.pool.run_many([calls.remove(index, raw) for index in (key, self.keys.busy, self.keys.reaping)])
        return len(members)

    def _rebuild_missing_records(self, now_ms: int, index_lost: bool, extend: Callable[[], None]) -> int:
        missing: list[str] = []
        self.foreign = sum(self._remove_foreign_entries(key) for key in (self.keys.deadline, self.keys.reaping,
                                                                          self.keys.unsaved, self.keys.busy,
                                                                          self.keys.orphans))  # fmt: skip
        for page in self._live_pages():
            records = read_records(self.pool, page)
            missing += [s for s, record in zip(page, records, strict=True) if not is_record(record)]
            extend()
        if not missing:
            return 0
        # With the index intact, a session it does not file under a tenant has none; with the index lost
        # as well, nothing knows its tenant: it counts against every capped tenant until it ends.
        tenants = self._tenants_of(set(missing))
        unknown = UNKNOWN_TENANT if index_lost else ''
        stand_ins = {s: (seq, tenants.get(s, unknown)) for s in missing if (seq := self._next_seq(s)) is not None}
        return self.pool.run(self.claims.rebuild_records(stand_ins, now_ms)) if stand_ins else 0

    def _tenants_of(self, session_ids: set[str]) -> dict[str, str]:
        """The tenant the index still files each of these sessions under (one pass over the index: rare)."""
        found = {}
        for member in self._scan(self.keys.tenants):
            tenant, _, rest = member.partition('|')
            if rest in session_ids:
                found[rest] = tenant
        return found

    def _next_seq(self, session_id: str) -> int | None:
        """One past any turn MongoDB knows the session finished (no checkpoint from before covers it); None
        when MongoDB cannot say (the record is rebuilt by a later reconcile, not with a guess)."""
        try:
            document = self.store.load(session_id) if self.store is not None else None
        except PersistenceError as exc:
            log.warning('record of %s not rebuilt yet: %s', session_id, exc)
            return None
        if document is None:
            return 1
        return max(int(document.get('turn_seq', 0)), int(document.get('checkpoint_seq', 0))) + 1

    def _forget_requests_of_gone_sessions(self) -> None:
        """Checkpoint requests of sessions that left the pool (closed, evicted, expired): nobody answers them."""
        asked = [member for member in self._scan(self.keys.unsaved) if validate.is_identifier(member)]
        for start in range(0, len(asked), PAGE):
            page = asked[start : start + PAGE]
            live = self.pool.run(calls.scores(self.keys.live, page))
            self.pool.run(calls.remove(self.keys.unsaved, [s for s, at in zip(page, live, strict=True) if at is None]))

    def _forget_what_gone_sessions_left(self) -> None:
        """Pins and trails of sessions no longer live, and tenant pin members of sessions not pinned (left while
        outside damage hid a session from its transition): each checked and removed in one script a page."""
        k = self.keys
        scans = (('pins', self._scan(k.pinned)), ('tenant_pins', self._scan(k.pinned_tenants)),
                 ('trails', self._hash_fields(k.trail)))  # fmt: skip
        for kind, members in scans:
            found = [calls.as_read(member) for member in members]
            for start in range(0, len(found), PAGE):
                self.pool.run(self.claims.forget_gone(kind, found[start : start + PAGE]))

    def _hash_fields(self, key: str) -> Iterator[str]:
        """Every field of hash `key` (HSCAN: each one present throughout is seen)."""
        for page in self.pool.pages(lambda cursor: calls.hscan(key, cursor, PAGE)):
            yield from page

    def _drop_stray_tenants(self, extend: Callable[[], None]) -> int:
        dropped, low = 0, '-'
        while True:
            members = self.pool.run(calls.by_lex(self.keys.tenants, low, '+', SCRIPT_PAGE))
            if not members:
                return dropped
            dropped += self.pool.run(self.claims.drop_stray_tenants(members))
            low = '(' + members[-1]
            extend()
