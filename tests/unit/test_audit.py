"""Audit parsing and thresholds without Docker: Lynis report.dat, XCCDF 1.2 results."""

from __future__ import annotations

import pytest

from kiln.audit import (
    PROFILE,
    AuditResult,
    LynisFigures,
    ScapFigures,
    Thresholds,
    oscap_command,
    parse_lynis_report,
    parse_xccdf_results,
    threshold_misses,
)
from kiln.errors import OperationFailed
from kiln.settings import Settings

# Shape of /var/log/lynis-report.dat (Lynis 3.0.8), trimmed.
LYNIS = """# Lynis Report
report_version_major=1
lynis_version=3.0.8
hardening_index=87
lynis_tests_done=243
warning[]=LOGG-2138|klogd is not running, which could lead to missing kernel messages in log files|-|-|
suggestion[]=DEB-0810|Install apt-listbugs to display a list of critical bugs.|-|-|
suggestion[]=FILE-6310|To decrease the impact of a full /home file system, place /home apart|-|-|
"""

XCCDF = f"""<?xml version="1.0" encoding="UTF-8"?>
<Benchmark xmlns="http://checklists.nist.gov/xccdf/1.2" id="xccdf_org.ssgproject.content_benchmark_DEBIAN-12">
<TestResult id="xccdf_org.open-scap_testresult_{PROFILE}">
  <rule-result idref="xccdf_org.ssgproject.content_rule_sshd_disable_root_login" severity="medium">
    <result>pass</result></rule-result>
  <rule-result idref="xccdf_org.ssgproject.content_rule_accounts_password_pam_minlen" severity="medium">
    <result>fail</result></rule-result>
  <rule-result idref="xccdf_org.ssgproject.content_rule_no_empty_passwords" severity="high">
    <result>fail</result></rule-result>
  <rule-result idref="xccdf_org.ssgproject.content_rule_grub2_password" severity="high">
    <result>notapplicable</result></rule-result>
  <rule-result idref="xccdf_org.ssgproject.content_rule_security_patches_up_to_date" severity="high">
    <result>notchecked</result></rule-result>
  <rule-result idref="xccdf_org.ssgproject.content_rule_other" severity="low">
    <result>notselected</result></rule-result>
  <score system="urn:xccdf:scoring:default" maximum="100.000000">92.307693</score>
</TestResult>
</Benchmark>
"""


def test_lynis_report_figures():
    figures = parse_lynis_report(LYNIS)
    assert figures.hardening_index == 87
    assert figures.tests_performed == 243
    assert figures.warnings == [
        "LOGG-2138: klogd is not running, which could lead to missing kernel messages in log files"
    ]
    assert figures.suggestions == 2


def test_unfinished_lynis_report_is_an_operation_failure():
    with pytest.raises(OperationFailed, match="no hardening_index"):
        parse_lynis_report("report_version_major=1\n")


def test_xccdf_results_score_and_failed_rules():
    scap = parse_xccdf_results(XCCDF)
    assert scap.score == pytest.approx(92.307693)
    assert scap.passed == 1
    assert scap.failed == ["accounts_password_pam_minlen", "no_empty_passwords"]
    assert scap.failed_high == ["no_empty_passwords"]
    assert scap.notapplicable == 1
    assert scap.other == {"notchecked": 1}


def test_xccdf_without_test_result_is_an_operation_failure():
    with pytest.raises(OperationFailed, match="no TestResult"):
        parse_xccdf_results('<Benchmark xmlns="http://checklists.nist.gov/xccdf/1.2"/>')


def figures(index: int, score: float, high: list[str]) -> tuple[LynisFigures, ScapFigures]:
    return LynisFigures(index, [], 0, 200), ScapFigures(PROFILE, score, 70, high, high, 140, {})


def test_thresholds_met():
    assert threshold_misses(*figures(85, 95.0, []), Thresholds(85, 95.0)) == []


def test_each_missed_threshold_is_named_with_its_figure():
    misses = threshold_misses(*figures(84, 94.9, ["no_empty_passwords"]), Thresholds(85, 95.0))
    assert misses == [
        "Lynis hardening index 84 < 85 (KILN_AUDIT_MIN_LYNIS)",
        "ANSSI BP-028 intermediary score 94.9 < 95.0 (KILN_AUDIT_MIN_SCAP)",
        "high-severity SCAP rules failed: no_empty_passwords",
    ]


def test_a_missed_threshold_fails_the_audit_naming_image_and_figure(tmp_path):
    lynis, scap = figures(84, 99.0, [])
    result = AuditResult("web", "abc", "k/web:abc", lynis, scap, Thresholds(85, 95.0), 1.0, tmp_path)
    result.misses = threshold_misses(lynis, scap, result.thresholds)
    with pytest.raises(OperationFailed, match=r"^audit of web abc missed: Lynis hardening index 84 < 85"):
        result.require_passed()
    result.misses = []
    result.require_passed()


def test_thresholds_come_from_settings_with_the_issue_defaults():
    assert Thresholds.from_settings(Settings()) == Thresholds(85, 95.0)
    custom = Settings.from_env({"KILN_AUDIT_MIN_LYNIS": "70", "KILN_AUDIT_MIN_SCAP": "90.5"})
    assert Thresholds.from_settings(custom) == Thresholds(70, 90.5)


def test_oscap_never_fetches_remote_resources():
    command = oscap_command()
    assert "--fetch-remote-resources" not in command
    assert command[command.index("--profile") + 1] == PROFILE
