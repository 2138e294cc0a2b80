"""restic in the web instance: encrypted snapshots of the uploads folder, retention by
`forget --prune`, `check --read-data` to prove every pack decrypts and matches its hash."""

from __future__ import annotations

import datetime
import json
import re
import time
from collections.abc import Callable

from kiln.backup.base import CA_PATH, BackupFault, BackupRecord, BackupTool, Result, S3Access

REPO_PATH = "/var/lib/kiln-restic"  # the docker volume standing for off-site storage
PASSWORD_FILE = "/etc/kiln/restic.pass"
S3_CREDENTIALS_FILE = "/etc/kiln/restic-s3.credentials"  # read by restic's S3 client, never in argv
UPLOADS = "/srv/kiln-web/uploads"
OWNER = "kiln-web:kiln-web"  # the app's user, which serves the uploads
TIME = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$")
# What restic 0.14 prints each time a repository request fails and it tries again, e.g.
# `Save(<data/5e1f0a2b9c>) returned error, retrying after 552.330144ms: ... connection refused`.
RETRY = re.compile(r"^\S+\(.*\) returned error, retrying after ")
RECOVERED_AFTER = 120.0  # seconds without a retry line: the trouble is over (see RetryWatch)

_CAUSES = (
    ("repository-unreachable", ("connection refused", "connection reset", "no route to host")),
    ("wrong-key", ("wrong password", "no key found")),
    (
        "repository-missing",
        (
            "is there a repository",
            "repository does not exist",
            "unable to open config",
            "no snapshot found",
            "no matching id found",
            "unable to open repository",
        ),
    ),
    (
        "corrupt-backup",
        (
            "ciphertext verification failed",
            "hash does not match",
            "pack file cannot be",
            "errors were found",
            "invalid data returned",
            "error for tree",
        ),
    ),
)


def parse_time(text: str) -> float:
    """restic's RFC 3339 times carry nanoseconds, more than fromisoformat takes."""
    match = TIME.match(text)
    if not match:
        raise ValueError(f"not a restic time: {text!r}")
    whole, fraction, zone = match.groups()
    stamp = datetime.datetime.fromisoformat(whole + ("+00:00" if zone == "Z" else zone))
    return stamp.timestamp() + float("0" + (fraction or ""))


def parse_snapshots(text: str) -> list[BackupRecord]:
    """`restic snapshots --json` → records, oldest first (sizes are filled in separately)."""
    records = []
    for snap in json.loads(text) or []:
        when = parse_time(snap["time"])
        records.append(
            BackupRecord(
                "restic",
                snap["short_id"],
                "snapshot",
                when,
                when,
                0,
                0,
                {"paths": snap.get("paths", []), "host": snap.get("hostname", "")},
            )
        )
    return sorted(records, key=lambda r: r.started)


def s3_repository(s3: S3Access) -> str:
    repo = s3.repository
    scheme = "https" if repo.verify_tls or s3.ca else "http"
    return f"s3:{scheme}://{repo.endpoint}/{repo.bucket}/{repo.path.strip('/')}-restic"


def s3_options(s3: S3Access | None) -> list[str]:
    if s3 is None:
        return []
    lookup = "path" if s3.repository.uri_style == "path" else "dns"
    return [*(["--cacert", CA_PATH] if s3.ca else []), "-o", f"s3.bucket-lookup={lookup}"]


class RetryWatch:
    """Whether restic has been retrying its repository for longer than `bound` seconds.

    restic 0.14 has no timeout: against a dead S3 server it retries each request (10 times, the
    pause growing 1.5-fold from 0.5 s, then the next request does the same) for as long as it
    runs. Retry lines closer together than RECOVERED_AFTER belong to one outage; a longer quiet
    means the requests went through again and the next retry starts a new count."""

    def __init__(self, bound: float, clock: Callable[[], float] = time.monotonic):
        self.bound = bound
        self.clock = clock
        self.first: float | None = None  # this outage's first retry line
        self.last = 0.0
        self.latest = ""

    def __call__(self, line: str | None) -> str | None:
        now = self.clock()
        if line is not None and RETRY.match(line):
            if self.first is None or now - self.last > RECOVERED_AFTER:
                self.first = now
            self.last, self.latest = now, line.strip()
        if self.first is not None and now - self.last <= RECOVERED_AFTER and now - self.first >= self.bound:
            return f"retried the repository for {now - self.first:.0f} s, last: {self.latest}"
        return None


def parse_summary(text: str) -> dict:
    """The summary line of `restic backup --json`."""
    for line in reversed(text.splitlines()):
        if line.startswith("{") and '"summary"' in line:
            return json.loads(line)
    raise ValueError("restic backup printed no summary")


class Restic(BackupTool):
    name = "restic"
    causes = _CAUSES
    read_only = False  # a DR instance reads the repository without taking locks

    @property
    def env(self) -> dict[str, str]:
        return {
            "RESTIC_REPOSITORY": s3_repository(self.s3) if self.s3 else REPO_PATH,
            "RESTIC_PASSWORD_FILE": PASSWORD_FILE,
            "RESTIC_CACHE_DIR": "/var/cache/kiln-restic",
            "AWS_SHARED_CREDENTIALS_FILE": S3_CREDENTIALS_FILE,
        }

    def restic(self, *args: str, cause: str = "tool-failed", nice: bool = False) -> Result:
        lock = ["--no-lock"] if self.read_only else []
        niceness = ["nice", "-n", "10"] if nice else []
        command = [*niceness, "restic", "--quiet", *s3_options(self.s3), *lock, *args]
        return self.run(command, cause=cause, env=self.env)

    def watched(self, *args: str) -> Result:
        """restic writing to the repository: on S3, stopped once it has retried a dead server for
        backup.s3.timeout_seconds (it would retry for ever); a volume needs no watch."""
        if self.s3 is None:
            return self.restic(*args)
        command = ["restic", "--quiet", *s3_options(self.s3), *args]
        result = self.shell.stream(command, RetryWatch(self.s3.repository.timeout_seconds), env=self.env)
        if result.stopped:
            raise BackupFault("repository-unreachable", f"restic {args[0]}: {result.stopped}")
        if not result.ok:
            raise self.fault(result, "tool-failed")
        return result

    def configure(self) -> None:
        self.shell.put(PASSWORD_FILE, self.key.encode(), 0o600)
        if self.s3 is not None:
            self.put_ca()
            credentials = (
                f"[default]\naws_access_key_id={self.s3.key_id}\naws_secret_access_key={self.s3.key_secret}\n"
            )
            self.shell.put(S3_CREDENTIALS_FILE, credentials.encode(), 0o600)

    def prepare_repository(self) -> None:
        """Initialise the repository unless it exists."""
        probe = self.shell.run(["restic", *s3_options(self.s3), "cat", "config"], env=self.env)
        if probe.ok:
            return
        if self.classify(probe.err) != "repository-missing":
            raise self.fault(probe, "tool-failed")
        self.restic("init")

    def backup(self, kind: str = "snapshot") -> BackupRecord:
        # A restic that was stopped (by the watch, a dead machine) leaves its lock in the
        # repository, which would refuse the `forget` below; unlock removes only stale locks.
        self.watched("unlock")
        result = self.watched("backup", "--json", "--tag", "kiln", UPLOADS)
        summary = parse_summary(result.out)
        retention = self.settings.retention
        self.watched(
            "forget",
            "--prune",
            "--keep-last",
            str(retention.keep_last),
            "--keep-daily",
            str(retention.keep_daily),
        )
        return next(r for r in self.list() if summary["snapshot_id"].startswith(r.id))

    def snapshots(self) -> list[BackupRecord]:
        return parse_snapshots(self.restic("snapshots", "--json", cause="repository-missing").out)

    def list(self) -> list[BackupRecord]:
        records = self.snapshots()
        for record in records:
            stats = json.loads(self.restic("stats", "--json", "--mode", "restore-size", record.id).out)
            record.size = int(stats.get("total_size", 0))
            # raw-data: the encrypted blobs the snapshot refers to, shared ones included
            raw = json.loads(self.restic("stats", "--json", "--mode", "raw-data", record.id).out)
            record.stored = int(raw.get("total_size", 0))
        return records

    def latest(self) -> BackupRecord:
        records = self.snapshots()
        if not records:
            raise BackupFault("repository-missing", "restic repository holds no snapshot")
        return records[-1]

    def check(self) -> list[str]:
        latest = self.latest()
        self.restic("check", "--read-data", cause="corrupt-backup")
        return [f"restic: snapshot {latest.id} is the newest; every pack read and verified"]

    def restore(self, snapshot: str = "latest") -> Result:
        # In a drill the database restores at the same time, and it decides the RTO: restic is
        # niced, and on S3 reads over one connection (five by default) so the database's reads
        # are not queued behind the files' at the server.
        share = ["-o", "s3.connections=1"] if self.s3 else []
        result = self.restic(
            "restore",
            snapshot,
            "--target",
            "/",
            "--include",
            UPLOADS,
            *share,
            cause="restore-failed",
            nice=True,
        )
        # restic restores numeric owners, of the parent folder too; another bake of the image may
        # have given the app another uid.
        self.run(["chown", OWNER, UPLOADS.rsplit("/", 1)[0]], cause="restore-failed")
        self.run(["chown", "-R", OWNER, UPLOADS], cause="restore-failed")
        return result
