from __future__ import annotations

import pytest
from pydantic import ValidationError

from lifecycle import ProfilePolicy, Settings
from lifecycle.models import Limits
from lifecycle.settings import redacted


def test_defaults_match_the_design() -> None:
    s = Settings()
    assert (s.key_prefix, s.max_sessions, s.default_ttl_s, s.max_ttl_s) == ('lc', 200, 8 * 3600, 86_400)
    assert (s.idle_ttl_s, s.reservation_lease_s, s.busy_lease_s) == (1_800, 120, 60)
    assert (s.require_checkpoint, s.on_missing_checkpoint, s.checkpoint_grace_s) == (True, 'evict', 600)
    assert s.mongo_url is None
    assert s.tenant_cap('anyone') is None


def test_settings_are_read_from_lifecycle_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv('LIFECYCLE_MAX_SESSIONS', '40')
    monkeypatch.setenv('LIFECYCLE_TENANT_LIMITS', '{"acme": 7}')
    monkeypatch.setenv('LIFECYCLE_PROFILES', '{"sandbox": {"idle_ttl_s": 600, "max_ttl_s": 3600}}')
    s = Settings()
    assert s.max_sessions == 40
    assert s.tenant_cap('acme') == 7
    assert s.limits('sandbox') == Limits(idle_ttl_s=600, default_ttl_s=3600, max_ttl_s=3600)


@pytest.mark.parametrize(('variable', 'hint'), [('LIFECYCLE_IDLE_TTL', 'LIFECYCLE_IDLE_TTL_S'),
                                                ('LIFECYCLE_MAXSESSIONS', 'LIFECYCLE_MAX_SESSIONS'),
                                                ('LIFECYCLE_ZZZ', None)])  # fmt: skip
def test_a_lifecycle_variable_that_names_no_setting_is_reported(
    monkeypatch: pytest.MonkeyPatch, variable: str, hint: str | None
) -> None:
    monkeypatch.setenv(variable, '60')
    with pytest.raises(ValidationError, match=f'{variable} is not a lifecycle setting') as refused:
        Settings()
    assert (f'did you mean {hint}?' in str(refused.value)) if hint else 'did you mean' not in str(refused.value)
    monkeypatch.setenv('LIFECYCLE_TEST_ANYTHING', '1')  # the test suite's own variables are not settings
    monkeypatch.delenv(variable)
    assert Settings().max_sessions == 200


def test_profile_overrides_fall_back_to_global_values() -> None:
    s = Settings(idle_ttl_s=100, default_ttl_s=900, profiles={'short': ProfilePolicy(max_ttl_s=300)})
    assert s.limits('short') == Limits(idle_ttl_s=100, default_ttl_s=300, max_ttl_s=300)
    assert s.limits('unknown') == s.limits(None) == Limits(100, 900, 86_400)


def test_tenant_overrides_take_precedence_over_the_default_tenant_cap() -> None:
    s = Settings(max_sessions=50, tenant_max_sessions=5, tenant_limits={'big': 20})
    assert (s.tenant_cap('big'), s.tenant_cap('small'), s.tenant_cap(None)) == (20, 5, None)


@pytest.mark.parametrize(
    ('overrides', 'named'),
    [
        ({'default_ttl_s': 100, 'max_ttl_s': 50}, 'LIFECYCLE_DEFAULT_TTL_S=100'),
        ({'max_ttl_s': 86_401}, 'LIFECYCLE_MAX_TTL_S=86401'),
        (
            {'idle_ttl_s': 900, 'default_ttl_s': 900},
            'LIFECYCLE_IDLE_TTL_S=900 is not below LIFECYCLE_DEFAULT_TTL_S=900',
        ),
        ({'profiles': {'p': {'idle_ttl_s': 600, 'default_ttl_s': 300}}}, "LIFECYCLE_PROFILES['p'].idle_ttl_s=600"),
        ({'profiles': {'p': {'max_ttl_s': 90_000}}}, "LIFECYCLE_PROFILES['p'].max_ttl_s"),
        ({'profiles': {'p': {'default_ttl_s': 600, 'max_ttl_s': 60}}}, "LIFECYCLE_PROFILES['p'].default_ttl_s"),
        ({'profiles': {'p': {'idle_ttl_s': 0}}}, 'idle_ttl_s'),
        ({'profiles': {'p': {'unknown': 1}}}, 'unknown'),
        ({'max_sessions': 0}, 'max_sessions'),
        ({'max_sessions': 10, 'tenant_max_sessions': 11}, 'LIFECYCLE_TENANT_MAX_SESSIONS=11'),
        ({'max_sessions': 10, 'tenant_limits': {'acme': 12}}, "LIFECYCLE_TENANT_LIMITS['acme']=12"),
        ({'tenant_limits': {'bad tenant': 1}}, "'bad tenant'"),
        ({'key_prefix': '{lc}'}, "key_prefix '{lc}'"),
        ({'redis_url': 'http://x'}, "redis_url 'http://x'"),
        ({'mongo_url': 'postgres://x'}, "mongo_url 'postgres://x'"),
        ({'busy_lease_s': 2}, 'LIFECYCLE_BUSY_LEASE_S=2'),
        ({'redis_sentinels': 'h1:26379,h2'}, "redis_sentinels entry 'h2' is not host:port"),
        ({'redis_sentinels': 'h1:99999'}, "redis_sentinels entry 'h1:99999' is not host:port"),
        ({'redis_cluster': True}, 'LIFECYCLE_REDIS_CLUSTER=true needs LIFECYCLE_BROKER_URL'),
        (
            {'redis_cluster': True, 'redis_sentinels': 'h:1', 'broker_url': 'amqp://x', 'beat_redis_url': 'redis://x'},
            'exclude each other',
        ),
        ({'beat_redis_url': 'http://x'}, "beat_redis_url 'http://x'"),
        ({'reservation_lease_s': -5}, 'reservation_lease_s'),
        ({'not_a_setting': 1}, 'not_a_setting'),
    ],
)
def test_invalid_settings_fail_at_construction_naming_the_field(overrides: dict[str, object], named: str) -> None:
    with pytest.raises(ValidationError, match=named.replace('[', r'\[').replace(']', r'\]')):
        Settings(**overrides)  # type: ignore[arg-type]


def test_an_invalid_setting_never_prints_the_settings_it_was_given(monkeypatch: pytest.MonkeyPatch) -> None:
    # Regression: pydantic's message quoted the start and the end of every setting, a secret among them.
    monkeypatch.setenv('LIFECYCLE_REDIS_URL', 'redis://:Zsecret-password@127.0.0.1:6379/0')
    monkeypatch.setenv('LIFECYCLE_SANDBOX_WEBHOOK_SECRET', 'ABCDEF0123456789abcdef')
    monkeypatch.setenv('LIFECYCLE_IDLE_TTL', '60')  # a typo
    with pytest.raises(ValidationError) as raised:
        Settings()
    message = str(raised.value)
    assert 'LIFECYCLE_IDLE_TTL is not a lifecycle setting' in message
    assert 'Zsecret' not in message
    assert 'abcdef' not in message
    assert 'input_value' not in message


def test_kubernetes_service_links_are_not_taken_for_mistyped_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    # Regression: a Service named lifecycle-exporter put LIFECYCLE_EXPORTER_* into every pod, and every pod refused.
    links = {
        'LIFECYCLE_EXPORTER_SERVICE_HOST': '10.0.0.7', 'LIFECYCLE_EXPORTER_SERVICE_PORT': '9808',
        'LIFECYCLE_EXPORTER_SERVICE_PORT_METRICS': '9808', 'LIFECYCLE_EXPORTER_PORT': 'tcp://10.0.0.7:9808',
        'LIFECYCLE_EXPORTER_PORT_9808_TCP': 'tcp://10.0.0.7:9808', 'LIFECYCLE_EXPORTER_PORT_9808_TCP_PROTO': 'tcp',
        'LIFECYCLE_EXPORTER_PORT_9808_TCP_PORT': '9808', 'LIFECYCLE_EXPORTER_PORT_9808_TCP_ADDR': '10.0.0.7',
    }  # fmt: skip
    for name, value in links.items():
        monkeypatch.setenv(name, value)
    assert Settings().max_sessions == 200
    monkeypatch.setenv('LIFECYCLE_EXPORTER_PORT', '9808')  # no link's value: a typo of a setting after all
    with pytest.raises(ValidationError, match='LIFECYCLE_EXPORTER_PORT is not a lifecycle setting'):
        Settings()


def test_settings_are_frozen() -> None:
    with pytest.raises(ValidationError):
        Settings().max_sessions = 3  # type: ignore[misc]


def test_json_log_lines_carry_the_decision_fields() -> None:
    import json
    import logging

    from lifecycle.logs import JsonFormatter

    record = logging.LogRecord('lifecycle.eviction', logging.INFO, __file__, 1, '%s %s', ('evicted', 's1'), None)
    record.__dict__.update(session_id='s1', reason='idle', outcome='evicted', detail='')
    line = json.loads(JsonFormatter().format(record))
    assert (line['message'], line['session_id'], line['reason'], line['outcome']) == (
        'evicted s1',
        's1',
        'idle',
        'evicted',
    )
    assert line['level'] == 'INFO'


def test_sentinel_settings_reach_the_broker_and_redbeat_and_keep_the_data_nodes_options() -> None:
    from lifecycle.pool import servers

    settings = Settings(redis_url='rediss://:p%40ss@sentinel-managed/3?ssl_ca_certs=/ca.pem',
                        redis_sentinels='10.0.0.1:26379, [::1]:26380', redis_sentinel_master='pool',
                        redis_sentinel_password='s3cret')  # fmt: skip
    assert settings.sentinel_addresses == [('10.0.0.1', 26379), ('::1', 26380)]
    broker = servers.celery_broker(settings)
    assert broker['broker_url'] == 'sentinel://:p%40ss@10.0.0.1:26379/3;sentinel://:p%40ss@[::1]:26380/3'
    assert broker['broker_transport_options'] == {'master_name': 'pool', 'sentinel_kwargs': {'password': 's3cret'}}
    assert broker['broker_use_ssl'] == {'ssl_cert_reqs': 'required', 'ssl_ca_certs': '/ca.pem'}
    beat = servers.redbeat_config(settings)
    assert beat['redbeat_redis_url'] == 'redis-sentinel://'
    assert beat['redbeat_redis_options']['sentinels'] == [('10.0.0.1', 26379), ('::1', 26380)]
    assert (beat['redbeat_redis_options']['password'], beat['redbeat_redis_options']['db']) == ('p@ss', 3)
    assert beat['redbeat_redis_use_ssl'] == {'ssl_cert_reqs': 'required', 'ssl_ca_certs': '/ca.pem'}


def test_the_docker_api_version_is_auto_or_a_version() -> None:
    assert Settings(sandbox_docker_api_version='1.41').sandbox_docker_api_version == '1.41'
    for bad in ('v1.41', 'latest', '1', ''):
        with pytest.raises(ValidationError, match='sandbox_docker_api_version'):
            Settings(sandbox_docker_api_version=bad)


@pytest.mark.parametrize(
    ('url', 'shown'),
    [
        ('redis://user:p@ss@host:6379/0', 'redis://user:***@host:6379/0'),
        ('redis://user:p/ss@host:6379/0', 'redis://user:***@host:6379/0'),  # a '/' unencoded: the URL is wrong
        ('http://:pa/ss/w@host/0', 'http://:***@host/0'),  # (named in the error that refuses its scheme)
        ('rediss://u:a%2Fb@h/0', 'rediss://u:***@h/0'),
        ('redis://host:6379/0', 'redis://host:6379/0'),
        ('redis://user@host/0', 'redis://user@host/0'),
    ],
)
def test_no_part_of_a_password_is_ever_shown(url: str, shown: str) -> None:
    assert redacted(url) == shown
