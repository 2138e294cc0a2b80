"""User-data templates render per instance; template mistakes are one line naming the file."""

import json
from pathlib import Path

import pytest
import yaml

from kiln import cloudinit
from kiln.errors import KilnError
from kiln.settings import Settings

REPO = Path(__file__).resolve().parents[2]
VARIABLES = {
    "environment": "local", "zone": "z1", "zone_index": 1, "instance": "web4", "role": "web",
    "version": "abc123def456", "db": None, "app": {"greeting": "hi"}, "syslog": None, "replication": None,
    "tls": None,
}  # fmt: skip
FORWARD = "/etc/rsyslog.d/90-kiln-forward.conf"


def files_of(text: str) -> dict[str, dict]:
    assert text.startswith("#cloud-config\n")
    return {f["path"]: f for f in yaml.safe_load(text)["write_files"]}


def test_web_user_data_names_the_instance():
    text = cloudinit.render(Settings(project_root=REPO), "web", VARIABLES)
    files = files_of(text)
    instance = json.loads(files["/etc/kiln/instance.json"]["content"])
    assert instance == {
        "environment": "local", "zone": "z1", "instance": "web4", "role": "web",
        "version": "abc123def456", "app": {"greeting": "hi"},
    }  # fmt: skip
    assert "/etc/kiln/web.env" not in files  # no database in this environment


def test_web_user_data_carries_the_database_login_readable_by_the_app_only():
    db = {"host": "kiln-local-db1", "port": 5432, "name": "kiln", "user": "kiln", "password": "s3cret"}
    files = files_of(cloudinit.render(Settings(project_root=REPO), "web", {**VARIABLES, "db": db}))
    env = files["/etc/kiln/web.env"]
    assert (env["owner"], env["permissions"]) == ("root:kiln-web", "0640")
    assert "KILN_DB_HOST=kiln-local-db1\n" in env["content"] and "KILN_DB_PASSWORD=s3cret\n" in env["content"]


@pytest.mark.parametrize("role", ["web", "db", "lb", "worker"])
def test_every_role_template_renders(role):
    db = {"host": "h", "port": 5432, "name": "kiln", "user": "kiln", "password": "p"}
    files = files_of(
        cloudinit.render(Settings(project_root=REPO), role, {**VARIABLES, "role": role, "db": db})
    )
    assert json.loads(files["/etc/kiln/instance.json"]["content"])["role"] == role


@pytest.fixture
def project(tmp_path: Path) -> Settings:
    (tmp_path / "cloud-init").mkdir()
    return Settings(project_root=tmp_path)


def test_undefined_variable_names_the_template_and_the_known_ones(project):
    (project.project_root / "cloud-init" / "web.yml.j2").write_text("#cloud-config\nzone: {{ zon }}\n")
    with pytest.raises(
        KilnError, match=r"cloud-init/web.yml.j2: 'zon' is undefined; the variables are: app, db"
    ):
        cloudinit.render(project, "web", VARIABLES)


def test_syntax_error_names_the_line(project):
    (project.project_root / "cloud-init" / "web.yml.j2").write_text("#cloud-config\n\n{% if x %}\n")
    with pytest.raises(KilnError, match=r"cloud-init/web.yml.j2: line \d: Unexpected end of template"):
        cloudinit.render(project, "web", VARIABLES)


def test_missing_template_says_which(project):
    with pytest.raises(KilnError, match=r"cloud-init/web.yml.j2: no such template"):
        cloudinit.render(project, "web", VARIABLES)


@pytest.mark.parametrize("role", ["web", "db", "lb", "worker"])
def test_every_role_forwards_its_syslog_only_when_the_environment_names_a_log_host(role):
    db = {"host": "h", "port": 5432, "name": "kiln", "user": "kiln", "password": "p"}
    variables = {**VARIABLES, "role": role, "db": db}
    quiet = yaml.safe_load(cloudinit.render(Settings(project_root=REPO), role, variables))
    assert FORWARD not in {f["path"] for f in quiet["write_files"]} and "runcmd" not in quiet

    syslog = {"host": "logs.example.org", "port": 6514, "protocol": "udp"}
    text = cloudinit.render(Settings(project_root=REPO), role, {**variables, "syslog": syslog})
    forward = files_of(text)[FORWARD]
    assert 'target="logs.example.org" port="6514" protocol="udp"' in forward["content"]
    assert forward["content"].startswith('*.* action(type="omfwd"')  # every facility and level
    # A VM's rsyslog reads it again; the guard keeps a container (no systemd) from failing cloud-init.
    assert "systemctl try-restart rsyslog.service" in yaml.safe_load(text)["runcmd"][0][2]


def test_syslog_over_tls_checks_the_log_hosts_certificate_and_name():
    ca = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    syslog = {"host": "logs.example.org", "port": 6514, "protocol": "tls", "ca_file": "ca.pem", "ca": ca}
    text = cloudinit.render(Settings(project_root=REPO), "web", {**VARIABLES, "syslog": syslog})
    written = files_of(text)
    assert written["/etc/kiln/syslog-ca.pem"]["content"] == ca
    forward = " ".join(written[FORWARD]["content"].split())
    assert 'global(DefaultNetstreamDriverCAFile="/etc/kiln/syslog-ca.pem")' in forward
    assert (
        'protocol="tcp" StreamDriver="gtls" StreamDriverMode="1" StreamDriverAuthMode="x509/name"' in forward
    )
    assert 'StreamDriverPermittedPeers="logs.example.org"' in forward
