"""The `lifecycle` command end to end, as a script would run it: real Redis, MongoDB over the wire."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from lifecycle import FixedClock, Lifecycle, Settings
from lifecycle.ops.embedded import free_port
from lifecycle.ops.embedded import owned_env as environment
from lifecycle.ops.metrics import registry_for
from lifecycle.stores.mongo import MongoSnapshotStore
from tests.conftest import SettingsFactory

LIFECYCLE = [sys.executable, '-m', 'lifecycle.ops.cli']


@pytest.fixture
def settings(make_reaper_settings: SettingsFactory, real_redis: Any) -> Settings:
    return make_reaper_settings(idle_ttl_s=60)


@pytest.fixture
def lc(settings: Settings) -> Iterator[Lifecycle]:
    """A client a minute in the past: its sessions are idle by the time the CLI looks at them."""
    clock = FixedClock(int(time.time() * 1000) - 120_000)
    client = Lifecycle(settings, clock=clock)
    yield client
    client.disconnect()


def cli(settings: Settings, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LIFECYCLE, *args], env=env or environment(settings), capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip


def test_status_lists_the_pool_and_the_most_idle_sessions(settings: Settings, lc: Lifecycle) -> None:
    for i in range(3):
        lc.activate(lc.reserve('api-1', 'acme'), f's{i}')
        lc.clock.advance(seconds=1)  # type: ignore[attr-defined]
    done = cli(settings, 'status', '--json', '--top', '2')
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert (data['pool']['live'], data['pool']['cap'], data['pool']['slots']) == (3, 200, 3)
    assert [s['session_id'] for s in data['most_idle']] == ['s0', 's1']
    assert data['most_idle'][0]['idle_s'] > data['most_idle'][1]['idle_s'] > 100
    human = cli(settings, 'status')
    assert human.returncode == 0
    assert 's0' in human.stdout


def test_inspect_shows_redis_and_mongodb_and_fails_for_an_unknown_session(settings: Settings, lc: Lifecycle) -> None:
    lc.activate(lc.reserve('api-1'), 's1')
    lc.checkpoint('s1', {'secret': 'app data'})
    done = cli(settings, 'inspect', 's1', '--json')
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert (data['session']['state'], data['session']['owner']) == ('live', 'api-1')
    assert data['document']['checkpoint_seq'] == 0
    assert 'snapshot' not in data['document']
    missing = cli(settings, 'inspect', 'ghost')
    assert missing.returncode == 1
    assert "unknown session 'ghost'" in missing.stderr


def test_sweep_dry_run_says_what_and_why_then_the_real_sweep_evicts(settings: Settings, lc: Lifecycle) -> None:
    lc.activate(lc.reserve('api-1'), 'idle-one')
    lc.checkpoint('idle-one', {'v': 1})
    dry = cli(settings, 'sweep', 'idle', '--dry-run', '--json')
    assert dry.returncode == 0, dry.stderr
    planned = json.loads(dry.stdout)
    assert [(o['session_id'], o['reason']) for o in planned['orders']] == [('idle-one', 'idle')]
    assert float(planned['orders'][0]['idle_s']) >= 60
    assert lc.stats().live == 1  # nothing changed
    real = cli(settings, 'sweep', 'idle', '--json')
    assert real.returncode == 0, real.stderr
    assert json.loads(real.stdout)['results'] == [{'session_id': 'idle-one', 'outcome': 'evicted', 'detail': ''}]
    assert lc.stats().live == 0
    assert lc.status('idle-one').state == 'resumable'  # type: ignore[union-attr]


def test_a_dry_run_answers_what_the_sweep_would_do_checkpoint_gate_included(settings: Settings, lc: Lifecycle) -> None:
    lc.activate(lc.reserve('api-1'), 'saved')
    lc.checkpoint('saved', {'v': 1})
    lc.activate(lc.reserve('api-1'), 'unsaved')
    with lc.turn('unsaved'):
        pass
    lc.checkpoint('unsaved', {'v': 1})  # covers the first turn, not the second
    with lc.turn('unsaved'):
        pass
    dry = cli(settings, 'sweep', 'idle', '--dry-run', '--json')
    assert dry.returncode == 0, dry.stderr
    planned = json.loads(dry.stdout)
    assert [o['session_id'] for o in planned['orders']] == ['saved']
    assert [(k['session_id'], k['refused']) for k in planned['kept']] == [('unsaved', 'not_checkpointed')]
    human = cli(settings, 'sweep', 'idle', '--dry-run')
    assert 'would keep: not_checkpointed' in human.stdout
    real = cli(settings, 'sweep', 'idle', '--json')
    outcomes = {r['session_id']: (r['outcome'], r['detail']) for r in json.loads(real.stdout)['results']}
    assert outcomes == {'saved': ('evicted', ''), 'unsaved': ('aborted', 'not_checkpointed')}


def test_an_operator_sees_outside_damage_and_reconcile_repairs_it(settings: Settings, lc: Lifecycle) -> None:
    lc.activate(lc.reserve('api-1', 'acme'), 's1')
    lc.redis.zrem(lc.index.keys.deadline, 's1')  # a hand edit
    lc.redis.delete(lc.index.keys.slots)
    inspected = cli(settings, 'inspect', 's1', '--json')
    assert inspected.returncode == 0, inspected.stderr
    session = json.loads(inspected.stdout)['session']
    assert 'deadline is missing' in session['damage']
    assert (session['expires_at_ms'], session['repair']) == (None, 'lifecycle sweep reconcile')
    repaired = cli(settings, 'sweep', 'reconcile')
    assert repaired.returncode == 0, repaired.stderr
    assert 'damage repaired: pool counter -1 (missing), deadlines restored 1' in repaired.stdout
    assert lc.status('s1') is not None
    clean = cli(settings, 'sweep', 'reconcile', '--json')
    assert json.loads(clean.stdout)['details'] == ['damage repaired: none']
    served = generate_latest(registry_for(lc)).decode()
    assert 'lifecycle_damage_total{kind="deadlines_restored"} 1.0' in served
    assert 'lifecycle_damage_total{kind="pool_counter"} 1.0' in served


def test_inspect_says_why_a_session_is_kept_or_due(settings: Settings, lc: Lifecycle) -> None:
    lc.activate(lc.reserve('api-1'), 's1', ttl_seconds=7200)
    with lc.turn('s1'):  # two minutes ago (the fixture's clock), and never checkpointed
        pass
    data = json.loads(cli(settings, 'inspect', 's1', '--json').stdout)
    assert data['due'] is None
    assert any('1 finished turn(s) no checkpoint covers' in reason for reason in data['why']), data['why']
    lc.checkpoint('s1', {'v': 1})
    data = json.loads(cli(settings, 'inspect', 's1', '--json').stdout)
    assert data['due'] == 'idle', data['why']
    human = cli(settings, 'inspect', 's1').stdout
    assert 'due: idle' in human
    assert 'UTC' in human  # times for people, not only epoch milliseconds


def test_check_warns_loudly_when_idle_reaping_cannot_happen(settings: Settings) -> None:
    store = MongoSnapshotStore(settings.mongo_url or '', settings.mongo_database)
    store.ensure_indexes()
    store.close()
    done = cli(settings, 'check', '--json')
    assert done.returncode == 0, done.stdout
    assert any('idle sweep never ran' in warning for warning in json.loads(done.stdout)['warnings'])
    without_mongo = {k: v for k, v in environment(settings).items() if k != 'LIFECYCLE_MONGO_URL'}
    done = cli(settings, 'check', env=without_mongo)
    assert 'IDLE REAPING IS OFF' in done.stdout


def test_check_reports_a_sandbox_engine_that_does_not_answer(settings: Settings, tmp_path: Path) -> None:
    store = MongoSnapshotStore(settings.mongo_url or '', settings.mongo_database)
    store.ensure_indexes()
    store.close()
    url = f'unix://{tmp_path}/no-engine.sock'
    down = settings.model_copy(update={'sandbox_driver': 'docker', 'sandbox_docker_url': url})
    done = cli(down, 'check', '--json')
    assert done.returncode == 3, done.stdout
    (problem,) = json.loads(done.stdout)['problems']
    assert problem.startswith('sandboxes: unreachable'), problem
    assert url in problem, problem


def test_check_reports_missing_indexes_then_passes(settings: Settings) -> None:
    failing = cli(settings, 'check', '--json')
    assert failing.returncode == 1
    report = json.loads(failing.stdout)
    assert any('lacks index' in p for p in report['problems'])
    assert report['settings']['mongo_url'].startswith('mongodb://')
    assert settings.mongo_url is not None
    store = MongoSnapshotStore(settings.mongo_url, settings.mongo_database)
    store.ensure_indexes()
    store.close()
    passing = cli(settings, 'check', '--json')
    assert passing.returncode == 0, passing.stdout
    assert json.loads(passing.stdout)['ok'] is True


def test_exit_codes_for_bad_usage_bad_settings_and_an_unreachable_redis(settings: Settings) -> None:
    assert cli(settings, 'sweep', 'everything').returncode == 2
    bad = {**environment(settings), 'LIFECYCLE_MAX_SESSIONS': '-3'}
    done = cli(settings, 'status', env=bad)
    assert done.returncode == 4
    assert 'LIFECYCLE_MAX_SESSIONS' in done.stderr
    down = {**environment(settings), 'LIFECYCLE_REDIS_URL': f'redis://127.0.0.1:{free_port()}/0'}
    done = cli(settings, 'status', env=down)
    assert done.returncode == 3
    assert 'unavailable' in done.stderr


def get(url: str, auth: tuple[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url)
    if auth:
        request.add_header('Authorization', 'Basic ' + base64.b64encode(':'.join(auth).encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code, ''


def wait_for_http(url: str, process: subprocess.Popen[bytes], auth: tuple[str, str] | None = None) -> str:
    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None, 'the server exited'
        try:
            status, body = get(url, auth)
            if status == 200:
                return body
        except (urllib.error.URLError, ConnectionError):
            pass
        assert time.monotonic() < deadline, f'{url} never answered'
        time.sleep(0.2)


def test_the_exporter_serves_the_pool_over_http(settings: Settings, lc: Lifecycle) -> None:
    lc.activate(lc.reserve('api-1'), 's1')
    lc.redis.hincrby(lc.index.keys.counters, 'evicted:idle', 4)
    lc.redis.hincrby(lc.index.keys.counters, 'aborted:idle:persistence_error', 2)
    port = free_port()
    command = [*LIFECYCLE, 'exporter', '--port', str(port), '--addr', '127.0.0.1']
    process = subprocess.Popen(command, env=environment(settings), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        body = wait_for_http(f'http://127.0.0.1:{port}/metrics', process)
    finally:
        process.terminate()
        process.wait(10)
    assert 'lifecycle_sessions{state="live"} 1.0' in body
    assert 'lifecycle_session_cap 200.0' in body
    assert 'lifecycle_evictions_total{outcome="evicted",reason="idle"} 4.0' in body
    assert 'lifecycle_eviction_aborts_total{cause="persistence_error",reason="idle"} 2.0' in body
    assert 'lifecycle_oldest_idle_seconds' in body
    assert 'lifecycle_redis_up 1.0' in body


def test_flower_runs_against_the_broker_behind_basic_auth(settings: Settings) -> None:
    port = free_port()
    env = environment(settings)
    process = subprocess.Popen(
        [sys.executable, '-m', 'celery', '-A', 'workers', 'flower', f'--port={port}', '--address=127.0.0.1',
         '--basic-auth=ops:s3cret'],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=os.getcwd(),
    )  # fmt: skip
    try:
        wait_for_http(f'http://127.0.0.1:{port}/healthcheck', process, ('ops', 's3cret'))
        assert get(f'http://127.0.0.1:{port}/')[0] == 401
        assert get(f'http://127.0.0.1:{port}/', ('ops', 'wrong'))[0] == 401
        status, body = get(f'http://127.0.0.1:{port}/', ('ops', 's3cret'))
        assert status == 200
        assert 'Flower' in body
    finally:
        process.terminate()
        process.wait(10)


def test_every_documented_exit_code_with_one_line_and_no_traceback(settings: Settings, lc: Lifecycle) -> None:
    """0 fine, 1 problems, 2 bad usage, 3 Redis or MongoDB unavailable, 4 invalid settings."""
    lc.activate(lc.reserve('api-1'), 's1')
    down = f'redis://user:s3cret@127.0.0.1:{free_port()}/0'
    mongo_down = f'mongodb://127.0.0.1:{free_port()}/?serverSelectionTimeoutMS=500'

    def env(**overrides: str) -> dict[str, str]:
        return {**environment(settings), **overrides}

    walk: list[tuple[list[str], dict[str, str] | None, int, str]] = [
        (['--version'], None, 0, ''),
        (['status'], None, 0, ''),
        (['inspect', 'ghost'], None, 1, "unknown session 'ghost'"),
        (['inspect', 'bad id'], None, 2, "session_id 'bad id' is invalid"),
        (['status', '--top', '-1'], None, 2, 'invalid whole number'),
        (['status'], env(LIFECYCLE_REDIS_URL=down), 3, 'unavailable'),
        (['sweep', 'idle', '--dry-run'], env(LIFECYCLE_REDIS_URL=down), 3, 'unavailable'),
        (['inspect', 's1'], env(LIFECYCLE_MONGO_URL=mongo_down, LIFECYCLE_MONGO_TIMEOUT_MS='500'), 3, 'MongoDB'),
        (['status'], env(LIFECYCLE_MAX_SESSIONS='0'), 4, 'LIFECYCLE_MAX_SESSIONS: Input should be greater than 0'),
        (['status'], env(LIFECYCLE_IDLE_TTL='60'), 4, 'did you mean LIFECYCLE_IDLE_TTL_S?'),
        (['status'], env(LIFECYCLE_REDIS_URL='http://user:s3cret@host'), 4, 'LIFECYCLE_REDIS_URL'),
    ]
    for args, environ, code, says in walk:
        done = cli(settings, *args, env=environ)
        assert done.returncode == code, (args, done.stdout, done.stderr)
        assert says in done.stdout + done.stderr, (args, done.stderr)
        assert 'Traceback' not in done.stderr, (args, done.stderr)
        assert 's3cret' not in done.stdout + done.stderr
        if code:
            usage = code == 2 and args[0] == 'status'  # argparse prints its usage line first
            assert len(done.stderr.strip().splitlines()) == (2 if usage else 1), done.stderr
    # check reports on stdout, as a list of checks, but exits as the others do (regression: it exited 1).
    for environ in (env(LIFECYCLE_REDIS_URL=down), env(LIFECYCLE_MONGO_URL=mongo_down)):
        done = cli(settings, 'check', env=environ)
        assert done.returncode == 3, (done.stdout, done.stderr)
        assert 'unreachable' in done.stdout or 'unavailable' in done.stdout, done.stdout
    with socket.socket() as taken:  # the exporter on a port something else holds
        taken.bind(('127.0.0.1', 0))
        taken.listen()
        busy = cli(settings, 'exporter', '--port', str(taken.getsockname()[1]))
    assert (busy.returncode, busy.stderr.count('\n')) == (2, 1), busy.stderr
    assert 'Traceback' not in busy.stderr
    as_json = cli(settings, 'status', '--json', env=env(LIFECYCLE_REDIS_URL=down))
    assert (as_json.returncode, json.loads(as_json.stdout)['exit_code']) == (3, 3)
    piped = f'{sys.executable} -m lifecycle.ops.cli status --top 5 | head -c 1'
    quiet = subprocess.run(piped, shell=True, env=environment(settings), capture_output=True, text=True, timeout=60)
    assert 'Traceback' not in quiet.stderr


def test_check_refuses_a_redis_whose_scripts_cannot_run_info(make_settings: SettingsFactory) -> None:
    """An ACL without +info would make every server look like the one the pool was verified on (a failover that
    lost writes would go unnoticed): `lifecycle check` (and a worker's start) refuses such a Redis, naming INFO."""
    from tests.conftest import start_private_redis, stop_private_redis

    url, process = start_private_redis()
    try:
        port = url.rsplit(':', 1)[1].split('/')[0]
        subprocess.run(['redis-cli', '-p', port, 'ACL', 'SETUSER', 'app', 'on', '>pw', '~*', '&*', '+@all', '-info'],
                       check=True, capture_output=True, timeout=10)  # fmt: skip
        settings = make_settings(redis_url=f'redis://app:pw@127.0.0.1:{port}/0')
        done = cli(settings, 'check')
        assert done.returncode != 0, done.stdout
        assert "run the 'info'" in done.stdout + done.stderr
        assert cli(make_settings(redis_url=url), 'check').returncode == 0
    finally:
        stop_private_redis(process)
