"""Startup checks: is this Redis (and MongoDB) fit to hold the pool, and do the sandboxes' engine answer?"""

from __future__ import annotations

from typing import Any

from pymongo.errors import PyMongoError

from lifecycle.errors import ConfigurationError
from lifecycle.pool import calls
from lifecycle.pool.executor import Executor
from lifecycle.pool.sessions import SessionIndex
from lifecycle.sandboxes import SandboxDriver
from lifecycle.stores.mongo import collation_problem


def redis_problems(pool: Executor) -> list[str]:
    """What is wrong with this Redis for lifecycle; [] when nothing is."""
    problems = []
    policy = pool.run(calls.config_value('maxmemory-policy'))
    if policy.startswith('allkeys-'):
        problems.append(
            f'maxmemory-policy is {policy!r}: Redis may evict the pool itself (sessions never reaped, slots '
            'lost); use noeviction or a volatile-* policy'
        )
    version = str(pool.run(calls.server_info('server')).get('redis_version', '0'))
    if tuple(int(part) for part in version.split('.')[:2]) < (6, 2):
        problems.append(f'Redis {version} is too old: lifecycle needs 6.2+ (ZADD GT, ZMSCORE)')
    if pool.run(SessionIndex(pool.settings, pool.keys).pool_state()).replication_id == '-':
        problems.append(
            'scripts cannot run INFO (an ACL without +info, or the command renamed): a restart or a failover '
            "that lost writes would go unnoticed; allow +info for lifecycle's user"
        )
    return problems


def check_redis(pool: Executor) -> None:
    """Raise ConfigurationError if this Redis could lose or mishandle lifecycle's keys."""
    problems = redis_problems(pool)
    if problems:
        raise ConfigurationError('; '.join(problems))


EXPECTED_INDEXES = {'sessions': {'state_updated'}, 'messages': {'session_message', 'session_in_order'}}


def mongo_problems(store: Any) -> list[str]:
    """What is wrong with the MongoDB store: unreachable, a collection comparing ids by a collation (or a view), or
    missing the indexes lifecycle relies on."""
    try:
        store.client.admin.command('ping')
        present = {name: {index['name'] for index in store.collections[name].list_indexes()}
                   for name in EXPECTED_INDEXES}  # fmt: skip
        unfit = [collation_problem(name, found.options()) for name, found in store.collections.items()]
    except PyMongoError as exc:
        return [f'mongo: unreachable: {exc}']
    return [f'mongo: {problem}' for problem in unfit if problem] + [
        f'mongo: collection {collection!r} lacks index {name!r} (a worker creates them at start)'
        for collection, names in EXPECTED_INDEXES.items()
        for name in sorted(names - present[collection])
    ]


def sandbox_problems(driver: SandboxDriver) -> list[str]:
    """Whether the sandbox driver can list its sandboxes (the docker driver: its engine answers)."""
    try:
        driver.leases()
    except Exception as exc:  # SandboxError, or a driver that fails otherwise: unfit all the same
        return [f'sandboxes: unreachable: {exc}']
    return []
