"""Rebuild: a pool whose Redis lost its state (a restart without persistence, FLUSHALL), or may have lost some
writes (a restart from an older snapshot, a failover to a replica that had not received the last ones: any
new replication history), takes back what MongoDB knows.

Every activation is recorded in MongoDB (owner, tenant, profile, created, hard deadline), and every end of a
session too (evicted: resumable; closed; expired). So the sessions MongoDB says are live are the pool's live
sessions: the rebuild readmits each one whose deadline is ahead (active as of now, its turn sequence one past
anything MongoDB knows: the turns it finished since were lost with Redis, so it must checkpoint again before it
can be evicted as resumable),
records the others as expired; a session Redis kept has its turn sequence moved on the same way (the turns it
finished since the server's last kept write were lost), one Redis holds in an earlier life than MongoDB's is given
back to that life, and one whose life MongoDB ended (or evicted) is ended again in Redis. It
lifts the fencing epoch above every token MongoDB holds, repairs the counters
and the tenant index (reconcile), and only then marks the pool verified on this server's replication history
(and writes the generation marker back): until then admission fails closed (PoolRecovering), and no eviction
but expiry runs (claim_session.lua refuses: a session's lost turns or its lost restore could not be seen). A server
that
restarts or fails over during the rebuild is rebuilt again by the next sweep. Resumable sessions stay in
MongoDB, restorable as before.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from lifecycle import validate
from lifecycle.errors import LifecycleError
from lifecycle.models import SessionInfo, SessionState, to_datetime, to_epoch_ms
from lifecycle.pool import calls
from lifecycle.pool.claims import ClaimIndex, Readmitted
from lifecycle.pool.executor import Executor
from lifecycle.pool.sessions import Closed, PoolState, SessionIndex
from lifecycle.reaper.reconcile import Reconciler
from lifecycle.sandboxes import SandboxDriver
from lifecycle.stores import SessionRecord, SnapshotStore
from lifecycle.stores.mongo import fence_of

log = logging.getLogger(__name__)
PAGE = 200
# Ended states; a resumable document ends a copy Redis holds only by its tenure (see over_in_mongodb): a restore
# makes the session live in Redis (a later tenure) before it flips MongoDB back to live, and one in flight must not
# be ended.
ENDED = (SessionState.CLOSED.value, SessionState.EXPIRED.value, SessionState.DELETED.value)


def same_life_as(document: Mapping[str, Any], info: SessionInfo) -> bool:
    """Whether `document` records the life `info` is of (one written before lives recorded their creation is)."""
    created = document.get('created_at')
    return created is None or (isinstance(created, datetime) and to_epoch_ms(created) == info.created_at_ms)


def over_in_mongodb(document: Mapping[str, Any], info: SessionInfo) -> bool:
    """Whether the life `info` is of is over by `document`: ended (that life); evicted (that life, resumable: the
    eviction's last step, in Redis, was lost); or superseded by a later one that is not live (resumable, or ended
    itself; a later live one is given back by the readmit)."""
    state, tenure = document.get('state'), document.get('tenure')
    # A stand-in record (reconcile's, for one Redis lost: no owner, no tenure, created at the repair) is of the
    # life Redis held, whatever it was: a life being activated now has its full record from the start.
    stand_in = not info.owner and info.tenure is None
    if state in ENDED and (stand_in or same_life_as(document, info)):
        return True
    if info.tenure is None or not isinstance(tenure, int):
        return False
    return tenure > info.tenure or (state == SessionState.RESUMABLE.value and tenure == info.tenure)


@dataclass(frozen=True)
class Rebuilt:
    """What a rebuild did."""

    generation: str
    verified: bool = True  # False: the server restarted or failed over during the rebuild; the next one verifies
    readmitted: int = 0
    orphaned: int = 0  # sandboxes still running for no session MongoDB knows live: released by the expiry sweep
    expired: int = 0
    unreadable: int = 0
    epoch: int = 0
    ended: int = 0  # live in Redis, ended in MongoDB (a close or an expiry the failover lost): ended again
    # Kept by Redis, their turn sequences moved one past anything known (turns finished since the server's last
    # kept write may be lost): each needs a checkpoint again before it can be evicted as resumable.
    moved_on: int = 0


def readmitted(document: Mapping[str, Any]) -> Readmitted:
    """The session a live document describes; LifecycleError/ValueError-family if it is unusable."""
    created = document.get('created_at')
    tenure = validate.optional_token('tenure', document.get('tenure'))  # its replica's copy keeps its fence
    return Readmitted(
        session_id=validate.identifier('session_id', document['_id']),
        owner=validate.identifier('owner', document['owner']),
        tenant=validate.optional_identifier('tenant', document.get('tenant')),
        profile=validate.optional_identifier('profile', document.get('profile')),
        created_ms=to_epoch_ms(created) if created is not None else 0,
        # One past anything MongoDB knows: the turns it finished since were lost with Redis, so no checkpoint
        # taken before the loss may cover it; it must checkpoint again before it can be evicted as resumable.
        turn_seq=max(int(document.get('turn_seq', 0)), int(document.get('checkpoint_seq', 0) or 0)) + 1,
        expires_at_ms=to_epoch_ms(document['expires_at']),
        tenure=int(tenure) if tenure is not None else None,  # a plain int: BSON's Int64 is not one Redis can take
    )


class Rebuilder:
    """Rebuilds one pool from MongoDB; run by the expiry sweep when the pool is not ready (see `due`)."""

    def __init__(self, pool: Executor, store: SnapshotStore, driver: SandboxDriver | None = None) -> None:
        self.pool = pool
        self.store = store
        self.driver = driver
        self.claims = ClaimIndex(pool.settings, pool.keys)
        self.index = SessionIndex(pool.settings, pool.keys)

    def due(self) -> PoolState | None:
        """The pool's state if it needs this: no marker (new, then this initialises it, or it lost its state),
        or not verified on this server's replication history (Redis restarted or failed over since)."""
        state = self.pool.run(self.index.pool_state())
        return None if state.ready else state

    def rebuild(self, state: PoolState, extend: Callable[[], None]) -> Rebuilt:
        keys, now = self.pool.keys, self.pool.now_ms()
        proposed = secrets.token_hex(8)
        generation = self.store.claim_generation(keys.prefix, proposed)
        # First, above every token the lost Redis may have issued (those of claims and writes never durable too):
        # Redis's clock in ms (the one each replication history's first token lifts the epoch to, see fresh_token
        # in _lib.lua) outruns any counter unless it issued more than a token a millisecond since the last lift.
        # Not further: Lua prints numbers with 14 significant digits, so a token must stay below 1e14.
        epoch = self.pool.run(self.claims.raise_epoch(max(self.store.highest_fence(), self.pool.server_ms()) + 1))
        readmitted_total, moved_on, expired, unreadable, after = 0, 0, 0, 0, ''
        owners: set[str] = set()
        if state.initialised:
            # The server kept state, and perhaps outside damage its snapshot held (a record without its live entry,
            # a live entry without its record): repaired first, every session it holds is one the readmit sees
            # held, so that its turn sequence moves on, its old checkpoint request goes, or its earlier life is
            # given back.
            Reconciler(self.pool, self.store).repair(extend)
        while True:
            page = self.store.live_documents(keys.prefix, after, PAGE)
            if not page:
                break
            after = str(page[-1]['_id'])
            due: list[Readmitted] = []
            for document in page:
                try:
                    session = readmitted(document)
                except (LifecycleError, KeyError, TypeError, ValueError, OverflowError) as exc:
                    unreadable += 1
                    log.warning('session document %r not readmitted: %s', document.get('_id'), exc)
                    continue
                if session.expires_at_ms <= now:
                    self._expire(document, session)
                    expired += 1
                else:
                    due.append(session)
            missing, kept = self._missing(due, now)
            if missing:
                # Their fences go up to the new epoch first: a write still in flight from before the loss (an
                # eviction's, say) can no longer land on a session the pool now holds live again. Only theirs: a
                # session Redis still holds (a failover kept it) may be closing right now, with an older token.
                self.store.raise_fences([s.session_id for s in missing], epoch)
                owners.update(s.owner for s in missing)
            if missing or kept:  # those it kept only have their turn sequences moved on
                taken, moved = self.pool.run(self.claims.readmit(missing, kept, now))
                readmitted_total, moved_on = readmitted_total + taken, moved_on + moved
            extend()
        # Repaired (again, for a server that kept state): the counters and tenant index after the readmit, and a
        # record or deadline still missing, before a session the pool cannot read is passed over below.
        Reconciler(self.pool, self.store).repair(extend)
        ended = self._end_what_mongodb_ended(now, extend)
        self._await_heartbeats(owners, now)
        # A new pool (MongoDB never recorded it) lost nothing: no sandbox can be left over from its sessions.
        orphaned = self._orphan_unvouched_sandboxes(now) if generation != proposed else 0
        verified = self.pool.run(self.index.mark_verified(generation, state.replication_id))
        rebuilt = Rebuilt(generation, verified, readmitted_total, orphaned, expired, unreadable, epoch, ended, moved_on)
        if readmitted_total or moved_on or orphaned or expired or unreadable or ended or not verified:
            cause = 'lost its state' if not state.initialised else 'restarted or failed over'
            log.warning('pool %s rebuilt from MongoDB after Redis %s: %s', keys.prefix, cause, rebuilt)
            counters = {
                'damage:pool_rebuilt': 1,
                'damage:sessions_readmitted': readmitted_total,
                'damage:turns_moved_on': moved_on,
            }
            self.pool.run_many([calls.increment(keys.counters, name, n) for name, n in counters.items()])
        return rebuilt

    def _await_heartbeats(self, owners: set[str], now_ms: int) -> None:
        """Heartbeats were lost with Redis. A replica that heartbeats (it said so durably) is given one heartbeat
        lease from now to vouch for the sessions readmitted under it: if it died meanwhile, the owner-lost sweep
        then recovers them with a durable record, as for any lost replica. One that never heartbeats keeps its
        sessions until they idle out, as before the loss."""
        vouching = owners & set(self.store.heartbeating_owners(self.pool.keys.prefix)) if owners else set()
        if vouching:
            self.pool.run_many([self.index.heartbeat(owner, now_ms) for owner in sorted(vouching)])

    def _end_what_mongodb_ended(self, now_ms: int, extend: Callable[[], None]) -> int:
        """Sessions Redis holds live whose life MongoDB recorded as ended (closed, expired, deleted): a failover (or
        an older snapshot) lost the close, or the expiry, that Redis had acknowledged; or the last step of an
        eviction MongoDB recorded (resumable, the same tenure): the app's checkpoints were refused, and a restore
        too, while Redis held it. And copies of an earlier life than a resumable or ended one MongoDB holds (a
        lower tenure: it lost an eviction and the restore, and perhaps the eviction, after it): MongoDB refuses
        their eviction, and the later life could not be restored while they hold the id.
        Each ends again in Redis, as a close: a closed session never comes back live. Another life of the same id
        (one being activated or restored now: Redis first, then MongoDB) is left alone, and so is a session
        claimed now (an eviction or expiry in flight finishes it)."""
        ended, cursor = 0, 0
        while True:
            cursor, ids = self.pool.run(calls.zscan(self.pool.keys.live, cursor, PAGE))
            documents = self.store.load_many(ids) if ids else {}
            gone = [i for i in ids if documents.get(i, {}).get('state') in (*ENDED, SessionState.RESUMABLE.value)]
            if gone:
                infos = self.pool.run_each([self.index.status(i, now_ms) for i in gone])
                over = [info for info in infos if isinstance(info, SessionInfo)
                        and over_in_mongodb(documents[info.session_id], info)]  # fmt: skip
                # Each as it was read: a life that replaced it since is not this one's to end.
                closes = self.pool.run_each([self.index.close(i.session_id, now_ms, i.tenure) for i in over])
                ended += sum(1 for closed in closes if isinstance(closed, Closed))
                if over:
                    log.warning('%d sessions live in Redis had ended in MongoDB, or been evicted and restored since '
                                '(a failover lost it): ended again (%s, ...)', len(over),
                                over[0].session_id)  # fmt: skip
            extend()
            if cursor == 0:
                return ended

    def _missing(self, sessions: list[Readmitted], now_ms: int) -> tuple[list[Readmitted], list[Readmitted]]:
        """Those Redis does not hold, and their apps did not close within the last minute (MongoDB may not have
        recorded that close yet: see `Keys.closed`); and those it holds an earlier life of (a lower tenure: it
        lost their eviction and the restore MongoDB recorded), whose replica's writes would otherwise be taken
        and the current owner's refused. Then those it kept: the turns they finished since its last write were
        lost, so their turn sequences move on (the readmit script does that)."""
        ids = [s.session_id for s in sessions]
        live, closed = self.pool.run_many(
            [calls.scores(self.pool.keys.live, ids), calls.scores(self.pool.keys.closed, ids)]
        )
        missing = [s for s, held, ended in zip(sessions, live, closed, strict=True) if held is None and ended is None]
        held = [s for s, at in zip(sessions, live, strict=True) if at is not None]
        infos = self.pool.run_each([self.index.status(s.session_id, now_ms) for s in held]) if held else []
        earlier = [s for s, info in zip(held, infos, strict=True) if isinstance(info, SessionInfo)
                   and info.tenure is not None and s.tenure is not None and info.tenure < s.tenure]  # fmt: skip
        if earlier:
            log.warning('%d sessions held in Redis as an earlier life than MongoDB records (a failover lost their '
                        'eviction and restore): given back to the later one (%s, ...)', len(earlier),
                        earlier[0].session_id)  # fmt: skip
        return missing + earlier, [s for s in held if s not in earlier]

    def _orphan_unvouched_sandboxes(self, now_ms: int) -> int:
        """The sandbox driver's leases are the other witness: a sandbox still running whose session the rebuilt
        pool does not hold (it ended while Redis was lost, or MongoDB never knew it live) serves nobody. It goes on
        the orphan list, due once a reservation's lease has passed: a reservation that outlived a failover may
        be about to activate it (apps create the sandbox between reserve and activate), and the expiry sweep
        releases it only if its session is still not live by then. A sandbox whose session MongoDB files under
        another pool (a driver shared between pools) is that pool's."""
        if self.driver is None:
            return 0
        try:
            leases = self.driver.leases()
        except Exception:  # a driver that cannot list now: the expiry sweep still releases what passes its deadline
            log.warning('the sandbox driver could not list its sandboxes for the rebuild', exc_info=True)
            return 0
        running = [lease.session_id for lease in leases]
        held = self.pool.run(calls.scores(self.pool.keys.live, running))
        unheld = [session_id for session_id, score in zip(running, held, strict=True) if score is None]
        pools = {session_id: document.get('pool') for session_id, document in self.store.load_many(unheld).items()}
        due_ms = now_ms + self.pool.settings.reservation_lease_s * 1000
        unvouched = [(s, due_ms) for s in unheld if pools.get(s) in (None, self.pool.keys.prefix)]
        if unvouched:
            self.pool.run(calls.add(self.pool.keys.orphans, unvouched))
        return len(unvouched)

    def _expire(self, document: Mapping[str, Any], session: Readmitted) -> None:
        """A session whose deadline passed while the pool was lost ends as it would have: expired, durably."""
        record = SessionRecord(session.session_id, session.owner, session.tenant, session.profile,
                               to_datetime(session.created_ms), to_datetime(session.created_ms),
                               to_datetime(session.expires_at_ms), session.turn_seq)  # fmt: skip
        fence = fence_of(document)
        if not fence < validate.TOKEN_LIMIT:
            log.warning('expired session %s not recorded: its fence %r is no token (outside damage)',
                        session.session_id, document.get('fence'))  # fmt: skip
            return
        try:
            self.store.end(record, SessionState.EXPIRED, int(fence) + 1,
                           self.pool.settings.expiry_write_timeout_ms)  # fmt: skip
        except LifecycleError as exc:
            log.warning('expired session %s not recorded: %s', session.session_id, exc)
