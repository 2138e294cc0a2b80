"""web role: nginx on :80 proxies to gunicorn on loopback, which serves the baked version."""

import json
import os
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

FETCH = (
    'python3 -c "import urllib.request as u; '
    "print(u.urlopen('http://127.0.0.1:{port}{path}', timeout=2).read().decode())\""
)
HEALTH = FETCH.replace("{path}", "/health")


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


def test_metrics_parse_as_prometheus_exposition_format(host):
    """What a Prometheus server scrapes through nginx: the reference parser reads every family."""
    wait_for(host, HEALTH.format(port=80))
    families = {
        f.name: f
        for f in text_string_to_metric_families(wait_for(host, FETCH.format(port=80, path="/metrics")))
    }
    info = families["kiln_app_info"]
    assert info.type == "gauge" and [s.labels for s in info.samples] == [
        {"role": "web", "version": os.environ["KILN_VERIFY_VERSION"]}
    ]
    requests = families["kiln_http_requests"]  # the parser names a counter without its _total
    assert requests.type == "counter"
    assert any(
        s.name == "kiln_http_requests_total" and s.labels == {"path": "/metrics"} and s.value >= 1
        for s in requests.samples
    ), "the worker did not count the scrape itself"
