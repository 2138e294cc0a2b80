"""An S3 server for tests and benchmarks: moto's, over TLS from a CA made for the run.

moto_server listens on loopback; a TLS relay bound to the gateway address of a Docker network
Kiln created (its certificate signed by a throwaway CA the tools are handed, so TLS stays
verified) forwards to it, so instances on that network (and on any other bridge of this engine)
reach it and nothing outside this machine does. `stop()` closes the relay and drops its
connections, which is what a client sees when the server stops; moto keeps its objects (in
memory), so `start()` brings the same bucket back, as a restarted S3 server would.
`stop_on(request, count)` stops it at a chosen moment of a backup: when the count-th request
matching a pattern arrives, before that request reaches moto.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import re
import select
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import boto3
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kiln.polling import wait_for_service

CHUNK = 1 << 16


def write_certificates(folder: Path, address: str) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for `address` and loopback: (ca.pem, server.pem, server.key).

    The address is an IP SAN (Go's TLS, in restic, checks those) and also a DNS SAN (pgBackRest
    compares the host it connects to with DNS names only)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kiln test S3 CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    names = [x509.IPAddress(ipaddress.ip_address(ip)) for ip in (address, "127.0.0.1")]
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, address)]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([*names, x509.DNSName(address)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    paths = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    paths[2].chmod(0o600)
    return paths


def free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


class Relay:
    """TLS on (host, port), plain HTTP to a loopback port: one thread per connection.

    The relay ends TLS itself so that a response moto ends by closing the connection ends with a
    TLS close_notify; without it OpenSSL 3 (pgBackRest's) reports "unexpected eof"."""

    def __init__(self, host: str, port: int, target: int, cert: Path, key: Path):
        self.host, self.port, self.target = host, port, target
        self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.tls.load_cert_chain(cert, key)
        self.listener: socket.socket | None = None
        self.open: set[socket.socket] = set()
        self.lock = threading.Lock()
        self.down = threading.Event()  # stopped: nothing more passes, either way
        self.tripwire: tuple[re.Pattern[bytes], int] | None = None
        self.tripped_at: float | None = None  # time.monotonic() when the tripwire stopped it

    def trip_on(self, request: re.Pattern[bytes], count: int) -> None:
        with self.lock:
            self.tripwire, self.tripped_at = (request, count), None

    def trips(self, data: bytes) -> bool:
        """Whether this chunk from a client is the request the tripwire waits for. The relay ends
        TLS, so it reads the HTTP request lines; both tools encrypt the bodies, so no body
        matches by chance."""
        with self.lock:
            if self.tripwire is None:
                return False
            request, count = self.tripwire
            count -= len(request.findall(data))
            self.tripwire = (request, count) if count > 0 else None
            if count <= 0:
                self.tripped_at = time.monotonic()
        if count <= 0:
            self.stop()
        return count <= 0

    def start(self) -> None:
        self.down.clear()
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        listener.listen(64)
        self.listener = listener
        threading.Thread(target=self.accept, args=(listener,), daemon=True).start()

    def accept(self, listener: socket.socket) -> None:
        while True:
            try:
                raw, _ = listener.accept()
            except OSError:  # closed by stop()
                return
            threading.Thread(target=self.serve, args=(raw,), daemon=True).start()

    def serve(self, raw: socket.socket) -> None:
        try:
            client = self.tls.wrap_socket(raw, server_side=True)
            upstream = socket.create_connection(("127.0.0.1", self.target), timeout=10)
        except OSError:
            raw.close()
            return
        upstream.settimeout(None)
        # The relay forwards each piece as it comes; under Nagle's algorithm, against the peer's
        # delayed ACK, a head and body sent apart waited ~40 ms (a boto3 PUT: 79 ms, 9 ms without).
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.lock:
            self.open |= {client, upstream}
        try:
            self.pump(client, upstream)
        except OSError:  # reset by the client, or by stop()
            pass
        finally:
            with self.lock:
                self.open -= {client, upstream}
            client.close()
            upstream.close()

    def pump(self, client: ssl.SSLSocket, upstream: socket.socket) -> None:
        while True:
            ready = [client] if client.pending() else select.select([client, upstream], [], [], 30)[0]
            # Checked before every forward: once stopped, a request in flight on another
            # connection neither reaches moto nor gets its answer, as with a server that died.
            if client in ready:
                data = client.recv(CHUNK)
                if not data or self.down.is_set() or self.trips(data):
                    return
                upstream.sendall(data)
            if upstream in ready:
                data = upstream.recv(CHUNK)
                if not data:
                    with contextlib.suppress(OSError):
                        client.unwrap()  # the close_notify
                    return
                if self.down.is_set():
                    return
                client.sendall(data)

    def stop(self) -> None:
        self.down.set()
        if self.listener is not None:
            with contextlib.suppress(OSError):  # wakes the thread blocked in accept(): the port is free again
                self.listener.shutdown(socket.SHUT_RDWR)
            self.listener.close()
            self.listener = None
        with self.lock:
            for sock in self.open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


class S3Server:
    """moto's S3 over TLS on loopback, reachable on `address` (a Docker network's gateway)."""

    def __init__(self, address: str, folder: Path, bucket: str):
        self.address, self.bucket = address, bucket
        self.ca, cert, key = write_certificates(folder, address)
        self.moto_port = free_port("127.0.0.1")
        self.relay = Relay(address, free_port(address), self.moto_port, cert, key)
        self.log = (folder / "moto.log").open("wb")
        self.process = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("moto_server")),
                "-H",
                "127.0.0.1",
                "-p",
                str(self.moto_port),
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for_service(lambda: self.client().list_buckets(), "moto's S3 server", 30)
            self.client().create_bucket(Bucket=bucket)
            self.relay.start()
        except BaseException:
            self.close()
            raise

    @property
    def endpoint(self) -> str:
        return f"{self.address}:{self.relay.port}"

    def client(self):
        return boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{self.moto_port}",  # moto itself, behind the relay
            aws_access_key_id="kilntest",
            aws_secret_access_key="kilntest",
            region_name="us-east-1",
        )

    def keys(self, prefix: str) -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    def stop(self) -> None:
        self.relay.stop()

    def start(self) -> None:
        self.relay.start()

    def stop_on(self, request: bytes, count: int = 1) -> None:
        """Stop when the count-th request whose head matches `request` (a regular expression on
        the plain HTTP, e.g. rb"^PUT /bucket/path/") arrives; `relay.tripped_at` tells when."""
        self.relay.trip_on(re.compile(request, re.MULTILINE), count)

    def close(self) -> None:
        self.relay.stop()
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self.log.close()
