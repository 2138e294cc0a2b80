"""Integration fixtures: the real Docker engine and Packer, isolated by a per-run prefix.

Everything a run creates is named `kilntest<pid>...` (images `kilntest<pid>/<role>`, bake
containers `kilntest<pid>-bake-*`, the apt cache volume) and is removed at the end,
even when tests fail. The bootstrap image is shared and kept: it is the slow, stable root.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

from kiln.images import DockerImageStore, ImageRecord
from tests.conftest import copy_project
from tests.integration.vm_chain import BackgroundBakes, make_project, versions, vm_processes

pytestmark = pytest.mark.integration
# A role's testinfra suite that only Kiln runs, against a VM (test_vm_fixture.py).
collect_ignore = ["vm_fixture"]


@dataclass
class KilnRun:
    """Runs `invoke` in a project copy with this test run's image prefix."""

    project: Path
    prefix: str

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "KILN_PROJECT_ROOT": str(self.project), "KILN_IMAGE_REPO": self.prefix}

    def invoke(
        self, *args: str, check: bool = True, timeout: int = 900, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [sys.executable, "-m", "invoke", *args],
            cwd=self.project,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"invoke {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
            )
        return proc

    def with_project(self, project: Path) -> KilnRun:
        return KilnRun(project, self.prefix)

    def copy(self, dest: Path) -> KilnRun:
        """A private copy of this run's project (its refreshed locks included), same prefix."""
        return self.with_project(copy_project(dest, source=self.project))

    def refresh_locks(self) -> list[str]:
        """Re-lock every role against the mirror, parents first: the lines that changed.

        Debian replaces a package's version when it ships a security update, so the committed
        locks fall behind the mirror between two lock-refresh pipelines; the suite tests Kiln
        against today's mirror, not the committed locks' age (test_package_locks tests a lock
        the mirror no longer satisfies)."""
        roles = sorted(p.parent.name for p in (self.project / "images").glob("*/role.yml"))
        changed = []
        for role in sorted(roles, key=lambda r: r != "base"):
            proc = self.invoke("lock", role, "--update")
            changed += [
                f"{role}: {line}" for line in proc.stdout.splitlines() if line[:2] in ("~ ", "+ ", "- ")
            ]
        return changed


def relabelled(
    store: DockerImageStore, source, role: str, version: str, built: str, status: str, parent: str = ""
) -> str:
    """A cheap stand-in for a baked version: the baked base with other kiln.* labels."""
    stand_in = ImageRecord(role, version, status, store.ref(role, version), source.id, {})
    labels = {
        "kiln.role": role,
        "kiln.version": version,
        "kiln.built": built,
        "kiln.bake-id": f"bake-{version}",
        "kiln.parent-id": parent,
        "kiln.status": status,
    }
    return store.update_labels(stand_in, labels).image


def remove_prefixed(client: docker.DockerClient, prefix: str) -> None:
    for container in client.containers.list(all=True):
        image_tags = container.image.tags if container.image else []
        if container.name.startswith(prefix) or any(t.startswith(prefix + "/") for t in image_tags):
            container.remove(force=True)
    for image in client.images.list():
        for tag in image.tags:
            if tag.startswith(prefix + "/"):
                client.images.remove(tag, force=True)
    for volume in client.volumes.list():
        if volume.name.startswith(prefix):
            volume.remove(force=True)


@pytest.fixture(scope="session")
def docker_client() -> docker.DockerClient:
    return docker.from_env(timeout=120)


@pytest.fixture(scope="session")
def kiln(tmp_path_factory, docker_client) -> KilnRun:
    prefix = f"kilntest{os.getpid()}"
    run = KilnRun(copy_project(tmp_path_factory.mktemp("project")), prefix)
    try:
        behind = run.refresh_locks()
        if behind:
            warnings.warn(
                f"the committed package locks are behind the mirror: {'; '.join(behind)}", stacklevel=2
            )
        yield run
    finally:
        remove_prefixed(docker_client, prefix)


@pytest.fixture(scope="session")
def baked_web(kiln: KilnRun) -> dict[str, str]:
    """Bake base and web once for the session; role -> version."""
    proc = kiln.invoke("bake", "web")
    return dict(line.split("\t")[:2] for line in proc.stdout.splitlines() if "\t" in line)


@pytest.fixture(scope="session")
def baked_all(kiln: KilnRun, baked_web: dict[str, str]) -> dict[str, str]:
    """Every role baked (and so verified) once for the session; role -> version."""
    found = dict(baked_web)
    for role in ("db", "lb", "worker"):
        proc = kiln.invoke("bake", role)
        found.update(line.split("\t")[:2] for line in proc.stdout.splitlines() if "\t" in line)
    return found


@pytest.fixture
def scratch_project(tmp_path, kiln: KilnRun) -> KilnRun:
    """A private project copy (to change roles or provisioners) sharing the session's images."""
    return kiln.copy(tmp_path / "project")


@pytest.fixture(scope="session")
def vm_run(tmp_path_factory, kiln: KilnRun):
    run = KilnRun(make_project(tmp_path_factory.mktemp("vmfixture")), kiln.prefix)
    yield run
    # Whatever failed: no VM of this run keeps running, no disk or overlay stays behind.
    for pid in vm_processes(run.prefix):
        os.kill(pid, signal.SIGTERM)
    shutil.rmtree(run.project / ".kiln", ignore_errors=True)


@pytest.fixture(scope="session")
def vm_bakes(vm_run: KilnRun):
    bakes = BackgroundBakes(vm_run)
    bakes.start()
    yield bakes
    bakes.stop()


@pytest.fixture(scope="session", autouse=True)
def vm_bakes_early(request):
    """Start the fixture chain's bakes with the session when any collected test needs them."""
    if any("vm_bakes" in getattr(item, "fixturenames", ()) for item in request.session.items):
        request.getfixturevalue("vm_bakes")


@pytest.fixture(scope="session")
def baked(vm_bakes: BackgroundBakes) -> dict[str, str]:
    """The fixture's base, locked against the mirror, baked as a qcow2 disk and verified in a VM."""
    for step in ("lock", "base"):
        proc = vm_bakes.result(step)
        assert proc.returncode == 0, f"invoke {' '.join(proc.args)} exited {proc.returncode}:\n{proc.stderr}"
    return versions(vm_bakes.result("base"))
