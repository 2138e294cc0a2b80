"""Audit of a VM disk: Lynis and OpenSCAP inside a booted throwaway VM.

The tools are installed in the VM's copy-on-write overlay only, never in the disk; the VM
boots the image as an instance would (its kernel, systemd, auditd, sysctls, partitions),
which is what a container cannot show Lynis. Figures and thresholds are those of `audit.py`,
recorded in the disk's sidecar.
"""

from __future__ import annotations

import contextlib
import shlex
import signal
import subprocess
import threading
from pathlib import Path

from kiln import console
from kiln.audit import (
    DATASTREAM,
    REPORT_FILES,
    Auditor,
    LynisFigures,
    ScapFigures,
    ensure_scap_content,
    install_script,
    oscap_command,
    parse_lynis_report,
    parse_xccdf_results,
)
from kiln.diskimages import DiskImageStore
from kiln.errors import OperationFailed
from kiln.images import ImageRecord
from kiln.roles import RoleCatalog
from kiln.settings import Settings
from kiln.vm import sudoers_dropin
from kiln.vmverify import ready_vm

# Install, OpenSCAP and Lynis together: TCG runs them many times slower than a container.
SCAN_SECONDS = 3 * 3600
OUTBOX = "/tmp/kiln-audit-reports"


class VmAuditor(Auditor):
    def __init__(self, settings: Settings):  # no Docker engine needed
        self.settings = settings
        self.store = DiskImageStore(settings)
        self.catalog = RoleCatalog(settings)

    def scan(
        self, image: str, what: str, report_dir: Path, label: str | None = None
    ) -> tuple[LynisFigures, ScapFigures]:
        datastream = ensure_scap_content(self.settings)
        report_dir.mkdir(parents=True, exist_ok=True)
        # Only the disk and the ports to forward matter here; the stock bootstrap disk (no role,
        # benchmarks) boots as base would.
        record = ImageRecord(what, "", "", image, image, {})
        role = self.catalog.get(what if what in self.catalog.names() else "base")
        with (
            interrupted_by_sigterm(),
            console.progress(f"auditing {Path(image).name} in a throwaway VM") as step,
            ready_vm(self.settings, record, role, "audit", step) as (machine, _),
        ):
            machine.copy_in(datastream, f"/tmp/{DATASTREAM}")
            step("installing the audit tools, then OpenSCAP (ANSSI BP-028 intermediary) and Lynis")
            run(machine, f"sudo sh -c {shlex.quote(scan_script(machine.user))}", "the scan")
            for path in REPORT_FILES:
                name = Path(path).name
                (report_dir / name).write_text(run(machine, f"cat {OUTBOX}/{name}", f"reading {path}"))
        lynis = parse_lynis_report((report_dir / "lynis-report.dat").read_text(errors="replace"))
        scap = parse_xccdf_results((report_dir / "oscap-results.xml").read_text())
        return lynis, scap


def scan_script(admin: str) -> str:
    """One root session: it first takes away the throwaway admin's own sudo rights (cloud-init's
    rule and Kiln's drop-in), so the scanners see the image's sudoers as an instance ships them,
    then leaves the reports where the admin, no longer root, reads them."""
    copies = " ".join(REPORT_FILES)
    return "; ".join(
        [
            "set -e",
            install_script(),
            f"rm -f /etc/sudoers.d/90-cloud-init-users {sudoers_dropin(admin)}",
            f"{shlex.join(oscap_command())} || [ $? -eq 2 ]",  # 2: some rule failed
            "lynis audit system --quick --no-colors >/dev/null",
            f"install -d -m 0700 -o {admin} {OUTBOX}",
            f"install -m 0600 -o {admin} {copies} {OUTBOX}/",
        ]
    )


def run(machine, command: str, what: str, ok: tuple[int, ...] = (0,)) -> str:
    try:
        proc = machine.ssh(command, timeout=SCAN_SECONDS)
    except subprocess.TimeoutExpired:
        message = f"audit step '{what}' took over {SCAN_SECONDS} s in VM {machine.name}"
        raise OperationFailed(message) from None
    if proc.returncode not in ok:
        tail = " ".join((proc.stdout + proc.stderr).strip().splitlines()[-3:])
        raise OperationFailed(f"audit step '{what}' exited {proc.returncode} in VM {machine.name}: {tail}")
    return proc.stdout


@contextlib.contextmanager
def interrupted_by_sigterm():
    """SIGTERM (a cancelled CI job, `timeout`) unwinds like Ctrl-C: the VM is still powered off
    and its overlay removed, where the default action would leave QEMU running."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
