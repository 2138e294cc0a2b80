"""lb role: HAProxy's configuration passes its own check and HAProxy serves :80."""

import time


def test_haproxy_config_valid(host):
    result = host.run("haproxy -c -f /etc/haproxy/haproxy.cfg")
    assert result.rc == 0, result.stderr


def test_haproxy_listens_on_80(host):
    # HAProxy starts with the container: give it a moment.
    deadline = time.monotonic() + 20
    while not host.process.filter(comm="haproxy") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert host.process.filter(comm="haproxy")
    assert host.socket("tcp://0.0.0.0:80").is_listening


def test_haproxy_runtime_socket_root_only(host):
    socket = host.file("/run/haproxy/admin.sock")
    assert socket.is_socket and (socket.user, socket.mode) == ("root", 0o600)
