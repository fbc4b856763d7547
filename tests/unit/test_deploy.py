"""deploy/: Docker and Kubernetes cannot run here, so check what can be: the files parse, every
LIFECYCLE_* variable they set is a real setting, every command they run parses with the real CLI,
every container has limits and probes, and Flower's credentials come from a Secret."""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from celery.bin.base import CLIContext
from celery.bin.celery import celery as celery_command

from lifecycle.ops.cli import build_parser
from lifecycle.settings import Settings
from workers import app as celery_app

DEPLOY = Path(__file__).parents[2] / 'deploy'
MANIFESTS = sorted((DEPLOY / 'kubernetes').glob('*.yaml'))


def documents() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in [DEPLOY / 'compose.yaml', *MANIFESTS]:
        for document in yaml.safe_load_all(path.read_text()):
            assert isinstance(document, dict), path
            yield path.name, document


def containers() -> Iterator[tuple[str, dict[str, Any]]]:
    for name, document in documents():
        if document.get('kind') == 'Deployment':
            for container in document['spec']['template']['spec']['containers']:
                yield f'{name}:{container["name"]}', container


def commands() -> Iterator[tuple[str, list[str]]]:
    compose = yaml.safe_load((DEPLOY / 'compose.yaml').read_text())
    for name, service in compose['services'].items():
        if 'command' in service and service['command'][0] in ('celery', 'lifecycle'):
            yield f'compose:{name}', service['command']
    for name, container in containers():
        yield name, container['command']
        for probe in ('livenessProbe', 'readinessProbe'):
            exec_command = container.get(probe, {}).get('exec', {}).get('command')
            if exec_command:
                yield f'{name}:{probe}', exec_command
    dockerfile_cmd = re.search(r'^CMD (\[.*\])$', (DEPLOY / 'Dockerfile').read_text(), re.M)
    assert dockerfile_cmd is not None
    yield 'Dockerfile', yaml.safe_load(dockerfile_cmd.group(1))


def environment_names() -> Iterator[tuple[str, str]]:
    compose = yaml.safe_load((DEPLOY / 'compose.yaml').read_text())
    for name, service in compose['services'].items():
        for variable in service.get('environment', {}) or {}:
            yield f'compose:{name}', variable
    for name, document in documents():
        if document.get('kind') in ('ConfigMap', 'Secret'):
            for variable in {**document.get('data', {}), **document.get('stringData', {})}:
                yield name, variable
    for name, container in containers():
        for variable in container.get('env', []):
            yield name, variable['name']


def test_every_file_parses() -> None:
    kinds = [document.get('kind') for _, document in documents()]
    assert {'ConfigMap', 'Secret', 'Deployment', 'Service'} <= set(kinds)
    assert (DEPLOY / 'Dockerfile').read_text().startswith('#')


@pytest.mark.parametrize(('where', 'variable'), list(environment_names()))
def test_every_lifecycle_variable_is_a_real_setting(where: str, variable: str) -> None:
    if variable.startswith('LIFECYCLE_'):
        assert variable.removeprefix('LIFECYCLE_').lower() in Settings.model_fields, f'{where}: {variable}'
    else:
        assert variable == 'FLOWER_BASIC_AUTH', f'{where}: unexpected variable {variable}'


def parse_celery(args: list[str]) -> None:
    """Parse a celery command line with celery's own click commands, without running it."""
    with click.Context(celery_command) as root:
        group = celery_command.make_context('celery', list(args), parent=root)
        group.obj = CLIContext(app=celery_app, no_color=True, workdir=None, quiet=True)  # what `celery` sets up
        # Click 8.2 keeps the subcommand and its arguments in `_protected_args` (`protected_args` warns).
        remaining = [*getattr(group, '_protected_args', []), *group.args]
        name, command, rest = celery_command.resolve_command(group, remaining)
        assert command is not None, name
        command.make_context(name or '', rest, parent=group)


@pytest.mark.parametrize(('where', 'command'), list(commands()))
def test_every_command_matches_the_real_cli(where: str, command: list[str]) -> None:
    if command[:2] == ['sh', '-c']:
        command = shlex.split(command[2].replace('$HOSTNAME', 'pod-0'))
    if command[0] == 'lifecycle':
        build_parser().parse_args(command[1:])
    elif command[:2] == ['python', '-c']:  # a probe of a loopback-only server
        compile(command[2], where, 'exec')
    else:
        assert command[:3] == ['celery', '-A', 'workers'], where
        parse_celery(command[1:])


@pytest.mark.parametrize(('where', 'container'), list(containers()))
def test_every_container_has_limits_and_probes(where: str, container: dict[str, Any]) -> None:
    assert container['resources']['limits']['memory'], where
    assert container['resources']['requests']['cpu'], where
    assert 'livenessProbe' in container, where


def test_flower_is_never_open() -> None:
    [flower] = [c for name, c in containers() if name.startswith('flower.yaml')]
    [auth] = [e for e in flower['env'] if e['name'] == 'FLOWER_BASIC_AUTH']
    assert auth['valueFrom']['secretKeyRef']['name'] == 'lifecycle'
    assert '--address=127.0.0.1' in flower['command']  # it serves /metrics and /healthcheck to anyone
    assert not [d for name, d in documents() if name == 'flower.yaml' and d['kind'] == 'Service']
    compose = yaml.safe_load((DEPLOY / 'compose.yaml').read_text())
    assert compose['services']['flower']['environment']['FLOWER_BASIC_AUTH'].startswith('${FLOWER_BASIC_AUTH:?')
    assert compose['services']['flower']['ports'] == ['127.0.0.1:5555:5555']


def test_two_beats_run_under_redbeat() -> None:
    [beat] = [d for name, d in documents() if name == 'beat.yaml']
    assert beat['spec']['replicas'] == 2
    from workers.app import create_app

    assert create_app(Settings()).conf.beat_scheduler == 'workers.beat:LeaderScheduler'


def test_pods_get_no_service_link_variables() -> None:
    """A Service named lifecycle-* would otherwise put LIFECYCLE_<SERVICE>_* variables into every pod."""
    pods = [(name, d['spec']['template']['spec']) for name, d in documents() if d.get('kind') == 'Deployment']
    assert pods
    assert [name for name, pod in pods if pod.get('enableServiceLinks') is not False] == []
