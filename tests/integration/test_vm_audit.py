"""VM audit for real: Lynis and OpenSCAP in a booted throwaway VM of the base disk.

Marker `vm` (deselected unless `invoke test --vm`): the bake and the audit boot QEMU guests,
about 15 and 20 minutes under TCG. The base disk is the session's (test_vm_image.py bakes the
same chain in the same project copy, so whichever runs first bakes it once).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.vm]

BAKE_TIMEOUT = 3600
AUDIT_TIMEOUT = 3600


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def test_vm_audit_scores_the_booted_disk_and_leaves_it_untouched(kiln):
    baked = kiln.invoke("bake", "base", "--target", "qemu", "--no-verify", timeout=BAKE_TIMEOUT)
    version = dict(line.split("\t")[:2] for line in baked.stdout.splitlines() if "\t" in line)["base"]
    disk = kiln.project / ".kiln" / "vm" / "base" / f"base-{version}.qcow2"
    before = sha256(disk)

    # Below a threshold the audit exits 1 but still prints and records its figures.
    proc = kiln.invoke("audit", "base", "--target", "qemu", "--json", check=False, timeout=AUDIT_TIMEOUT)
    result = json.loads(proc.stdout)
    assert proc.returncode == (0 if result["passed"] else 1), proc.stderr
    assert result["version"] == version
    assert 0 < result["lynis"]["hardening_index"] <= 100
    assert result["lynis"]["tests_performed"] > 100
    assert result["scap"]["passed"] > 100, "most ANSSI rules apply to a booted Debian 12"

    labels = json.loads(disk.with_suffix(".json").read_text())
    assert labels["kiln.lynis-index"] == str(result["lynis"]["hardening_index"])
    assert labels["kiln.scap-score"] == f"{result['scap']['score']:.1f}"
    reports = Path(result["report_dir"])
    for name in ("lynis-report.dat", "oscap-results.xml", "oscap-report.html", "summary.json"):
        assert (reports / name).stat().st_size > 0, name

    # The tools went into the VM's overlay only; the VM and its scratch folder are gone.
    assert sha256(disk) == before
    pgrep = ["pgrep", "-af", "--", f"-name {kiln.prefix}-audit-"]
    vms = subprocess.run(pgrep, capture_output=True, text=True)
    assert vms.stdout == ""
    assert not list((kiln.project / ".kiln").glob(f"{kiln.prefix}-audit-*"))
