"""A container engine for the demo and the tests, and their sandbox image, with no registry needed.

The engine is one that answers (LIFECYCLE_SANDBOX_DOCKER_URL, then DOCKER_HOST), else a private Podman API
service started here on a socket of its own. The image is imported from a folder holding a static busybox
and its applet links (`sleep`, `timeout`, `sh`, ...), so it builds offline.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from contextlib import ExitStack, closing
from pathlib import Path

from lifecycle.ops.embedded import stop_process
from lifecycle.sandboxes.docker import PROBE_API_VERSION, DockerDriver, listening

IMAGE = 'localhost/lifecycle-sandbox:latest'  # podman's compat import tags 'latest' whatever it is asked
STATIC_BUSYBOX = '/bin/busybox'  # Debian's busybox-static
SETUP = ('apt-get install -y podman runc busybox-static, and /etc/containers/containers.conf as README.md '
         '"Container sandboxes" gives it')  # fmt: skip


class EngineUnavailable(Exception):
    """No container engine answers and none could be started here; the message says why."""


def answers(url: str) -> bool:
    """Whether a container engine answers `_ping` at `url`."""
    import docker

    try:
        listening(url)
    except OSError:
        return False
    api = docker.APIClient(base_url=url, timeout=3, version=PROBE_API_VERSION)  # sends nothing yet
    try:
        return bool(api.get(f'{api.base_url}/_ping').ok)
    except Exception:
        return False
    finally:
        api.close()


def start_engine(stack: ExitStack, notes: list[str]) -> str:
    """The URL of a container engine that answers and runs the sandbox image (built if missing)."""
    for configured in (os.environ.get('LIFECYCLE_SANDBOX_DOCKER_URL'), os.environ.get('DOCKER_HOST')):
        if configured and answers(configured):
            notes.append(f'container engine: {configured} (yours; the demo labels its containers with its prefix)')
            ensure_image(configured)
            return configured
    podman = shutil.which('podman')
    if podman is None:
        raise EngineUnavailable(f'no container engine answers and podman is not installed ({SETUP})')
    folder = Path(tempfile.mkdtemp(prefix='lifecycle-engine-'))
    stack.callback(shutil.rmtree, folder, True)
    url = f'unix://{folder}/podman.sock'
    log = stack.enter_context(open(folder / 'podman.log', 'wb'))  # noqa: SIM115 (the stack closes it)
    process = subprocess.Popen([podman, 'system', 'service', '--time=0', url], stdout=log, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL)  # fmt: skip
    stack.callback(stop_process, process)
    deadline = time.monotonic() + 30
    while not answers(url):
        if process.poll() is not None or time.monotonic() > deadline:
            tail = (folder / 'podman.log').read_text(errors='replace')[-2000:]
            raise EngineUnavailable(f'podman system service did not answer on {url}: {tail or "no output"}')
        time.sleep(0.1)
    ensure_image(url)
    notes.append(f'container engine: a private Podman API service on {url}')
    return url


def ensure_image(url: str, busybox: str = STATIC_BUSYBOX) -> str:
    """Import IMAGE into the engine unless it has it, then check that a container of it runs and ends."""
    import docker

    client = DockerDriver('-', url, timeout_s=60)._engine()
    with closing(client):
        try:
            client.images.get(IMAGE)
        except docker.errors.ImageNotFound:
            repository, tag = IMAGE.rsplit(':', 1)
            client.api.import_image_from_data(rootfs_tar(busybox), repository=repository, tag=tag)
        try:
            container = client.containers.run(IMAGE, ['timeout', '5', 'true'], init=True, detach=True)
            try:
                status = container.wait(timeout=30)['StatusCode']
            finally:
                container.remove(force=True)
        except Exception as exc:
            raise EngineUnavailable(f'the engine at {url} cannot run {IMAGE}: {exc} ({SETUP})') from exc
        if status != 0:
            raise EngineUnavailable(f'a container of {IMAGE} exited with {status} on the engine at {url}')
    return IMAGE


def rootfs_tar(busybox: str) -> bytes:
    """A root filesystem of one static busybox and a link per applet, as an uncompressed tar."""
    path = Path(busybox)
    if not path.is_file():
        raise EngineUnavailable(f'{busybox} is missing: the sandbox image needs a static busybox ({SETUP})')
    if _dynamic(busybox):
        raise EngineUnavailable(f'{busybox} is dynamically linked: the sandbox image needs busybox-static')
    applets = subprocess.run([busybox, '--list'], check=True, capture_output=True, text=True).stdout.split()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode='w') as tar:
        for folder in ('bin', 'tmp'):
            entry = tarfile.TarInfo(folder)
            entry.type, entry.mode = tarfile.DIRTYPE, 0o1777 if folder == 'tmp' else 0o755
            tar.addfile(entry)
        tar.add(busybox, arcname='bin/busybox')
        for applet in applets:
            if applet != 'busybox':
                link = tarfile.TarInfo(f'bin/{applet}')
                link.type, link.linkname = tarfile.SYMTYPE, 'busybox'
                tar.addfile(link)
    return buffer.getvalue()


def _dynamic(binary: str) -> bool:
    ldd = subprocess.run(['ldd', binary], capture_output=True, text=True) if shutil.which('ldd') else None
    return ldd is not None and ldd.returncode == 0 and '=>' in ldd.stdout
