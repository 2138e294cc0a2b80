"""Backups and DR drills on real PostgreSQL, pgBackRest and restic in containers of this run.

One source environment (`kiln-bk<pid>`: db and web from the session's images, small data) is
backed up once; each test then runs a drill, and each fault test breaks one thing first and
repairs it in a finalizer. Everything is named kiln-bk<pid>* or kiln-dr-<drill id>* (found
through the drill reports) and removed at the end, volumes included, even when tests fail.
"""

from __future__ import annotations

import datetime
import json
import os
import time
from pathlib import Path

import pytest

from kiln.backup import containers
from kiln.backup.secrets import ensure_secrets, secret
from kiln.drill import http
from kiln.polling import wait_for_service
from kiln.settings import Settings

pytestmark = pytest.mark.integration


class Source:
    def __init__(self, kiln, env: str, found: containers.Site, client):
        self.kiln, self.env, self.site, self.client = kiln, env, found, client

    @property
    def db(self):
        return self.site.db

    @property
    def url(self) -> str:
        return f"http://{containers.address(self.site.web[0])}"

    def sql(self, statement: str, database: str = containers.DB_NAME) -> str:
        code, out = self.db.exec_run(
            ["psql", "-X", "-qAt", "-v", "ON_ERROR_STOP=1", "-d", database, "-c", statement], user="postgres"
        )
        assert code == 0, out.decode()
        return out.decode().strip()

    def root(self, script: str) -> str:
        code, out = self.db.exec_run(["sh", "-c", script])
        assert code == 0, out.decode()
        return out.decode().strip()

    def post(self, customer: str) -> int:
        code, body = http(
            self.url + "/records", "POST", json.dumps({"customer": customer, "amount": 5}).encode()
        )
        assert code == 201, body
        return json.loads(body)["id"]

    def drill(self, *args: str, env: dict[str, str] | None = None):
        proc = self.kiln.invoke("dr-drill", self.env, *args, check=False, timeout=600, env=env)
        reports = sorted((self.kiln.project / ".kiln" / "drills" / self.env).glob("*.json"))
        report = json.loads(reports[-1].read_text()) if reports else None
        return proc, report


def start_site(kiln, client, env: str, images: dict[str, str]) -> containers.Site:
    settings = Settings(project_root=kiln.project)
    ensure_secrets(settings, env)
    found = containers.create_site(
        client,
        env,
        db_image=images["db"],
        web_image=images["web"],
        password=secret(settings, env, "KILN_DB_PASSWORD"),
    )
    wait_for_service(lambda: containers.db_ready(found.db), f"{env} db", 60)
    url = f"http://{containers.address(found.web[0])}/health"
    wait_for_service(lambda: http(url)[0] == 200 and b'"database": "ok"' in http(url)[1], f"{env} web", 60)
    return found


def remove_env(client, project: Path, env: str) -> None:
    """The environment, the DR environments its drills kept or left behind, and its repositories."""
    for report in (project / ".kiln" / "drills" / env).glob("*.json"):
        containers.remove_site(client, f"kiln.env={json.loads(report.read_text())['dr_env']}")
    containers.remove_site(client, f"kiln.env={env}")
    for volume in containers.repo_volumes(env).values():
        for found in client.volumes.list(filters={"name": volume}):
            if found.name == volume:
                found.remove(force=True)


@pytest.fixture(scope="module")
def images(kiln, baked_web) -> dict[str, str]:
    versions = dict(
        line.split("\t")[:2] for line in kiln.invoke("bake", "db").stdout.splitlines() if "\t" in line
    )
    return {"db": f"{kiln.prefix}/db:{versions['db']}", "web": f"{kiln.prefix}/web:{baked_web['web']}"}


@pytest.fixture(scope="module")
def source(kiln, images, docker_client):
    env = f"bk{os.getpid()}"
    try:
        found = start_site(kiln, docker_client, env, images)
        src = Source(kiln, env, found, docker_client)
        print(kiln.invoke("load-data", env, "--mb", "3").stdout)
        src.first_backup = kiln.invoke("backup", env).stdout
        yield src
    finally:
        remove_env(docker_client, kiln.project, env)


def failure_causes(report: dict) -> list[str]:
    return [check["cause"] for check in report["checks"] if not check["ok"]]


def test_backup_then_drill_is_green_on_real_data(source):
    lines = [line.split("\t") for line in source.first_backup.splitlines()]
    assert [(tool, kind) for tool, kind, *_ in lines] == [("pgbackrest", "full"), ("restic", "snapshot")]
    source.post("after the full backup")
    assert "pgbackrest\tincr" in source.kiln.invoke("backup", source.env, "--type", "incr").stdout

    listing = json.loads(source.kiln.invoke("backups", source.env, "--json").stdout)
    assert [(r["tool"], r["kind"]) for r in listing] == [
        ("pgbackrest", "full"),
        ("pgbackrest", "incr"),
        ("restic", "snapshot"),
        ("restic", "snapshot"),
    ]
    assert all(r["size"] > 0 and r["age_seconds"] >= 0 for r in listing)

    proc, report = source.drill()
    assert proc.returncode == 0, proc.stderr
    assert report["ok"] and report["failures"] == []
    names = [c["name"] for c in report["checks"]]
    for step in ("restore", "smoke test", "verify backups", "pg_amcheck", "tables", "files", "certificates"):
        assert step in names
    records = int(source.sql("SELECT count(*) FROM records"))
    assert report["counts"]["records"] == records >= 10  # without the smoke test's own record
    assert report["counts"]["files"] >= 1
    assert report["rto_seconds"] > 0 and report["rpo_seconds"] is not None
    assert report["backups"]["pgbackrest"].endswith("I")  # the incremental was the newest
    assert not source.client.containers.list(all=True, filters={"label": f"kiln.env={report['dr_env']}"})
    assert not (source.kiln.project / ".kiln" / "envs" / report["dr_env"]).exists()  # nor its keys

    history = json.loads(source.kiln.invoke("drills", "--json").stdout)
    assert report["id"] in [r["id"] for r in history]
    chart = (source.kiln.project / ".kiln" / "drills" / "chart.svg").read_text()
    assert chart.startswith("<svg") and report["id"] in chart


def test_point_in_time_restore_lands_on_the_requested_time(source):
    before = source.post("before the target time")
    time.sleep(1.5)
    target = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    time.sleep(1.5)
    after = source.post("after the target time")
    proc, report = source.drill("--target-time", target, "--keep")
    dr_db = f"kiln-{report['dr_env']}-db1" if report else None
    try:
        assert proc.returncode == 0, proc.stderr
        assert report["target_time"] == target and report["kept"]
        code, out = source.client.containers.get(dr_db).exec_run(
            [
                "psql",
                "-X",
                "-qAt",
                "-d",
                containers.DB_NAME,
                "-c",
                f"SELECT id FROM records WHERE id IN ({before}, {after}) ORDER BY id",
            ],
            user="postgres",
        )
        assert code == 0 and out.decode().split() == [str(before)]
    finally:
        if report:
            containers.remove_site(source.client, f"kiln.env={report['dr_env']}")


def test_a_wrong_key_fails_the_drill_and_is_named(source):
    proc, report = source.drill(env={"KILN_BACKUP_KEY": "not-the-key-0123456789abcdef"})
    assert proc.returncode == 1
    assert "wrong-key" in proc.stderr
    assert failure_causes(report) == ["wrong-key"]
    assert "not-the-key-0123456789abcdef" not in proc.stdout + proc.stderr + json.dumps(report)


def test_a_corrupted_backup_file_fails_the_drill(source):
    target = source.root("ls -S /var/lib/pgbackrest/backup/main/*F/pg_data/base/*/* | head -1")
    source.root(
        f"cp -p {target} /tmp/kiln-original && "
        f"printf 'corrupted-corrupted' | dd of={target} bs=1 seek=64 conv=notrunc 2>/dev/null"
    )
    try:
        proc, report = source.drill()
        assert proc.returncode == 1
        assert "corrupt-backup" in failure_causes(report), report["failures"]
        assert Path(target).name in json.dumps(report["failures"])
    finally:
        source.root(f"cp -p /tmp/kiln-original {target}")


def test_a_missing_wal_segment_fails_the_drill(source):
    for _ in range(3):  # three segments archived after the newest backup
        source.post("wal filler")
        source.sql("SELECT pg_switch_wal()")
    source.db.exec_run(["pgbackrest", "--stanza=main", "check"], user="postgres")
    listing = source.root("ls /var/lib/pgbackrest/archive/main/*/*/ | grep -v -e history -e backup | sort")
    victim = listing.splitlines()[-2]
    path = source.root(f"ls /var/lib/pgbackrest/archive/main/*/*/{victim}")
    source.root(f"mv {path} /tmp/kiln-wal")
    try:
        proc, report = source.drill()
        assert proc.returncode == 1
        assert failure_causes(report) == ["missing-wal"]
        assert victim[:24] in json.dumps(report["failures"])
    finally:
        source.root(f"mv /tmp/kiln-wal {path}")


def test_a_table_that_restores_differently_fails_the_drill(source):
    # Unlogged tables are not in WAL: a restore brings them back empty, a real DR trap.
    source.sql(
        "CREATE UNLOGGED TABLE sessions AS SELECT g AS id, md5(g::text) AS token "
        "FROM generate_series(1, 50) g"
    )
    try:
        proc, report = source.drill()
        assert proc.returncode == 1
        assert failure_causes(report) == ["checksum-mismatch"]
        assert "kiln:public.sessions: 0 rows restored, 50 in the source" in json.dumps(report["failures"])
    finally:
        source.sql("DROP TABLE sessions")


def test_an_empty_repository_fails_the_drill(kiln, images, docker_client):
    env = f"bk{os.getpid()}e"
    try:
        found = start_site(kiln, docker_client, env, images)
        proc, report = Source(kiln, env, found, docker_client).drill()
        assert proc.returncode == 1
        assert failure_causes(report) == ["repository-missing"]
    finally:
        remove_env(docker_client, kiln.project, env)
