"""Drill reports, history and chart, and --target-time validation (no Docker needed), and the waits
inside an instance, on this machine's shell."""

import json
import subprocess
import threading

import pytest

from kiln.drill import (
    Check,
    DrillReport,
    chart_svg,
    load_history,
    parse_target_time,
    pgbackrest_time,
    wait_inside,
)
from kiln.errors import KilnError, OperationFailed
from tests.unit.commandchannel import CommandOnlyChannel
from tests.unit.svgread import Chart


def test_target_time_needs_a_zone_and_a_past_moment():
    assert parse_target_time("2026-01-02T03:04:05Z") == parse_target_time("2026-01-02T04:04:05+01:00")
    assert pgbackrest_time(parse_target_time("2026-01-02T04:04:05.25+01:00")) == "2026-01-02 03:04:05.250+00"
    with pytest.raises(KilnError, match="add a zone"):
        parse_target_time("2026-01-02T03:04:05")
    with pytest.raises(KilnError, match="not an ISO 8601 time"):
        parse_target_time("yesterday")
    with pytest.raises(KilnError, match="in the future"):
        parse_target_time("2999-01-01T00:00:00Z")


def report(ok: bool, rto: float, rpo: float, started: str, drill_id: str) -> DrillReport:
    checks = [Check("restore", True, "database promoted", None, 1.5)]
    if not ok:
        checks.append(
            Check("tables", False, "kiln:public.a: 0 rows restored, 5 in the source", "checksum-mismatch")
        )
    return DrillReport(
        drill_id,
        "local",
        f"dr-{drill_id}",
        started,
        ok=ok,
        rto_seconds=rto,
        rpo_seconds=rpo,
        backups={"pgbackrest": "20261121-000000F"},
        checks=checks,
    )


def test_a_failed_drill_lists_each_failure_with_its_cause():
    failed = report(False, 12.5, 0.0, "2026-11-21T00:00:00Z", "d2")
    data = failed.as_json()
    assert data["failures"] == ["tables: checksum-mismatch: kiln:public.a: 0 rows restored, 5 in the source"]
    markdown = failed.markdown()
    assert markdown.startswith("# DR drill d2: FAILED")
    assert "| tables | **FAILED** (checksum-mismatch) |" in markdown
    assert "- RTO: 12.5 s" in markdown and "pgbackrest `20261121-000000F`" in markdown


def test_history_is_ordered_and_charted(tmp_path, settings):
    folder = settings.state_dir / "drills" / "local"
    folder.mkdir(parents=True)
    for r in (
        report(True, 9.0, 0.5, "2026-11-21T02:00:00Z", "late"),
        report(False, 20.0, 30.0, "2026-11-21T01:00:00Z", "early"),
    ):
        (folder / f"{r.id}.json").write_text(json.dumps(r.as_json()))
    (folder / "broken.json").write_text("{not json")
    history = load_history(settings)
    assert [r["id"] for r in history] == ["early", "late"]
    chart = Chart.parse(chart_svg(history))  # tests/unit/test_charts.py reads it in detail
    assert chart.marks("failed-") == {"failed-rto_seconds-early", "failed-rpo_seconds-early"}
    assert "checksum-mismatch" in chart.texts()


def test_history_leaves_out_a_bucket_this_machine_has_no_keys_for(settings, monkeypatch, capsys):
    """A CI job holding one environment's keys still lists the drills it can read."""
    for name in ("KILN_S3_KEY", "KILN_S3_KEY_SECRET", "KILN_AGE_KEY"):
        monkeypatch.delenv(name, raising=False)
    folder = settings.state_dir / "drills" / "local"
    folder.mkdir(parents=True)
    done = report(True, 9.0, 0.5, "2026-11-21T02:00:00Z", "here")
    (folder / f"{done.id}.json").write_text(json.dumps(done.as_json()))
    (settings.project_root / "environments").mkdir(exist_ok=True)
    (settings.project_root / "environments" / "far.yml").write_text(
        "provider: aws\nzones: [a]\ninstances: {web: 1}\nfrontend: {port: 80}\n"
        "backup: {repository: s3, s3: {endpoint: s3.example.org, bucket: far-backups}}\n"
    )
    assert [r["id"] for r in load_history(settings)] == ["here"]
    assert "left out the state store of far: " in capsys.readouterr().err


class _LocalShell(CommandOnlyChannel):
    """This machine's shell as an instance: the loop wait_inside sends is run for real."""

    def execute(self, argv, user, env, stdin, timeout):
        done = subprocess.run(argv, capture_output=True, check=False, timeout=timeout + 5)
        return done.returncode, done.stdout, done.stderr


def test_a_wait_inside_the_instance_ends_when_its_condition_holds_or_gives_up(tmp_path):
    marker = tmp_path / "booted"
    threading.Timer(0.3, marker.touch).start()
    shell = _LocalShell("local")
    assert wait_inside(shell, f"test -f {marker}", "first boot", timeout=10).code == 0
    assert wait_inside(shell, "exit 3", "promotion", timeout=10).code == 3  # the caller's verdict
    with pytest.raises(OperationFailed, match=r"waiting for first boot: .*within 1 s"):
        wait_inside(shell, "false", "first boot", timeout=1)
    with pytest.raises(OperationFailed, match=r"waiting for promotion: .*denied"):
        wait_inside(shell, "echo denied >&2; exit 7", "promotion", timeout=10)
