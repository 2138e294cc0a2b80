"""Common hardening suite: `invoke verify` runs it against every role (it is base's suite, and a
role runs the suites of its whole chain). Controls follow dev-sec linux-baseline/ssh-baseline,
CIS Debian 12 and ANSSI BP-028; test names are the control names a rejection reports.

The container shares its host's kernel, so kernel settings are checked as the persisted
sysctl.d file; the network namespace, files, users and processes are the image's own and are
checked live.
"""

import json
import os
import re
import time

import pytest

PORTS = {int(p) for p in os.environ.get("KILN_VERIFY_PORTS", "").split()}
NODE_METRICS = 9100  # prometheus-node-exporter, base's: open on every instance
# "container" (kiln-init is PID 1, no sshd) or "vm" (systemd boots the image, sshd serves SSH).
ON_VM = os.environ.get("KILN_VERIFY_RUNTIME") == "vm"

SSHD = {
    "permitrootlogin": "no",
    "passwordauthentication": "no",
    "kbdinteractiveauthentication": "no",
    "permitemptypasswords": "no",
    "pubkeyauthentication": "yes",
    "hostbasedauthentication": "no",
    "ignorerhosts": "yes",
    "maxauthtries": "2",
    "logingracetime": "30",
    "clientaliveinterval": "300",
    "clientalivecountmax": "2",
    "allowtcpforwarding": "no",
    "allowagentforwarding": "no",
    "x11forwarding": "no",
    "permittunnel": "no",
    "permituserenvironment": "no",
    "loglevel": "VERBOSE",
    "banner": "/etc/issue.net",
    "strictmodes": "yes",
}
STRONG = {
    "ciphers": {
        "chacha20-poly1305@openssh.com",
        "aes256-gcm@openssh.com",
        "aes128-gcm@openssh.com",
        "aes256-ctr",
        "aes192-ctr",
        "aes128-ctr",
    },
    "kexalgorithms": {
        "sntrup761x25519-sha512@openssh.com",
        "curve25519-sha256",
        "curve25519-sha256@libssh.org",
        "diffie-hellman-group16-sha512",
        "diffie-hellman-group18-sha512",
        "diffie-hellman-group-exchange-sha256",
    },
    "macs": {
        "hmac-sha2-512-etm@openssh.com",
        "hmac-sha2-256-etm@openssh.com",
        "umac-128-etm@openssh.com",
    },
}
SYSCTL = {
    "net.ipv4.ip_forward": "0",
    "net.ipv4.conf.all.rp_filter": "1",
    "net.ipv4.conf.default.rp_filter": "1",
    "net.ipv4.tcp_syncookies": "1",
    "net.ipv4.tcp_timestamps": "0",
    "net.ipv4.conf.all.accept_redirects": "0",
    "net.ipv4.conf.default.accept_redirects": "0",
    "net.ipv4.conf.all.send_redirects": "0",
    "net.ipv4.conf.all.secure_redirects": "0",
    "net.ipv4.conf.all.accept_source_route": "0",
    "net.ipv4.conf.all.log_martians": "1",
    "net.ipv4.icmp_echo_ignore_broadcasts": "1",
    "net.ipv4.icmp_ignore_bogus_error_responses": "1",
    "net.ipv4.icmp_ratelimit": "100",
    "net.ipv6.conf.all.accept_ra": "0",
    "net.ipv6.conf.default.accept_ra": "0",
    "net.ipv6.conf.all.accept_redirects": "0",
    "net.ipv6.conf.all.autoconf": "0",
    "net.ipv6.conf.all.forwarding": "0",
    "kernel.sysrq": "0",
    "kernel.randomize_va_space": "2",
    "kernel.yama.ptrace_scope": "1",
    "kernel.kptr_restrict": "2",
    "kernel.dmesg_restrict": "1",
    "kernel.unprivileged_bpf_disabled": "1",
    "fs.suid_dumpable": "0",
    "fs.protected_hardlinks": "1",
    "fs.protected_symlinks": "1",
    "fs.protected_fifos": "2",
    "fs.protected_regular": "2",
}
LOGIN_DEFS = {
    "UMASK": "027",
    "PASS_MAX_DAYS": "60",
    "PASS_MIN_DAYS": "7",
    "PASS_WARN_AGE": "7",
    "LOGIN_RETRIES": "5",
    "LOGIN_TIMEOUT": "60",
    "ENCRYPT_METHOD": "YESCRYPT",
}
PWQUALITY = {
    "minlen": "15",
    "minclass": "4",
    "dcredit": "-1",
    "ucredit": "-1",
    "lcredit": "-1",
    "ocredit": "-1",
}
BLACKLISTED = [
    "cramfs",
    "freevxfs",
    "jffs2",
    "hfs",
    "hfsplus",
    "squashfs",
    "udf",
    "usb-storage",
    "dccp",
    "sctp",
]
SECURITY_PACKAGES = [
    "openssh-server",
    "auditd",
    "libpam-pwquality",
    "unattended-upgrades",
    "nftables",
    "aide",
    "usbguard",
]
SENSITIVE = [
    ("/etc/passwd", "root", "root", 0o644),
    ("/etc/group", "root", "root", 0o644),
    ("/etc/shadow", "root", "shadow", 0o640),
    ("/etc/gshadow", "root", "shadow", 0o640),
    ("/root", "root", "root", 0o700),
    ("/etc/nftables.conf", "root", "root", 0o600),
    ("/etc/cron.allow", "root", "root", 0o600),
    ("/etc/sudoers.d/90-kiln-hardening", "root", "root", 0o440),
    ("/etc/usbguard/usbguard-daemon.conf", "root", "root", 0o600),
    ("/etc/usbguard/rules.conf", "root", "root", 0o600),
    ("/var/lib/aide/aide.db", "root", "root", 0o600),
]
USBGUARD = {
    "RuleFile": "/etc/usbguard/rules.conf",
    "ImplicitPolicyTarget": "block",
    "PresentDevicePolicy": "apply-policy",
    "PresentControllerPolicy": "apply-policy",
    "InsertedDevicePolicy": "apply-policy",
    "RestoreControllerDeviceState": "false",
    "IPCAllowedUsers": "root",
    "IPCAllowedGroups": "root",
    "AuditBackend": "LinuxAudit",
}
FORBIDDEN_PACKAGES = [
    "gcc",
    "g++",
    "make",
    "binutils",
    "telnet",
    "telnetd",
    "rsh-client",
    "rsh-server",
    "xinetd",
    "nis",
]


@pytest.fixture(scope="module")
def read(host):
    """File contents, each read once per run: every command is a `docker exec`."""
    cache: dict[str, str] = {}

    def content(path: str) -> str:
        if path not in cache:
            cache[path] = host.file(path).content_string
        return cache[path]

    return content


def settings_file(content: str, separator: str = r"\s+") -> dict[str, str]:
    pairs = (re.split(separator, line.strip(), maxsplit=1) for line in content.splitlines())
    return {p[0].strip(): p[1].strip() for p in pairs if len(p) == 2 and not p[0].startswith("#")}


def configured_host_keys(host) -> set[str]:
    return set(re.findall(r"^HostKey\s+(\S+)", host.file("/etc/ssh/sshd_config").content_string, re.M))


def wait_for_first_boot(host) -> None:
    """A VM makes its host keys as it boots: wait for all (20 s at most)."""
    if not ON_VM:
        return  # a container runs no sshd and makes none
    public = " ".join(f"{key}.pub" for key in sorted(configured_host_keys(host)))
    deadline = time.monotonic() + 20
    while host.run(f"ls {public}").rc != 0 and time.monotonic() < deadline:
        time.sleep(0.2)


@pytest.fixture(scope="module")
def sshd_effective(host) -> dict[str, str]:
    """`sshd -T`: the configuration sshd would really run with (defaults included)."""
    wait_for_first_boot(host)
    if ON_VM:
        out = host.check_output("sshd -T -f /etc/ssh/sshd_config")
    else:  # sshd will not print its settings without a host key: lend it a throwaway one
        out = host.check_output(
            "k=$(mktemp -u /tmp/kiln-hostkey.XXXXXX) && ssh-keygen -q -t ed25519 -N '' -C '' -f $k"
            " && sshd -T -f /etc/ssh/sshd_config -h $k 2>/dev/null; rc=$?; rm -f $k $k.pub; exit $rc"
        )
    return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)


@pytest.mark.parametrize("option", sorted(SSHD))
def test_sshd_option(sshd_effective, option):
    assert sshd_effective.get(option) == SSHD[option], f"sshd {option} is {sshd_effective.get(option)}"


@pytest.mark.parametrize("kind", sorted(STRONG))
def test_sshd_strong_algorithms(sshd_effective, kind):
    offered = set(sshd_effective[kind].split(","))
    assert offered <= STRONG[kind], f"weak sshd {kind}: {sorted(offered - STRONG[kind])}"


def test_sshd_config_private(stats):
    assert stats["/etc/ssh/sshd_config"] == ("root", "root", 0o600)


def test_ssh_host_keys_made_at_first_boot(host):
    """The image carries no host key: the ones present were made after the image was baked, on a
    VM only (a container runs no sshd)."""
    wait_for_first_boot(host)
    if not ON_VM:
        assert host.run("ls /etc/ssh/ssh_host_*").rc != 0, "a container made SSH host keys"
        return
    stats = host.check_output("stat -c '%Y %a %n' /etc/kiln/image.json /etc/ssh/ssh_host_*_key")
    (baked, _, _), *keys = (line.split() for line in stats.splitlines())
    configured = configured_host_keys(host)
    assert "/etc/ssh/ssh_host_ed25519_key" in configured
    assert {name for _, _, name in keys} == configured, "first boot made host keys sshd does not use"
    for mtime, mode, name in keys:
        assert int(mtime) > int(baked), f"{name} is older than the image: it was baked in"
        assert mode == "600", f"{name} has mode {mode}"


def test_machine_id_made_per_machine(host):
    """The image ships an empty machine-id; on a VM systemd fills it at first boot."""
    if not ON_VM:
        assert host.file("/etc/machine-id").size == 0
        return
    made, baked = host.check_output("stat -c %Y /etc/machine-id /etc/kiln/image.json").split()
    assert host.file("/etc/machine-id").size == 33 and int(made) > int(baked), "machine-id was baked in"


@pytest.mark.parametrize("key", sorted(SYSCTL))
def test_sysctl_persisted(read, key):
    persisted = settings_file(read("/etc/sysctl.d/90-kiln-hardening.conf"), r"\s*=\s*")
    assert persisted.get(key) == SYSCTL[key], f"{key} = {persisted.get(key)} in sysctl.d"


def test_no_sysctl_file_contradicts_the_baseline(host, read):
    """systemd-sysctl applies /usr/lib and /etc files in name order and scanners read them all: a
    package's file that sets a baseline key otherwise must be diverted (harden-sysctl.sh)."""
    ours = settings_file(read("/etc/sysctl.d/90-kiln-hardening.conf"), r"\s*=\s*")
    contradictions = {}
    folders = "/usr/lib/sysctl.d /etc/sysctl.d /run/sysctl.d"
    for name in host.check_output(f"find {folders} -maxdepth 1 -name '*.conf' 2>/dev/null || true").split():
        theirs = settings_file(read(name), r"\s*=\s*")  # "-key": a key whose absence is no error
        wrong = {k.lstrip("-"): v for k, v in theirs.items() if ours.get(k.lstrip("-"), v) != v}
        contradictions.update({f"{name}: {k}": v for k, v in wrong.items()})
    assert not contradictions, f"sysctl files contradicting the baseline: {contradictions}"


def test_network_sysctls_live(host):
    """net.* belongs to the container's own network namespace: the values must be live there
    (forwarding excepted: the engine sets it, see kiln/container_options.py NAMESPACED_SYSCTL)."""
    keys = sorted(k for k in SYSCTL if k.startswith("net.") and "forward" not in k)
    live = settings_file(host.check_output("sysctl " + " ".join(keys)), r"\s*=\s*")
    wrong = {k: live.get(k) for k in keys if live.get(k) != SYSCTL[k]}
    assert not wrong, f"live network sysctls differ from the baseline: {wrong}"


@pytest.mark.parametrize("key", sorted(LOGIN_DEFS))
def test_login_defs(read, key):
    assert settings_file(read("/etc/login.defs")).get(key) == LOGIN_DEFS[key]


@pytest.mark.parametrize("key", sorted(PWQUALITY))
def test_password_quality(read, key):
    assert settings_file(read("/etc/security/pwquality.conf"), r"\s*=\s*").get(key) == PWQUALITY[key]


def test_pam_uses_pwquality_and_faillock(host):
    assert re.search(
        r"^password\s+requisite\s+pam_pwquality\.so",
        host.file("/etc/pam.d/common-password").content_string,
        re.M,
    )
    auth = host.file("/etc/pam.d/common-auth").content_string
    assert "pam_faillock.so preauth" in auth and "pam_faillock.so authfail" in auth
    assert (
        settings_file(host.file("/etc/security/faillock.conf").content_string, r"\s*=\s*").get("deny") == "3"
    )


def test_login_shell_umask_027(host):
    assert host.check_output("bash -lc umask") == "0027"


def test_idle_login_shells_time_out(host):
    shown = host.check_output("bash -lc 'echo $TMOUT; readonly -p | grep -c \" TMOUT=\"'")
    assert shown.split() == ["600", "1"], "TMOUT is not 600 and read-only in a login shell"
    assert host.run("sh -lc 'echo ok'").stdout.strip() == "ok"  # dash skips bash's typeset


def test_new_accounts_start_with_private_shell_files(host):
    skel = host.check_output("find /etc/skel -maxdepth 1 -type f -name '.*' -perm /o=rwx,g=wx")
    assert skel == "", f"world-readable or group-writable start-up files in /etc/skel: {skel}"


def test_core_dumps_disabled(host):
    limits = host.file("/etc/security/limits.d/90-kiln-nocore.conf").content_string
    assert re.search(r"^\*\s+hard\s+core\s+0$", limits, re.M)
    assert "Storage=none" in host.file("/etc/systemd/coredump.conf.d/90-kiln.conf").content_string


@pytest.mark.parametrize("module", BLACKLISTED)
def test_kernel_module_blacklisted(read, module):
    assert f"install {module} /bin/true" in read("/etc/modprobe.d/90-kiln-blacklist.conf")


@pytest.fixture(scope="module")
def installed(host) -> set[str]:
    out = host.check_output("dpkg-query -W -f='${db:Status-Abbrev} ${Package}\\n'")
    return {line.split()[1] for line in out.splitlines() if line.startswith("ii")}


@pytest.mark.parametrize("package", SECURITY_PACKAGES)
def test_security_package_installed(installed, package):
    assert package in installed


@pytest.mark.parametrize("package", FORBIDDEN_PACKAGES)
def test_no_compiler_or_legacy_service(installed, package):
    assert package not in installed


def test_auditd_rules_compiled(host):
    rules = host.file("/etc/audit/audit.rules").content_string
    for key in ("identity", "scope", "logins", "time-change", "modules", "privileged"):
        assert f"-k {key}" in rules, f"audit rules lack the {key} watch"
    assert rules.rstrip().endswith("-e 2"), "audit rules are not made immutable"


def test_unattended_security_upgrades(host):
    periodic = host.file("/etc/apt/apt.conf.d/20auto-upgrades").content_string
    assert 'APT::Periodic::Unattended-Upgrade "1";' in periodic
    assert "label=Debian-Security" in host.file("/etc/apt/apt.conf.d/50unattended-upgrades").content_string


@pytest.mark.parametrize("option", sorted(USBGUARD))
def test_usbguard_option(read, option):
    daemon = settings_file(read("/etc/usbguard/usbguard-daemon.conf"), "=")
    assert daemon.get(option) == USBGUARD[option], f"USBGuard {option} is {daemon.get(option)}"


def test_usbguard_policy_made_on_first_boot_only(host):
    """The image's policy is empty (the build machine's devices are not in it) and nobody but
    root may change it; the first-boot step fills it once and leaves it alone on later boots."""
    assert host.file("/etc/usbguard/rules.conf").size == 0
    assert host.check_output("ls -A /etc/usbguard/IPCAccessControl.d") == ""
    dropin = host.file("/etc/systemd/system/usbguard.service.d/kiln-first-boot-policy.conf")
    assert "ExecStartPre=/usr/local/sbin/kiln-usbguard-policy" in dropin.content_string
    assert "ConditionPathIsDirectory=/sys/bus/usb/devices" in dropin.content_string
    make_policy = "/usr/local/sbin/kiln-usbguard-policy"
    host.check_output(make_policy)
    assert host.file("/etc/usbguard/rules.conf").mode == 0o600
    has_usb_bus = host.file("/sys/bus/usb/devices").is_directory
    # Without a USB bus there is nothing to allow: the policy stays empty (everything blocked).
    assert host.file("/var/lib/kiln/usbguard-policy-made").exists == has_usb_bus
    if not has_usb_bus:
        assert host.file("/etc/usbguard/rules.conf").size == 0
        host.check_output("mkdir -p /var/lib/kiln && touch /var/lib/kiln/usbguard-policy-made")
    # A later boot must not re-allow whatever is plugged in by then.
    host.check_output(f"echo 'block' > /etc/usbguard/rules.conf && {make_policy}")
    assert host.file("/etc/usbguard/rules.conf").content_string.strip() == "block"


def test_aide_baseline_describes_the_image(host):
    """finish.sh takes the AIDE baseline last: it holds the role's own files, hashed."""
    entries = host.check_output("zcat /var/lib/aide/aide.db | grep -c '^/usr/sbin/sshd '")
    assert int(entries) == 1
    facts = host.check_output("zcat /var/lib/aide/aide.db | grep -c '^/etc/kiln/image.json '")
    assert int(facts) == 1, "the baseline was taken before the image's last files were written"


@pytest.mark.parametrize("path", ["/etc/issue", "/etc/issue.net", "/etc/motd"])
def test_legal_banner(host, path):
    text = host.file(path).content_string
    assert "Authorised access only" in text
    assert not re.search(r"debian|\\[rvmns]", text, re.I), f"{path} discloses the system"


@pytest.fixture(scope="module")
def stats(host) -> dict[str, tuple[str, str, int]]:
    """Owner, group and mode of every sensitive path, in one command."""
    paths = [p for p, *_ in SENSITIVE] + ["/etc/ssh/sshd_config"]
    out = host.check_output("stat -c '%U %G %a %n' " + " ".join(paths))
    return {name: (user, group, int(mode, 8)) for user, group, mode, name in map(str.split, out.splitlines())}


@pytest.mark.parametrize(("path", "owner", "group", "mode"), SENSITIVE)
def test_sensitive_file_permissions(stats, path, owner, group, mode):
    assert stats[path] == (owner, group, mode), f"{path} is {stats[path]}"


def test_no_world_writable_files(host):
    found = host.check_output(
        "find / -xdev \\( -path /proc -o -path /sys -o -path /dev \\) -prune -o -type f -perm -0002 -print"
    )
    assert found == ""


def test_apt_caches_and_lists_cleaned(host):
    assert (
        host.check_output(
            "find /var/lib/apt/lists /var/cache/apt/archives -name '*_Packages*' -o -name '*.deb'"
        )
        == ""
    )


def test_firewall_persisted_default_deny_with_role_ports(host):
    ruleset = host.file("/etc/nftables.conf").content_string
    assert "type filter hook input priority filter; policy drop;" in ruleset
    opened = {int(p) for p in re.search(r"tcp dport \{ ([\d, ]+) \}", ruleset)[1].split(",")}
    assert opened == PORTS | {22, NODE_METRICS}


def test_firewall_loaded_at_boot_on_a_vm(host):
    """systemd loads /etc/nftables.conf only when nftables.service is enabled (Debian: off)."""
    wanted = host.file("/etc/systemd/system/sysinit.target.wants/nftables.service")
    assert wanted.is_symlink and wanted.linked_to.endswith("/systemd/system/nftables.service")


def test_firewall_applied_at_boot(host):
    """The network namespace is the container's own: the ruleset must be live, not just on disk."""
    live = host.check_output("nft list chain inet kiln input")
    assert "policy drop;" in live
    for port in PORTS | {22, NODE_METRICS}:
        # nft prints one port bare and several as a set.
        assert re.search(rf"tcp dport (\{{[^}}]*\b{port}\b|{port}\b)", live), f"port {port} not open live"


def test_only_role_ports_listen_beyond_loopback(host):
    listening = set()
    for line in host.check_output("ss -Htln").splitlines():
        address = line.split()[3]
        ip, _, port = address.rpartition(":")
        if ip not in ("127.0.0.1", "[::1]", "::1"):
            listening.add(int(port))
    allowed = PORTS | {NODE_METRICS} | ({22} if ON_VM else set())
    assert listening <= allowed, f"unexpected listening ports {sorted(listening - allowed)}"


def test_image_facts_match_the_role(host):
    facts = json.loads(host.file("/etc/kiln/image.json").content_string)
    assert facts == {"role": os.environ["KILN_VERIFY_ROLE"], "version": os.environ["KILN_VERIFY_VERSION"]}
