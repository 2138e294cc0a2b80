"""VM images for real: QEMU boots the disks on this machine (TCG where KVM does not work).

One chain (base, web) is baked and verified once per session and shared; each VM a test boots
is a throwaway overlay, powered off and removed at the end even when the test fails. The disks
live in the session's project copy, so nothing outlives the run but the shared bootstrap disk.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.vm]

BAKE_TIMEOUT = 3600
# Under TCG on two cores shared with other work (load 20-30), the base bake alone took more than
# Packer's default 30 min here: each bake gets an hour, the whole chain three.
SLOW_PACKER = {"KILN_PACKER_TIMEOUT": "3600"}
CHAIN_TIMEOUT = 3 * 3600


def versions(proc) -> dict[str, str]:
    return dict(line.split("\t")[:2] for line in proc.stdout.splitlines() if "\t" in line)


def leftover_vms(prefix: str) -> list[str]:
    found = subprocess.run(["pgrep", "-af", "--", f"-name {prefix}-"], capture_output=True, text=True)
    return found.stdout.splitlines()


@pytest.fixture(scope="session")
def baked_vm_web(kiln) -> dict[str, str]:
    """base and web baked as qcow2 disks and verified in VMs, once for the session."""
    yield versions(kiln.invoke("bake", "web", "--target", "qemu", timeout=CHAIN_TIMEOUT, env=SLOW_PACKER))
    shutil.rmtree(kiln.project / ".kiln" / "vm", ignore_errors=True)  # a GiB or so per run


def test_bake_writes_verified_disks_with_sidecar_labels(kiln, baked_vm_web):
    assert set(baked_vm_web) == {"base", "web"}
    listed = {i["role"]: i for i in json.loads(kiln.invoke("images", "--target", "qemu", "--json").stdout)}
    for role, version in baked_vm_web.items():
        disk = kiln.project / ".kiln" / "vm" / role / f"{role}-{version}.qcow2"
        labels = json.loads(disk.with_suffix(".json").read_text())
        assert labels["kiln.status"] == listed[role]["status"] == "verified", role
        assert labels["kiln.role"] == role and labels["kiln.version"] == version
        info = json.loads(subprocess.check_output(["qemu-img", "info", "--output=json", str(disk)]))
        assert info["format"] == "qcow2" and "backing-filename" not in info  # each disk stands alone
        junit = sorted((kiln.project / ".kiln" / "verify" / role).glob(f"{version}-*.xml"))[-1].read_text()
        assert 'failures="0"' in junit and "test_root_filesystem_grown_to_the_disk" in junit
    web_labels = kiln.project / ".kiln" / "vm" / "web" / f"web-{baked_vm_web['web']}.json"
    assert json.loads(web_labels.read_text())["kiln.parent-id"].startswith("base@")
    assert not leftover_vms(kiln.prefix)


def test_second_bake_is_a_no_op(kiln, baked_vm_web):
    proc = kiln.invoke("bake", "web", "--target", "qemu")
    assert versions(proc) == baked_vm_web
    assert f"web {baked_vm_web['web']} is up to date" in proc.stderr


def test_web_vm_answered_health_on_its_forwarded_port(kiln, baked_vm_web):
    """Verification GETs the role's health path through the VM's 127.0.0.1 port forward."""
    version = baked_vm_web["web"]
    junit = sorted((kiln.project / ".kiln" / "verify" / "web").glob(f"{version}-*.xml"))[-1]
    root = ET.parse(junit).getroot()
    [case] = [
        c for c in root.iter("testcase") if c.get("name") == "test_health_answers_on_the_forwarded_port"
    ]
    assert not list(case), "the health check failed or was skipped"


def test_a_provisioner_that_breaks_a_service_rejects_the_vm_image(kiln, scratch_project, baked_vm_web):
    """A child of the shared base whose provisioner leaves auditd unable to start."""
    images = scratch_project.project / "images"
    (images / "broken" / "tests").mkdir(parents=True)
    (images / "broken" / "role.yml").write_text(
        "name: broken\ndescription: auditd cannot start\nparent: base\npackages: []\n"
        "provisioners: [broken-auditd]\ntests: []\n"
    )
    (images / "broken" / "packages.lock").write_text("# requested: \n")
    script = Path(scratch_project.project / "provisioners" / "broken-auditd.sh")
    script.write_text(
        "#!/usr/bin/env bash\nset -euo pipefail\necho 'no_such_option = 1' >> /etc/audit/auditd.conf\n"
    )
    script.chmod(0o755)
    # The session's state folder holds its disks: the scratch copy finds the same base there.
    shared = {"KILN_STATE_DIR": str(kiln.project / ".kiln"), **SLOW_PACKER}
    proc = scratch_project.invoke(
        "bake", "broken", "--target", "qemu", check=False, timeout=BAKE_TIMEOUT, env=shared
    )
    assert proc.returncode == 1, proc.stderr
    version = versions(proc)["broken"]
    assert f"broken {version} rejected" in proc.stderr
    failed_controls = ("test_auditd_running_with_rules_loaded", "test_no_failed_systemd_unit")
    assert any(control in proc.stderr for control in failed_controls), proc.stderr
    sidecar = kiln.project / ".kiln" / "vm" / "broken" / f"broken-{version}.json"
    assert json.loads(sidecar.read_text())["kiln.status"] == "rejected"
    assert not leftover_vms(scratch_project.prefix)
