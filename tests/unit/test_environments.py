"""environments/<env>.yml: the shipped files load; bad input gives one line naming file and field."""

from pathlib import Path

import pytest
import yaml

from kiln import cloudinit, environments
from kiln.errors import KilnError
from kiln.settings import Settings

REPO = Path(__file__).resolve().parents[2]
GOOD = """
provider: local
zones: [a, b, c]
instances: {web: 4, db: 1}
frontend: {port: 8480}
"""


@pytest.fixture
def project(tmp_path: Path) -> Settings:
    (tmp_path / "environments").mkdir()
    return Settings(project_root=tmp_path, state_dir=tmp_path / ".kiln")


def write(settings: Settings, text: str, name: str = "t") -> None:
    (settings.project_root / "environments" / f"{name}.yml").write_text(text)


@pytest.mark.parametrize("name", ["local", "staging", "prod"])
def test_shipped_environments_load(name):
    env = environments.load(Settings(project_root=REPO), name)
    assert env.spec.instances["web"] >= 3 and len(env.zones) == 3


@pytest.mark.parametrize("name", ["cve-alerts", "fintech", "nonprofit", "saas", "weblab"])
def test_the_seed_teams_environments_load_and_render_every_roles_user_data(name):
    """Each team's setup in the README is a file Kiln deploys: it passes every rule across fields
    (a provider's refusals included) and each role's cloud-init template renders for it."""
    settings = Settings(project_root=REPO)
    env = environments.load(settings, name)
    for role in sorted(r for r, n in env.spec.instances.items() if n):
        variables = {
            "environment": name, "zone": env.zones[0], "zone_index": 0, "instance": f"{role}1",
            "role": role, "version": "0" * 12, "app": env.spec.app, "replication": None, "tls": None,
            "db": {"host": "db", "port": 5432, "name": "kiln", "user": "kiln", "password": "x"},
            "syslog": environments.syslog_variables(settings, env),
        }  # fmt: skip
        assert yaml.safe_load(cloudinit.render(settings, role, variables))["write_files"]


def test_prod_is_protected_and_pauses_after_the_first_zone():
    prod = environments.load(Settings(project_root=REPO), "prod")
    assert prod.spec.protected and prod.spec.rollout.stop_after_first_zone


def test_defaults_and_zone_arithmetic(project):
    write(project, GOOD)
    env = environments.load(project, "t")
    assert (env.spec.health.path, env.spec.health.rise, env.spec.rollout.max_surge) == ("/health", 2, 1)
    # web1 and web4 share zone b (number modulo 3), web2 is in c, web3 in a.
    assert [env.zone_count("web", z) for z in range(3)] == [1, 2, 1]
    assert env.zones[env.zone_of(4)] == "b"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            "rollout: {max_surj: 1}",
            r"environments/t.yml: field 'rollout.max_surj': unknown field; did you mean 'max_surge'\?",
        ),
        ("health: {rise: two}", r"field 'health.rise': expected an integer, got str 'two'"),
        ("health: {rise: 0}", r"field 'health.rise': 0 is too small: use 1 or more$"),
        ("health: {interval: 0}", r"field 'health.interval': 0 is too small: use more than 0$"),
        (
            "health: {path: health}",
            r"field 'health.path': 'health' must be an absolute path, starting with '/'",
        ),
        (
            "rollout: {max_surge: 0, max_unavailable: 0}",
            r"field 'rollout.max_surge': max_surge \+ max_unavailable",
        ),
        ("rollout: {drain_timeout: -1}", r"field 'rollout.drain_timeout': -1 is too small: use 0 or more$"),
        ("rollout: {canary: -1}", r"field 'rollout.canary': -1 is too small: use 0 or more$"),
        (
            "backup: {repository: s4}",
            r"field 'backup.repository': 's4' is not one of volume, s3; did you mean 's3'\?$",
        ),
        ("backup: {process_max: 0}", r"field 'backup.process_max': 0 is out of range: use 1 to 999$"),
        ("backup: {s3: {bucket: b, endpoint: e, uri_style: vhost}}", r"field 'backup.s3.uri_style': 'vhost'"),
        ("balanced_role: api", r"field 'balanced_role': 'api' has no entry in 'instances'"),
    ],
)
def test_bad_fields_name_file_and_field(project, extra, message):
    write(project, GOOD + extra + "\n")
    with pytest.raises(KilnError, match=message):
        environments.load(project, "t")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            GOOD.replace("local", "gce"),
            r"field 'provider': 'gce' is not one of local, qemu, aws, openstack$",
        ),
        (GOOD.replace("[a, b, c]", "[]"), r"field 'zones': list at least one zone"),
        (GOOD.replace("[a, b, c]", "[a, a]"), r"field 'zones': zone names must be unique"),
        (
            GOOD.replace("[a, b, c]", "[a, B]"),
            r"field 'zones\[1\]': 'B' must be lower-case letters, digits and '-'",
        ),
        (GOOD.replace("web: 4", "web: -1"), r"field 'instances.web': -1 is too small: use 0 or more$"),
        (GOOD.replace("8480", "70000"), r"field 'frontend.port': 70000 is out of range: use 0 to 65535$"),
        (GOOD.replace("frontend: {port: 8480}\n", ""), r"field 'frontend': required field is missing"),
        (
            GOOD.replace("{port: 8480}", "{port: 8480, home_zone: d}"),
            r"field 'frontend.home_zone': 'd' is not one of the zones: a, b, c$",
        ),
        (
            GOOD.replace("local", "aws").replace("{port: 8480}", "{port: 8480, home_zone: a}"),
            r"field 'frontend.home_zone': the aws provider's load balancer does not route by zone; "
            r"remove it$",
        ),
        (
            GOOD.replace("local", "openstack").replace("db: 1", "db: 2"),
            r"field 'instances.db': a standby needs a load balancer that follows the primary, which "
            r"the openstack provider does not build yet; use 1$",
        ),
        (GOOD + "health: {slowstart: -1}\n", r"field 'health.slowstart': -1 is too small: use 0 or more$"),
        (GOOD + "syslog: {port: 514}\n", r"field 'syslog.host': required field is missing"),
        (  # a quote would end rsyslog's target string: only names and addresses pass
            GOOD + "syslog: {host: 'logs\" x'}\n",
            r"field 'syslog.host': 'logs\" x' must be a host name or an IP address$",
        ),
        (
            GOOD + "syslog: {host: logs, protocol: tcps}\n",
            r"field 'syslog.protocol': 'tcps' is not one of tcp, tls, udp",
        ),
        (
            GOOD + "syslog: {host: logs, protocol: tls}\n",
            r"field 'syslog.ca_file': name the PEM file of the log host's CA \(protocol tls\)$",
        ),
        (
            GOOD + "syslog: {host: logs, ca_file: ca.pem}\n",
            r"field 'syslog.ca_file': remove it, or use tls \(protocol tcp\)$",
        ),
        (
            GOOD + "syslog: {host: logs, protocol: tls, ca_file: missing.pem}\n",
            r"field 'syslog.ca_file': cannot read missing.pem: No such file or directory$",
        ),
        (
            GOOD + "syslog: {host: logs, protocol: tls, ca_file: environments/t.yml}\n",
            r"field 'syslog.ca_file': environments/t.yml holds no PEM certificate",
        ),
        (GOOD + "syslog: {host: logs, port: 0}\n", r"field 'syslog.port': 0 is out of range: use 1 to 65535"),
        (
            GOOD.replace("{port: 8480}", "{port: 8480, tls: {names: [localhost]}}"),
            r"field 'frontend.tls.port': required field is missing",
        ),
        (
            GOOD.replace("{port: 8480}", "{port: 8480, tls: {port: 8480}}"),
            r"field 'frontend.tls.port': 8480 is frontend.port too: give HTTPS a port of its own$",
        ),
        (
            GOOD.replace("{port: 8480}", "{port: 8480, tls: {port: 8443, names: []}}"),
            r"field 'frontend.tls.names': list at least one host name or address",
        ),
        (
            GOOD.replace("{port: 8480}", "{port: 8480, tls: {port: 8443, days: 3650}}"),
            r"field 'frontend.tls.days': 3650 is out of range: use 1 to 825",
        ),
    ],
)
def test_bad_values_name_the_field(project, text, message):
    write(project, text)
    with pytest.raises(KilnError, match=message):
        environments.load(project, "t")


@pytest.mark.parametrize("provider", ["local", "qemu", "aws", "openstack"])
def test_every_provider_takes_frontend_tls(project, provider):
    write(project, GOOD.replace("local", provider).replace("{port: 8480}", "{port: 8480, tls: {port: 8443}}"))
    assert environments.load(project, "t").spec.frontend.tls.port == 8443


def test_frontend_tls_is_refused_where_the_load_balancer_serves_no_https(project, monkeypatch):
    """No registered provider lacks it now; a provider class that does not set terminates_tls
    (the base class's default) is refused, not silently served plain HTTP."""
    from kiln.providers.aws import AwsProvider

    monkeypatch.setattr(AwsProvider, "terminates_tls", False)
    write(project, GOOD.replace("local", "aws").replace("{port: 8480}", "{port: 8480, tls: {port: 443}}"))
    with pytest.raises(
        KilnError, match=r"field 'frontend.tls': the aws provider's .* does not serve HTTPS; remove it$"
    ):
        environments.load(project, "t")


def test_unknown_environment_lists_the_known_ones(project):
    write(project, GOOD, "dev")
    with pytest.raises(KilnError, match=r"unknown environment 'qa'; known environments: dev\. To add one"):
        environments.load(project, "qa")


def test_malformed_yaml_names_the_line(project):
    write(project, "provider: local\nzones: [a\n")
    with pytest.raises(KilnError, match=r"environments/t.yml: line \d+, column \d+: malformed YAML"):
        environments.load(project, "t")


def test_a_maintenance_page_must_be_a_project_file_haproxy_can_hold(project):
    page = GOOD.replace("{port: 8480}", "{port: 8480, maintenance_page: pages/down.html}")
    write(project, page)
    with pytest.raises(KilnError, match=r"field 'frontend.maintenance_page': no file pages/down.html in the"):
        environments.load(project, "t")
    (project.project_root / "pages").mkdir()
    (project.project_root / "pages" / "down.html").write_text("x" * 9000)
    with pytest.raises(KilnError, match=r"pages/down.html is 9000 bytes; HAProxy serves at most 8192$"):
        environments.load(project, "t")
    (project.project_root / "pages" / "down.html").write_text("<p>back at six</p>")
    env = environments.load(project, "t")
    assert environments.maintenance_page(project, env.spec) == "<p>back at six</p>"
    write(project, GOOD)
    default = environments.maintenance_page(project, environments.load(project, "t").spec)
    assert "Down for maintenance" in default
