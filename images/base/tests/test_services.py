"""Declared services (role.yml `services:` of every role in the chain): each is a systemd unit,
enabled, for a VM, and each long-running one is up and ready under the instance's init (kiln-init
in a container, systemd on a VM), checked by the readiness probe systemd runs too."""

import json
import os

from prometheus_client.parser import text_string_to_metric_families

ROLE = os.environ.get("KILN_VERIFY_ROLE", "")
UNITS = "/etc/systemd/system"
WANTED = f"{UNITS}/multi-user.target.wants"


def declared(host) -> list[dict]:
    listing = host.check_output("ls /etc/kiln/services/").split()
    return [
        s
        for name in sorted(listing)
        for s in json.loads(host.file(f"/etc/kiln/services/{name}").content_string)["services"]
    ]


def unit_of(service: dict) -> str:
    return service["unit"] or f"kiln-{service['name']}.service"


def test_every_role_of_the_chain_declared_its_services(host):
    roles = [
        json.loads(host.file(f"/etc/kiln/services/{n}").content_string)["role"]
        for n in sorted(host.check_output("ls /etc/kiln/services/").split())
    ]
    assert roles[0] == "base" and roles[-1] == ROLE


def test_units_exist_and_are_enabled(host):
    for service in declared(host):
        unit = unit_of(service)
        wanted = host.file(f"{WANTED}/{unit}")
        assert wanted.is_symlink, f"{unit} is not enabled"
        assert host.file(wanted.linked_to).is_file, f"{unit} is enabled but {wanted.linked_to} is missing"
        policy = host.file(f"{UNITS}/{unit}.d/kiln.conf" if service["unit"] else f"{UNITS}/{unit}")
        assert policy.contains("^NoNewPrivileges=yes$"), f"{unit}: no hardening from the declaration"
        if not service["oneshot"]:
            assert policy.contains(f"^Restart={service['restart']}$"), f"{unit}: restart policy missing"
            assert policy.contains(f"^TimeoutStopSec={service['stop_timeout']}$")


def test_long_running_services_are_ready(host):
    """The readiness probe systemd runs as ExecStartPost, against the live instance."""
    for service in declared(host):
        if service["oneshot"] or not service["readiness"]:
            continue
        condition = service["condition"]
        if condition and host.run(condition).rc != 0:
            continue  # held by its condition (e.g. a db kept down for a restore)
        # It polls for up to the service's readiness timeout itself.
        probe = host.run(f"/usr/local/sbin/kiln-services ready {service['name']}")
        assert probe.rc == 0, f"{service['name']} not ready: {probe.stderr.strip()[-200:]}"


def test_node_metrics_parse_as_prometheus_exposition_format(host):
    """Every instance serves its host's metrics (base's node-exporter service): what a Prometheus
    server scrapes on port 9100, read by the reference parser, with the node's own families."""
    probe = host.run("/usr/local/sbin/kiln-services ready node-exporter")  # waits up to its timeout
    assert probe.rc == 0, f"node-exporter not ready: {probe.stderr.strip()[-200:]}"
    page = host.check_output(
        'python3 -c "import urllib.request as u; '
        "print(u.urlopen('http://127.0.0.1:9100/metrics', timeout=10).read().decode())\""
    )
    families = {f.name: f for f in text_string_to_metric_families(page)}
    assert families["node_cpu_seconds"].type == "counter"  # the parser drops a counter's _total
    assert families["node_memory_MemTotal_bytes"].samples[0].value > 0
    assert families["node_load1"].type == "gauge"
    processes = host.process.filter(comm="prometheus-node")  # comm is cut at 15 characters
    assert processes and {p.user for p in processes} == {"prometheus"}
