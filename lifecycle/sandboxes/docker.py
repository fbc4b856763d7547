"""DockerDriver: sandboxes as containers that end themselves at their deadline (Docker Engine API, or Podman's).

Each container runs its command under `timeout` with an init process as PID 1 (a PID 1 that is the command
itself could not be killed from inside its namespace), and the engine removes it when it exits: at the
deadline it is gone even if every API replica and worker is dead. Labels say whose it is (the pool's key
prefix, the session) and when it ends, so any worker can list this pool's containers and remove those past
their deadline or left without a live session; a container without them, or another pool's, is never touched.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lifecycle import validate
from lifecycle.clock import Clock, SystemClock
from lifecycle.errors import ConfigurationError, InvalidArgument
from lifecycle.sandboxes.base import SandboxError, SandboxLease
from lifecycle.settings import HARD_MAX_TTL_S

if TYPE_CHECKING:
    import docker

log = logging.getLogger(__name__)

POOL_LABEL = 'io.lifecycle.pool'
SESSION_LABEL = 'io.lifecycle.session'
DEADLINE_LABEL = 'io.lifecycle.deadline_ms'
STARTED_LABEL = 'io.lifecycle.started_ms'
DEFAULT_ENGINE = 'unix:///var/run/docker.sock'
PROBE_API_VERSION = '1.24'  # any engine answers GET /version (unversioned) to a client of this version
WRAPPER_PATH = '/.lifecycle/busybox'  # where a host's static busybox is mounted when the image has no `timeout`
# What `start` sets itself: passing one of them in `options` would break the deadline or the labels.
OWNED_OPTIONS = frozenset({'command', 'entrypoint', 'name', 'labels', 'detach', 'auto_remove', 'init', 'remove'})


@dataclass(frozen=True)
class Limits:
    """Resource limits of a sandbox container: memory ('512m' or bytes), CPUs (1.5 = one and a half), pids."""

    memory: str | int | None = None
    cpus: float | None = None
    pids: int | None = None

    def options(self) -> dict[str, Any]:
        options: dict[str, Any] = {}
        if self.memory is not None:
            options['mem_limit'] = self.memory
        if self.cpus is not None:
            if not self.cpus > 0:
                raise InvalidArgument(f'cpus must be positive, got {self.cpus!r}')
            options['nano_cpus'] = int(self.cpus * 1e9)
        if self.pids is not None:
            if isinstance(self.pids, bool) or not isinstance(self.pids, int) or self.pids < 1:
                raise InvalidArgument(f'pids must be a positive whole number, got {self.pids!r}')
            options['pids_limit'] = self.pids
        return options


def not_found(exc: BaseException) -> bool:
    """Gone: a 404, or Podman's 500 for a container removed while it was being looked at."""
    from docker.errors import APIError, NotFound

    return isinstance(exc, NotFound) or (isinstance(exc, APIError) and 'no such container' in str(exc).lower())


def _being_removed(exc: BaseException) -> bool:
    """The engine's answer when the container is already on its way out (auto-remove after the stop)."""
    from docker.errors import APIError

    text = str(exc).lower()
    return isinstance(exc, APIError) and exc.status_code == 409 and ('in progress' in text or 'removal' in text)


def listening(url: str) -> None:
    """Raise OSError if nothing listens on `url`'s unix socket: a connect of our own, since docker-py leaves the
    socket of its failed connects to the garbage collector."""
    if url.startswith('unix://'):
        with socket.socket(socket.AF_UNIX) as probe:
            probe.settimeout(5)
            probe.connect(url.removeprefix('unix://'))


class DockerDriver:
    """Starts, lists and releases this pool's session containers through the Docker Engine API.

    `engine_url`: 'unix:///run/podman/podman.sock', 'tcp://host:2375', ...; None reads DOCKER_HOST (and
    DOCKER_TLS_VERIFY, DOCKER_CERT_PATH) like the docker CLI. The engine is contacted on first use, not here.
    `clock`: lifecycle time for the deadline labels (the client's Redis time; the sweeps judge by it).
    """

    def __init__(
        self,
        pool: str,
        engine_url: str | None = None,
        *,
        clock: Clock | None = None,
        grace_s: int = 5,
        timeout_s: float = 10.0,
        api_version: str = 'auto',
        wrapper: str | None = None,
        limits: Limits | None = None,
    ) -> None:
        try:
            import docker  # noqa: F401  (an optional extra: fail here, with the fix, not on first use)
        except ImportError as exc:
            raise ConfigurationError(
                "the docker sandbox driver needs the docker SDK: pip install 'lifecycle[docker]'"
            ) from exc
        self.pool = pool
        self.engine_url = engine_url
        self.engine = engine_url or os.environ.get('DOCKER_HOST') or DEFAULT_ENGINE
        self._clock = clock
        self.grace_s = max(1, int(grace_s))
        self.timeout_s = timeout_s
        self.api_version = api_version
        self.wrapper = wrapper
        self.limits = limits or Limits()
        self._client: docker.DockerClient | None = None
        self._lock = threading.Lock()

    @property
    def clock(self) -> Clock:
        """Lifecycle time for the labels: the clock given, else the client's it was given to, else this host's."""
        return self._clock or SystemClock()

    def adopt_clock(self, clock: Clock) -> None:
        """Date labels by `clock` unless one was given (a client adopts a driver injected into it this way)."""
        if self._clock is None:
            self._clock = clock

    # -- the engine -------------------------------------------------------------------------------------

    def _engine(self) -> docker.DockerClient:
        """The engine's client, connected on first use (and again after a failed connect)."""
        with self._lock:
            if self._client is None:
                version = self.api_version
                if version == 'auto':  # asked here, not by docker-py's 'auto', which leaks its session on failure
                    probe = self._client_at(PROBE_API_VERSION)
                    try:
                        version = str(probe.version(api_version=False)['ApiVersion'])
                    finally:
                        probe.close()
                self._client = self._client_at(version)
            return self._client

    def _client_at(self, version: str) -> docker.DockerClient:
        """A client of the engine speaking API `version` (making it sends no request)."""
        import docker

        if self.engine_url is None:
            return docker.from_env(timeout=int(self.timeout_s), version=version)
        return docker.DockerClient(base_url=self.engine_url, timeout=int(self.timeout_s), version=version)

    @contextmanager
    def _call(self, what: str) -> Iterator[None]:
        """Any engine failure (down, refused, timed out, an error reply) becomes a SandboxError naming it."""
        try:
            listening(self.engine)
            yield
        except (SandboxError, InvalidArgument):
            raise
        except Exception as exc:  # the engine's errors, the SDK's and its transport's: all of them ours now
            raise SandboxError(f'{what} failed on the container engine at {self.engine}: {exc!r:.500}') from exc

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def name(self, session_id: str) -> str:
        """The session's container name: one container per session and pool (the engine refuses a second)."""
        digest = hashlib.sha256(f'{self.pool}\0{session_id}'.encode()).hexdigest()[:32]
        return f'lifecycle-{digest}'

    # -- start --------------------------------------------------------------------------------------------

    def start(
        self,
        session_id: str,
        image: str,
        command: Sequence[str],
        ttl_s: int,
        *,
        replace: bool = False,
        limits: Limits | None = None,
        environment: Mapping[str, str] | None = None,
        **options: Any,
    ) -> str:
        """Start the session's container, ending itself after `ttl_s`; returns its id.

        `command` is the whole argv (the image's entrypoint is replaced by the deadline wrapper); `limits`
        override the driver's defaults; `options` go to the engine as docker-py's `containers.create` takes them
        (network_mode, volumes, user, ...). One container per session: if the session has one, this raises
        SandboxError, unless `replace` (after a restore: the container of its earlier activation goes first).
        Raises InvalidArgument for a bad value, SandboxError if the engine fails (nothing of this call is left
        running then); a missing image is pulled, as `docker run` does.
        """
        validate.identifier('session_id', session_id)
        if not isinstance(image, str) or not image:
            raise InvalidArgument(f'image must be a non-empty string, got {image!r}')
        if isinstance(command, str | bytes) or not command or not all(isinstance(a, str) for a in command):
            raise InvalidArgument(f'command must be a non-empty list of strings (the argv), got {command!r:.200}')
        if isinstance(ttl_s, bool) or not isinstance(ttl_s, int) or not 1 <= ttl_s <= HARD_MAX_TTL_S:
            raise InvalidArgument(f'ttl_s must be a whole number of seconds in 1..{HARD_MAX_TTL_S}, got {ttl_s!r}')
        validate.flag('replace', replace)
        if clash := sorted(OWNED_OPTIONS & set(options)):
            raise InvalidArgument(f'options {clash} are set by the driver (deadline, labels, removal)')
        create = self._with_wrapper({**self.limits.options(), **(limits or Limits()).options(), **options})
        if environment is not None:
            create['environment'] = dict(environment)
        now_ms = self.clock.now_ms()
        labels = {POOL_LABEL: self.pool, SESSION_LABEL: session_id,
                  DEADLINE_LABEL: str(now_ms + ttl_s * 1000), STARTED_LABEL: str(now_ms)}  # fmt: skip
        name = self.name(session_id)
        with self._call(f'start of the sandbox of {session_id!r} ({image})'):
            if replace:
                self._remove(name, session_id)
            created = self._create(image, list(command), name, session_id, labels=labels, detach=True,
                                   entrypoint=[*self._timeout, '-k', str(self.grace_s), str(ttl_s)],
                                   auto_remove=True, init=True, **create)  # fmt: skip
            try:
                created.start()
            except Exception:
                self._stop_and_remove(str(created.id))  # exactly the one this call created
                raise
        container_id = str(created.id)
        log.info('sandbox of %s started: container %s, %s s', session_id, container_id[:12], ttl_s)
        return container_id

    def _create(self, image: str, command: list[str], name: str, session_id: str, **create: Any) -> Any:
        """Create the container; pull a missing image once; a name already taken is the session's sandbox."""
        from docker.errors import APIError, ImageNotFound

        containers = self._engine().containers
        try:
            try:
                return containers.create(image, command, name=name, **create)
            except ImageNotFound:
                self._engine().images.pull(image)
                return containers.create(image, command, name=name, **create)
        except APIError as exc:
            if exc.status_code == 409 or 'already in use' in str(exc):
                raise SandboxError(f'the session {session_id!r} already has a sandbox (container {name}): release '
                                   'it first, or start(..., replace=True) after a restore') from exc  # fmt: skip
            raise

    @property
    def _timeout(self) -> list[str]:
        """The deadline wrapper's argv: the image's `timeout`, or the mounted static busybox's."""
        return ['timeout'] if self.wrapper is None else [WRAPPER_PATH, 'timeout']

    def _with_wrapper(self, create: dict[str, Any]) -> dict[str, Any]:
        """`create` with the wrapper's busybox mounted read-only, where one is set."""
        if self.wrapper is None:
            return create
        volumes = create.get('volumes') or {}
        if isinstance(volumes, dict):
            volumes = {**volumes, self.wrapper: {'bind': WRAPPER_PATH, 'mode': 'ro'}}
        elif isinstance(volumes, list | tuple):
            volumes = [*volumes, f'{self.wrapper}:{WRAPPER_PATH}:ro']
        else:
            raise InvalidArgument(f'volumes must be a dict or a list, got {volumes!r:.200}')
        return {**create, 'volumes': volumes}

    def check_image(self, image: str) -> None:
        """Raise SandboxError unless a container of `image` can run under the deadline wrapper: an image without
        `timeout` (and no `wrapper` set) starts, then exits at once, so `start` cannot tell; call this once at
        start-up for each image the app uses. Its probe container is unlabelled: no sweep ever counts it."""
        with self._call(f'checking the image {image}'):
            probe = self._engine().containers.run(image, [*self._timeout, '5', 'true'], entrypoint=[], init=True,
                                                  detach=True, **self._with_wrapper({}))  # fmt: skip
            try:
                status = probe.wait(timeout=30)['StatusCode']
            finally:
                probe.remove(force=True)
        if status != 0:
            raise SandboxError(f'the image {image} cannot run its sandboxes under `timeout` (exit status {status}): '
                               'add busybox or coreutils to it, or set LIFECYCLE_SANDBOX_DOCKER_WRAPPER to a static '
                               "busybox on the engine's host")  # fmt: skip

    # -- release --------------------------------------------------------------------------------------------

    def release(self, session_id: str, reason: str) -> None:
        """Stop the session's container (SIGTERM, then SIGKILL after the grace) and remove it; gone is success."""
        validate.identifier('session_id', session_id)
        with self._call(f'release of the sandbox of {session_id!r}'):
            self._remove(self.name(session_id), session_id)

    def release_lease(self, lease: SandboxLease, reason: str) -> None:
        """Stop and remove exactly the container `lease` lists (not a newer one its session started since)."""
        if lease.sandbox_id is None:
            return self.release(lease.session_id, reason)
        with self._call(f'release of the sandbox of {lease.session_id!r}'):
            self._stop_and_remove(lease.sandbox_id)
        return None

    def _remove(self, name: str, session_id: str) -> None:
        engine = self._engine()
        try:
            container = engine.containers.get(name)
        except Exception as exc:
            if not_found(exc):
                return
            raise
        labels = container.labels or {}
        if labels.get(POOL_LABEL) != self.pool or labels.get(SESSION_LABEL) != session_id:
            log.warning('container %s is named like the sandbox of %s but not labelled so: left alone', name,
                        session_id)  # fmt: skip
            return
        self._stop_and_remove(str(container.id))

    def _stop_and_remove(self, container_id: str) -> None:
        api = self._engine().api
        for step in ('stop', 'remove'):
            try:
                if step == 'stop':
                    api.stop(container_id, timeout=self.grace_s)
                else:
                    api.remove_container(container_id, force=True)
            except Exception as exc:
                if not_found(exc) or _being_removed(exc):
                    return  # gone, or the engine's auto-remove is taking it
                raise

    # -- leases -----------------------------------------------------------------------------------------------

    def leases(self) -> list[SandboxLease]:
        """Every container of this pool (running or not), with its deadline and start; a container whose labels
        cannot be read is reported and left alone. Raises SandboxError if the engine cannot list."""
        with self._call('listing the sandboxes'):
            found = self._engine().containers.list(
                all=True, sparse=True, filters={'label': f'{POOL_LABEL}={self.pool}'}
            )
        leases = []
        for container in found:
            labels = container.attrs.get('Labels') or {}
            if labels.get(POOL_LABEL) != self.pool:
                continue  # an engine that ignored the filter: another pool's (or nobody's) is never taken
            try:
                session_id = validate.identifier('session_id', labels[SESSION_LABEL])
                deadline_ms, started_ms = int(labels[DEADLINE_LABEL]), int(labels[STARTED_LABEL])
            except (KeyError, ValueError, TypeError) as exc:
                log.warning('container %s of pool %s left alone: its labels are unreadable (%r)', container.id,
                            self.pool, exc)  # fmt: skip
                continue
            leases.append(SandboxLease(session_id, deadline_ms, started_ms, str(container.id)))
        return leases
