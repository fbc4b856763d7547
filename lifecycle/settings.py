"""Settings: everything lifecycle can be told, and the only place environment variables are read."""

from __future__ import annotations

import difflib
import os
import re
from typing import TYPE_CHECKING, Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from lifecycle.errors import ConfigurationError
from lifecycle.models import Limits, SweepKind

ENV_PREFIX = 'LIFECYCLE_'
TEST_PREFIX = 'LIFECYCLE_TEST_'  # the test suite's own variables (LIFECYCLE_TEST_REDIS_URL, ...), not settings
HARD_MAX_TTL_S = 86_400  # 24 h: a "hard" deadline further out than a day is a configuration mistake.
_PREFIX = re.compile(r'[A-Za-z0-9_.:-]{1,64}')
_NAME = re.compile(r'[A-Za-z0-9][A-Za-z0-9._:@=+-]{0,127}')


def redacted(url: str) -> str:
    """`url` without its password, for error messages and logs."""
    # Up to the last '@' of all: a password with an unencoded '/' or '@' (a wrong URL, named by the error that
    # refuses it) is hidden whole; an '@' further on only hides more.
    return re.sub(r'//([^:/@]*):.*@', r'//\1:***@', url)


def describe_error(error: ValidationError) -> str:
    """One line naming each bad LIFECYCLE_* variable and why, never echoing a value (it may be a secret)."""
    parts = []
    for item in error.errors(include_url=False, include_input=False):
        field = '.'.join(str(part) for part in item['loc'])
        name = f'{ENV_PREFIX}{field.split(".")[0].upper()}' + (field[len(field.split('.')[0]) :] if field else '')
        message = str(item['msg']).removeprefix('Value error, ')
        parts.append(f'{name}: {message}' if field else message)
    return 'invalid settings: ' + '; '.join(parts)


def env(field: str) -> str:
    """The environment variable of a setting: what an operator sets, so what an error names."""
    return f'{ENV_PREFIX}{field.upper()}'


# Kubernetes puts these into every pod of a namespace for each Service (enableServiceLinks, on by default): a
# Service named `lifecycle-exporter` gives LIFECYCLE_EXPORTER_SERVICE_HOST, ..._PORT=tcp://10.0.0.7:9808 and more.
_SERVICE_LINK = re.compile(r'.+_(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?|PORT_\d+_(TCP|UDP|SCTP)(_PROTO|_PORT|_ADDR)?)')


def is_service_link(name: str, value: str) -> bool:
    """Whether a variable is one Kubernetes set for a Service, not a (mistyped) setting."""
    return bool(_SERVICE_LINK.fullmatch(name)) or (
        name.endswith('_PORT') and value.startswith(('tcp://', 'udp://', 'sctp://'))
    )


def sentinel_addresses(value: str) -> list[tuple[str, int]]:
    """'host:port,host:port' as (host, port) pairs; ValueError naming the entry that is not one."""
    addresses = []
    for entry in value.split(','):
        host, _, port = entry.strip().rpartition(':')
        if not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65_536:
            raise ValueError(f'redis_sentinels entry {entry.strip()!r} is not host:port')
        addresses.append((host.strip('[]'), int(port)))
    return addresses


class ProfilePolicy(BaseModel):
    """Per-profile overrides; a field left out falls back to the global setting."""

    model_config = ConfigDict(frozen=True, extra='forbid', hide_input_in_errors=True)

    idle_ttl_s: PositiveInt | None = None
    default_ttl_s: PositiveInt | None = None
    max_ttl_s: PositiveInt | None = None


class Settings(BaseSettings):
    """Everything lifecycle can be told, read from LIFECYCLE_* variables (dicts as JSON)."""

    # hide_input_in_errors: an error must never print the settings it was given (a password, a webhook secret).
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra='forbid', hide_input_in_errors=True)

    if not TYPE_CHECKING:  # type checkers keep the keyword arguments pydantic derives from the fields

        def __init__(self, **values: Any) -> None:
            """As BaseSettings', but a LIFECYCLE_* variable a dict or list setting cannot be read from (not JSON)
            is a ConfigurationError naming it, not pydantic-settings' own error (nor its value: maybe a secret)."""
            try:
                super().__init__(**values)
            except SettingsError as exc:
                field = re.search(r'field "(\w+)"', str(exc))
                name = env(field.group(1)) if field else 'a LIFECYCLE_* variable'
                raise ConfigurationError(
                    f'invalid settings: {name} is not valid JSON (dict and list settings are read as JSON)'
                ) from None

    redis_url: str = 'redis://127.0.0.1:6379/0'
    # Highly available Redis (see pool/servers.py): the master of a Sentinel group, found through these
    # sentinels ('host:port,host:port'; redis_url then gives only the data nodes' credentials, database and
    # TLS), or a Redis Cluster (redis_url names any node; Celery's broker and RedBeat then need their own).
    redis_sentinels: str | None = None
    redis_sentinel_master: str = 'mymaster'
    redis_sentinel_password: SecretStr | None = None  # the sentinels' own (requirepass in sentinel.conf)
    redis_cluster: bool = False
    beat_redis_url: str | None = None  # RedBeat's Redis; None: the pool's
    mongo_url: str | None = None  # None: persistence off, so idle and LRU reaping are skipped
    mongo_database: str = 'lifecycle'
    key_prefix: str = 'lc'

    max_sessions: PositiveInt = 200
    tenant_max_sessions: PositiveInt | None = None  # default cap of every tenant; None: tenants uncapped
    tenant_limits: dict[str, PositiveInt] = Field(default_factory=dict)  # per-tenant overrides

    # An interactive session goes idle long before its hard deadline: idle reaping frees what nobody uses
    # (resumable, cheap to restore), the hard TTL only bounds what a runaway or forgotten client keeps.
    default_ttl_s: PositiveInt = 8 * 3_600
    max_ttl_s: PositiveInt = HARD_MAX_TTL_S
    idle_ttl_s: PositiveInt = 1_800
    profiles: dict[str, ProfilePolicy] = Field(default_factory=dict)

    reservation_lease_s: PositiveInt = 120
    busy_lease_s: PositiveInt = 60  # a turn's heartbeat renews it every third of this
    replica_ttl_s: PositiveInt = 30  # a replica whose heartbeat is older than this is lost
    clock_refresh_s: PositiveInt = 60  # how often a client re-learns Redis server time
    # touch(): 0 sends each stamp at once; > 0 coalesces them (merged per session, one ZADD every this many ms;
    # more than touch_max_pending sessions waiting makes the caller send them itself). See pool/stamper.py.
    touch_flush_ms: NonNegativeInt = 0
    touch_max_pending: PositiveInt = 100_000
    # Each client's connections: calls beyond them wait this long for one (a web tier's bursts), then fail.
    redis_max_connections: PositiveInt = 100
    redis_pool_timeout_s: PositiveFloat = 10.0

    # The reaper.
    max_live: PositiveInt | None = None  # soft cap for the LRU sweep (<= max_sessions); None: no LRU sweep
    min_idle_s: PositiveInt = 60  # reserve(make_room=True) evicts only sessions idle at least this long
    # pin(): the most sessions idle, LRU and make-room eviction must leave alone, in the pool (None: a quarter
    # of max_sessions, or of max_live when it is set, at least 1; 0: pinning is off) and per tenant (None: only
    # the pool's limit).
    max_pinned: NonNegativeInt | None = None
    max_pinned_per_tenant: PositiveInt | None = None
    # The decision trail (lifecycle/pool/trail.py): the last decisions kept per live session (0: off), and
    # whether it also records what last stamped each session (a field for every live session, and touch() runs a
    # script instead of one raw ZADD).
    trail_length: NonNegativeInt = 6
    trail_sources: bool = False
    replica_id: str | None = None  # this process's replica, named in the trail ('touch@api-1')
    require_checkpoint: bool = True  # evict as resumable only when a checkpoint covers the last turn
    # A session with unsaved turns whose owner was asked (checkpoint_requested) and gave none within the
    # grace: 'evict' it with its last durable checkpoint (recorded and counted), or 'keep' it live (a lost
    # replica's sessions go after the grace all the same: it can answer nothing).
    on_missing_checkpoint: Literal['keep', 'evict'] = 'evict'
    checkpoint_grace_s: PositiveInt = 600
    warn_before_s: PositiveInt = 300  # owners get a `warning` notice this long before the idle deadline
    claim_lease_s: PositiveInt = 60  # an eviction claim not finished by then is resolved by the next sweep
    sweep_batch_size: PositiveInt = 500
    evict_batch_size: PositiveInt = 100  # sessions per `lifecycle.evict` task: one pipeline and one bulk write per step
    notice_maxlen: PositiveInt = 1_000  # each owner's inbox stream is capped (approximately) at this length
    idle_interval_s: PositiveInt = 60
    lru_interval_s: PositiveInt = 60
    expired_interval_s: PositiveInt = 30
    owner_lost_interval_s: PositiveInt = 30
    warnings_interval_s: PositiveInt = 60
    reconcile_interval_s: PositiveInt = 300
    sweep_lock_timeout_s: PositiveInt = 60  # extended after every batch; a dead sweeper frees it this soon

    # Resumable sessions are deleted (document snapshot and messages; a 'deleted' tombstone stays) this long after
    # their eviction; None (the default: nothing is deleted unless asked) keeps them for good.
    resumable_retention_s: PositiveInt | None = None
    retention_interval_s: PositiveInt = 3_600

    # Finished runs (a turn's buffered event frames, kept for late reconnects).
    run_retention_s: PositiveInt = 300
    max_finished_runs: PositiveInt = 256
    max_events_per_run: PositiveInt = 1_000
    runs_interval_s: PositiveInt = 60

    # Orphan worktrees, on every host that has a root.
    worktree_root: str | None = None
    worktree_grace_s: PositiveInt = 3_600
    trash_retention_s: PositiveInt = 7 * 86_400
    worktrees_interval_s: PositiveInt = 600

    mongo_timeout_ms: PositiveInt = 5_000  # every MongoDB operation of an eviction, write concern included
    expiry_write_timeout_ms: PositiveInt = 2_000  # the best-effort write of an expiring session
    mongo_write_concern: str = 'majority'  # with j=true; 'majority' is what makes an eviction durable

    sandbox_driver: Literal['noop', 'webhook', 'process', 'docker'] = 'noop'
    sandbox_webhook_url: str | None = None
    sandbox_webhook_secret: SecretStr | None = None
    sandbox_webhook_timeout_s: PositiveFloat = 5.0
    sandbox_webhook_retries: NonNegativeInt = 3
    sandbox_state_dir: str = '/tmp/lifecycle-sandboxes'  # the process driver's records of its process groups
    # The docker driver (Docker Engine API, or Podman's): the engine (None: DOCKER_HOST, like the docker CLI),
    # how long a stopped sandbox gets before SIGKILL, the engine's call timeout, its API version ('auto':
    # asked), a host path of a static busybox mounted for images without `timeout`, and default limits.
    sandbox_docker_url: str | None = None
    sandbox_stop_grace_s: PositiveInt = 5
    sandbox_docker_timeout_s: PositiveInt = 10
    sandbox_docker_api_version: str = 'auto'
    sandbox_docker_wrapper: str | None = None
    sandbox_memory: str | None = None  # '512m'
    sandbox_cpus: PositiveFloat | None = None
    sandbox_pids: PositiveInt | None = None
    # A sandbox whose session is not live (closed, or never activated) is released once it is this old; at
    # least a reservation's lease, since apps start the sandbox between reserve and activate (None: the
    # longer of 300 s and twice that lease; see `orphan_grace_s`).
    sandbox_orphan_grace_s: PositiveInt | None = None

    log_format: Literal['text', 'json'] = 'text'  # json: one object per line, decisions with their fields
    broker_url: str | None = None  # Celery broker; None: redis_url
    task_time_limit_s: PositiveInt = 300  # hard limit of any task; the broker's visibility timeout exceeds it
    # Test and chaos only: send this worker `crash_signal` at this step of the eviction pipeline.
    crash_at: Literal['after_claim', 'after_persist', 'after_release'] | None = None
    crash_signal: Literal['SIGKILL', 'SIGSTOP'] = 'SIGKILL'

    @field_validator('redis_url', 'beat_redis_url')
    @classmethod
    def _redis_scheme(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and not value.startswith(('redis://', 'rediss://', 'unix://')):
            raise ValueError(f'{info.field_name} {redacted(value)!r} must start with redis://, rediss:// or unix://')
        return value

    @field_validator('redis_sentinels')
    @classmethod
    def _sentinel_list(cls, value: str | None) -> str | None:
        if value is not None:
            sentinel_addresses(value)
        return value

    @field_validator('mongo_url')
    @classmethod
    def _mongo_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(('mongodb://', 'mongodb+srv://')):
            raise ValueError(f'mongo_url {redacted(value)!r} must start with mongodb:// or mongodb+srv://')
        return value

    @field_validator('sandbox_docker_api_version')
    @classmethod
    def _api_version(cls, value: str) -> str:
        if value != 'auto' and not re.fullmatch(r'1\.\d{1,3}', value):
            raise ValueError(f"sandbox_docker_api_version {value!r} must be 'auto' or a version such as '1.41'")
        return value

    @field_validator('key_prefix')
    @classmethod
    def _plain_prefix(cls, value: str) -> str:
        if not _PREFIX.fullmatch(value):
            raise ValueError(f'key_prefix {value!r} must be 1..64 characters from A-Z a-z 0-9 _ . : - (no braces)')
        return value

    @field_validator('tenant_limits', 'profiles')
    @classmethod
    def _valid_names(cls, value: dict[str, object]) -> dict[str, object]:
        for name in value:
            if not _NAME.fullmatch(name):
                raise ValueError(f'name {name!r} is not a valid tenant or profile id')
        return value

    @field_validator('replica_id')
    @classmethod
    def _valid_replica(cls, value: str | None) -> str | None:
        if value is not None and not _NAME.fullmatch(value):
            raise ValueError(f'replica_id {value!r} is not a valid id')
        return value

    @property
    def orphan_grace_s(self) -> int:
        """How old a sandbox whose session is not live must be before the expiry sweep releases it."""
        if self.sandbox_orphan_grace_s is not None:
            return self.sandbox_orphan_grace_s
        return max(300, 2 * self.reservation_lease_s)

    def _check_caps(self) -> None:
        """Tenant caps, the soft cap and the pin limit within the pool's cap."""
        caps = {f'{env("tenant_limits")}[{name!r}]': cap for name, cap in self.tenant_limits.items()}
        if self.tenant_max_sessions is not None:
            caps[env('tenant_max_sessions')] = self.tenant_max_sessions
        cap = f'{env("max_sessions")}={self.max_sessions}'
        for name, tenant_cap in caps.items():
            if tenant_cap > self.max_sessions:
                raise ValueError(f'tenant cap {name}={tenant_cap} exceeds {cap}')
        if self.max_live is not None and self.max_live > self.max_sessions:
            raise ValueError(f'{env("max_live")}={self.max_live} exceeds {cap}')
        soft = f'{env("max_live")}={self.max_live}' if self.max_live is not None else cap
        if self.max_pinned is not None and self.max_pinned > (self.max_live or self.max_sessions):
            raise ValueError(f'{env("max_pinned")}={self.max_pinned} exceeds {soft}: pins would eat the pool')

    @model_validator(mode='after')
    def _consistent(self) -> Self:
        if self.max_ttl_s > HARD_MAX_TTL_S:
            raise ValueError(f'{env("max_ttl_s")}={self.max_ttl_s} exceeds the hard maximum of {HARD_MAX_TTL_S} s')
        for name in (None, *self.profiles):
            self._check_limits(name)
        self._check_caps()
        if self.sandbox_driver == 'webhook' and (
            self.sandbox_webhook_url is None or self.sandbox_webhook_secret is None
        ):
            raise ValueError(f'{env("sandbox_driver")}=webhook needs {env("sandbox_webhook_url")} and '
                             f'{env("sandbox_webhook_secret")}')  # fmt: skip
        if self.sandbox_orphan_grace_s is not None and self.sandbox_orphan_grace_s < self.reservation_lease_s:
            raise ValueError(f'{env("sandbox_orphan_grace_s")}={self.sandbox_orphan_grace_s} is shorter than '
                             f'{env("reservation_lease_s")}={self.reservation_lease_s}: a sandbox started for a '
                             'reservation could be released before it activates')  # fmt: skip
        if self.redis_cluster and self.redis_sentinels:
            raise ValueError(f'{env("redis_cluster")} and {env("redis_sentinels")} exclude each other')
        if self.redis_cluster and (self.broker_url is None or self.beat_redis_url is None):
            raise ValueError(f'{env("redis_cluster")}=true needs {env("broker_url")} and {env("beat_redis_url")}: '
                             "Celery's broker and RedBeat cannot run on a Redis Cluster")  # fmt: skip
        if self.busy_lease_s < 3:
            raise ValueError(f'{env("busy_lease_s")}={self.busy_lease_s} must be at least 3 (renewed every third)')
        return self

    def _check_limits(self, profile: str | None) -> None:
        limits = self.limits(profile)

        def name(field: str) -> str:
            return env(field) if profile is None else f'{env("profiles")}[{profile!r}].{field}'

        if limits.max_ttl_s > HARD_MAX_TTL_S:
            raise ValueError(f'{name("max_ttl_s")}={limits.max_ttl_s} exceeds {HARD_MAX_TTL_S} s')
        if limits.default_ttl_s > limits.max_ttl_s:
            raise ValueError(f'{name("default_ttl_s")}={limits.default_ttl_s} exceeds '
                             f'{name("max_ttl_s")}={limits.max_ttl_s}')  # fmt: skip
        # It would switch idle reaping off without saying so.
        if limits.idle_ttl_s >= limits.default_ttl_s:
            raise ValueError(
                f'{name("idle_ttl_s")}={limits.idle_ttl_s} is not below {name("default_ttl_s")}='
                f'{limits.default_ttl_s}: the hard deadline would end sessions before they could idle'
            )

    @model_validator(mode='after')
    def _no_unknown_variables(self) -> Self:
        """A LIFECYCLE_* variable that names no setting is a typo (LIFECYCLE_IDLE_TTL): say so, never ignore it."""
        known = {name.upper() for name in type(self).model_fields}
        for variable, value in os.environ.items():
            name = variable.upper()
            if (
                name.startswith(ENV_PREFIX)
                and not name.startswith(TEST_PREFIX)
                and name[len(ENV_PREFIX) :] not in known
                and not is_service_link(name, value)
            ):
                close = difflib.get_close_matches(name[len(ENV_PREFIX) :], known, n=1)
                hint = f'; did you mean {ENV_PREFIX}{close[0]}?' if close else ''
                raise ValueError(f'{variable} is not a lifecycle setting{hint}')
        return self

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        """The sentinels, as (host, port) pairs; empty without Sentinel."""
        return sentinel_addresses(self.redis_sentinels) if self.redis_sentinels else []

    def limits(self, profile: str | None) -> Limits:
        """The effective limits of a profile; an unknown or absent profile gets the global ones."""
        policy = self.profiles.get(profile) if profile is not None else None
        if policy is None:
            return Limits(self.idle_ttl_s, self.default_ttl_s, self.max_ttl_s)
        return Limits(
            idle_ttl_s=policy.idle_ttl_s or self.idle_ttl_s,
            default_ttl_s=policy.default_ttl_s or min(self.default_ttl_s, policy.max_ttl_s or self.max_ttl_s),
            max_ttl_s=policy.max_ttl_s or self.max_ttl_s,
        )

    @property
    def idle_ttls_s(self) -> set[int]:
        """Every idle timeout in force (the global one and each profile's)."""
        return {self.limits(name).idle_ttl_s for name in (None, *self.profiles)}

    def waive_after_s(self, *, owner_lost: bool = False) -> int | None:
        """How long after asking for a checkpoint an eviction goes on without it; None: never. A lost replica
        answers nothing: its sessions go after the grace with on_missing_checkpoint='keep' too (kept, they would
        hold their slots until their hard deadlines, for turns that died with it)."""
        return self.checkpoint_grace_s if owner_lost or self.on_missing_checkpoint == 'evict' else None

    def interval_s(self, kind: SweepKind) -> int:
        """The beat interval of one sweep kind."""
        intervals = {
            SweepKind.IDLE: self.idle_interval_s,
            SweepKind.LRU: self.lru_interval_s,
            SweepKind.EXPIRED: self.expired_interval_s,
            SweepKind.OWNER_LOST: self.owner_lost_interval_s,
            SweepKind.WARNINGS: self.warnings_interval_s,
            SweepKind.RECONCILE: self.reconcile_interval_s,
            SweepKind.RUNS: self.runs_interval_s,
            SweepKind.WORKTREES: self.worktrees_interval_s,
            SweepKind.RETENTION: self.retention_interval_s,
        }
        return intervals[kind]

    @property
    def pin_limit(self) -> int:
        """The most sessions pinned at once in the pool."""
        if self.max_pinned is not None:
            return self.max_pinned
        return max(1, (self.max_live or self.max_sessions) // 4)

    def tenant_cap(self, tenant: str | None) -> int | None:
        """The cap of one tenant, or None when it is uncapped."""
        if tenant is None:
            return None
        return self.tenant_limits.get(tenant, self.tenant_max_sessions)
