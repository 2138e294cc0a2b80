"""Verification of a VM disk: the role's testinfra suites over SSH in a throwaway VM.

The VM boots from an overlay of the disk (the disk itself is never written), on a larger
virtual disk so the root filesystem must grow, with a one-time admin whose key comes from a
NoCloud seed. After cloud-init has finished, the chain's suites run through testinfra's ssh
backend with sudo, plus `kiln/suites/test_vm_runtime.py`: what only a booted machine shows
(systemd units, auditd, live kernel sysctls, the loaded nftables ruleset, the grown root).
"""

from __future__ import annotations

import contextlib
import uuid
from pathlib import Path

from kiln import vm
from kiln.diskimages import DiskImageStore
from kiln.images import ImageRecord
from kiln.roles import Role, RoleCatalog
from kiln.settings import Settings
from kiln.verify import Verifier, suite_files

SUITES = Path(__file__).parent / "suites"
# The overlay's virtual size: larger than any baked disk, so growpart has something to do.
VERIFY_DISK_GIB = 4
BOOT_SECONDS = 900  # TCG on 2 shared cores: a cold boot takes about a minute, 10 under heavy load
CLOUD_INIT_SECONDS = 300


def vm_name(prefix: str, purpose: str, role: str) -> str:
    return f"{prefix}-{purpose}-{role}-{uuid.uuid4().hex[:8]}"


@contextlib.contextmanager
def ready_vm(settings: Settings, record: ImageRecord, role: Role, purpose: str, step):
    """A booted throwaway VM of the disk, logged in and past cloud-init; always powered off."""
    name = vm_name(settings.name_prefix, purpose, role.name)
    step(f"booting {name} ({vm.accelerator(settings)})")
    with vm.booted(
        settings,
        Path(record.image),
        name,
        guest_ports=tuple(sorted({*role.spec.ports, *([role.spec.health.port] if role.spec.health else [])})),
        disk_size=f"{VERIFY_DISK_GIB}G",
    ) as machine:
        machine.wait_for_ssh(BOOT_SECONDS)
        step("waiting for cloud-init")
        yield machine, machine.wait_for_cloud_init(CLOUD_INIT_SECONDS)
        step(f"powering {name} off")


class VmVerifier(Verifier):
    runtime = "vm"

    def __init__(self, settings: Settings):  # no Docker engine needed
        self.settings = settings
        self.catalog = RoleCatalog(settings)
        self.store = DiskImageStore(settings)

    def suites(self, chain: list[Role]) -> list[Path]:
        health = [SUITES / "test_vm_health.py"] if chain[-1].spec.health else []
        return [*suite_files(chain), SUITES / "test_vm_runtime.py", *health]

    @contextlib.contextmanager
    def host(self, record: ImageRecord, role: Role, step):
        with ready_vm(self.settings, record, role, "verify", step) as (machine, cloud_init):
            hosts = ["--hosts=ssh://vm", f"--ssh-config={machine.ssh_config}", "--sudo"]
            env = {"KILN_VERIFY_DISK_BYTES": str(VERIFY_DISK_GIB << 30), "KILN_VERIFY_CLOUD_INIT": cloud_init}
            if role.spec.health:
                port = machine.ports[role.spec.health.port]
                env["KILN_VERIFY_HEALTH_URL"] = f"http://127.0.0.1:{port}{role.spec.health.path}"
            yield hosts, env
