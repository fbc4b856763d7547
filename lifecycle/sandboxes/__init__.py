"""Sandbox drivers: how an eviction releases the sandbox (container, pod, process) behind a session."""

from __future__ import annotations

from lifecycle.clock import Clock
from lifecycle.sandboxes.base import SandboxDriver, SandboxError, SandboxLease
from lifecycle.sandboxes.docker import DockerDriver, Limits
from lifecycle.sandboxes.noop import NoopDriver
from lifecycle.sandboxes.process import ProcessDriver
from lifecycle.sandboxes.webhook import WebhookDriver
from lifecycle.settings import Settings


def driver_from_settings(settings: Settings, clock: Clock | None = None) -> SandboxDriver:
    """The driver `settings.sandbox_driver` names; `clock` dates the docker driver's deadlines (lifecycle time)."""
    if settings.sandbox_driver == 'webhook':
        assert settings.sandbox_webhook_url is not None  # the settings validator guarantees both
        assert settings.sandbox_webhook_secret is not None
        return WebhookDriver(
            settings.sandbox_webhook_url,
            settings.sandbox_webhook_secret.get_secret_value(),
            timeout_s=settings.sandbox_webhook_timeout_s,
            retries=settings.sandbox_webhook_retries,
        )
    if settings.sandbox_driver == 'docker':
        return DockerDriver(
            settings.key_prefix,
            settings.sandbox_docker_url,
            clock=clock,
            grace_s=settings.sandbox_stop_grace_s,
            timeout_s=settings.sandbox_docker_timeout_s,
            api_version=settings.sandbox_docker_api_version,
            wrapper=settings.sandbox_docker_wrapper,
            limits=Limits(settings.sandbox_memory, settings.sandbox_cpus, settings.sandbox_pids),
        )
    if settings.sandbox_driver == 'process':
        return ProcessDriver(settings.sandbox_state_dir)
    return NoopDriver()


__all__ = [
    'DockerDriver',
    'Limits',
    'NoopDriver',
    'ProcessDriver',
    'SandboxDriver',
    'SandboxError',
    'SandboxLease',
    'WebhookDriver',
    'driver_from_settings',
]
