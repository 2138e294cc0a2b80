"""An environment's `syslog:` log host gets what its instances log: a local web instance, launched
with the user-data the rollout engine renders (schema-checked by the image's cloud-init), forwards
through its own rsyslog to a receiver this test runs on the gateway of the instance's network:
over TCP, and over TLS to a receiver that speaks only TLS, with a certificate from a CA the
environment names (`syslog.ca_file`) for the address the instance connects to."""

from __future__ import annotations

import socket
import ssl
import threading
import uuid
from pathlib import Path

import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID

from kiln import environments, tls
from kiln.images import DockerImageStore
from kiln.polling import poll
from kiln.providers.local import LocalProvider
from kiln.rollout.engine import Engine
from kiln.settings import Settings

pytestmark = pytest.mark.integration

ENVIRONMENT = """provider: local
zones: [z0]
instances: {{web: 1}}
frontend: {{port: 0}}
syslog: {{host: '{host}', port: {port}, protocol: {protocol}{ca}}}
"""
TAG = "kiln-forward-test"


class Receiver:
    """A syslog-over-TCP receiver: every line any client sends, kept in order."""

    def __init__(self, host: str, context: ssl.SSLContext | None = None):
        self.context = context
        self.listener = socket.create_server((host, 0))
        self.port = self.listener.getsockname()[1]
        self.lines: list[str] = []
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:  # closed
                return
            threading.Thread(target=self.read, args=(conn,), daemon=True).start()

    def read(self, conn: socket.socket) -> None:
        if self.context is not None:
            try:
                conn = self.context.wrap_socket(conn, server_side=True)
            except (ssl.SSLError, OSError):  # a client that does not speak TLS, or distrusts us
                conn.close()
                return
        with conn, conn.makefile("r", errors="replace") as stream:
            for line in stream:
                self.lines.append(line.rstrip("\n"))

    def wait_for(self, text: str, seconds: float) -> str:
        return poll(
            lambda: next((line for line in self.lines if text in line), None),
            timeout=seconds, interval=0.2, what=f"a forwarded line with {text!r}",
        )  # fmt: skip

    def close(self) -> None:
        self.listener.close()


def tls_context(folder: Path, address: str) -> tuple[ssl.SSLContext, str]:
    """The log host's side: a certificate for `address` from a CA of its own; the CA's file name."""
    ca = tls.new_authority("logs")
    certificate, key = tls.leaf(ca, [address], 30, [ExtendedKeyUsageOID.SERVER_AUTH])
    (folder / "logs-ca.pem").write_bytes(ca.pem)
    (folder / "logs.pem").write_bytes(certificate + key)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(folder / "logs.pem")
    return context, "logs-ca.pem"


@pytest.mark.parametrize("protocol", ["tcp", "tls"])
def test_an_instance_forwards_its_syslog_to_the_environments_log_host(
    kiln, baked_web, docker_client, protocol
):
    settings = Settings(project_root=kiln.project, state_dir=kiln.project / ".kiln", image_repo=kiln.prefix)
    name = f"{kiln.prefix}-logs-{protocol}"
    env_file = environments.env_dir(settings) / f"{name}.yml"
    environments.env_dir(settings).mkdir(exist_ok=True)  # the session's project copy has none
    env_file.write_text(
        ENVIRONMENT.format(host="192.0.2.1", port=514, protocol="tcp", ca="")
    )  # no network yet
    provider = LocalProvider(settings, environments.load(settings, name))
    receiver = None
    try:
        provider.ensure_networks()
        network = docker_client.networks.get(provider.network_name(0))
        gateway = network.attrs["IPAM"]["Config"][0]["Gateway"]
        context, ca = tls_context(kiln.project, gateway) if protocol == "tls" else (None, None)
        receiver = Receiver(gateway, context)
        ca_field = f", ca_file: {ca}" if ca else ""
        env_file.write_text(
            ENVIRONMENT.format(host=gateway, port=receiver.port, protocol=protocol, ca=ca_field)
        )
        env = environments.load(settings, name)
        engine = Engine(settings, env, provider, say=lambda _: None)  # it renders with `env`
        record = DockerImageStore(docker_client, settings).find("web", baked_web["web"])
        engine.check_user_data("web", [1], record)  # the image's own cloud-init accepts it
        instance = provider.launch("web", 1, record, engine.user_data("web", "web1", 0, record))
        container = docker_client.containers.get(provider.container_name(instance.name))

        token = uuid.uuid4().hex
        listening = lambda: container.exec_run(["test", "-S", "/dev/log"]).exit_code == 0  # noqa: E731
        poll(listening, timeout=60, interval=0.3, what="rsyslog's /dev/log")
        assert container.exec_run(["logger", "-t", TAG, "-p", "auth.notice", token]).exit_code == 0
        line = receiver.wait_for(token, 30)
        assert f"{TAG}: {token}" in line
        assert line.startswith("<37>")  # auth (4) * 8 + notice (5): facility and level kept
    finally:
        if receiver is not None:
            receiver.close()
        provider.destroy()
        env_file.unlink()
