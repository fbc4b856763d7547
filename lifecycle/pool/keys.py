"""Every Redis key name lifecycle uses, one member per key, all under one hash tag."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

# Session records are spread over this many small hashes, so that Redis keeps each one listpack-encoded
# (compact: no dict entry per field). 1,000,000 sessions average about 61 a bucket (94 at most when
# measured), under hash-max-listpack-entries (512 compiled in, 128 in the sample redis.conf). Bigger
# pools still work: their buckets fall back to hashtable encoding, as does a bucket given a session id
# or record longer than hash-max-listpack-value (64 bytes).
META_BUCKETS = 16_384


@dataclass(frozen=True)
class Keys:
    """Key names under `{<prefix>}`, so every multi-key script runs on one Redis Cluster slot."""

    prefix: str  # '{lc}': the hash tag, no trailing colon

    @classmethod
    def for_prefix(cls, key_prefix: str) -> Keys:
        return cls('{' + key_prefix + '}')

    @property
    def generation(self) -> str:
        """STRING: the pool's generation, written once when the pool is first initialised (and recorded in
        MongoDB). Gone while the pool holds sessions: Redis lost its state; admission fails closed until rebuilt."""
        return f'{self.prefix}:generation'

    @property
    def verified(self) -> str:
        """STRING: the replication id (INFO's master_replid) of the server the pool was last verified on. A
        restart or a failover gives the server a new one: until the pool is verified against MongoDB (the
        writes the old server took and this one never got), admission fails closed."""
        return f'{self.prefix}:verified'

    @property
    def closed(self) -> str:
        """ZSET session_id -> when its app closed it (epoch ms), for a minute: a rebuild running meanwhile (it reads
        MongoDB, where the close may not have landed yet) must not bring it back."""
        return f'{self.prefix}:closed'

    @property
    def live(self) -> str:
        """ZSET session_id -> last genuine activity (epoch ms). The live pool."""
        return f'{self.prefix}:live'

    @property
    def deadline(self) -> str:
        """ZSET session_id -> hard deadline `expires_at` (epoch ms)."""
        return f'{self.prefix}:deadline'

    @property
    def busy(self) -> str:
        """ZSET session_id -> busy-lease expiry (epoch ms); current while the score is in the future."""
        return f'{self.prefix}:busy'

    @property
    def turns(self) -> str:
        """HASH session_id -> 'token=lease_ms,...' of the turns holding it busy (the busy score is their max)."""
        return f'{self.prefix}:turns'

    def meta_of(self, session_id: str) -> str:
        """HASH bucket `crc32(session_id) % META_BUCKETS` that holds this session's record (see `meta_bucket`)."""
        return self.meta_bucket(zlib.crc32(session_id.encode('utf-8', 'surrogateescape')) % META_BUCKETS)

    def meta_bucket(self, n: int) -> str:
        """HASH bucket n of META_BUCKETS: session_id -> packed record 'owner|tenant|profile|created_ms|turn_seq'."""
        return f'{self.meta_bucket_prefix}{n}'

    @property
    def legacy_meta(self) -> str:
        """HASH session_id -> record: the single hash of the first layout; reconcile moves its records into buckets."""
        return f'{self.prefix}:meta'

    @property
    def meta_bucket_prefix(self) -> str:
        """What every meta bucket's name starts with; bucket n is this followed by n (for scripts that walk them)."""
        return f'{self.prefix}:meta:'

    @property
    def pinned(self) -> str:
        """ZSET session_id -> when it was pinned (epoch ms): idle, LRU and make-room eviction leave it alone."""
        return f'{self.prefix}:pinned'

    @property
    def pinned_tenants(self) -> str:
        """ZSET (every score 0) 'tenant|session_id' of the pinned sessions that have a tenant: a tenant's pins are
        one ZLEXCOUNT (see tenant_pin_limit)."""
        return f'{self.prefix}:pinned_tenants'

    @property
    def trail(self) -> str:
        """HASH session_id -> 'source;entry;...': what last stamped its activity and its last decisions (see
        lifecycle/pool/trail.py); only live sessions, each capped at trail_length entries."""
        return f'{self.prefix}:trail'

    @property
    def reaping(self) -> str:
        """ZSET session_id -> eviction claim lease expiry (epoch ms); present while a worker evicts it."""
        return f'{self.prefix}:reaping'

    @property
    def claims(self) -> str:
        """HASH session_id -> 'token|reason' of the eviction claim in flight."""
        return f'{self.prefix}:claims'

    @property
    def reservations(self) -> str:
        """ZSET reservation 'token|owner|tenant' -> lease expiry (epoch ms)."""
        return f'{self.prefix}:reservations'

    @property
    def slots(self) -> str:
        """STRING slot counter = live sessions + held reservations."""
        return f'{self.prefix}:slots'

    @property
    def tenants(self) -> str:
        """ZSET (every score 0) 'tenant|session_id' and 'tenant|reservation member': a tenant's slots are one
        ZLEXCOUNT; the member '#' marks the index as complete (absent: lost or never built)."""
        return f'{self.prefix}:tenants'

    @property
    def legacy_tenant_slots(self) -> str:
        """HASH tenant -> slots: the tenant counters of the previous layout; reconcile deletes it."""
        return f'{self.prefix}:tenant_slots'

    @property
    def migrations(self) -> str:
        """HASH migration name -> when it ran (epoch ms): one-time upgrades of an older layout, done once."""
        return f'{self.prefix}:migrations'

    @property
    def unsaved(self) -> str:
        """ZSET session_id -> when its owner was first asked for a checkpoint (epoch ms), until one comes."""
        return f'{self.prefix}:unsaved'

    @property
    def orphans(self) -> str:
        """ZSET session_id -> when its sandbox release failed (epoch ms); retried by the expiry sweep."""
        return f'{self.prefix}:orphans'

    @property
    def warn_cursor(self) -> str:
        """HASH idle_ttl_s -> the last_active (epoch ms) up to which owners were warned."""
        return f'{self.prefix}:warn_cursor'

    @property
    def idle_cursor(self) -> str:
        """HASH idle_ttl_s -> the last_active (epoch ms) up to which the idle sweep has read the live index for
        that timeout; '#' -> the timeouts in force when they were written (other ones: read again from the start)."""
        return f'{self.prefix}:idle_cursor'

    @property
    def idle_recheck(self) -> str:
        """ZSET session_id -> when to look at it again (the next idle sweep reads it): the sessions a sweep read
        past its cursor and kept (busy, being evicted, a refused eviction, an unreadable record), and those whose
        record reconcile rebuilt (their timeout changed); the member '#' marks the set as complete."""
        return f'{self.prefix}:idle_recheck'

    def swept(self, sweep: str) -> str:
        """STRING set for half an interval after a sweep ran, so a duplicate delivery is a no-op."""
        return f'{self.prefix}:swept:{sweep}'

    @property
    def counters(self) -> str:
        """HASH counter name -> count: evictions, aborts, refusals, sweeps; every process adds to it."""
        return f'{self.prefix}:counters'

    @property
    def sweep_stats(self) -> str:
        """HASH '<kind>:last_ms' / '<kind>:duration_ms' -> when each sweep kind last ran and how long it took."""
        return f'{self.prefix}:sweep_stats'

    @property
    def sweep_durations(self) -> str:
        """HASH '<kind>|le|<bucket s>' / '<kind>|count' / '<kind>|sum': a histogram of sweep durations."""
        return f'{self.prefix}:sweep_durations'

    @property
    def epoch(self) -> str:
        """STRING fencing counter; every eviction claim takes a fresh value with INCR."""
        return f'{self.prefix}:epoch'

    @property
    def replicas(self) -> str:
        """ZSET API replica id -> heartbeat expiry (epoch ms)."""
        return f'{self.prefix}:replicas'

    @property
    def runs_terminal(self) -> str:
        """ZSET finished run_id -> when it finished (epoch ms); running runs are never in it."""
        return f'{self.prefix}:runs:terminal'

    # A run id may hold ':' (ids allow it), so a run's two keys differ before the id, never after it:
    # '{lc}:run:<id>' and '{lc}:run_events:<id>' cannot name each other's key for any two ids.
    def run(self, run_id: str) -> str:
        """HASH of one run: status, session_id, started_ms, finished_ms."""
        return f'{self.prefix}:run:{run_id}'

    def run_events(self, run_id: str) -> str:
        """STREAM of one run's event frames (field 'f', JSON), capped at max_events_per_run."""
        return f'{self.prefix}:run_events:{run_id}'

    @property
    def worktrees(self) -> str:
        """HASH absolute worktree path -> the session_id it belongs to."""
        return f'{self.prefix}:worktrees'

    @property
    def cleaning(self) -> str:
        """ZSET session_id -> lease expiry (epoch ms) while a cleaner removes its worktree; blocks activation."""
        return f'{self.prefix}:cleaning'

    def owned(self, owner: str) -> str:
        """SET of the sessions one replica owns (activated or restored), so that recovering a lost replica reads
        its sessions, not every record. A superset at worst (an entry whose record now names another owner, or
        none, is dropped when read); reconcile adds back what outside damage took."""
        return f'{self.prefix}:owned:{owner}'

    def inbox(self, owner: str) -> str:
        """STREAM of notices to one replica (warning, evicted, expired, checkpoint_requested); capped."""
        return f'{self.prefix}:inbox:{owner}'

    def lock(self, sweep: str) -> str:
        """STRING redis-py Lock token of one sweep kind, with a TTL."""
        return f'{self.prefix}:lock:{sweep}'
