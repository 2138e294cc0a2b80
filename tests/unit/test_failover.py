"""A primary and its standby as user-data decides them (on the in-memory provider), and what a
failover report says may be lost."""

from __future__ import annotations

import re

import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from kiln import tls
from kiln.failover import FailoverReport, lost_window
from tests.unit.test_worker_rollout import WorkerRig


def db_env(user_data: str) -> dict[str, str]:
    block = user_data[user_data.index("path: /etc/kiln/db.env") :]
    return dict(re.findall(r"^\s+(KILN_DB_[A-Z_]+)=(.*)$", block.split("\n  - path:")[0], re.MULTILINE))


def web_db_host(user_data: str) -> str:
    return re.search(r"KILN_DB_HOST=(\S+)", user_data)[1]


def pair(tmp_path, project) -> WorkerRig:
    """web 1, db 2 on the in-memory provider; in a project copy, where the pair's CA is made."""
    return WorkerRig(tmp_path, instances={"web": 1, "db": 2}, project=project)


def test_db1_starts_as_the_primary_and_db2_as_its_standby_through_the_load_balancer(tmp_path, project):
    rig = pair(tmp_path, project)
    primary, standby = db_env(rig.provider.user_data["db1"]), db_env(rig.provider.user_data["db2"])
    assert "KILN_DB_PRIMARY" not in primary and primary["KILN_DB_REPLICATION_PASSWORD"]
    assert standby["KILN_DB_PRIMARY"] == "lb.fake"  # whichever instance the LB routes to
    assert standby["KILN_DB_INSTANCE"] == "db2"  # its name in the primary's pg_stat_replication
    assert standby["KILN_DB_REPLICATION_PASSWORD"] == primary["KILN_DB_REPLICATION_PASSWORD"]
    assert web_db_host(rig.provider.user_data["web1"]) == "lb.fake"


def test_db1_relaunched_beside_a_running_db2_comes_back_as_its_standby(tmp_path, project):
    rig = pair(tmp_path, project)
    engine = rig.engine()
    [db1] = [i for i in rig.provider.instances("db") if i.name == "db1"]
    engine.terminate(db1)  # what a failover does to the old primary
    engine.launch(1, rig.provider.image("db"), register=False)
    assert db_env(rig.provider.user_data["db1"])["KILN_DB_PRIMARY"] == "lb.fake"


def test_one_db_instance_is_reached_by_name_and_has_no_replication(tmp_path):
    rig = WorkerRig(tmp_path, instances={"web": 1, "db": 1})
    settings = db_env(rig.provider.user_data["db1"])
    assert settings["KILN_DB_NAME"] == "kiln"
    assert not {"KILN_DB_PRIMARY", "KILN_DB_REPLICATION_PASSWORD"} & set(settings)
    assert web_db_host(rig.provider.user_data["web1"]) == "db1.fake"


@pytest.mark.parametrize(
    ("state", "newest", "down", "window"),
    [
        ("stopped cleanly", 100.0, None, 0.0),  # all WAL reached the streaming standby
        ("dead", 100.0, 102.5, 2.5),
        ("dead", 100.0, 99.0, 0.0),  # HAProxy counts whole seconds: never negative
        ("dead", None, 102.5, None),  # nothing replayed yet: unknown, not zero
        ("dead", 100.0, None, None),  # the LB never saw it down
    ],
)
def test_the_lost_write_window(state, newest, down, window):
    assert lost_window(state, newest, down) == window


def test_the_report_says_lost_writes_in_one_line():
    base = dict(
        environment="shop", old_primary="db1", new_primary="db2", old_primary_state="dead",
        newest_saved_commit="2026-12-03T18:00:00.000+00:00", primary_down_since=None,
        fenced_seconds=0.4, promoted_seconds=0.9, repointed_seconds=1.1, at="2026-12-03T18:00:03Z",
    )  # fmt: skip
    assert FailoverReport(**base, lost_window_seconds=0.0).lost_writes() == "lost writes: none"
    assert FailoverReport(**base, lost_window_seconds=None).lost_writes().startswith("lost writes: unknown")
    assert (
        "in the 2.1 s after 2026-12-03T18:00:00.000+00:00"
        in FailoverReport(**base, lost_window_seconds=2.1).lost_writes()
    )


def written_file(user_data: str, path: str) -> tuple[dict, str]:
    """(the write_files entry, its content) from rendered user-data."""
    [entry] = [f for f in yaml.safe_load(user_data)["write_files"] if f["path"] == path]
    return entry, entry["content"]


def test_each_instance_of_a_pair_gets_a_certificate_its_peers_trust(tmp_path, project):
    """pgBackRest's TLS server on each db instance: its certificate from the environment's CA names
    the instance as its peers reach it, serves and authenticates (a standby's backup is its client),
    and the key is the postgres account's alone; every db instance of the pair is allowed in."""
    rig = pair(tmp_path, project)
    ca = tls.authority(rig.settings, rig.env.name)
    for name in ("db1", "db2"):
        user_data = rig.provider.user_data[name]
        _, pem = written_file(user_data, "/etc/kiln/tls/instance.pem")
        certificate = x509.load_pem_x509_certificate(pem.encode())
        certificate.verify_directly_issued_by(ca.certificate)
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert names.get_values_for_type(x509.DNSName) == [name, f"{name}.fake", "lb.fake"]  # as reached
        usages = set(certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
        assert usages == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
        key_entry, _ = written_file(user_data, "/etc/kiln/tls/instance.key")
        assert (key_entry["owner"], key_entry["permissions"]) == ("postgres:postgres", "0600")
        _, server = written_file(user_data, "/etc/pgbackrest/conf.d/server.conf")
        assert re.findall(r"^tls-server-auth=(\S+)$", server, re.MULTILINE) == ["db1=main", "db2=main"]
    lone = WorkerRig(tmp_path / "lone", instances={"db": 1}, project=project)
    assert "/etc/kiln/tls/instance.pem" not in lone.provider.user_data["db1"]


def test_internal_tls_makes_the_database_take_tls_logins_the_app_verifies(tmp_path, project):
    """internal_tls: the db instance serves its certificate (naming every address it is reached
    by) and refuses plaintext logins from the network; the app verifies it against the CA."""
    rig = WorkerRig(tmp_path, instances={"web": 1, "db": 1}, project=project, settings={"internal_tls": True})
    ca = tls.authority(rig.settings, rig.env.name)
    db, web = rig.provider.user_data["db1"], rig.provider.user_data["web1"]
    assert db_env(db)["KILN_DB_TLS"] == "required"  # kiln-db-tls makes pg_hba's network lines hostssl
    _, conf = written_file(db, "/etc/postgresql/15/main/conf.d/90-kiln-tls.conf")
    assert "ssl = on" in conf and "ssl_key_file = '/etc/kiln/tls/instance.key'" in conf
    _, pem = written_file(db, "/etc/kiln/tls/instance.pem")
    certificate = x509.load_pem_x509_certificate(pem.encode())
    certificate.verify_directly_issued_by(ca.certificate)
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert web_db_host(web) in names.get_values_for_type(x509.DNSName)  # verify-full checks it
    assert "/etc/pgbackrest/conf.d/server.conf" not in db  # no pair: no pgBackRest server
    assert re.search(r"KILN_DB_SSLMODE=verify-full\s+KILN_DB_SSLROOTCERT=/etc/kiln/tls/ca.pem", web)
    assert written_file(web, "/etc/kiln/tls/ca.pem")[1] == ca.pem.decode()

    plain = WorkerRig(tmp_path / "plain", instances={"web": 1, "db": 1}, project=project)
    assert "KILN_DB_SSLMODE" not in plain.provider.user_data["web1"]
    assert "KILN_DB_TLS" not in plain.provider.user_data["db1"]


def test_internal_tls_gives_balanced_instances_a_certificate_the_load_balancer_checks(tmp_path, project):
    """internal_tls: a web instance serves HTTPS with a certificate from the environment's CA that
    names it (HAProxy's verifyhost), its key root's alone, and refuses plain HTTP from the network;
    a worker, which nothing connects to, gets the CA only."""
    rig = WorkerRig(
        tmp_path, instances={"web": 1, "worker": 1, "db": 1}, project=project, settings={"internal_tls": True}
    )
    ca = tls.authority(rig.settings, rig.env.name)
    web = rig.provider.user_data["web1"]
    _, pem = written_file(web, "/etc/kiln/tls/instance.pem")
    certificate = x509.load_pem_x509_certificate(pem.encode())
    certificate.verify_directly_issued_by(ca.certificate)
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["web1", "web1.fake"]
    key_entry, _ = written_file(web, "/etc/kiln/tls/instance.key")
    assert (key_entry["owner"], key_entry["permissions"]) == ("root:root", "0600")
    _, site = written_file(web, "/etc/nginx/kiln-site.d/internal-tls.conf")
    assert "listen 443 ssl;" in site and "ssl_certificate_key /etc/kiln/tls/instance.key;" in site
    assert "return 403;" in site  # plain HTTP from anywhere but loopback
    worker = rig.provider.user_data["worker1"]
    assert "/etc/kiln/tls/instance.pem" not in worker and written_file(worker, "/etc/kiln/tls/ca.pem")
    plain = WorkerRig(tmp_path / "plain", instances={"web": 1, "db": 1}, project=project)
    assert "/etc/kiln/tls/instance.pem" not in plain.provider.user_data["web1"]
    assert "kiln-site.d" not in plain.provider.user_data["web1"]
