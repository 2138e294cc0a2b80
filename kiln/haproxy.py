"""HAProxy 2.6 runtime API over its stats socket, and the config file Kiln keeps in step.

Facts this relies on (measured, see the HAProxy notes): a server added at run time starts in
MAINT; enabled, it would count as UP before its first check, so it is forced DOWN in the same
command line and waits for `rise` passing checks. A server is deleted only from MAINT with no
connection left, so removal is drain, wait, maint, delete. A reload rebuilds servers from the
config file, so the file is rewritten whenever the set of servers changes.
"""

from __future__ import annotations

import csv
import io
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from kiln.errors import OperationFailed

BACKEND = "web"
DATABASE = "db"  # the TCP section sending database connections to the primary (a standby exists)
DATABASE_PORT = 5432
AGENT_PORT = 5433  # kiln-db-role-agent in the db image: "up" on the primary only
# HAProxy reads an error file into one buffer (16 KiB by default) with its headers.
MAINTENANCE_PAGE_LIMIT = 8192
MAINTENANCE_FILE = "maintenance.http"
# Every server's state (drain, maint, health) as `show servers state` writes it, for the next
# HAProxy to start from: an lb handover keeps a drained or fenced server as it was.
SERVER_STATE_FILE = "server-state"
CERTIFICATE_FILE = "frontend.pem"  # the certificate, its CA's, then its key (kiln/tls.py)
HTTPS_PORT = 443  # the frontend's, and the instances' with internal_tls
INSTANCE_CA_FILE = (
    "instance-ca.pem"  # internal_tls: the environment's CA, instances' certificates chain to it
)
# The CA file must be in HAProxy's store before a server added at run time may name it: the
# backend's `default-server` loads it at start (measured on 2.6: `add server` refuses it otherwise).
TLS_TO_SERVERS = f"ssl verify required ca-file /run/haproxy/{INSTANCE_CA_FILE} check-ssl"
DEFAULT_MAINTENANCE_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Down for maintenance</title></head>
<body><h1>Down for maintenance</h1><p>We will be back shortly. Please try again in a minute.</p></body>
</html>
"""


@dataclass(frozen=True)
class ServerStat:
    name: str
    status: str  # UP, DOWN, MAINT, DRAIN, NOLB, "UP 1/2" while rising...
    sessions: int  # scur + qcur: connections still attached
    check: str  # last check status, e.g. L7OK, L4CON
    backup: bool = False  # takes traffic only while no active server is UP
    served: int = 0  # sessions since it was added (stot)
    changed_ago: int = 0  # seconds since its status last changed (lastchg)

    @property
    def healthy(self) -> bool:
        return self.status == "UP"

    @property
    def lb_state(self) -> str:
        """ready, drain or maint, as the admin set it (checks decide UP/DOWN within ready)."""
        if self.status.startswith("MAINT"):
            return "maint"
        if self.status.startswith(("DRAIN", "NOLB")):
            return "drain"
        return "ready"


@dataclass(frozen=True)
class Server:
    name: str
    address: str
    port: int
    backup: bool = False
    tls: bool = False  # internal_tls: requests and checks over TLS, the certificate naming the instance

    def keywords(self) -> str:
        """Where and how to reach it, as `server` and `add server` take it (a server added at run
        time inherits no `default-server`, so everything is spelled out)."""
        words = f"{self.address}:{self.port}"
        if self.tls:
            words += f" {TLS_TO_SERVERS} verifyhost {self.name}"
        return words + (" backup" if self.backup else "")


@dataclass(frozen=True)
class Checks:
    """How HAProxy checks and ramps up each server (the environment's `health`)."""

    interval: float
    rise: int
    fall: int
    slowstart: float = 0.0

    def keywords(self) -> str:
        words = f"check inter {int(self.interval * 1000)} rise {self.rise} fall {self.fall}"
        return words + (f" slowstart {int(self.slowstart * 1000)}" if self.slowstart else "")


class RuntimeAPI:
    """One command per connection (the socket's non-interactive mode)."""

    def __init__(self, socket_path: Path, timeout: float = 10.0):
        self.socket_path = socket_path
        self.timeout = timeout

    def command(self, line: str) -> str:
        # AF_UNIX paths are limited to 108 bytes: reach deep folders through /proc/self/fd.
        folder = os.open(self.socket_path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self.timeout)
                sock.connect(f"/proc/self/fd/{folder}/{self.socket_path.name}")
                sock.sendall(line.encode() + b"\n")
                chunks = []
                while chunk := sock.recv(65536):
                    chunks.append(chunk)
        except OSError as exc:
            raise OperationFailed(f"HAProxy runtime API at {self.socket_path}: {exc}") from exc
        finally:
            os.close(folder)
        return b"".join(chunks).decode(errors="replace")

    def checked(self, line: str) -> str:
        """Run commands that answer nothing on success; any text is the error."""
        answer = self.command(line).strip()
        if answer and "New server registered" not in answer and "Server deleted" not in answer:
            raise OperationFailed(f"HAProxy refused `{line}`: {answer.splitlines()[0]}")
        return answer

    def ready(self) -> bool:
        try:
            return "Name:" in self.command("show info")
        except OperationFailed:
            return False

    def stats(self, backend: str = BACKEND) -> dict[str, ServerStat]:
        text = self.command("show stat").lstrip("# ")
        servers = {}
        for row in csv.reader(io.StringIO(text)):
            if len(row) < 37 or row[0] != backend or row[1] in ("FRONTEND", "BACKEND"):
                continue
            sessions = int(row[2] or 0) + int(row[4] or 0)
            backup = row[20] == "1"
            served, changed_ago = int(row[7] or 0), int(row[23] or 0)
            servers[row[1]] = ServerStat(row[1], row[17], sessions, row[36], backup, served, changed_ago)
        return servers

    def add_server(self, server: Server, checks: Checks, backend: str = BACKEND):
        ref = f"{backend}/{server.name}"
        self.checked(f"add server {ref} {server.keywords()} {checks.keywords()}")
        # One line, so no check or request can see it UP before `rise` checks pass.
        self.checked(f"enable health {ref}; enable server {ref}; set server {ref} health down")

    def replace_certificate(self, crt_file: str, bundle: bytes) -> None:
        """Swap the certificate HAProxy serves from `crt_file` in memory (a transaction: set, then
        commit), so no connection is dropped by a reload."""
        answer = self.command(f"set ssl cert {crt_file} <<\n{bundle.decode().strip()}\n")
        if "Transaction created" not in answer and "Transaction updated" not in answer:
            raise OperationFailed(
                f"HAProxy refused the new certificate for {crt_file}: {answer.strip()[:200]}"
            )
        answer = self.command(f"commit ssl cert {crt_file}")
        if "Success" not in answer:
            raise OperationFailed(
                f"HAProxy did not commit the certificate {crt_file}: {answer.strip()[:200]}"
            )

    def hold(self, name: str, backend: str) -> None:
        """No new connection to it and none left on it: before its instance is stopped."""
        self.checked(f"set server {backend}/{name} state maint; shutdown sessions server {backend}/{name}")

    def release(self, name: str, backend: str) -> None:
        """Back in service after `hold`, DOWN until its checks pass (leaving MAINT it would count as
        UP at once, as a server added at run time would)."""
        ref = f"{backend}/{name}"
        self.checked(f"set server {ref} state ready; set server {ref} health down")

    def drain(self, name: str, backend: str = BACKEND) -> None:
        self.checked(f"set server {backend}/{name} state drain")

    def delete_server(self, name: str, *, wait: float = 10.0, backend: str = BACKEND) -> None:
        """MAINT, end stragglers if any, then delete (refused while connections remain)."""
        ref = f"{backend}/{name}"
        self.checked(f"set server {ref} state maint")
        deadline = time.monotonic() + wait
        while True:
            answer = self.command(f"del server {ref}").strip()
            if "Server deleted" in answer or "No such server" in answer:
                return
            if time.monotonic() > deadline:
                raise OperationFailed(f"HAProxy would not delete {ref}: {answer}")
            self.command(f"shutdown sessions server {ref}")
            time.sleep(0.1)


def maintenance_response(page: str, retry_after: int = 30) -> bytes:
    """What HAProxy answers when no server can take a request: the page as a whole 503 response."""
    head = (
        "HTTP/1.0 503 Service Unavailable\r\n"
        "Cache-Control: no-cache\r\n"
        "Connection: close\r\n"
        "Content-Type: text/html; charset=utf-8\r\n"
        f"Retry-After: {retry_after}\r\n\r\n"
    )
    return head.encode() + page.encode()


@dataclass(frozen=True)
class Https:
    """HTTPS on the frontend: where clients reach it (for redirects), and whether HTTP redirects."""

    public_port: int
    redirect: bool = True

    def frontend_lines(self) -> list[str]:
        lines = [
            f"    bind :{HTTPS_PORT} ssl crt /run/haproxy/{CERTIFICATE_FILE}",
            "    http-request set-header X-Forwarded-Proto https if { ssl_fc }",
        ]
        if self.redirect:
            # the host as the client named it, on the port HTTPS is published on (it may not be 443)
            port = "" if self.public_port == HTTPS_PORT else f":{self.public_port}"
            lines.append(
                "    http-request redirect location "
                f"https://%[req.hdr(host),field(1,:)]{port}%[capture.req.uri] code 301 unless {{ ssl_fc }}"
            )
        return lines


def database_lines(hosts: dict[str, str]) -> list[str]:
    """A TCP section sending database connections to the one db instance whose agent says it is
    the primary. Containers are named, not addressed: Docker's DNS resolves each at run time, so an
    instance replaced after a failover is found again with no reload. VMs keep their planned
    address across a replacement, so they are given by it."""
    return [
        "",
        "resolvers docker",
        "    nameserver docker 127.0.0.11:53",
        "    hold valid 1s",
        "    hold nx 1s",
        "    hold obsolete 1s",
        "    timeout resolve 1s",
        "",
        f"listen {DATABASE}",
        "    mode tcp",
        f"    bind :{DATABASE_PORT}",
        # with no primary up, refused at once: queued, a client (the web app's /health) would hang
        f"    tcp-request connection reject if {{ nbsrv({DATABASE}) lt 1 }}",
        # the applications keep their connections open between requests, and replication streams
        "    timeout client 1h",
        "    timeout server 1h",
        # UP only when PostgreSQL accepts connections and its agent says primary: with the port
        # alone a standby counted as UP (and took writes) until its agent first answered
        "    option tcp-check",
        f"    tcp-check connect port {DATABASE_PORT}",
        f"    tcp-check connect port {AGENT_PORT}",
        "    tcp-check expect string up",
        # connections to a server marked down are cut, so clients reconnect to the new primary
        f"    default-server check inter 500ms rise 1 fall 2 agent-check agent-port {AGENT_PORT} "
        "agent-inter 500ms resolvers docker init-addr none on-marked-down shutdown-sessions",
        *(f"    server {name} {host}:{DATABASE_PORT}" for name, host in sorted(hosts.items())),
    ]


def render_config(
    servers: list[Server],
    *,
    port: int,
    health_path: str,
    checks: Checks,
    https: Https | None = None,
    database: dict[str, str] | None = None,
    tls_to_servers: bool = False,
) -> str:
    """The whole config, listing exactly the servers in service, so a reload keeps them only;
    `tls_to_servers` (internal_tls) loads the instances' CA for the servers to come."""
    lines = [
        "# Written by Kiln: the servers in service. Do not edit; Kiln rewrites it as they change.",
        "global",
        "    log stdout format raw local0",
        "    stats socket /run/haproxy/admin.sock mode 600 level admin expose-fd listeners",
        "    stats timeout 30s",
        "    pidfile /run/haproxy/haproxy.pid",
        f"    server-state-file /run/haproxy/{SERVER_STATE_FILE}",
        "",
        "defaults",
        "    mode http",
        "    log global",
        "    option redispatch",
        "    retries 3",
        "    timeout connect 2s",
        "    timeout client 30s",
        "    timeout server 30s",
        "    load-server-state-from-file global",
        # no server up (nor a backup): the maintenance page, not HAProxy's bare 503
        f"    errorfile 503 /run/haproxy/{MAINTENANCE_FILE}",
        "",
        "frontend web",
        f"    bind :{port}",
        *(https.frontend_lines() if https else []),
        # soft-stop (an lb handover): an idle keep-alive connection gets its next answer with
        # `Connection: close` instead of being closed under a request the client just sent
        # (an HTTP frontend's option: the database's TCP section would warn of it)
        "    option idle-close-on-response",
        f"    default_backend {BACKEND}",
        "",
        f"backend {BACKEND}",
        "    balance roundrobin",
        # with zone affinity, every backup server shares the load once the home zone is down
        "    option allbackups",
        f"    option httpchk GET {health_path}",
        "    http-check expect status 200",
        f"    default-server {checks.keywords()}" + (f" {TLS_TO_SERVERS}" if tls_to_servers else ""),
    ]
    lines += [f"    server {s.name} {s.keywords()}" for s in servers]
    lines += database_lines(database) if database else []
    return "\n".join(lines) + "\n"
