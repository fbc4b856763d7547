"""create_app(settings) -> the Celery app: Redis broker, JSON only, late acks for evictions, RedBeat."""

from __future__ import annotations

import logging
import sys
from typing import Any

from celery import Celery, signals
from kombu import Exchange, Queue
from kombu.common import Broadcast
from pydantic import ValidationError

from lifecycle.errors import ConfigurationError
from lifecycle.logs import use_json
from lifecycle.ops import checks
from lifecycle.pool import servers
from lifecycle.settings import Settings, describe_error
from workers.schedule import beat_schedule

log = logging.getLogger(__name__)
QUEUE = 'lifecycle'
# A fanout queue: every worker consuming it gets its own copy of each message, so the worktree sweep
# runs on every host (and each host's workers take turns through a per-host lock).
WORKTREES_QUEUE = 'lifecycle.worktrees'
WORKTREES_EXCHANGE = Exchange(WORKTREES_QUEUE, type='fanout')


class LifecycleApp(Celery):
    """A Celery app that carries the lifecycle Settings it was built from."""

    lifecycle_settings: Settings


def create_app(settings: Settings | None = None) -> LifecycleApp:
    """A Celery app configured from `settings` (LIFECYCLE_* variables when None)."""
    settings = settings or settings_from_environment()
    app = LifecycleApp('lifecycle', include=['workers.tasks'])
    broker = servers.celery_broker(settings)
    tag = '{' + settings.key_prefix + '}'
    app.conf.update(
        task_serializer='json',
        accept_content=['json'],
        result_serializer='json',
        result_backend=None,
        task_ignore_result=True,  # nothing reads results: they would only grow in Redis
        task_default_queue=QUEUE,
        task_queues=(Queue(QUEUE), Broadcast(WORKTREES_QUEUE, exchange=WORKTREES_EXCHANGE)),
        # Celery declares nothing when it publishes to a Broadcast queue, and the Redis transport then
        # takes the exchange for a direct one and delivers nowhere useful (celery#2638): declaring the
        # fanout exchange with each publish makes it PUBLISH to every subscribed worker.
        task_routes={'lifecycle.sweep_worktrees': {'queue': WORKTREES_QUEUE, 'declare': [WORKTREES_EXCHANGE]}},
        task_time_limit=settings.task_time_limit_s,
        task_soft_time_limit=max(1, settings.task_time_limit_s - 10),
        worker_prefetch_multiplier=1,  # an eviction waits in the broker, not behind a busy worker
        worker_send_task_events=True,  # for Flower
        task_send_sent_event=True,
        # A message unacknowledged this long is redelivered; it must outlast any task (acks_late).
        broker_url=broker['broker_url'],
        broker_transport_options={
            **broker.get('broker_transport_options', {}),
            'visibility_timeout': max(3_600, 4 * settings.task_time_limit_s),
        },
        broker_use_ssl=broker.get('broker_use_ssl'),
        broker_connection_retry_on_startup=True,
        timezone='UTC',
        enable_utc=True,
        beat_schedule=beat_schedule(settings),
        beat_scheduler='workers.beat:LeaderScheduler',
        beat_max_loop_interval=5,
        **servers.redbeat_config(settings),
        redbeat_key_prefix=f'{tag}:redbeat',
        # The active beat renews this lock every loop; a standby beat takes over within this long.
        redbeat_lock_timeout=30,
    )
    app.lifecycle_settings = settings
    return app


def settings_from_environment() -> Settings:
    """Settings from LIFECYCLE_* variables; a bad one stops the process with one line naming it (exit 4)."""
    try:
        return Settings()
    except ValidationError as invalid:
        print(f'lifecycle: {describe_error(invalid)}', file=sys.stderr)
        raise SystemExit(4) from None


def settings_of(app: Any) -> Settings:
    """The lifecycle Settings an app was created with (LIFECYCLE_* variables for a foreign app)."""
    settings: Settings | None = getattr(app, 'lifecycle_settings', None)
    return settings if settings is not None else Settings()


@signals.after_setup_logger.connect
@signals.after_setup_task_logger.connect
def _json_logs(logger: logging.Logger, **_: Any) -> None:
    """With LIFECYCLE_LOG_FORMAT=json, the worker and beat log JSON lines too."""
    if Settings().log_format == 'json':
        use_json(logger)


@signals.worker_init.connect
def _check_servers(sender: Any = None, **_: Any) -> None:
    """Refuse to start on a Redis that could evict the pool; create MongoDB indexes (then disconnect:
    pymongo clients are not fork-safe, so each pool process builds its own)."""
    from lifecycle.client import Lifecycle

    settings = settings_of(sender.app)
    with Lifecycle(settings) as lc:
        try:
            checks.check_redis(lc.pool)
            if lc.store is not None:
                lc.store.ensure_indexes()  # refuses collections that would merge ids
                lc.store.close()
        except ConfigurationError as unfit:
            # Celery logs and ignores an exception from a signal handler: only SystemExit stops the worker.
            log.critical('lifecycle worker refuses to start: %s', unfit)
            raise SystemExit(1) from unfit


@signals.beat_init.connect
def _announce_standby(sender: Any = None, **_: Any) -> None:
    """Say what a beat does before it leads: RedBeat's own handler (which runs after this one) waits for the
    lock while another beat holds it, then logs 'beat: Acquired lock'."""
    lock_key = getattr(getattr(sender, 'scheduler', None), 'lock_key', None)
    log.info('beat: standing by for the RedBeat lock %s; it leads the schedule once it holds it', lock_key)


@signals.worker_ready.connect
def _expire_on_start(sender: Any = None, **_: Any) -> None:
    """Recover whatever expired while every worker was down, and repair the counters (moving records of
    an older layout into place), without waiting for the first beat."""
    sender.app.send_task('lifecycle.sweep_expired')
    sender.app.send_task('lifecycle.reconcile')


app = create_app()
