"""The root of every image: a Debian root filesystem from mmdebstrap, imported into Docker.

No registry is reachable, so nothing is pulled: the bootstrap image is built locally from the
configured mirror and named after the mirror lines, so pointing Kiln at another mirror (a dated
snapshot, say) yields another bootstrap image and so new versions for every role.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors

from kiln.errors import OperationFailed, require_tools
from kiln.settings import Settings

BOOTSTRAP_REPOSITORY = "kiln-bootstrap/debian"


def apt_sources(settings: Settings) -> list[str]:
    mirror, security, suite = (
        settings.resolved_mirror(),
        settings.resolved_security_mirror(),
        settings.suite,
    )
    return [
        f"deb {mirror} {suite} main",
        f"deb {mirror} {suite}-updates main",
        f"deb {security} {suite}-security main",
    ]


def bootstrap_ref(settings: Settings) -> str:
    digest = hashlib.sha256("\n".join(apt_sources(settings)).encode()).hexdigest()[:10]
    return f"{BOOTSTRAP_REPOSITORY}:{settings.suite}-{digest}"


@contextlib.contextmanager
def one_builder(lock_file: Path) -> Iterator[None]:
    """One process of this machine at a time builds a bootstrap root; the others wait, then find it
    built (two bakes at once, a VM bake beside a container bake, would both run mmdebstrap)."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with lock_file.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def ensure_bootstrap_image(client: docker.DockerClient, settings: Settings, say) -> str:
    """The bootstrap image's id, building and importing it first when it is absent."""
    ref = bootstrap_ref(settings)
    with one_builder(settings.vm_cache_dir / "bootstrap-image.lock"):
        try:
            return client.images.get(ref).id
        except docker.errors.ImageNotFound:
            return build_bootstrap_image(client, settings, ref, say)


def build_bootstrap_image(client: docker.DockerClient, settings: Settings, ref: str, say) -> str:
    require_tools("the bootstrap root", "mmdebstrap")
    say(f"bootstrapping {ref} with mmdebstrap from {settings.resolved_mirror()} (once)")
    with tempfile.TemporaryDirectory(prefix="kiln-bootstrap-") as scratch:
        tarball = Path(scratch) / "rootfs.tar"
        proc = subprocess.run(
            [
                "mmdebstrap",
                "--quiet",
                "--variant=minbase",
                # Translations are never needed on a server and cost every later `apt-get update`.
                '--aptopt=Acquire::Languages "none"',
                settings.suite,
                str(tarball),
                *apt_sources(settings),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            tail = " ".join(proc.stderr.strip().splitlines()[-3:])
            raise OperationFailed(f"mmdebstrap failed: {tail}")
        client.api.import_image_from_file(
            str(tarball),
            repository=BOOTSTRAP_REPOSITORY,
            tag=ref.split(":")[1],
        )
    return client.images.get(ref).id
