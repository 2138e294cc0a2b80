"""The instance channels against real instances: `docker exec` into a container, and OpenSSH
into a container running the base image's own hardened sshd, reached only through a second one
acting as the bastion (the seeds' jump host). No mocked SSH.

The SSH pair sits on two networks this test creates: `<prefix>-chan-outer` (the bastion)
and `<prefix>-chan-inner` (internal: the bastion and the target, which lets only the bastion
in). Everything carries the label `kiln.test=<prefix>-chan` and is removed after, even when a
test fails.
"""

from __future__ import annotations

import hashlib
import io
import os
import socket
import tarfile
import time
from pathlib import Path

import pytest

from kiln.bootstrap import bootstrap_ref
from kiln.channels.base import ChannelError
from kiln.channels.docker import DockerChannel
from kiln.channels.ssh import Endpoint, SshChannel, SshIdentity, sudo_exemption
from kiln.settings import Settings

pytestmark = pytest.mark.integration

SSHD_READY = 120  # seconds sshd may take to answer on a busy machine (RSA host key first)
# Host keys as each instance makes them at first boot, the login account and its sudo rules as
# the user-data of kiln.channels.ssh.authorize creates them, then the image's hardened sshd.
TARGET = r"""
set -eu
/usr/local/sbin/kiln-ssh-hostkeys
useradd -m -s /bin/sh "$LOGIN"
install -d -m 700 -o "$LOGIN" -g "$LOGIN" "/home/$LOGIN/.ssh"
printf '%s\n' "$PUBLIC_KEY" > "/home/$LOGIN/.ssh/authorized_keys"
chown "$LOGIN:$LOGIN" "/home/$LOGIN/.ssh/authorized_keys"
if [ "$SUDO" = yes ]; then
  echo "$LOGIN ALL=(ALL) NOPASSWD:ALL" > "/etc/sudoers.d/90-$LOGIN"
  printf '%s' "$SUDO_EXEMPTION" > "$SUDO_EXEMPTION_PATH"
  chmod 0440 "/etc/sudoers.d/90-$LOGIN" "$SUDO_EXEMPTION_PATH"
fi
# A container may not set the audit login uid: the session goes on without it.
sed -i 's/^session\s*required\s*pam_loginuid.so/session optional pam_loginuid.so/' /etc/pam.d/sshd
mkdir -p /run/sshd
exec /usr/sbin/sshd -D -e $SSHD_OPTIONS
"""


@pytest.fixture(scope="module")
def base_image(kiln, docker_client) -> str:
    kiln.invoke("bake", "base")  # a no-op when the session baked it already
    [image] = [t for i in docker_client.images.list(name=f"{kiln.prefix}/base") for t in i.tags
               if not t.endswith(":latest")][:1]  # fmt: skip
    return image


@pytest.fixture(scope="module")
def identity(tmp_path_factory) -> SshIdentity:
    return SshIdentity(tmp_path_factory.mktemp("chan") / "ssh", "kiln-chantest")


def remove_labelled(client, label: str) -> None:
    for container in client.containers.list(all=True, filters={"label": label}):
        container.remove(force=True)
    for network in client.networks.list(filters={"label": label}):
        network.remove()


def address(container, network: str) -> str:
    container.reload()
    return container.attrs["NetworkSettings"]["Networks"][network]["IPAddress"]


def sshd_answers(host: str) -> bool:
    """sshd sends its version banner first."""
    try:
        with socket.create_connection((host, 22), timeout=2) as connection:
            return connection.recv(8).startswith(b"SSH-2.0")
    except OSError:
        return False


@pytest.fixture(scope="module")
def pair(kiln, docker_client, base_image, identity):
    """(bastion address on the outer network, target address on the inner one)."""
    label = f"kiln.test={kiln.prefix}-chan"
    labels = {"kiln.test": f"{kiln.prefix}-chan"}
    outer, inner = f"{kiln.prefix}-chan-outer", f"{kiln.prefix}-chan-inner"
    try:
        docker_client.networks.create(outer, driver="bridge", labels=labels)
        docker_client.networks.create(inner, driver="bridge", internal=True, labels=labels)

        def start(name, network, login, sudo, options=""):
            return docker_client.containers.run(
                base_image, [TARGET], entrypoint=["/bin/sh", "-c"], name=f"{kiln.prefix}-chan-{name}",
                hostname=name, network=network, labels=labels, detach=True, init=True,
                environment={"LOGIN": login, "SUDO": sudo, "PUBLIC_KEY": identity.public_key(),
                             "SSHD_OPTIONS": options, "SUDO_EXEMPTION_PATH": sudo_exemption(login)[0],
                             "SUDO_EXEMPTION": sudo_exemption(login)[1]},
            )  # fmt: skip

        # A jump host forwards connections; the image's own sshd_config forbids it (AllowTcpForwarding).
        bastion = start("bastion", outer, "jump", "no", "-o AllowTcpForwarding=yes")
        docker_client.networks.get(inner).connect(bastion)
        # This machine reaches every bridge network, internal ones too: the target takes its login
        # only from the bastion's address, so a session that gets in went through the bastion.
        target = start("target", inner, "kiln", "yes", f"-o AllowUsers=kiln@{address(bastion, inner)}")
        bastion_ip, target_ip = address(bastion, outer), address(target, inner)
        deadline = time.monotonic() + SSHD_READY
        while not sshd_answers(bastion_ip):
            bastion.reload()
            if bastion.status != "running" or time.monotonic() > deadline:
                logs = bastion.logs(tail=20).decode()
                pytest.fail(f"the bastion's sshd did not start ({bastion.status}): {logs}")
            time.sleep(0.5)
        wait_for_target(through((bastion_ip, target_ip, target), identity))  # its host keys come first
        yield bastion_ip, target_ip, target
    finally:
        remove_labelled(docker_client, label)
        assert not docker_client.containers.list(all=True, filters={"label": label})


def through(pair, identity, alias="target-1") -> SshChannel:
    bastion_ip, target_ip, _ = pair
    return SshChannel("target", Endpoint(target_ip, 22, "kiln"), identity, Endpoint(bastion_ip, 22, "jump"),
                      host_key_alias=alias, secrets=["s3cr3t-value-in-output"])  # fmt: skip


def wait_for_target(channel: SshChannel) -> None:
    deadline = time.monotonic() + SSHD_READY
    while True:
        try:
            channel.run(["true"], timeout=10)
            return
        except ChannelError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_commands_stdin_env_and_users_through_the_jump_host(pair, identity):
    ssh = through(pair, identity)
    assert ssh.run(["id", "-un"]).out.strip() == "root"  # root by default, through sudo
    assert ssh.run(["id", "-un"], user="kiln").out.strip() == "kiln"
    echoed = ssh.run(["sh", "-c", 'echo "$A|$B"'], user="nobody", env={"A": "x y", "B": "it's"})
    assert echoed.out == "x y|it's\n"
    data = os.urandom(1 << 20)
    piped = ssh.run(["sha256sum"], stdin=data)
    assert piped.ok and piped.out.split()[0] == hashlib.sha256(data).hexdigest()
    failed = ssh.run(["sh", "-c", "echo s3cr3t-value-in-output >&2; exit 3"])
    assert (failed.code, failed.err.strip()) == (3, "********")
    assert ssh.run(["sh", "-c", "exit 255"]).code == 255  # the command's own 255 is not a channel failure
    assert "target-1 ssh-ed25519 " in identity.known_hosts.read_text()  # pinned on first use


def test_files_and_folders_go_in_and_out_with_mode_and_owner(pair, identity):
    ssh = through(pair, identity)
    payload = os.urandom(300_000)
    ssh.put("/etc/kiln-test.bin", payload, 0o640, ssh.ids("kiln"))
    assert ssh.run(["stat", "-c", "%a %U", "/etc/kiln-test.bin"]).out.strip() == "640 kiln"
    assert ssh.get("/etc/kiln-test.bin") == payload
    with tarfile.open(fileobj=io.BytesIO(ssh.get_tar("/home/kiln/.ssh"))) as tar:
        assert {m.name for m in tar.getmembers()} == {".ssh", ".ssh/authorized_keys"}
    with pytest.raises(ChannelError, match=r"^target: cannot read /nowhere: .*No such file"):
        ssh.get("/nowhere")


def test_a_command_past_its_timeout_is_stopped_inside_the_instance(pair, identity):
    ssh = through(pair, identity)
    started = time.monotonic()
    with pytest.raises(ChannelError, match=r"^target: `sleep` did not finish within 2 s$"):
        ssh.run(["sleep", "120"], timeout=2)
    assert time.monotonic() - started < 60
    assert ssh.run(["pgrep", "-x", "sleep"]).code == 1  # nothing left running


# Ticks on both outputs and ignores SIGINT, so only the SIGKILL after the grace ends it; the
# probe word finds what is left of it in the instance.
TICKER = (
    "trap '' INT; i=0; while [ $i -lt 600 ]; do i=$((i+1)); echo \"tick $i\"; "
    "echo \"s3cr3t-value-in-output $i\" >&2; sleep 0.2; done # kilnstreamprobe"
)


def assert_streams_and_stops_inside(channel) -> None:
    """A streamed command's lines reach the watch as they come (scrubbed), quiet seconds as
    ticks; the watch's stop reaches the command inside the instance."""
    seen: list[str | None] = []

    def watch(line: str | None) -> str | None:
        seen.append(line)
        return "seen enough" if line == "tick 3" else None

    started = time.monotonic()
    stopped = channel.stream(["sh", "-c", TICKER], watch, grace=2)
    assert stopped.stopped == "seen enough" and stopped.out.startswith("tick 1\ntick 2\ntick 3\n")
    assert "********" in stopped.err and "s3cr3t" not in stopped.err + "".join(filter(None, seen))
    assert time.monotonic() - started < 30
    left = channel.run(["sh", "-c", "grep -l kilnstreamprob[e] /proc/[0-9]*/cmdline | wc -l"])
    assert left.out.strip() == "0"  # SIGINT ignored, so SIGKILL after the grace ended it inside

    seen.clear()
    ended = channel.stream(["sh", "-c", "sleep 2.5; echo out; echo err >&2; exit 3"], watch)
    assert (ended.code, ended.out, ended.err, ended.stopped) == (3, "out\n", "err\n", None)
    assert None in seen and {"out", "err"} <= set(seen)  # ticks through the quiet seconds, then lines


def test_a_streamed_command_is_watched_and_stopped_inside_the_instance(pair, identity):
    assert_streams_and_stops_inside(through(pair, identity))


def test_the_target_is_out_of_reach_without_the_jump_host(pair, identity):
    _, target_ip, _ = pair
    direct = SshChannel("target", Endpoint(target_ip, 22, "kiln"), identity, host_key_alias="target-1")
    refused = r"^target: SSH to .* failed: kiln@.*: Permission denied \(publickey\)"
    with pytest.raises(ChannelError, match=refused):
        direct.run(["true"], timeout=5)


def test_a_changed_host_key_is_refused_in_one_line(pair, identity, tmp_path: Path):
    impostor = SshIdentity(tmp_path / "other", "kiln-impostor")  # any other real key, pinned for target-1
    impostor.public_key()
    other = SshIdentity(tmp_path / "pinned", "kiln-chantest")
    other.folder.mkdir(parents=True)
    for name in ("id_ed25519", "id_ed25519.pub"):
        (other.folder / name).write_bytes((identity.folder / name).read_bytes())
    other.pin("target-1", [impostor.public_key()])
    ssh = through(pair, other)
    with pytest.raises(ChannelError) as refused:
        ssh.run(["true"], timeout=10)
    message = str(refused.value)
    assert "\n" not in message and "host key of target-1 differs from the one pinned" in message


def test_the_docker_channel_runs_with_stdin_env_user_and_moves_files(kiln, docker_client):
    image = bootstrap_ref(Settings())
    if not docker_client.images.list(name=image):
        kiln.invoke("bake", "base", "--no-verify")  # builds the bootstrap image on a new machine
    box = docker_client.containers.run(image, ["sleep", "300"], detach=True, network_mode="none",
                                       name=f"{kiln.prefix}-chan-docker", init=True)  # fmt: skip
    try:
        channel = DockerChannel(box, secrets=["s3cr3t-value-in-output"])
        data = os.urandom(1 << 20)
        assert channel.run(["sha256sum"], stdin=data).out.split()[0] == hashlib.sha256(data).hexdigest()
        echoed = channel.run(["sh", "-c", 'echo "$A"; id -un'], user="nobody", env={"A": "x y"})
        assert echoed.out == "x y\nnobody\n"
        assert channel.run(["sh", "-c", "echo s3cr3t-value-in-output; exit 4"]).out == "********\n"
        channel.put("/etc/kiln-test.env", b"A=1\n", 0o600, (65534, 65534))
        assert channel.run(["stat", "-c", "%a %u", "/etc/kiln-test.env"]).out.strip() == "600 65534"
        assert channel.get("/etc/kiln-test.env") == b"A=1\n"
        with pytest.raises(ChannelError, match=r"did not finish within 1 s$"):
            channel.run(["sleep", "60"], timeout=1)
        sleeping = channel.run(["sh", "-c", "grep -lx sleep /proc/[0-9]*/comm | wc -l"])
        assert sleeping.out.strip() == "1"  # only the container's own
        assert_streams_and_stops_inside(channel)
    finally:
        box.remove(force=True)
