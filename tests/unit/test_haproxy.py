"""The HAProxy config Kiln writes, server states, and the socket client's deep-path connect."""

import os
import socket
import threading
from pathlib import Path

from kiln import haproxy


def test_config_lists_exactly_the_servers_in_service():
    servers = [
        haproxy.Server("web4", "172.20.0.3", 80),
        haproxy.Server("web5", "172.21.0.3", 80, backup=True),
    ]
    checks = haproxy.Checks(interval=0.5, rise=2, fall=3)
    text = haproxy.render_config(servers, port=80, health_path="/health", checks=checks)
    lines = [line.strip() for line in text.splitlines()]
    assert [line for line in lines if line.startswith("server ")] == [
        "server web4 172.20.0.3:80",
        "server web5 172.21.0.3:80 backup",  # zone affinity: another zone's instance
    ]
    assert "default-server check inter 500 rise 2 fall 3" in lines
    assert "option allbackups" in lines
    assert "option httpchk GET /health" in lines
    assert "stats socket /run/haproxy/admin.sock mode 600 level admin expose-fd listeners" in lines
    assert "balance roundrobin" in lines  # dynamic servers need a dynamic algorithm


def test_with_internal_tls_servers_are_reached_over_https_checked_against_the_environments_ca():
    checks = haproxy.Checks(interval=0.5, rise=2, fall=3)
    server = haproxy.Server("web4", "172.20.0.3", 443, tls=True)
    tls_words = "ssl verify required ca-file /run/haproxy/instance-ca.pem check-ssl"
    assert server.keywords() == f"172.20.0.3:443 {tls_words} verifyhost web4"
    text = haproxy.render_config([server], port=80, health_path="/health", checks=checks, tls_to_servers=True)
    lines = [line.strip() for line in text.splitlines()]
    assert f"server web4 172.20.0.3:443 {tls_words} verifyhost web4" in lines
    # loaded at start, so servers added at run time may name it
    assert f"default-server check inter 500 rise 2 fall 3 {tls_words}" in lines
    plain = haproxy.render_config([], port=80, health_path="/health", checks=checks)
    assert "ca-file" not in plain


def test_with_a_standby_database_connections_go_to_the_server_whose_agent_says_primary():
    checks = haproxy.Checks(interval=0.5, rise=2, fall=3)
    database = {"db2": "kiln-shop-db2", "db1": "kiln-shop-db1"}
    text = haproxy.render_config([], port=80, health_path="/health", checks=checks, database=database)
    section = text[text.index("listen db") :].splitlines()
    assert [line.strip() for line in section if line.strip().startswith("server ")] == [
        "server db1 kiln-shop-db1:5432",
        "server db2 kiln-shop-db2:5432",
    ]
    defaults = next(line for line in section if "default-server" in line).split()
    # the agent (kiln-db-role-agent) decides; names resolve at run time; a demoted server's
    # connections are cut so clients reconnect to the new primary
    for words in (["agent-check"], ["agent-port", "5433"], ["resolvers", "docker"], ["init-addr", "none"]):
        assert " ".join(words) in " ".join(defaults)
    assert "on-marked-down" in defaults and "shutdown-sessions" in defaults
    # the check itself needs the agent's "up": a standby whose agent is not answering yet stays DOWN
    checks_in_order = [line.strip() for line in section if line.strip().startswith("tcp-check")]
    assert checks_in_order == [
        "tcp-check connect port 5432",
        "tcp-check connect port 5433",
        "tcp-check expect string up",
    ]
    assert "    mode tcp" in section and "    bind :5432" in section
    assert "listen db" not in haproxy.render_config([], port=80, health_path="/health", checks=checks)


def test_the_maintenance_page_is_a_whole_503_response_with_retry_after():
    response = haproxy.maintenance_response("<p>back soon</p>", retry_after=45)
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 503 Service Unavailable\r\n") and b"\r\nRetry-After: 45" in head
    assert body == b"<p>back soon</p>"
    config = haproxy.render_config([], port=80, health_path="/health", checks=haproxy.Checks(1, 2, 2))
    assert f"errorfile 503 /run/haproxy/{haproxy.MAINTENANCE_FILE}" in config


def test_slowstart_is_a_check_keyword_only_when_asked_for():
    assert (
        haproxy.Checks(1.5, 3, 2, slowstart=10).keywords() == "check inter 1500 rise 3 fall 2 slowstart 10000"
    )
    assert "slowstart" not in haproxy.Checks(1.5, 3, 2).keywords()


def test_server_states_from_show_stat_status():
    def stat(status):
        return haproxy.ServerStat("web1", status, 0, "L7OK")

    assert [
        stat(s).lb_state for s in ("UP", "DOWN", "UP 1/2", "DRAIN", "NOLB", "MAINT", "MAINT (resolution)")
    ] == [
        "ready",
        "ready",
        "ready",
        "drain",
        "drain",
        "maint",
        "maint",
    ]
    assert stat("UP").healthy and not stat("DOWN 1/2").healthy and not stat("DRAIN").healthy


def test_client_reaches_a_socket_deeper_than_the_unix_path_limit(tmp_path: Path):
    folder = tmp_path / ("d" * 60) / ("e" * 60)
    folder.mkdir(parents=True)
    path = folder / "admin.sock"
    assert len(str(path)) > 108
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    fd = os.open(folder, os.O_RDONLY)
    server.bind(f"/proc/self/fd/{fd}/admin.sock")
    os.close(fd)
    server.listen(1)
    received = []

    def answer():
        conn, _ = server.accept()
        received.append(conn.recv(1024))
        conn.sendall(b"Name: HAProxy\n")
        conn.close()

    thread = threading.Thread(target=answer)
    thread.start()
    try:
        assert haproxy.RuntimeAPI(path).ready()
    finally:
        thread.join(timeout=5)
        server.close()
    assert received == [b"show info\n"]


def test_https_binds_443_with_the_bundle_and_redirects_to_the_published_port():
    checks = haproxy.Checks(interval=0.5, rise=2, fall=3)
    text = haproxy.render_config([], port=80, health_path="/health", checks=checks, https=haproxy.Https(8443))
    lines = [line.strip() for line in text.splitlines()]
    assert "bind :443 ssl crt /run/haproxy/frontend.pem" in lines
    assert (
        "http-request redirect location https://%[req.hdr(host),field(1,:)]:8443%[capture.req.uri] "
        "code 301 unless { ssl_fc }"
    ) in lines
    on_443 = haproxy.render_config([], port=80, health_path="/", checks=checks, https=haproxy.Https(443))
    assert "https://%[req.hdr(host),field(1,:)]%[capture.req.uri]" in on_443
    quiet = haproxy.render_config(
        [], port=80, health_path="/", checks=checks, https=haproxy.Https(443, False)
    )
    assert "redirect" not in quiet and "ssl crt" in quiet
    assert "ssl" not in haproxy.render_config([], port=80, health_path="/", checks=checks)
