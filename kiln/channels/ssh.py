"""The channel into a VM or a cloud instance: OpenSSH's client, optionally through a jump host.

Each environment has its own key pair, made by Kiln on first use and kept with the environment's
state (<state store>/envs/<env>/ssh/, the private key 0600, never printed); the providers put
the public key into each instance's user-data for the login user, who runs commands as others
with sudo. Host keys are pinned per environment in its own known_hosts: from the instance's
cloud-init console output when the provider can read it, else on first use; a changed key is
refused. A bastion (`ssh.bastion` in the environment file) is reached with the same key.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

import yaml

from kiln.channels.base import TRANSFER_TIMEOUT, Channel, ChannelError, Deliver, bounded
from kiln.config import spec
from kiln.errors import KilnError, require_tools

HOST = r"[A-Za-z0-9]([A-Za-z0-9.:-]*[A-Za-z0-9])?"
ACCOUNT = r"[a-z_][a-z0-9_-]{0,31}"
CONNECT_TIMEOUT = 30  # seconds for the TCP connection and sshd's banner, per hop (sshd forks per login)
CHUNK = 1 << 16  # bytes read from ssh at a time while a command streams
MUX_PERSIST = 60  # seconds an idle shared connection stays open for the next command
KEY_NAME = "id_ed25519"
CONSOLE_KEYS = re.compile(
    r"-----BEGIN SSH HOST KEY KEYS-----\s*(.*?)-----END SSH HOST KEY KEYS-----", re.DOTALL
)
# What OpenSSH's own failures (exit 255) say, as against a remote command that exits 255.
SSH_FAILURE = re.compile(
    r"^(\S+@\S+: )?(ssh: |kex_exchange|Connection (closed|reset|timed out|refused)|Permission denied|"
    r"banner exchange|Bad owner|Load key|channel \d+:|.*UNPROTECTED)",
    re.MULTILINE,
)
CHANGED_KEY = re.compile(r"Host key for (\S+) has changed|Host key verification failed")


@dataclass(frozen=True)
class Bastion:
    host: str = spec(
        help="the jump host, as this machine reaches it", pattern=HOST, pattern_help="a host name or address"
    )
    user: str = spec(help="the account Kiln logs in as there (it must take the environment's key)",
                     pattern=ACCOUNT, pattern_help="a Unix account name")  # fmt: skip
    port: int = spec(22, help="its SSH port", minimum=1, maximum=65535)


@dataclass(frozen=True)
class SshSettings:
    """The `ssh:` section of an environment file: how Kiln logs in to VM and cloud instances."""

    user: str = spec("kiln", help="the account user-data creates in each instance for Kiln (sudo)",
                     pattern=ACCOUNT, pattern_help="a Unix account name")  # fmt: skip
    port: int = spec(22, help="the instances' SSH port", minimum=1, maximum=65535)
    bastion: Bastion | None = spec(None, help="a jump host into the instances' private network")


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    user: str


def make_key_pair(key: Path, comment: str) -> str:
    """A new ed25519 key pair at `key` (and `key`.pub), replacing any; the public key line."""
    require_tools("an SSH key", "ssh-keygen")
    for old in (key, key.with_suffix(".pub")):  # ssh-keygen would ask before overwriting
        old.unlink(missing_ok=True)
    made = subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(key)],
        capture_output=True, text=True, check=False, timeout=30,
    )  # fmt: skip
    if made.returncode != 0:
        raise KilnError(f"ssh-keygen could not make {key}: {made.stderr.strip()}")
    return key.with_suffix(".pub").read_text().strip()


class SshIdentity:
    """An environment's key pair and pinned host keys, in one private folder."""

    def __init__(self, folder: Path, comment: str):
        self.folder = folder
        self.comment = comment

    @property
    def key(self) -> Path:
        return self.folder / KEY_NAME

    @property
    def known_hosts(self) -> Path:
        return self.folder / "known_hosts"

    def public_key(self) -> str:
        """The public half, made with the private one on first use."""
        if not self.key.exists():
            self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            make_key_pair(self.key, self.comment)
        os.chmod(self.key, 0o600)  # ssh refuses a private key others can read
        return self.key.with_suffix(".pub").read_text().strip()

    def pin(self, alias: str, keys: list[str]) -> None:
        """Pin host keys read from a trusted source (cloud-init's console output) under alias,
        unless the alias is pinned already: a later, different key is then refused."""
        lines = self.known_hosts.read_text().splitlines() if self.known_hosts.exists() else []
        if not keys or any(line.split(" ", 1)[0] == alias for line in lines):
            return
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        with self.known_hosts.open("a") as f:
            f.writelines(f"{alias} {' '.join(key.split()[:2])}\n" for key in keys)


def console_host_keys(console: str) -> list[str]:
    """The host public keys cloud-init's keys_to_console printed ("type base64 comment" lines)."""
    found = CONSOLE_KEYS.search(console)
    return [line.strip() for line in found[1].splitlines() if line.strip()] if found else []


def sudo_exemption(user: str) -> tuple[str, str]:
    """The sudoers drop-in (path, content) letting the login user's commands run without a
    terminal and start programs: the image's sudo wants both (harden-accounts: requiretty, noexec)."""
    return f"/etc/sudoers.d/91-{user}", f"Defaults:{user} !requiretty, !noexec\n"


def authorize(user_data: str, user: str, public_key: str) -> str:
    """Cloud-config user-data that also creates the login user with the environment's key."""
    document = yaml.safe_load(user_data) or {}
    users = document.get("users") or []
    login = {"name": user, "shell": "/bin/sh", "lock_passwd": True,
             "sudo": "ALL=(ALL) NOPASSWD:ALL", "ssh_authorized_keys": [public_key]}  # fmt: skip
    document["users"] = [*(users if isinstance(users, list) else []), login]
    path, rules = sudo_exemption(user)
    document["write_files"] = [*(document.get("write_files") or []),
                               {"path": path, "permissions": "0440", "content": rules}]  # fmt: skip
    return "#cloud-config\n" + yaml.safe_dump(document, sort_keys=False)


def escape_percent(text: str) -> str:
    return text.replace("%", "%%")  # ssh expands %-tokens in ProxyCommand and file options


class SshChannel(Channel):
    def __init__(
        self,
        name: str,
        target: Endpoint,
        identity: SshIdentity,
        bastion: Endpoint | None = None,
        host_key_alias: str | None = None,
        secrets: list[str] | None = None,
    ):
        super().__init__(name, secrets)
        self.target = target
        self.identity = identity
        self.bastion = bastion
        self.alias = host_key_alias

    def options(self) -> list[str]:
        """What every hop shares: only this key, only this environment's pinned host keys."""
        return [
            "-F", "/dev/null",
            "-i", escape_percent(str(self.identity.key)),
            "-o", "IdentitiesOnly=yes",
            "-o", "BatchMode=yes",
            "-o", f"UserKnownHostsFile={escape_percent(str(self.identity.known_hosts))}",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "StrictHostKeyChecking=accept-new",
            "-o", f"ConnectTimeout={CONNECT_TIMEOUT}",
            "-o", "ServerAliveInterval=15",
            "-o", "ServerAliveCountMax=4",
            "-o", "LogLevel=ERROR",
        ]  # fmt: skip

    def shared_connection(self) -> list[str]:
        """One connection per instance carries the commands that follow it for a minute; the
        socket is named after this environment's folder, the route and the pinned name, so no
        other key, bastion or host key is reused (short, in /tmp: a socket path has 108 bytes)."""
        route = f"{self.identity.folder.resolve()}|{self.bastion}|{self.alias}"
        name = hashlib.sha256(route.encode()).hexdigest()[:12]
        return ["-o", "ControlMaster=auto", "-o", f"ControlPath=/tmp/kiln-ssh-{name}-%C",
                "-o", f"ControlPersist={MUX_PERSIST}"]  # fmt: skip

    def ssh_argv(self, remote: str) -> list[str]:
        argv = ["ssh", *self.options(), *self.shared_connection(), "-p", str(self.target.port)]
        argv += ["-l", self.target.user]
        if self.alias:
            argv += ["-o", f"HostKeyAlias={self.alias}"]
        if self.bastion:
            hop = ["ssh", *self.options(), "-p", str(self.bastion.port), "-l", self.bastion.user]
            argv += ["-o", "ProxyCommand=" + shlex.join([*hop, "-W", "%h:%p", self.bastion.host])]
        return [*argv, self.target.host, "--", remote]

    def remote_command(self, argv: list[str], user: str, env: dict[str, str]) -> str:
        """In /, as `docker exec` runs: the login user's home is closed to the other users that
        commands run as (`find`, for one, fails when it cannot go back to where it started)."""
        as_user = [] if user == self.target.user else ["sudo", "-n", "-H", "-u", user, "--"]
        with_env = ["env", *(f"{k}={v}" for k, v in env.items())] if env else []
        return "cd / && " + shlex.join([*as_user, *with_env, *argv])

    def execute(
        self, argv: list[str], user: str, env: dict[str, str], stdin: bytes | None, timeout: float
    ) -> tuple[int, bytes, bytes]:
        require_tools("reaching an instance over SSH", "ssh")
        self.identity.public_key()  # the key pair exists before the first connection
        try:
            done = subprocess.run(
                self.ssh_argv(self.remote_command(argv, user, env)),
                input=stdin,
                stdin=subprocess.DEVNULL if stdin is None else None,
                capture_output=True,
                timeout=timeout + 2 * CONNECT_TIMEOUT,  # the command is bounded inside too
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise ChannelError(f"{self.name}: no answer over SSH within {timeout:g} s") from exc
        if done.returncode == 255:
            self.refuse_ssh_failure(done.stderr.decode(errors="replace"))
        return done.returncode, done.stdout, done.stderr

    def execute_stream(
        self, argv: list[str], user: str, env: dict[str, str], timeout: float, deliver: Deliver
    ) -> int:
        require_tools("reaching an instance over SSH", "ssh")
        self.identity.public_key()
        errors = bytearray()  # the tail of standard error, for OpenSSH's own failures

        def pump(pipe, fd: int) -> None:
            for chunk in iter(lambda: pipe.read1(CHUNK), b""):
                if fd == 2:
                    errors[:] = (errors + chunk)[-CHUNK:]
                deliver(fd, chunk)

        with subprocess.Popen(
            self.ssh_argv(self.remote_command(argv, user, env)),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        ) as ssh:
            reader = threading.Thread(target=pump, args=(ssh.stderr, 2), daemon=True)
            reader.start()
            pump(ssh.stdout, 1)  # to its end: the command ended, or ssh gave up on the connection
            reader.join(CONNECT_TIMEOUT)
            try:
                code = ssh.wait(timeout=CONNECT_TIMEOUT)
            except subprocess.TimeoutExpired as exc:
                ssh.kill()
                raise ChannelError(f"{self.name}: ssh did not end after its command's output did") from exc
        if code == 255:
            self.refuse_ssh_failure(errors.decode(errors="replace"))
        return code

    def refuse_ssh_failure(self, err: str) -> None:
        """OpenSSH's own failure as one line; a remote command's exit 255 passes through."""
        changed = CHANGED_KEY.search(err)
        if changed:
            host = changed[1] or self.alias or self.target.host
            raise ChannelError(
                f"{self.name}: the SSH host key of {host} differs from the one pinned in "
                f"{self.identity.known_hosts}: refused; if that machine was rebuilt, remove its "
                f"line with `ssh-keygen -R {host} -f {self.identity.known_hosts}`"
            )
        failure = SSH_FAILURE.search(err)
        if failure:
            line = err[failure.start() :].splitlines()[0].strip()
            via = f" via {self.bastion.user}@{self.bastion.host}" if self.bastion else ""
            raise ChannelError(self.scrub(f"{self.name}: SSH to {self.target.host}{via} failed: {line}"))

    def put_tar(self, folder: str, archive: bytes, timeout: float = TRANSFER_TIMEOUT) -> None:
        untar = ["tar", "-x", "-p", "--same-owner", "--numeric-owner", "-C", folder, "-f", "-"]
        code, _, err = self.execute(bounded(untar, timeout), "root", {}, archive, timeout)
        if code != 0:
            raise ChannelError(f"{self.name}: cannot write into {folder}: {self.scrub(err.decode().strip())}")

    def get_tar(self, path: str, timeout: float = TRANSFER_TIMEOUT) -> bytes:
        parent, _, name = path.rstrip("/").rpartition("/")
        pack = ["tar", "-c", "--numeric-owner", "-C", parent or "/", "-f", "-", "--", name]
        code, out, err = self.execute(bounded(pack, timeout), "root", {}, None, timeout)
        if code != 0:
            raise ChannelError(f"{self.name}: cannot read {path}: {self.scrub(err.decode().strip())}")
        return out
