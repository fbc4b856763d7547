"""Reconciliation: find and repair outside damage to the pool (a lost key, a hand edit), in atomic pages.

Normal running never needs it: every transition moves the sets, the records, the tenant index and the
counter together. What a lost or edited key leaves behind, each page repairs atomically and counts:

- a record whose live entry is gone: put back in the pool (it still runs for its user; the pool may
  then sit over its cap, and admission refuses until it is under);
- a live session without its deadline: the latest deadline its profile allows (`created + max_ttl_s`);
- a live session without its record: a stand-in record whose turn sequence is one past anything MongoDB
  holds for it, so it must checkpoint again before it can be evicted as resumable;
- tenant index members missing (added) or backed by nothing (dropped), then the index marked complete;
- the slot counter, recomputed from the sets.

Pages are atomic and transitions keep running between them: a transition adds or removes exactly its
own entries, so whatever it does between two pages is already right, and the passes converge.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from lifecycle.claims import ClaimIndex, Drift
from lifecycle.errors import PersistenceError
from lifecycle.keys import META_BUCKETS
from lifecycle.records import SCAN_BUCKETS, read_records
from lifecycle.stores import SnapshotStore

if TYPE_CHECKING:
    from lifecycle.client import Lifecycle

log = logging.getLogger(__name__)
PAGE = 500  # live sessions or tenant index members per round trip
UNKNOWN_TENANT = '?'  # no valid id: a session whose tenant nothing knows any more (see _lib.lua)


class Reconciler:
    """Runs one reconciliation of the pool; `extend` is called between pages (the sweep lock's)."""

    def __init__(self, lc: Lifecycle, store: SnapshotStore | None) -> None:
        self.lc = lc
        self.store = store
        self.keys = lc.index.keys
        self.claims = ClaimIndex(lc.settings, self.keys)

    def run(self, extend: Callable[[], None]) -> Drift:
        now = self.lc.now_ms()
        lost_index = self.lc.redis.zscore(self.keys.tenants, '#') is None
        totals = [0, 0, 0, 0]  # relinked, deadlines restored, tenant members added, malformed records
        for start in range(0, META_BUCKETS, SCAN_BUCKETS):
            buckets = range(start, min(start + SCAN_BUCKETS, META_BUCKETS))
            page = self.lc.run(self.claims.repair_records(buckets, now))
            totals = [total + n for total, n in zip(totals, page, strict=True)]
            extend()
        relinked, deadlines, members, malformed = totals
        rebuilt = self._rebuild_missing_records(now, lost_index, extend)
        dropped = self._drop_stray_tenants(extend)
        purged, counter, truth, reserved_members, _ = self.lc.run(self.claims.reconcile_counters(now, True))
        drift = Drift(
            purged_reservations=purged,
            pool_drift=max(counter, 0) - truth,
            counter_missing=counter < 0 and truth > 0,  # an empty pool that never held anything has none yet
            tenant_drift=members + reserved_members + dropped,
            tenant_index_rebuilt=lost_index and truth > 0,
            relinked=relinked,
            deadlines_restored=deadlines,
            records_rebuilt=rebuilt,
            malformed_records=malformed,
        )
        if drift.found:
            log.warning('reconcile repaired outside damage: %s', drift.describe())
            pipe = self.lc.redis.pipeline(transaction=False)
            for kind, n in drift.counts().items():
                pipe.hincrby(self.keys.counters, f'damage:{kind}', n)
            pipe.execute()
        return drift

    def _live_pages(self) -> Iterator[list[str]]:
        """Every live session id, a page at a time (ZSCAN: each one present throughout is seen)."""
        page: list[str] = []
        for session_id, _ in self.lc.redis.zscan_iter(self.keys.live, count=PAGE):
            page.append(str(session_id))
            if len(page) == PAGE:
                yield page
                page = []
        if page:
            yield page

    def _rebuild_missing_records(self, now_ms: int, index_lost: bool, extend: Callable[[], None]) -> int:
        missing: list[str] = []
        for page in self._live_pages():
            records = read_records(self.lc.redis, self.keys, page)
            missing += [s for s, record in zip(page, records, strict=True) if record is None]
            extend()
        if not missing:
            return 0
        # With the index intact, a session it does not file under a tenant has none; with the index lost
        # as well, nothing knows its tenant: it counts against every capped tenant until it ends.
        tenants = self._tenants_of(set(missing))
        unknown = UNKNOWN_TENANT if index_lost else ''
        stand_ins = {s: (seq, tenants.get(s, unknown)) for s in missing if (seq := self._next_seq(s)) is not None}
        return self.lc.run(self.claims.rebuild_records(stand_ins, now_ms)) if stand_ins else 0

    def _tenants_of(self, session_ids: set[str]) -> dict[str, str]:
        """The tenant the index still files each of these sessions under (one pass over the index: rare)."""
        found = {}
        for member, _ in self.lc.redis.zscan_iter(self.keys.tenants, count=PAGE):
            tenant, _, rest = str(member).partition('|')
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

    def _drop_stray_tenants(self, extend: Callable[[], None]) -> int:
        dropped, low = 0, '-'
        while True:
            members = [str(m) for m in self.lc.redis.zrangebylex(self.keys.tenants, low, '+', start=0, num=PAGE)]
            if not members:
                return dropped
            dropped += self.lc.run(self.claims.drop_stray_tenants(members))
            low = '(' + members[-1]
            extend()
