"""A real audit: the hardened base meets the default thresholds, figures are recorded on the
image and in the state folder, a missed threshold fails the command, and the tools never enter
the image."""

from __future__ import annotations

import json
import re

import pytest

pytestmark = pytest.mark.integration


def test_hardened_base_meets_the_defaults_and_a_missed_threshold_fails(kiln, baked_web, docker_client):
    """One scan (Lynis and OpenSCAP take a minute or two each): its figures meet Kiln's default
    thresholds (Lynis >= 85, ANSSI BP-028 intermediary >= 95, no failed high-severity rule), and a
    threshold no image can reach (101) fails the command with the figures still recorded."""
    version = baked_web["base"]
    proc = kiln.invoke(
        "audit", "base", "--version", version, check=False, timeout=1200, env={"KILN_AUDIT_MIN_LYNIS": "101"}
    )
    assert proc.returncode == 1, proc.stderr
    index = int(re.search(r"Lynis hardening index (\d+) \(min 101\)", proc.stdout)[1])
    assert (
        f"Lynis hardening index {index} < 101 (KILN_AUDIT_MIN_LYNIS)" in proc.stderr.strip().splitlines()[-1]
    )
    assert "Traceback" not in proc.stderr

    report_dir = kiln.project / ".kiln" / "audit" / "base" / version
    summary = json.loads((report_dir / "summary.json").read_text())
    assert summary["lynis"]["hardening_index"] == index
    assert summary["passed"] is False
    assert index >= 85 and summary["scap"]["score"] >= 95 and summary["scap"]["failed_high"] == []
    assert summary["thresholds"]["min_lynis"] == 101 and summary["thresholds"]["min_scap"] == 95
    assert 0 < summary["scap"]["score"] <= 100
    assert summary["scap"]["passed"] > 0
    for name in ("lynis-report.dat", "lynis.log", "oscap-results.xml", "oscap-report.html"):
        assert (report_dir / name).stat().st_size > 0, name

    labels = docker_client.images.get(f"{kiln.prefix}/base:{version}").labels
    assert labels["kiln.lynis-index"] == str(index)
    assert float(labels["kiln.scap-score"]) == pytest.approx(summary["scap"]["score"], abs=0.05)
    assert labels["kiln.audit"] == "failed"
    assert labels["kiln.status"] in {"verified", "baked"}  # the audit never changes the status

    # The tools were installed in a throwaway layer only, and nothing of the audit is left.
    probe = docker_client.containers.run(
        f"{kiln.prefix}/base:{version}",
        ["sh", "-c", "command -v lynis oscap || echo none"],
        entrypoint=[],
        remove=True,
        network_mode="none",
        name=f"{kiln.prefix}-audit-probe",
    )
    assert probe.decode().strip() == "none"
    ours = f"kiln.audit={kiln.prefix}/base:{version}"
    assert not docker_client.containers.list(all=True, filters={"label": ours})
