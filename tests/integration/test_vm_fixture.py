"""A VM image for real in every CI run: QEMU bakes and boots a small role chain (vm_fixture/).

The hardened base->web chain takes 30-40 min under TCG and runs only with `--vm`
(test_vm_image.py); this chain is a few packages on the VM root disk, so it costs minutes. Its
project is a copy of this one with the fixture's `images/` and provisioners; its disks, state and
VMs carry this run's prefix and are removed at the end, even when a test fails. The VM root disk
(mmdebstrap, about 2 min) is shared through KILN_VM_CACHE_DIR, as every bake on this machine
shares it.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

import pytest

from tests.integration.conftest import KilnRun
from tests.integration.vm_chain import overlays, versions, vm_processes

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", autouse=True)
def background_bakes_finished(vm_bakes):
    """These tests look for leftover VMs of this run's prefix: the `broken` bake must be over, or
    its VM counts (when the container tests fail fast, this module starts while it runs)."""
    vm_bakes.result("broken")


def junit_cases(run: KilnRun, role: str, version: str) -> dict[str, ET.Element]:
    """The latest verification's test cases by name, without their parameters."""
    junit = sorted((run.project / ".kiln" / "verify" / role).glob(f"{version}-*.xml"))[-1]
    return {case.get("name", "").split("[")[0]: case for case in ET.parse(junit).getroot().iter("testcase")}


def test_bake_verifies_the_disk_in_a_vm_with_sidecar_labels(vm_run, baked):
    version = baked["base"]
    disk = vm_run.project / ".kiln" / "vm" / "base" / f"base-{version}.qcow2"
    labels = json.loads(disk.with_suffix(".json").read_text())
    listed = json.loads(vm_run.invoke("images", "--target", "qemu", "--json").stdout)
    bases = [(i["role"], i["version"], i["status"]) for i in listed if i["role"] == "base"]
    assert bases == [("base", version, "verified")]  # broken, baked beside it, is listed too
    assert labels["kiln.status"] == "verified" and labels["kiln.version"] == version
    assert labels["kiln.parent"] == "bootstrap"
    assert labels["kiln.parent-id"].startswith("kiln-bootstrap-debian-")
    info = json.loads(subprocess.check_output(["qemu-img", "info", "--output=json", str(disk)]))
    assert info["format"] == "qcow2" and "backing-filename" not in info
    # The role's own suite and what only a booted VM shows ran there.
    cases = junit_cases(vm_run, "base", version)
    assert {"test_declared_service_is_active", "test_auditd_running_with_rules_loaded"} <= set(cases)
    assert not vm_processes(vm_run.prefix) and not overlays(vm_run.project / ".kiln", vm_run.prefix)


def test_vm_answered_health_through_its_forwarded_loopback_port(vm_run, baked):
    """The suite GETs /health from this host through the VM's 127.0.0.1 port forward."""
    case = junit_cases(vm_run, "base", baked["base"])["test_health_answers_on_the_forwarded_port"]
    assert not list(case), "the health check through the forwarded port failed or was skipped"


def test_second_bake_is_a_no_op(vm_run, baked):
    proc = vm_run.invoke("bake", "base", "--target", "qemu")
    assert versions(proc) == baked
    assert f"base {baked['base']} is up to date" in proc.stderr
    assert not vm_processes(vm_run.prefix)


def test_sigterm_during_verify_powers_the_vm_off_and_removes_its_overlay(vm_run, baked):
    state = vm_run.project / ".kiln"
    proc = subprocess.Popen(
        [sys.executable, "-m", "invoke", "verify", "base", "--target", "qemu"],
        cwd=vm_run.project,
        env=vm_run.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        overlay = f"{vm_run.prefix}-verify-*/overlay.qcow2"
        while not (vm_processes(vm_run.prefix) and list(state.glob(overlay))):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "verify never booted its VM"
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)  # what a CI runner or `kill` sends
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr
    assert not vm_processes(vm_run.prefix)
    assert not overlays(state, vm_run.prefix)
    labels = json.loads((state / "vm" / "base" / f"base-{baked['base']}.json").read_text())
    assert labels["kiln.status"] == "verified"  # an interrupted verification decides nothing


def test_a_provisioner_that_breaks_a_service_rejects_the_vm_image(vm_run, baked, vm_bakes):
    proc = vm_bakes.result("broken")  # `invoke bake broken --target qemu`, run from the session's start
    assert proc.returncode == 1, proc.stderr
    version = versions(proc)["broken"]
    assert f"broken {version} rejected" in proc.stderr
    # The role's own suite (inherited from base) sees its declared service down.
    assert "control test_declared_service_is_active" in proc.stderr, proc.stderr
    sidecar = vm_run.project / ".kiln" / "vm" / "broken" / f"broken-{version}.json"
    assert json.loads(sidecar.read_text())["kiln.status"] == "rejected"
    assert not vm_processes(vm_run.prefix) and not overlays(vm_run.project / ".kiln", vm_run.prefix)
