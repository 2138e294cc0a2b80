"""cloud-init's own configuration per target (provisioners/base-cloud-init.sh writes it at bake):
the container set stays trimmed, the VM set grows disks and takes SSH keys, every target Kiln
can bake for has its datasources. The installed file is `cloud-init schema`-checked in the image
(images/base/tests/test_cloud_init.py)."""

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from kiln.targets import TARGETS

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "images/base/files/usr/local/lib/kiln/cloud-init"
SCRIPT = REPO / "provisioners/base-cloud-init.sh"
VM_ONLY = {"growpart", "resizefs", "ssh", "set_hostname"}


def modules(runtime: str) -> set[str]:
    conf = yaml.safe_load((CONFIGS / f"{runtime}.cfg").read_text())
    return {
        m for key in ("cloud_init_modules", "cloud_config_modules", "cloud_final_modules") for m in conf[key]
    }


def test_container_set_is_trimmed_and_vm_set_grows_disks_and_takes_keys():
    assert not modules("container") & VM_ONLY
    assert modules("vm") >= VM_ONLY | {"users_groups", "write_files", "runcmd"}


def datasources_by_target() -> dict[str, tuple[str, str]]:
    cases = re.findall(r"^\s*([\w|-]+)\) runtime=(\w+) datasources=\"([^\"]+)\"", SCRIPT.read_text(), re.M)
    return {target: (runtime, sources) for names, runtime, sources in cases for target in names.split("|")}


@pytest.mark.parametrize(
    ("target", "runtime", "sources"),
    [
        ("docker", "container", "NoCloud, None"),
        ("qemu", "vm", "NoCloud, ConfigDrive, None"),
        ("openstack", "vm", "ConfigDrive, OpenStack, None"),
        ("amazon-ebs", "vm", "Ec2, None"),
    ],
)
def test_each_target_gets_its_platforms_datasources(target, runtime, sources):
    assert datasources_by_target()[target] == (runtime, sources)


def test_every_registered_target_has_datasources():
    assert set(TARGETS) <= set(datasources_by_target())


def test_an_unknown_target_stops_the_bake():
    proc = subprocess.run(
        ["bash", str(SCRIPT)],
        env={"KILN_TARGET": "gce", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1 and "no datasources known for target 'gce'" in proc.stderr
