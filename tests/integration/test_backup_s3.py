"""Backups on S3: real pgBackRest and restic in containers of this run, moto's S3 server over TLS.

One environment (`kiln-s3<pid>`, db and web, a little data) backs up to a bucket of an S3
server the test starts (tests/s3server.py: TLS from a CA made for the run, handed to the tools;
reached on the gateway of the environment's network): a backup and a drill restoring from the
bucket; retention counted in the bucket; the server stopped in the middle of each tool's backup.
Everything is removed at the end, even on failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time

import pytest
import yaml

from kiln import secrets as sealed
from kiln.backup.secrets import secret
from kiln.settings import Settings
from tests.integration.test_backup_drill import Source, images, remove_env, start_site  # noqa: F401
from tests.s3server import S3Server

pytestmark = pytest.mark.integration

PGBACKREST, RESTIC = "kiln/", "kiln-restic/"
TIMEOUT = 10  # backup.s3.timeout_seconds: small, so that a dead server costs CI little time
STOP_TIMEOUT = 4  # smaller still while the server is stopped: pgBackRest waits about 8 times
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
                       "ca_file": str(server.ca), "timeout_seconds": TIMEOUT},
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
    # Three full backups in all, one more than the policy keeps (the drill test above made one).
    for _ in range(max(1, 3 - len(full_backups(offsite.server)))):
        offsite.kiln.invoke("backup", offsite.env)
    listing = yaml.safe_load(offsite.kiln.invoke("backups", offsite.env, "--json").stdout)
    newest_full = {r["id"] for r in listing if r["tool"] == "pgbackrest" and r["kind"] == "full"}
    assert full_backups(offsite.server) == newest_full and len(newest_full) == 2  # retention.full
    snapshots = offsite.server.keys(RESTIC + "snapshots/")
    assert len(snapshots) == 2  # keep_last
    listed = {r["id"] for r in listing if r["tool"] == "restic"}
    assert listed == {key.rsplit("/", 1)[1][:8] for key in snapshots}


def backup_ids(src) -> dict[str, set[str]]:
    """What the repositories hold: Kiln's listing per tool, and the snapshot files in the bucket
    (a snapshot that landed after the server "stopped" would show there first)."""
    listing = json.loads(src.kiln.invoke("backups", src.env, "--json").stdout)
    ids = {tool: {r["id"] for r in listing if r["tool"] == tool} for tool in ("pgbackrest", "restic")}
    return {**ids, "bucket": set(src.server.keys(RESTIC + "snapshots/"))}


@contextlib.contextmanager
def s3_timeout(src, seconds: float):
    """The environment file with another backup.s3.timeout_seconds, restored afterwards."""
    path = src.kiln.project / "environments" / f"{src.env}.yml"
    original = path.read_text()
    spec = yaml.safe_load(original)
    spec["backup"]["s3"]["timeout_seconds"] = seconds
    path.write_text(yaml.safe_dump(spec))
    try:
        yield
    finally:
        path.write_text(original)


def backup_while_the_server_stops(src, kind: str, request: bytes, count: int):
    """`invoke backup` with the server stopping at the count-th matching request; the server is
    back afterwards. (the process, seconds from the stop to the failure)."""
    src.server.stop_on(request, count)
    try:
        with s3_timeout(src, STOP_TIMEOUT):
            proc = src.kiln.invoke("backup", src.env, "--type", kind, check=False, timeout=600)
        ended = time.monotonic()
    finally:
        src.server.start()
    tripped = src.server.relay.tripped_at
    assert tripped is not None, f"the backup ended before the server stopped: {proc.stdout}{proc.stderr}"
    return proc, ended - tripped


def assert_one_clear_line(proc, env: str, tool: str) -> None:
    assert proc.returncode == 1, proc.stdout + proc.stderr
    [line] = proc.stderr.strip().splitlines()  # one line: no traceback, no tool chatter
    assert line.startswith("kiln: the backup repository's server did not answer (repository-unreachable): ")
    assert f"environment '{env}', {tool} backup: the S3 server " in line
    assert f"stopped answering (timeout_seconds {STOP_TIMEOUT}; " in line and "check that it runs" in line


def test_the_server_stopped_mid_backup_fails_in_one_line_and_the_next_backup_succeeds(offsite):
    if offsite.kiln.invoke("backups", offsite.env, check=False).returncode != 0:
        offsite.kiln.invoke("backup", offsite.env)  # run alone (-k): the repositories are empty yet
    before = backup_ids(offsite)
    label = rb"[0-9]{8}-[0-9]{6}F"
    # pgBackRest: the server stops as the third file of a full backup is sent.
    proc, pgbackrest_seconds = backup_while_the_server_stops(
        offsite, "full", rb"^PUT /[^/ ]+/" + PGBACKREST.encode() + rb"backup/main/" + label + rb"/", 3
    )
    assert_one_clear_line(proc, offsite.env, "pgbackrest")
    assert proc.stdout == ""  # restic did not start: the backup stopped at its first failure
    assert backup_ids(offsite) == before

    # restic: pgBackRest's backup goes through (an incremental one, quicker), then the server
    # stops at restic's first pack, long before its snapshot file.
    offsite.kiln.invoke("load-data", offsite.env, "--mb", "2")  # new files: restic has packs to send
    first_pack = rb"^PUT /[^/ ]+/" + RESTIC.encode() + rb"data/"
    proc, restic_seconds = backup_while_the_server_stops(offsite, "incr", first_pack, 1)
    assert_one_clear_line(proc, offsite.env, "restic")
    assert "retried the repository for" in proc.stderr
    code, running = offsite.site.web[0].exec_run(["sh", "-c", "grep -lx restic /proc/[0-9]*/comm | wc -l"])
    assert (code, running.strip()) == (0, b"0")  # stopped inside the instance, not just its exec
    after_restic = backup_ids(offsite)
    assert after_restic["restic"] == before["restic"] and after_restic["bucket"] == before["bucket"]
    assert len(after_restic["pgbackrest"] - before["pgbackrest"]) == 1

    # Both tools again, the server up: each adds exactly one (restic past its stale lock).
    offsite.kiln.invoke("backup", offsite.env, "--type", "incr")
    after = backup_ids(offsite)
    for tool in ("pgbackrest", "restic", "bucket"):
        assert len(after[tool] - after_restic[tool]) == 1, (tool, after_restic[tool], after[tool])
    print(f"time to failure after the server stopped: pgbackrest {pgbackrest_seconds:.1f} s, "
          f"restic {restic_seconds:.1f} s (timeout_seconds {STOP_TIMEOUT})")  # fmt: skip
    # Bounded, not hung: pgBackRest's error comes after about 8 timeouts (each request tries twice,
    # each try retries its connection for the timeout; the job once more), restic is stopped after
    # its first retry line plus the timeout plus the stop's grace.
    assert pgbackrest_seconds < 8 * STOP_TIMEOUT + 60 and restic_seconds < 2 * STOP_TIMEOUT + 30
