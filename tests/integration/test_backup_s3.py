"""Backups on S3: real pgBackRest and restic in containers of this run, moto's S3 server over TLS.

One environment (`kiln-s3<pid>`, db and web, a little data) backs up to a bucket of an S3
server the test starts (tests/s3server.py: TLS from a CA made for the run, handed to the tools;
reached on the gateway of the environment's network): a backup and a drill restoring from the
bucket; retention counted in the bucket. Everything is removed at the end, even on failure.
"""

from __future__ import annotations

import os
import re

import pytest
import yaml

from kiln import secrets as sealed
from kiln.backup.secrets import secret
from kiln.settings import Settings
from tests.integration.test_backup_drill import Source, images, remove_env, start_site  # noqa: F401
from tests.s3server import S3Server

pytestmark = pytest.mark.integration

PGBACKREST, RESTIC = "kiln/", "kiln-restic/"
S3_KEY_ID, S3_KEY_SECRET = f"kilntest-s3-id-{os.getpid()}", f"kilntest-s3-secret-{os.getpid()}-never-shown"


@pytest.fixture(scope="module")
def offsite(kiln, images, docker_client, tmp_path_factory):  # noqa: F811
    env = f"s3{os.getpid()}"
    server = None
    try:
        found = start_site(kiln, docker_client, env, images)
        gateway = docker_client.networks.get(f"kiln-{env}-z0").attrs["IPAM"]["Config"][0]["Gateway"]
        server = S3Server(gateway, tmp_path_factory.mktemp("s3"), f"kilntest{os.getpid()}-backups")
        spec = {
            "provider": "local",
            "zones": ["z0"],
            "instances": {"db": 1, "web": 1},
            "frontend": {"port": 0},
            "backup": {
                "repository": "s3",
                "retention": {"full": 2, "keep_last": 2, "keep_daily": 0},
                "s3": {"endpoint": server.endpoint, "bucket": server.bucket, "uri_style": "path",
                       "ca_file": str(server.ca)},
            },
        }  # fmt: skip
        (kiln.project / "environments").mkdir(exist_ok=True)
        (kiln.project / "environments" / f"{env}.yml").write_text(yaml.safe_dump(spec))
        settings = Settings(project_root=kiln.project)
        values = sealed.read(settings, env)
        sealed.write(settings, env, {**values, "KILN_S3_KEY": S3_KEY_ID, "KILN_S3_KEY_SECRET": S3_KEY_SECRET})
        src = Source(kiln, env, found, docker_client)
        src.server = server
        kiln.invoke("load-data", env, "--mb", "8")
        yield src
    finally:
        if server is not None:
            server.close()
        remove_env(docker_client, kiln.project, env)


def full_backups(server: S3Server) -> set[str]:
    """Labels of pgBackRest's full backups present in the bucket (folders named <time>F)."""
    prefix = PGBACKREST + "backup/main/"
    folders = {key[len(prefix) :].split("/")[0] for key in server.keys(prefix)}
    return {folder for folder in folders if re.fullmatch(r"\d{8}-\d{6}F", folder)}


def test_backup_to_s3_then_a_drill_restoring_from_it_is_green(offsite):
    out = offsite.kiln.invoke("backup", offsite.env).stdout
    tools = [line.split("\t")[:2] for line in out.splitlines()]
    assert tools == [["pgbackrest", "full"], ["restic", "snapshot"]]
    assert len(full_backups(offsite.server)) == 1
    assert len(offsite.server.keys(RESTIC + "snapshots/")) == 1

    proc, report = offsite.drill()
    assert proc.returncode == 0, proc.stderr
    assert report["ok"] and report["failures"] == [], report
    stored = offsite.server.keys(f"kiln-state/drills/{offsite.env}/")
    assert stored == [f"kiln-state/drills/{offsite.env}/{report['id']}.json"]  # the history outlives the run

    settings = Settings(project_root=offsite.kiln.project)
    values = [S3_KEY_SECRET, S3_KEY_ID, secret(settings, offsite.env, "KILN_BACKUP_KEY")]
    for path in offsite.kiln.project.rglob("*"):  # the checkout, .kiln/ logs and reports included
        if path.is_file():
            assert not any(value.encode() in path.read_bytes() for value in values), path
    assert not any(value in proc.stdout + proc.stderr for value in values)


def test_retention_leaves_exactly_what_the_policy_says_in_the_bucket(offsite):
    for _ in range(3):  # one more than the policy keeps, whatever ran before
        offsite.kiln.invoke("backup", offsite.env)
    listing = yaml.safe_load(offsite.kiln.invoke("backups", offsite.env, "--json").stdout)
    newest_full = {r["id"] for r in listing if r["tool"] == "pgbackrest" and r["kind"] == "full"}
    assert full_backups(offsite.server) == newest_full and len(newest_full) == 2  # retention.full
    snapshots = offsite.server.keys(RESTIC + "snapshots/")
    assert len(snapshots) == 2  # keep_last
    listed = {r["id"] for r in listing if r["tool"] == "restic"}
    assert listed == {key.rsplit("/", 1)[1][:8] for key in snapshots}
