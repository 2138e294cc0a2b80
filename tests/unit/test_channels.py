"""The SSH channel's pieces that need no instance: key pair, host-key pinning, user-data, the
`ssh:` section of an environment file, and how OpenSSH's own failures become one line.
The channels against real sshd and containers: tests/integration/test_channels.py."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from kiln import environments
from kiln.channels import CHANNELS, channel_class
from kiln.channels.base import ChannelError
from kiln.channels.ssh import Endpoint, SshChannel, SshIdentity, authorize, console_host_keys
from kiln.errors import KilnError
from kiln.settings import Settings

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKilnUnitTestHostKey000000000000000000000000"
CONSOLE = f"""ci-info: no authorized SSH keys fingerprints found for user kiln.
-----BEGIN SSH HOST KEY KEYS-----
{KEY} root@web1
ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQKilnUnitTest root@web1
-----END SSH HOST KEY KEYS-----
Cloud-init v. 22.4.2 finished
"""


def test_the_registry_is_a_table_of_importable_classes():
    assert sorted(CHANNELS) == ["docker", "ssh"]
    assert channel_class("ssh") is SshChannel


def test_host_keys_are_read_from_cloud_init_console_output():
    rsa = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQKilnUnitTest root@web1"
    assert console_host_keys(CONSOLE) == [f"{KEY} root@web1", rsa]
    assert console_host_keys("no keys printed yet") == []


def test_the_key_pair_is_made_once_private_and_pins_are_never_replaced(tmp_path: Path):
    identity = SshIdentity(tmp_path / "envs" / "vm" / "ssh", "kiln-vm")
    public = identity.public_key()
    assert public.startswith("ssh-ed25519 ") and public.endswith(" kiln-vm")
    assert identity.key.stat().st_mode & 0o777 == 0o600 and identity.folder.stat().st_mode & 0o777 == 0o700
    assert identity.public_key() == public  # made once
    check = subprocess.run(["ssh-keygen", "-y", "-f", str(identity.key)], capture_output=True, text=True)
    assert check.stdout.split()[:2] == public.split()[:2]  # a real pair

    identity.pin("i-0abc", console_host_keys(CONSOLE))
    identity.pin("i-0abc", ["ssh-ed25519 AAAAC3Other root@attacker"])  # pinned already: ignored
    assert identity.known_hosts.read_text().splitlines() == [
        f"i-0abc {KEY}", "i-0abc ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQKilnUnitTest"
    ]


def test_a_machine_without_openssh_client_gets_one_line_and_no_key(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    identity = SshIdentity(tmp_path / "ssh", "kiln-unit")
    with pytest.raises(KilnError, match=r"^an SSH key needs ssh-keygen, not installed here: run ./setup.sh$"):
        identity.public_key()
    assert not identity.key.exists()
    with pytest.raises(KilnError, match=r"^reaching an instance over SSH needs ssh, "):
        channel(tmp_path).run(["true"])


def test_user_data_gets_the_login_account_and_keeps_everything_else():
    sent = authorize("#cloud-config\nlocale: C.UTF-8\nusers: {}\nwrite_files: [{path: /a, content: b}]\n",
                     "kiln", "ssh-ed25519 AAAAC3Pub kiln-vm")  # fmt: skip
    document = yaml.safe_load(sent)
    assert sent.startswith("#cloud-config\n")
    exemption = "Defaults:kiln !requiretty, !noexec\n"  # the image's sudo wants a tty, forbids exec
    assert document["locale"] == "C.UTF-8" and document["write_files"] == [
        {"path": "/a", "content": "b"},
        {"path": "/etc/sudoers.d/91-kiln", "permissions": "0440", "content": exemption},
    ]
    assert document["users"] == [{"name": "kiln", "shell": "/bin/sh", "lock_passwd": True,
                                  "sudo": "ALL=(ALL) NOPASSWD:ALL",
                                  "ssh_authorized_keys": ["ssh-ed25519 AAAAC3Pub kiln-vm"]}]  # fmt: skip


def channel(tmp_path: Path) -> SshChannel:
    identity = SshIdentity(tmp_path, "kiln-t")
    return SshChannel("web1", Endpoint("10.42.1.11", 22, "kiln"), identity, host_key_alias="i-0abc")


def test_commands_run_as_other_users_through_sudo_with_their_environment(tmp_path: Path):
    ssh = channel(tmp_path)
    assert ssh.remote_command(["id"], "kiln", {}) == "cd / && id"
    assert ssh.remote_command(["psql", "-c", "SELECT 'a b'"], "postgres", {"KILN_SQL": "x y"}) == (
        "cd / && sudo -n -H -u postgres -- env 'KILN_SQL=x y' psql -c 'SELECT '\"'\"'a b'\"'\"''"
    )


CHANGED = """@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @
@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!
Host key for i-0abc has changed and you have requested strict checking.
Host key verification failed.
"""


def test_openssh_failures_are_one_line_and_a_remote_exit_255_is_not_one(tmp_path: Path):
    ssh = channel(tmp_path)
    with pytest.raises(ChannelError) as changed:
        ssh.refuse_ssh_failure(CHANGED)
    assert "\n" not in str(changed.value) and "host key of i-0abc differs" in str(changed.value)
    assert f"ssh-keygen -R i-0abc -f {ssh.identity.known_hosts}" in str(changed.value)
    with pytest.raises(ChannelError, match=r"^web1: SSH to 10.42.1.11 failed: kiln@10.42.1.11: Permission"):
        ssh.refuse_ssh_failure("kiln@10.42.1.11: Permission denied (publickey).\n")
    ssh.refuse_ssh_failure("psql: error: the tool itself exited 255\n")  # the command's own exit


@pytest.fixture
def project(tmp_path: Path) -> Settings:
    (tmp_path / "environments").mkdir()
    return Settings(project_root=tmp_path, state_dir=tmp_path / ".kiln")


VM = "provider: aws\nzones: [eu-west-1a]\ninstances: {web: 1}\nfrontend: {port: 80}\n"


def test_the_ssh_section_loads_and_bad_input_is_one_line_naming_the_field(project: Settings):
    path = project.project_root / "environments" / "t.yml"
    path.write_text(VM + "ssh: {user: ops, bastion: {host: jump.example.org, user: kiln, port: 2222}}\n")
    ssh = environments.load(project, "t").spec.ssh
    assert (ssh.user, ssh.port, ssh.bastion.host, ssh.bastion.user, ssh.bastion.port) == (
        "ops", 22, "jump.example.org", "kiln", 2222
    )
    assert environments.load(project, "t").spec.ssh.bastion is not None
    for section, field in [
        ("{bastion: {host: 'jump host', user: kiln}}", "ssh.bastion.host"),
        ("{bastion: {host: jump.example.org}}", "ssh.bastion.user"),
        ("{bastion: {host: jump.example.org, user: kiln, port: 0}}", "ssh.bastion.port"),
        ("{user: Root}", "ssh.user"),
    ]:
        path.write_text(VM + f"ssh: {section}\n")
        with pytest.raises(KilnError) as bad:
            environments.load(project, "t")
        message = str(bad.value)
        assert message.startswith(f"environments/t.yml: field '{field}'") and "\n" not in message
    for provider in ("local", "qemu"):  # both run their instances on this machine
        here = VM.replace("aws", provider).replace("eu-west-1a", "a")
        path.write_text(here + "ssh: {bastion: {host: j, user: k}}\n")
        refused = rf"^environments/t.yml: field 'ssh.bastion': the {provider} provider"
        with pytest.raises(KilnError, match=refused):
            environments.load(project, "t")
