"""What only a booted VM shows: Kiln adds this suite to every role's suites on VM targets.

A container shares its host's kernel and runs no systemd, so these controls cannot be checked
there: units under systemd, auditd, kernel-wide sysctls applied at boot, the nftables ruleset
loaded by nftables.service, and the root filesystem grown to the disk the VM was given.
"""

import os
import re
from pathlib import Path

from kiln.sysctl import parse_sysctl_conf

PORTS = {int(p) for p in os.environ.get("KILN_VERIFY_PORTS", "").split()}


def test_cloud_init_finished_cleanly():
    status = os.environ.get("KILN_VERIFY_CLOUD_INIT", "")
    assert re.search(r"^status: done$", status, re.M), f"cloud-init did not finish cleanly: {status}"


def test_no_failed_systemd_unit(host):
    failed = host.check_output("systemctl list-units --state=failed --plain --no-legend --no-pager")
    assert not failed.strip(), f"failed units: {failed.strip()}"


def test_system_reached_running_state(host):
    # Bounded: `--wait` returns once the boot's jobs are done; `timeout` ends it otherwise.
    state = host.run("timeout 120 systemctl is-system-running --wait").stdout.strip()
    assert state == "running", f"systemd state is {state!r}"


def test_auditd_running_with_rules_loaded(host):
    assert host.service("auditd").is_running
    status = host.check_output("auditctl -s")
    assert re.search(r"^enabled [12]$", status, re.M), f"auditing is off: {status}"
    assert int(host.check_output("auditctl -l | wc -l")) > 1, "no audit rule is loaded"


def test_kernel_sysctls_live(host):
    """Every setting the image persists in /etc/sysctl.d is the kernel's live value."""
    persisted: dict[str, str] = {}
    for name in sorted(host.check_output("ls /etc/sysctl.d").split(), key=lambda n: Path(n).name):
        if name.endswith(".conf") and host.file(f"/etc/sysctl.d/{name}").is_file:
            persisted.update(parse_sysctl_conf(host.file(f"/etc/sysctl.d/{name}").content_string))
    assert persisted, "no sysctl is persisted in /etc/sysctl.d"
    wrong = {}
    for key, value in persisted.items():
        live = host.run(f"sysctl -n {key}")
        if live.rc != 0 or " ".join(live.stdout.split()) != value:
            wrong[key] = (value, live.stdout.strip() or live.stderr.strip())
    assert not wrong, f"persisted vs live: {wrong}"


def test_nftables_ruleset_loaded(host):
    live = host.check_output("nft list ruleset")
    assert "policy drop;" in live, "no default-deny chain is loaded"
    for port in PORTS | {22}:
        assert re.search(rf"tcp dport (\{{[^}}]*\b{port}\b|{port}\b)", live), f"port {port} not open live"


def test_root_filesystem_grown_to_the_disk(host):
    given = int(os.environ["KILN_VERIFY_DISK_BYTES"])
    size = int(host.check_output("df -B1 --output=size /").split()[-1])
    # ext4 keeps some of the partition for its own metadata; a root that did not grow is far below.
    assert size > 0.9 * given, f"root filesystem is {size >> 20} MiB on a {given >> 20} MiB disk"


def test_no_bake_time_shortcut_left(host):
    """Bakes run dpkg without fsync (kiln/targets/qemu.py UNSAFE_IO); no instance may keep that."""
    assert not host.file("/etc/dpkg/dpkg.cfg.d/zz-kiln-bake-unsafe-io").exists
