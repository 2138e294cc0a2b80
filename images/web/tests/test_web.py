"""web role: nginx on :80 proxies to gunicorn on loopback, which serves the baked version."""

import json
import os
import time

import pytest

HEALTH = (
    'python3 -c "import urllib.request as u; '
    "print(u.urlopen('http://127.0.0.1:{port}/health', timeout=2).read().decode())\""
)


def wait_for(host, command: str, seconds: float = 20.0) -> str:
    """The services start with the container: give them a moment, then report the last error."""
    deadline = time.monotonic() + seconds
    while True:
        result = host.run(command)
        if result.rc == 0 or time.monotonic() > deadline:
            assert result.rc == 0, f"{command!r} kept failing: {result.stderr.strip()[-300:]}"
            return result.stdout
        time.sleep(0.2)


@pytest.mark.parametrize("port", [80, 8000], ids=["through-nginx", "gunicorn-direct"])
def test_health_reports_the_baked_version(host, port):
    health = json.loads(wait_for(host, HEALTH.format(port=port)))
    assert health["status"] == "ok"
    assert (health["role"], health["version"]) == ("web", os.environ["KILN_VERIFY_VERSION"])


def test_gunicorn_runs_unprivileged_on_loopback_only(host):
    wait_for(host, HEALTH.format(port=8000))
    workers = host.process.filter(comm="gunicorn")
    assert workers and {p.user for p in workers} == {"kiln-web"}
    assert host.socket("tcp://127.0.0.1:8000").is_listening
    assert not host.socket("tcp://0.0.0.0:8000").is_listening


def test_nginx_config_valid_and_serving(host):
    assert host.run("nginx -t").rc == 0
    wait_for(host, HEALTH.format(port=80))
    assert host.socket("tcp://0.0.0.0:80").is_listening
