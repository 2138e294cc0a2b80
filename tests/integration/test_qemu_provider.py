"""The qemu provider for real: VMs booted from the VM fixture's disks, behind HAProxy.

In CI: one zone with one VM, serving the page its user-data wrote; `up`, a rollout under bounded
loopback load with no failed request, `down`. One VM, not one per zone: each VM boot costs about
two minutes of TCG, and routing across zones is the local provider's (the same bridges and
HAProxy; test_rollout.py), while benchmarks/vm_scenario.py runs two zones and the db on VMs.
With `--vm` (KILN_TEST_VMS=1) also a bad image rolled back by itself: the rollout waits the whole
health timeout for it, too long for CI beside the rest. The rollout steps are the ones
test_rollout.py runs on containers (provider_contract.py). The VMs run the fixture chain
(vm_chain.py), not the hardened web and db, which take 30-40 min to bake under TCG. v2 is v1's
disk under another version, as
conftest.relabelled stands in for docker images: the rollout boots, checks, drains and replaces
every VM all the same, and each new VM's page names the new version (from its user-data). The
bad image is the fixture's `broken` disk (base with its health page unreadable) under a base
version. Every VM, tap device, network and folder of the environment is gone at the end, even
when a test fails.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.request
from collections.abc import Iterator

import pytest

from kiln.diskimages import DiskImageStore
from kiln.settings import Settings
from tests.integration import provider_contract as contract
from tests.integration import vm_chain
from tests.integration.conftest import KilnRun
from tests.integration.vm_chain import versions

pytestmark = pytest.mark.integration

ENV = f"vq{os.getpid()}"
ENV_FILE = """
provider: qemu
zones: [z0]
instances: {base: 1}
balanced_role: base
frontend: {port: 0}
health: {path: /health, interval: 1, rise: 2, fall: 2, timeout: 300}
rollout: {max_surge: 1, max_unavailable: 0, warmup: 1, drain_timeout: 5, canary: 1}
"""
LOAD_SECONDS = 600  # the whole rollout: a VM boots under TCG


def disks(run: KilnRun) -> DiskImageStore:
    return DiskImageStore(Settings(project_root=run.project, state_dir=run.project / ".kiln"))


def set_status(run: KilnRun, version: str, status: str) -> None:
    record = disks(run).find("base", version)
    assert record is not None, f"base {version} is not in the catalog"
    disks(run).set_status(record, status)


def stand_in(run: KilnRun, role: str, version: str, name: str) -> str:
    """A copy of a disk under a new base version (unverified); the version."""
    store = disks(run)
    source = store.find(role, version)
    assert source is not None, f"{role} {version} is not in the catalog"
    new = hashlib.sha256(f"{name}:{role}:{version}".encode()).hexdigest()[:12]
    copy = run.project / ".kiln" / f"{name}.qcow2"
    shutil.copyfile(source.image, copy)
    labels = {**source.labels, "kiln.role": "base", "kiln.version": new, "kiln.status": "baked"}
    store.add(copy, labels)
    return new


@pytest.fixture(scope="module")
def chain(vm_run: KilnRun, baked, baked_all) -> Iterator[dict[str, str]]:
    """v1, the fixture's base (verified), and v2, its stand-in (left unverified, or `up`
    would take it as the newest verified base). Stand-ins leave the shared catalog after."""
    yield {"v1": baked["base"], "v2": stand_in(vm_run, "base", baked["base"], "v2")}
    for record in disks(vm_run).list("base"):
        if record.version != baked["base"]:
            disks(vm_run).remove(record.image)


@pytest.fixture(scope="module")
def env(vm_run: KilnRun, chain, docker_client):
    taps_before = vm_chain.taps()
    (vm_run.project / "environments").mkdir(exist_ok=True)
    (vm_run.project / "environments" / f"{ENV}.yml").write_text(ENV_FILE)
    try:
        yield ENV
    finally:
        down, left = vm_chain.tear_down(vm_run, ENV, docker_client, taps_before)
    assert down.returncode == 0, down.stderr
    assert not left, f"down left {left}"


def qemu_processes(env: str) -> list[int]:
    return list(vm_chain.vm_processes(f"kiln-{env}"))


def assert_pages(run: KilnRun, version: str) -> None:
    """The VM serves the page its own user-data wrote, through the load balancer."""
    view = contract.status(run, ENV)
    expected = {f"{i['name']} {version} {i['zone']}" for i in view["instances"]}
    pages = set()
    for _ in range(3):
        with urllib.request.urlopen(view["frontend"], timeout=10) as response:
            pages.add(response.read().decode().strip())
    assert pages == expected


def test_up_boots_a_vm_behind_the_load_balancer(vm_run, env, chain):
    up = vm_run.invoke("up", env, timeout=1800)
    assert "load balancer http://127.0.0.1:" in up.stderr, up.stderr
    contract.assert_all_serving(vm_run, env, "base", chain["v1"], ["z0"])
    assert_pages(vm_run, chain["v1"])
    assert len(qemu_processes(env)) == 1


def test_rollout_under_load_fails_no_request(vm_run, env, chain):
    set_status(vm_run, chain["v2"], "verified")
    contract.roll_out_under_load(vm_run, env, "base", chain["v2"], seconds=LOAD_SECONDS)
    assert_pages(vm_run, chain["v2"])
    assert len(qemu_processes(env)) == 1, "the old VM must be gone"


@pytest.mark.vm
def test_a_bad_image_is_rolled_back_by_itself(vm_run, env, chain, vm_bakes):
    # The broken child (baked and rejected beside the session's first tests) as a base version.
    bad = stand_in(vm_run, "broken", versions(vm_bakes.result("broken"))["broken"], "bad")

    def mark(status: str) -> None:
        set_status(vm_run, bad, status)

    mark("rejected")
    contract.bad_image_rolls_back(vm_run, env, "base", bad, mark, seconds=LOAD_SECONDS)
    assert_pages(vm_run, chain["v2"])
    assert len(qemu_processes(env)) == 1
