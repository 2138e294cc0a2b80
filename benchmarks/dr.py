"""DR benchmark: backup time, drill RTO against the floor, and RPO under continuous archiving.

    .venv/bin/python benchmarks/dr.py [--mb 1024] [--s3]

All in one run, on the newest verified db and web images of KILN_IMAGE_REPO:
1. a source environment `kiln-benchdr<pid>` gets --mb MiB of poorly compressible data
   (4/5 database rows of SHA-256 output, 1/5 random files) and a full backup (timed);
2. a writer records one row every WRITE_INTERVAL seconds through the app for the rest of the run;
3. `dr-drill` runs: RTO is drill start (after the source reference) to a green smoke test;
4. the floor: in a bare db container, the raw `pgbackrest restore` to a restore point plus
   PostgreSQL's start, replay and promotion, nothing else; once before the drill and once after
   (to the drill's own restore point), the smaller counting;
5. RPO: after WRITE_SECONDS more of writing the source db is killed (SIGKILL, no WAL switch),
   the latest backup is restored with every archived segment, and the newest restored commit is
   compared with the newest commit the writer saw acknowledged.
Goals: RTO <= 1.3x floor; RPO <= 60 s. Everything it creates is removed at the end.
With --s3 both repositories live in a bucket of moto's S3 server over TLS (tests/s3server.py,
on the source network's gateway), and the floor and the drill both restore from it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import docker

from kiln import secrets as sealed
from kiln.backup import containers, dbcheck
from kiln.backup.base import BackupSettings, S3Repository, human_size
from kiln.backup.load import load_data
from kiln.backup.operations import s3_access, take_backup
from kiln.backup.pgbackrest import PgBackRest
from kiln.backup.secrets import ensure_secrets, secret
from kiln.channels.docker import DockerChannel
from kiln.drill import Drill, http
from kiln.images import DockerImageStore
from kiln.polling import wait_for_service
from kiln.settings import Settings

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.s3server import S3Server

WRITE_INTERVAL = 0.5
WRITE_SECONDS = 45  # more than archive_timeout (30 s), so continuous archiving is what is measured
MAX_WRITES = 2000


class Writer(threading.Thread):
    """One record every WRITE_INTERVAL seconds; remembers the newest acknowledged commit."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url, self.stop, self.acknowledged, self.writes, self.errors = url, threading.Event(), 0.0, 0, 0

    def run(self) -> None:
        while not self.stop.is_set() and self.writes < MAX_WRITES:
            try:
                code, _ = http(self.url, "POST", json.dumps({"customer": "benchmark", "amount": 1}).encode())
                if code == 201:
                    self.acknowledged, self.writes = time.time(), self.writes + 1
                else:
                    self.errors += 1
            except OSError:
                self.errors += 1
            self.stop.wait(WRITE_INTERVAL)


def newest_verified(store: DockerImageStore, role: str) -> str:
    records = [r for r in store.list(role) if r.status in ("verified", "promoted")]
    if not records:
        sys.exit(f"no verified {role} image in {store.repository(role)}: bake and verify it first")
    return records[0].image


def restore_bare(
    client,
    env: str,
    image: str,
    settings: BackupSettings,
    key: str,
    password: str,
    name: str,
    target: str | None,
) -> tuple[float, float, float]:
    """Restore into a held db container: (seconds from restore start to promotion, of which the
    copy, newest commit)."""
    network = client.networks.create(name, labels={"kiln.env": name})
    container = None
    try:
        container = containers.launch(
            client,
            name=f"{name}-db1",
            image=image,
            network=name,
            labels={"kiln.env": name},
            files={"/etc/kiln/db.env": (containers.db_env(password, hold=True), 0o600, "root")},
            volumes={} if settings.s3 else containers.backup_mounts(env, "db", read_only=True),
        )
        shell = DockerChannel(container, [key])
        tool = PgBackRest(shell, settings, key, s3_access(Settings.from_env(), env, settings))
        tool.configure()
        started = time.monotonic()
        if target:
            tool.restore(target, "name")
        else:
            tool.restore()
        copied = time.monotonic() - started
        assert container.exec_run(["pg_ctlcluster", "15", "main", "start"]).exit_code == 0
        wait_for_service(
            lambda: (
                container.exec_run(
                    ["psql", "-X", "-qAt", "-c", "SELECT pg_is_in_recovery()"], user="postgres"
                ).output.strip()
                == b"f"
            ),
            "promotion",
            900,
            interval=0.05,
        )
        seconds = time.monotonic() - started
        _, newest = dbcheck.parse_rows("postgres", dbcheck.psql(shell, "postgres", dbcheck.NEWEST_REPLAYED))
        return seconds, copied, newest or 0.0
    finally:
        if container is not None:
            container.remove(force=True)
        network.remove()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=1024, help="MiB of data to load (default 1024)")
    parser.add_argument("--s3", action="store_true", help="back up to and restore from an S3 server")
    args = parser.parse_args()
    settings = Settings.from_env()
    client = docker.from_env(timeout=300)
    store = DockerImageStore(client, settings)
    env = f"benchdr{os.getpid()}"
    backup = BackupSettings()
    figures: dict[str, object] = {"mb": args.mb, "repository": "s3" if args.s3 else "volume"}
    writer = server = None
    s3_folder = Path(tempfile.mkdtemp(prefix=f"kiln-{env}-s3-")) if args.s3 else None
    try:
        ensure_secrets(settings, env)
        key, password = secret(settings, env, "KILN_BACKUP_KEY"), secret(settings, env, "KILN_DB_PASSWORD")
        source = containers.create_site(
            client,
            env,
            db_image=newest_verified(store, "db"),
            web_image=newest_verified(store, "web"),
            password=password,
        )
        wait_for_service(lambda: containers.db_ready(source.db), "source db", 60)
        url = f"http://{containers.address(source.web[0])}"
        wait_for_service(lambda: b'"database": "ok"' in http(url + "/health")[1], "source web", 60)
        if args.s3:
            gateway = client.networks.get(f"kiln-{env}-z0").attrs["IPAM"]["Config"][0]["Gateway"]
            server = S3Server(gateway, s3_folder, f"kiln-{env}")
            repo = S3Repository(server.bucket, server.endpoint, uri_style="path", ca_file=str(server.ca))
            backup = BackupSettings(repository="s3", s3=repo)
            credentials = {
                "KILN_S3_KEY": f"kiln-{env}-key-id",
                "KILN_S3_KEY_SECRET": f"kiln-{env}-key-secret",
            }
            sealed.write(settings, env, {**sealed.read(settings, env), **credentials})

        started = time.monotonic()
        loaded = load_data(settings, env, args.mb)
        figures["load_seconds"] = round(time.monotonic() - started, 1)
        figures["table_bytes"] = loaded["table_bytes"]
        figures["file_bytes"] = loaded["file_bytes"]

        started = time.monotonic()
        records = take_backup(settings, env, "full", backup)
        figures["backup_seconds"] = round(time.monotonic() - started, 1)
        figures["backup_sizes"] = {r.tool: human_size(r.size) for r in records}

        writer = Writer(url + "/records")
        writer.start()
        # The floor, measured before and after the drill; the smaller counts (other work on the
        # machine only ever slows one down).
        shell = DockerChannel(source.db, [key])
        dbcheck.psql(shell, "postgres", f"SELECT pg_create_restore_point('kiln-{env}-floor')")
        PgBackRest(shell, backup, key, s3_access(settings, env, backup)).source_check()
        floor_before, copy_before, _ = restore_bare(
            client, env, source.db.image.id, backup, key, password, f"kiln-{env}-floor1", f"kiln-{env}-floor"
        )
        drill = Drill(settings, env, backup)
        report = drill.run()
        figures["drill_ok"] = report.ok
        figures["rto_seconds"] = report.rto_seconds
        figures["drill_rpo_seconds"] = report.rpo_seconds
        figures["drill_steps"] = {c.name: c.seconds for c in report.checks}

        floor_after, copy_after, _ = restore_bare(
            client, env, source.db.image.id, backup, key, password, f"kiln-{env}-floor2", drill.restore_point
        )
        floor = min(floor_before, floor_after)
        figures["floor_runs"] = [round(floor_before, 2), round(floor_after, 2)]
        figures["floor_copy_runs"] = [round(copy_before, 2), round(copy_after, 2)]
        figures["floor_seconds"] = round(floor, 2)
        if report.rto_seconds:
            figures["rto_over_floor"] = round(report.rto_seconds / floor, 2)

        time.sleep(WRITE_SECONDS)
        source.db.kill()  # the disaster: no shutdown, no WAL switch
        writer.stop.set()
        writer.join()
        seconds, _, newest = restore_bare(
            client, env, source.db.image.id, backup, key, password, f"kiln-{env}-rpo", None
        )
        figures["rpo_seconds"] = round(max(0.0, writer.acknowledged - newest), 1)
        figures["rpo_restore_seconds"] = round(seconds, 2)
        figures["writes"], figures["write_errors"] = writer.writes, writer.errors
    finally:
        if writer is not None:
            writer.stop.set()
        if server is not None:
            server.close()
        if s3_folder is not None:  # the test server's TLS key and log
            shutil.rmtree(s3_folder, ignore_errors=True)
        containers.remove_site(client, f"kiln.env={env}")
        for volume in containers.repo_volumes(env).values():
            with contextlib.suppress(docker.errors.NotFound):
                client.volumes.get(volume).remove(force=True)
        found = sealed.files(settings, env)  # the benchmark's own sealed secrets, not left in the checkout
        for path in (found.encrypted, found.recipients):
            path.unlink(missing_ok=True)
    print(json.dumps(figures, indent=2))
    rto_ok = figures.get("rto_over_floor", 99) <= 1.3
    rpo_ok = figures.get("rpo_seconds", 999) <= 60
    print(
        f"RTO {figures.get('rto_seconds')} s = {figures.get('rto_over_floor')}x floor "
        f"{figures.get('floor_seconds')} s ({'meets' if rto_ok else 'misses'} <= 1.3x); "
        f"RPO {figures.get('rpo_seconds')} s ({'meets' if rpo_ok else 'misses'} <= 60 s); "
        f"backup {figures.get('backup_seconds')} s"
    )


if __name__ == "__main__":
    main()
