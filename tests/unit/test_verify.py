"""Verification logic without Docker: suites of a chain, JUnit parsing, the security-pending bound."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from kiln.container_options import NAMESPACED_SYSCTL
from kiln.errors import OperationFailed
from kiln.images import ImageRecord
from kiln.roles import RoleCatalog
from kiln.settings import Settings
from kiln.sysctl import parse_sysctl_conf
from kiln.verify import (
    Failure,
    VerifyResult,
    container_name,
    control_name,
    parse_junit,
    report,
    security_pending_reason,
    suite_files,
    suites_digest,
)
from kiln.vmverify import SUITES
from tests.conftest import copy_project

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="1" failures="1" skipped="1" tests="5">
<testcase classname="images.base.tests.test_hardening" name="test_sshd_option[paramiko://x-permitrootlogin]"
  file="images/base/tests/test_hardening.py" time="0.1"/>
<testcase classname="images.base.tests.test_hardening" name="test_machine_id_empty[docker://kiln-verify-web-1a2b3c4d]"
  time="0.1">
  <failure message="AssertionError: assert 33 == 0&#10; +  where 33 = size">details</failure></testcase>
<testcase classname="images.web.tests.test_web" name="test_health_reports_the_baked_version[through-nginx]">
  <error message="failed on setup with &quot;ConnectionError&quot;">trace</error></testcase>
<testcase classname="images.web.tests.test_web" name="test_later"><skipped message="no reason"/></testcase>
<testcase classname="images.lb.tests.test_lb" name="test_ok" time="0.1"/>
</testsuite></testsuites>
"""


def record(labels: dict[str, str]) -> ImageRecord:
    return ImageRecord("web", "abc", "baked", "kilnunit/web:abc", "sha256:1", {"kiln.role": "web", **labels})


def set_max_pending(settings, value: int) -> None:
    role_file = settings.images_dir / "web" / "role.yml"
    role_file.write_text(role_file.read_text() + f"max_security_pending: {value}\n")


def test_parse_junit_counts_every_case_and_names_failures_errors_and_skips(tmp_path: Path):
    path = tmp_path / "junit.xml"
    path.write_text(JUNIT)
    tests, failures = parse_junit(path)
    assert tests == 5
    assert [f.control for f in failures] == [
        "test_machine_id_empty",
        "test_health_reports_the_baked_version[through-nginx]",
        "test_later",
    ]
    assert failures[0].message == "AssertionError: assert 33 == 0"
    assert failures[0].suite == "images/base/tests/test_hardening.py"
    assert failures[1].message.startswith("failed on setup")
    assert failures[2].message == "skipped: no reason"  # a skip never counts as a pass


def test_a_role_runs_the_suites_of_its_whole_chain_root_first(settings):
    chain = RoleCatalog(settings).chain("web")
    names = [p.relative_to(settings.project_root).as_posix() for p in suite_files(chain)]
    assert names[0] == "images/base/tests/test_hardening.py"
    assert "images/web/tests/test_web.py" in names
    assert all(settings.project_root.joinpath(n).is_file() for n in names)


def test_the_suites_digest_follows_the_suites_and_runtime_not_the_checkout(settings, tmp_path: Path):
    """`verify --reuse` skips an image whose label holds this digest: another checkout of the same
    suites gives the same one; a changed helper beside a suite or another runtime does not."""
    suites = suite_files(RoleCatalog(settings).chain("web"))
    first = suites_digest(suites, "container")
    elsewhere = RoleCatalog(Settings(project_root=copy_project(tmp_path / "another-checkout")))
    assert suites_digest(suite_files(elsewhere.chain("web")), "container") == first
    assert suites_digest(suites, "vm") != first
    (settings.images_dir / "web" / "tests" / "helpers.py").write_text("EXPECTED = 1\n")
    assert suites_digest(suites, "container") != first


def test_every_role_has_its_own_suite(settings):
    catalog = RoleCatalog(settings)
    for name in catalog.names():
        assert catalog.get(name).spec.tests, f"images/{name}/role.yml has no tests"


def test_security_pending_within_bound_is_fine(settings):
    set_max_pending(settings, 2)
    role = RoleCatalog(settings).get("web")
    assert security_pending_reason(role, record({"kiln.security-pending": "2"})) is None


def test_security_pending_over_bound_names_the_figure(settings):
    set_max_pending(settings, 0)
    role = RoleCatalog(settings).get("web")
    reason = security_pending_reason(role, record({"kiln.security-pending": "3"}))
    assert reason is not None
    assert reason.startswith("3 security updates were pending at bake, more than max_security_pending: 0")
    assert "images/web/role.yml" in reason


def test_security_pending_unrecorded_is_a_rejection_when_bounded(settings):
    set_max_pending(settings, 0)
    role = RoleCatalog(settings).get("web")
    assert "was not recorded" in security_pending_reason(role, record({}))


def test_no_bound_means_no_check(settings):
    role = RoleCatalog(settings).get("web")
    assert role.spec.max_security_pending is None
    assert security_pending_reason(role, record({"kiln.security-pending": "99"})) is None


def test_report_of_a_rejection_names_role_and_control_and_fails():
    rejected = VerifyResult("web", "abc", "kilnunit/web:abc", status="rejected", junit=Path("/s/j.xml"))
    rejected.failures.append(Failure("test_sshd_option[permitrootlogin]", "images/base/tests/t.py", "no"))
    with pytest.raises(OperationFailed) as caught:
        report([VerifyResult("base", "b", "kilnunit/base:b", status="verified"), rejected])
    assert str(caught.value) == (
        "web abc rejected: web: control test_sshd_option[permitrootlogin] failed (JUnit: /s/j.xml)"
    )
    assert caught.value.exit_code == 1


def test_report_of_verified_images_passes():
    report([VerifyResult("web", "abc", "kilnunit/web:abc", status="verified", tests=3)])


def test_control_names_drop_the_verification_container():
    assert control_name("test_sshd_option[docker://kiln-verify-db-main-0a1b2c3d-permitrootlogin]") == (
        "test_sshd_option[permitrootlogin]"
    )
    assert control_name("test_machine_id_empty[docker://kiln-verify-web-0a1b2c3d]") == "test_machine_id_empty"
    assert control_name("test_health[through-nginx]") == "test_health[through-nginx]"
    assert control_name("test_x[docker://kiln-ci-3-verify-web-0a1b2c3d-ipv4]") == "test_x[ipv4]"


def test_container_names_carry_the_verify_prefix_and_differ():
    assert container_name("kilnci7", "web").startswith("kilnci7-verify-web-")
    assert container_name("kiln", "web") != container_name("kiln", "web")


def test_sysctl_conf_parsing_keeps_the_last_value_and_skips_comments():
    text = (
        "# comment\n; other\nnet.ipv4.ip_forward = 1\nnet/ipv4/tcp_syncookies=1\n\nnet.ipv4.ip_forward = 0\n"
    )
    assert parse_sysctl_conf(text) == {"net.ipv4.ip_forward": "0", "net.ipv4.tcp_syncookies": "1"}


@pytest.mark.parametrize(
    ("key", "namespaced"),
    [
        ("net.ipv4.conf.all.rp_filter", True),
        ("net.ipv4.tcp_syncookies", True),
        ("net.ipv4.ip_forward", False),  # in no set order, it would reset accept_redirects
        ("net.ipv4.conf.all.forwarding", False),
        ("net.ipv6.conf.all.forwarding", False),
        ("net.ipv4.conf.all.accept_redirects", True),
        ("net.ipv6.conf.default.accept_ra", True),
        ("net.core.bpf_jit_harden", False),  # kernel-wide: the host's
        ("kernel.kptr_restrict", False),
        ("fs.suid_dumpable", False),
    ],
)
def test_only_network_namespace_sysctls_are_applied_to_containers(key, namespaced):
    assert bool(NAMESPACED_SYSCTL.match(key)) is namespaced


@pytest.mark.parametrize("suite", sorted(p.name for p in SUITES.glob("test_*.py")))
def test_kiln_own_suites_import(suite):
    """The suites Kiln adds on VMs run only in a booted VM: a broken import must fail here first."""
    importlib.import_module(f"kiln.suites.{Path(suite).stem}")
