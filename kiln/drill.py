"""The DR drill: restore an environment's backups into a fresh, isolated environment, prove the
data, and measure how long it took (RTO) and how much would have been lost (RPO).

Order of a drill (../shared/notes/backups.md):
1. Reference, in the source while it still runs: per-table row counts and checksums under
   share locks, sealed by a named restore point, then `pgbackrest check` so that point's WAL
   reaches the archive. With a standby, read there instead, its replay paused (the primary
   takes no lock), and the restore targets the LSN where replay paused. The RTO clock starts
   after this: it is drill bookkeeping, not recovery.
2. DR environment `dr-<id>`: a separate environment launched through the source's provider
   (local: its own network `kiln-dr-<id>-z0`, standing for another region) with cloud-init
   user-data; a db instance held before PostgreSQL starts and a web instance from the newest
   verified web image, both reading the source's repositories read-only, so a drill cannot
   damage the backups it proves. The instances are driven through the provider's channel.
3. Pre-check, beside the restore's start: repositories present, the key opens them, WAL
   continuous after the newest backup; when it fails, it alone is the drill's cause.
4. Restore the database (to the restore point, or --target-time), replay WAL, promote; restore
   the files in parallel. 5. HTTP smoke test of the app on the restored data: the RTO ends here.
6. Deep checks: pgbackrest verify, restic check --read-data, pg_amcheck, every table against
   the reference, sha256 of every restored file. 7. Report (JSON + Markdown) into the drill
   history; tear down unless --keep. Any failed check fails the drill with its named cause.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import json
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from kiln import console, environments, statestore, tls
from kiln.backup import app, dbcheck
from kiln.backup.base import BackupFault, BackupSettings
from kiln.backup.operations import (
    TLS_CERT,
    backup_settings,
    first_running,
    require_db,
    s3_access,
    source_environment,
)
from kiln.backup.pgbackrest import PgBackRest
from kiln.backup.restic import UPLOADS, Restic
from kiln.backup.secrets import secret
from kiln.channels.base import Channel, ChannelError, Result
from kiln.environments import Environment, EnvironmentSpec, Frontend
from kiln.errors import KilnError, OperationFailed
from kiln.files import write_atomic
from kiln.images import ImageRecord
from kiln.notify import notify
from kiln.polling import wait_for_service
from kiln.providers import get_provider
from kiln.providers.base import Instance, Provider
from kiln.replication import running_standbys
from kiln.settings import Settings
from kiln.stamps import new_id, utc_iso

RECOVERY_TIMEOUT = 900  # seconds PostgreSQL may take to replay WAL and promote
BOOT_TIMEOUT = 120  # seconds an instance may take to apply its user-data and start services
# (at least: a slower instance, a VM under TCG, is given its source's health.timeout)
REACH_TIMEOUT = 20.0  # seconds for one command that asks whether an instance answers
BOOTED = (
    "test -f /var/lib/cloud/instance/boot-finished"
    " && { test -d /run/systemd/system || test -f /run/kiln/services-started; }"
)
# Promoted, or exit 3 once the cluster has stopped (recovery gave up), as pg_ctlcluster says.
PROMOTED = (
    '[ "$(psql -X -qAt -c "SELECT pg_is_in_recovery()" 2>/dev/null)" = f ]'
    " || { pg_ctlcluster 15 main status >/dev/null 2>&1; [ $? -ne 3 ] || exit 3; false; }"
)
WAIT_INTERVAL = 0.05  # seconds between two looks inside an instance
CERT_MARGIN_DAYS = 30  # monthly drills: what expires before the next one is flagged by this one


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    cause: str | None = None
    seconds: float = 0.0


@dataclass
class DrillReport:
    id: str
    env: str
    dr_env: str
    started: str
    target_time: str | None = None
    ok: bool = False
    rto_seconds: float | None = None
    rpo_seconds: float | None = None
    backups: dict[str, str] = field(default_factory=dict)
    images: dict[str, str] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    kept: bool = False
    goals: dict[str, float] = field(default_factory=dict)  # rto_seconds, rpo_seconds: backup.*_goal_seconds
    html: str | None = None  # the self-contained HTML report

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def as_json(self) -> dict:
        data = asdict(self)
        data["failures"] = [f"{c.name}: {c.cause}: {c.detail}" for c in self.failures]
        return data

    def raise_if_failed(self) -> None:
        if not self.ok:
            causes = ", ".join(f"{c.name}: {c.cause}" for c in self.failures)
            raise OperationFailed(f"drill {self.id} failed ({causes})")

    def markdown(self) -> str:
        verdict = "PASSED" if self.ok else "FAILED"
        lines = [
            f"# DR drill {self.id}: {verdict}",
            "",
            f"- environment: `{self.env}` restored into `{self.dr_env}`"
            + (" (kept)" if self.kept else " (torn down)"),
            f"- started: {self.started}"
            + (f"; point in time: {self.target_time}" if self.target_time else ""),
            f"- RTO: {_fmt(self.rto_seconds)} (drill start to green smoke test)",
            f"- RPO: {_fmt(self.rpo_seconds)} (newest transaction in the source vs. the restore)",
            "- backups: " + ", ".join(f"{k} `{v}`" for k, v in self.backups.items()),
            "- images: " + ", ".join(f"{k} `{v}`" for k, v in self.images.items()),
            "- counts: " + ", ".join(f"{k} {v}" for k, v in self.counts.items()),
            "",
            "| check | result | seconds | detail |",
            "| --- | --- | ---: | --- |",
        ]
        for c in self.checks:
            result = "ok" if c.ok else f"**FAILED** ({c.cause})"
            lines.append(f"| {c.name} | {result} | {c.seconds:.2f} | {c.detail.replace('|', '/')} |")
        return "\n".join(lines) + "\n"


def _fmt(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds:.1f} s"


class DrillFailed(Exception):
    """A check failed in a way that makes the following steps meaningless."""


def parse_target_time(text: str) -> float:
    """`--target-time`: ISO 8601 with a zone, e.g. 2026-11-21T23:50:00Z or ...+01:00."""
    import datetime

    try:
        stamp = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise KilnError(
            f"--target-time '{text}': not an ISO 8601 time; use e.g. 2026-11-21T23:50:00Z"
        ) from exc
    if stamp.tzinfo is None:
        raise KilnError(f"--target-time '{text}': add a zone (Z or +HH:MM) so the time is not ambiguous")
    if stamp.timestamp() > time.time():
        raise KilnError(f"--target-time '{text}' is in the future")
    return stamp.timestamp()


def http(url: str, method: str = "GET", body: bytes | None = None, timeout: float = 5) -> tuple[int, bytes]:
    request = urllib.request.Request(
        url, data=body, method=method, headers={"Content-Type": "application/json"} if body else {}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def run_drill(
    settings: Settings, env: str, target_time: str | None = None, keep: bool = False
) -> DrillReport:
    """What `invoke dr-drill` runs; bad input stops before anything is created."""
    if target_time:
        parse_target_time(target_time)
    backup = backup_settings(settings, env)
    return Drill(settings, env, backup, target_time, keep).run()


def drill_history(settings: Settings) -> tuple[list[dict], Path]:
    """Every drill's report, oldest first, and the chart of their RTO and RPO, redrawn."""
    history = load_history(settings)
    return history, write_chart(settings, history)


class Drill:
    def __init__(
        self,
        settings: Settings,
        env: str,
        backup: BackupSettings | None = None,
        target_time: str | None = None,
        keep: bool = False,
    ):
        self.settings = settings
        self.env = env
        self.backup_settings = backup or BackupSettings()
        self.target = parse_target_time(target_time) if target_time else None
        self.target_text = target_time
        self.keep = keep
        self.id = new_id()
        self.dr_env = f"dr-{self.id}"
        self.web_address = ""
        self.restore_point = f"kiln-drill-{self.id}"
        self.report = DrillReport(self.id, env, self.dr_env, utc_iso(time.time()), target_time, kept=keep)
        self.history = settings.state_dir / "drills"
        self.key = secret(settings, env, "KILN_BACKUP_KEY")
        self.password = secret(settings, env, "KILN_DB_PASSWORD")
        self.s3 = s3_access(settings, env, self.backup_settings)
        self.secrets = [self.key, self.password]
        self.reference: dbcheck.Snapshot | None = None
        self.reference_lsn = ""  # where a standby's replay paused for the reference, if it did
        self.source_files: dict[str, str] = {}
        self.clock = 0.0
        self.db: Channel | None = None
        self.web: Channel | None = None
        self.web_instance: Instance | None = None
        self.web_launch: tuple[ImageRecord, str] | None = None  # the DR web's image and user-data
        self.boot_timeout = float(BOOT_TIMEOUT)
        self.provider: Provider | None = None
        self.provider_name = "local"
        self.notify_settings = None
        if (environments.env_dir(settings) / f"{env}.yml").exists():
            env_spec = environments.load(settings, env).spec
            self.provider_name, self.notify_settings = env_spec.provider, env_spec.notify
        goals = {"rto_seconds": self.backup_settings.rto_goal_seconds,
                 "rpo_seconds": self.backup_settings.rpo_goal_seconds}  # fmt: skip
        self.report.goals = {key: goal for key, goal in goals.items() if goal is not None}
        self.newest_restored = self.backup_started = 0.0
        self.smoke_record: int | None = None

    # ---- the drill --------------------------------------------------------------------------

    def run(self) -> DrillReport:
        console.say(f"drill {self.id}: {self.env} -> {self.dr_env}")
        stopped = ""
        try:
            self.step("source reference", self.take_reference)
            self.clock = time.monotonic()
            self.step("dr environment", self.create_environment)
            self.restore_beside_precheck()
            self.step("smoke test", self.smoke_test)
            self.report.rto_seconds = round(time.monotonic() - self.clock, 2)
            self.step("rpo", self.measure_rpo)
            self.step("verify backups", self.verify_backups, fatal=False)
            self.step("pg_amcheck", self.amcheck, fatal=False)
            self.step("tables", self.compare_tables, fatal=False)
            self.step("files", self.compare_files, fatal=False)
            self.step("certificates", self.check_certificates, fatal=False)
        except DrillFailed:
            pass
        except KilnError as exc:  # no drill at all (e.g. no source database): said, then raised
            stopped = str(exc)
            raise
        finally:
            self.report.ok = bool(self.report.checks) and not self.report.failures
            if not self.keep and self.provider is not None:
                self.provider.destroy()
                # The DR environment's state (its SSH key pair among it) goes with it.
                shutil.rmtree(self.settings.store_dir / "envs" / self.dr_env, ignore_errors=True)
            self.write_report()
            self.tell(stopped)
        return self.report

    def tell(self, stopped: str) -> None:
        """drill-passed or drill-failed, with the causes, RTO and RPO, to the environment's people."""
        causes = [f"{c.name}: {c.cause}" for c in self.report.failures] + ([stopped] if stopped else [])
        notify(
            self.env, self.notify_settings, "drill-passed" if self.report.ok else "drill-failed",
            "; ".join(causes), drill=self.id, rto_seconds=self.report.rto_seconds,
            rpo_seconds=self.report.rpo_seconds,
        )  # fmt: skip

    def step(self, name: str, body: Callable[[], str], fatal: bool = True, started: float = 0.0) -> None:
        started = started or time.monotonic()
        try:
            detail, ok, cause = body(), True, None
        except BackupFault as exc:
            detail, ok, cause = exc.detail, False, exc.cause
        except OperationFailed as exc:
            detail, ok, cause = str(exc), False, _cause_of(name)
        check = Check(name, ok, detail, cause, round(time.monotonic() - started, 2))
        self.report.checks.append(check)
        console.say(
            f"  {name}: {'ok' if ok else 'FAILED (' + str(cause) + ')'} {check.seconds:.1f} s: {detail}"
        )
        if not ok and fatal:
            raise DrillFailed(name)

    def source(self) -> Provider:
        """The source environment's provider: it finds the instances and hands out channels."""
        return get_provider(self.settings, source_environment(self.settings, self.env))

    def take_reference(self) -> str:
        source = self.source()
        shell = source.channel(require_db(source), self.secrets)
        tool = PgBackRest(shell, self.backup_settings, self.key, self.s3)
        standby = next(iter(running_standbys(source)), None) if self.target is None else None
        if standby is not None:
            # read where it costs the primary nothing: the standby, its replay paused
            self.reference, self.reference_lsn = dbcheck.standby_snapshot(
                source.channel(standby, self.secrets)
            )
            where = f"on standby {standby.name}, replay paused at LSN {self.reference_lsn}"
        elif self.target is None:
            self.reference = dbcheck.snapshot(shell, self.restore_point)
            where = "restore point " + self.restore_point
        else:
            self.reference = dbcheck.Snapshot({}, self.target)
            where = f"target {self.target_text}"
        tool.source_check()  # the restore point's WAL (or the target's, or the LSN's) is now archived
        web = first_running(source, "web")
        if web is not None:
            self.source_files = file_sums(source.channel(web, self.secrets))
        return f"{len(self.reference.tables)} tables, {len(self.source_files)} files; {where}"

    def create_environment(self) -> str:
        """A separate environment through the source's provider: one zone, db held for the
        restore, web from the newest verified image, both reading the source's repositories."""
        source = self.source()
        missing = source.missing_repositories(self.env) if self.s3 is None else []
        if missing:
            raise BackupFault("repository-missing", f"{', '.join(missing)} does not exist")
        source_db = require_db(source)
        spec = EnvironmentSpec(
            provider=self.provider_name,
            zones=["dr"],
            instances={"db": 1, "web": 1},
            frontend=Frontend(port=0),
            backup=dataclasses.replace(self.backup_settings, restore_from=self.env),
            ssh=source.env.spec.ssh,  # the same login and bastion reach the DR instances
        )
        self.provider = get_provider(self.settings, Environment(self.dr_env, spec, f"drill {self.id}"))
        self.boot_timeout = max(self.boot_timeout, source.env.spec.health.timeout)
        self.provider.ensure_networks()
        db_image = self.provider.image("db", source_db.version)
        web_image = self.provider.image("web")
        self.report.images.update({"db": db_image.image, "web": web_image.image})
        db_host = self.provider.peer_address("db1")
        db = self.provider.launch(
            "db",
            1,
            db_image,
            user_data(
                {
                    "path": "/etc/kiln/db.env",
                    "permissions": "0600",
                    "content": app.db_env(self.password, hold=True).decode(),
                }
            ),
        )
        self.web_launch = (
            web_image,
            user_data(
                {
                    "path": "/etc/kiln/web.env",
                    "owner": "root:kiln-web",
                    "permissions": "0640",
                    "content": app.web_env(db_host, self.password).decode(),
                }
            ),
        )
        self.db = self.answering(db)
        self.pg_tool().configure()  # before the restore and its pre-check start side by side
        # The web instance is launched and boots while the database restores (see restore_files).
        return (
            f"{self.dr_env} ({self.provider_name}): db {db_image.version}, "
            f"web {web_image.version} ({web_image.status})"
        )

    def wait_booted(self, channel: Channel, role: str) -> None:
        """Until first boot is over: the user-data applied (cloud-init's marker) and every service
        has had its turn, so releasing a held cluster starts nothing behind the drill's back
        (kiln-init's marker; systemd read the conditions at boot)."""
        wait_inside(channel, BOOTED, f"the DR {role} instance's first boot", self.boot_timeout)

    def answering(self, instance: Instance) -> Channel:
        """The instance's channel once a command goes through it: a VM's sshd comes up with its
        boot, and a channel made then pins the host keys the VM has printed to its console."""

        def reached() -> Channel | None:
            assert self.provider is not None
            channel = self.provider.channel(instance, self.secrets)
            return channel if channel.run(["true"], timeout=REACH_TIMEOUT).ok else None

        return wait_for_service(reached, f"the DR {instance.role} instance to answer", self.boot_timeout, 1.0)

    def pg_tool(self) -> PgBackRest:
        return PgBackRest(self.db, self.backup_settings, self.key, self.s3)

    def files_tool(self) -> Restic:
        files = Restic(self.web, self.backup_settings, self.key, self.s3)
        files.read_only = True
        return files

    def restore_beside_precheck(self) -> None:
        """The pre-check runs beside the restore, not before it: it only reads the repositories,
        and its second or two would otherwise add to the RTO. When it fails, it is the drill's
        one cause: the restore, started on what the pre-check refuted, is waited for, not judged."""
        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            restoring = pool.submit(self.restore)
            try:
                self.step("pre-check repositories", self.precheck)
            except DrillFailed:
                concurrent.futures.wait([restoring])
                raise
            self.step("restore", restoring.result, started=started)

    def precheck(self) -> str:
        pg = self.pg_tool()
        records, archive = pg.listing()  # one `info`: beside the restore, the S3 server is busy
        latest = pg.latest(records)
        self.report.backups["pgbackrest"] = latest.id
        self.backup_started = latest.started
        pg.continuity(latest, archive)
        return f"pgbackrest {latest.id} ({latest.kind}); WAL continuous after it"

    def restore_files(self) -> float:
        """Seconds the files took, from the restore's start (the web instance's boot included)."""
        started = time.monotonic()
        assert self.provider is not None and self.web_launch is not None
        self.web_instance = self.provider.launch("web", 1, *self.web_launch)
        self.web_address = self.web_instance.address
        self.web = self.answering(self.web_instance)
        self.wait_booted(self.web, "web")
        files = self.files_tool()
        files.configure()
        self.report.backups["restic"] = files.latest().id
        files.restore()
        return time.monotonic() - started

    def restore(self) -> str:
        pg = self.pg_tool()
        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            restored_files = pool.submit(self.restore_files)
            try:
                if self.reference_lsn:
                    pg.restore(self.reference_lsn, "lsn", exclusive=True)
                elif self.target is None:
                    pg.restore(self.restore_point, "name")
                else:
                    pg.restore(pgbackrest_time(self.target), "time")
            except BackupFault as exc:
                if exc.cause != "corrupt-backup":
                    raise
                raise BackupFault(exc.cause, f"{exc.detail}; {which_files(pg)}") from exc
            copied = time.monotonic()
            # The held cluster (KILN_DB_HOLD from the user-data) stays down until first boot is over.
            self.wait_booted(self.db, "db")
            start = self.db.run(app.RELEASE_HOLD)
            if start.ok:
                start = self.db.run(["pg_ctlcluster", "15", "main", "start"])
            if not start.ok:
                raise recovery_fault(self.db)
            self.wait_promoted()
            promoted = time.monotonic()
            files_seconds = restored_files.result()
        return (
            f"pgbackrest restore {copied - started:.1f} s, start, WAL replay and promotion "
            f"{promoted - copied:.1f} s; files of restic snapshot {self.report.backups['restic']} "
            f"{files_seconds:.1f} s (in parallel)"
        )

    def wait_promoted(self) -> None:
        if wait_inside(self.db, PROMOTED, "PostgreSQL promotion", RECOVERY_TIMEOUT, "postgres").code == 3:
            raise recovery_fault(self.db)

    def smoke_test(self) -> str:
        base = f"http://{self.web_address}"

        def healthy():
            code, body = http(base + "/health")
            return code == 200 and json.loads(body).get("database") == "ok"

        wait_for_service(healthy, "the DR web instance (/health with database ok)", 60)
        code, body = http(base + "/records")
        if code != 200:
            raise BackupFault("smoke-failed", f"GET /records answered {code}")
        listing = json.loads(body)
        if listing["newest_id"] is not None:
            code, _ = http(f"{base}/records/{listing['newest_id']}")
            if code != 200:
                raise BackupFault("smoke-failed", f"GET /records/{listing['newest_id']} answered {code}")
        if self.source_files:
            name = sorted(self.source_files)[0]
            code, data = http(f"{base}/files/{name}")
            if code != 200 or hashlib.sha256(data).hexdigest() != self.source_files[name]:
                raise BackupFault("smoke-failed", f"GET /files/{name} answered {code} or other bytes")
        self.newest_restored = self.newest_commit()  # before the smoke test's own write below
        code, body = http(
            base + "/records", "POST", json.dumps({"customer": "dr-drill", "amount": 1}).encode()
        )
        if code != 201:
            raise BackupFault("smoke-failed", f"POST /records answered {code}: {body[:200]!r}")
        self.smoke_record = json.loads(body)["id"]
        return f"{base}: health, newest record {listing['newest_id']}, a file, a new record"

    def newest_commit(self) -> float:
        _, newest = dbcheck.parse_rows("postgres", dbcheck.psql(self.db, "postgres", dbcheck.NEWEST_REPLAYED))
        return newest or 0.0

    def measure_rpo(self) -> str:
        assert self.reference is not None
        source_newest = self.reference.newest_commit
        # Every commit before the backup began is in it, replayed or not.
        covered = max(self.newest_restored, self.backup_started)
        self.report.rpo_seconds = round(max(0.0, source_newest - covered), 2) if source_newest else None
        if self.target is not None and self.newest_restored > self.target + 0.001:
            raise BackupFault(
                "restore-failed",
                f"newest restored commit {utc_iso(self.newest_restored)} "
                f"is after the target time {self.target_text}",
            )
        return f"restore covers commits to {utc_iso(covered)}; newest in the source {utc_iso(source_newest)}"

    def verify_backups(self) -> str:
        return "; ".join(self.pg_tool().check() + self.files_tool().check())

    def amcheck(self) -> str:
        result = self.db.run(
            ["/usr/lib/postgresql/15/bin/pg_amcheck", "--all", "--heapallindexed", "--install-missing"],
            user="postgres",
        )
        if not result.ok:
            raise BackupFault("amcheck-failed", result.tail())
        return "every relation and index of every database"

    def compare_tables(self) -> str:
        if self.target is not None:
            return "skipped: a point-in-time restore has no reference from the source"
        assert self.reference is not None
        shell = self.db
        restored = dbcheck.snapshot(shell)
        if self.smoke_record is not None:  # the smoke test's own record is the drill's, not the source's
            restored.tables = dbcheck.without_row(
                shell, restored.tables, app.DB_NAME, "public.records", self.smoke_record
            )
        problems = dbcheck.compare(self.reference.tables, restored.tables)
        self.report.counts["tables"] = len(restored.tables)
        app_table = restored.tables.get(f"{app.DB_NAME}:public.records")
        if app_table is not None:
            self.report.counts["records"] = app_table.rows
        if problems:
            raise BackupFault("checksum-mismatch", "; ".join(problems[:5]))
        return f"{len(restored.tables)} tables match the reference in rows and checksums"

    def compare_files(self) -> str:
        restored = file_sums(self.web)
        self.report.counts["files"] = len(restored)
        differing = sorted(
            n for n in restored if n in self.source_files and restored[n] != self.source_files[n]
        )
        if differing:
            raise BackupFault("file-mismatch", "sha256 differs: " + ", ".join(differing[:5]))
        newer = len(set(self.source_files) - set(restored))
        return f"{len(restored)} files match by sha256" + (
            f"; {newer} newer than the snapshot" if newer else ""
        )

    # ---- history ----------------------------------------------------------------------------

    def check_certificates(self) -> str:
        """What a monthly drill would otherwise notice only once it is too late: the source's
        HTTPS certificate, its CA or an instance's certificate expiring before the next drill."""
        ca = tls.ca_file(self.settings, self.env)
        ca_pem = ca.read_bytes() if ca.exists() else None
        source = self.source()
        certificates = {}
        issued_to = ["db", source.env.spec.balanced_role]  # the roles Kiln issues certificates to
        for instance in [i for role in issued_to for i in source.instances(role)]:
            read = source.channel(instance).run(["cat", TLS_CERT]) if instance.running else None
            if read is not None and read.ok:
                certificates[instance.name] = read.out.encode()
        return tls.expiring(self.env, source.https_frontend(), ca_pem, CERT_MARGIN_DAYS, certificates)

    def write_report(self) -> None:
        """JSON (the history), Markdown, and the HTML page with the trend of this environment's drills."""
        from kiln import htmlreport  # matplotlib loads only when a picture is drawn

        folder = self.history / self.env
        page = htmlreport.drill_report_path(self.settings.state_dir, self.env, self.id)
        self.report.html = str(page)
        write_atomic(folder / f"{self.id}.json", json.dumps(self.report.as_json(), indent=2))
        write_atomic(folder / f"{self.id}.md", self.report.markdown())
        history = load_history(self.settings, self.env)
        write_atomic(page, htmlreport.drill_html(self.report.as_json(), history))
        store = statestore.for_environment(self.settings, self.env)  # the history outlives this run
        if store.where != str(self.settings.state_dir):
            store.put(f"drills/{self.env}/{self.id}.json", json.dumps(self.report.as_json(), indent=2))
        console.say(f"report: {page}")


STEP_CAUSES = {
    "smoke test": "smoke-failed",
    "restore": "restore-failed",
    "certificates": "certificate-expiring",
}


def wait_inside(channel: Channel, condition: str, what: str, timeout: float, user: str = "root") -> Result:
    """Until the shell `condition` holds or exits 3, looked at inside the instance every
    WAIT_INTERVAL: one command through the channel, where a look per command would cost a
    `docker exec` or an SSH session each, on the CPU the restore is using."""
    loop = (
        f"while :; do {{ {condition}; }}; c=$?;"
        f" [ $c -eq 0 ] || [ $c -eq 3 ] && exit $c; sleep {WAIT_INTERVAL}; done"
    )
    try:
        result = channel.run(["sh", "-c", loop], user=user, timeout=timeout)
    except ChannelError as exc:
        raise OperationFailed(f"waiting for {what}: {exc}") from exc
    if result.code not in (0, 3):
        raise OperationFailed(f"waiting for {what}: {result.tail()}")
    return result


def _cause_of(step: str) -> str:
    return STEP_CAUSES.get(step, "tool-failed")


def recovery_fault(channel: Channel) -> BackupFault:
    """Why PostgreSQL stopped during recovery, from the tail of its log."""
    log = channel.run(["tail", "-n", "20", "/var/log/postgresql/postgresql-15-main.log"]).out
    fatal = [line for line in log.splitlines() if "FATAL" in line or "PANIC" in line]
    detail = fatal[-1].split("FATAL:")[-1].strip() if fatal else "PostgreSQL stopped during recovery"
    if "recovery ended before configured recovery target was reached" in log or "could not find" in log:
        return BackupFault("missing-wal", detail)
    return BackupFault("recovery-failed", detail)


def pgbackrest_time(epoch: float) -> str:
    """The one time format pgBackRest takes: 2026-11-21 23:50:00.123+00."""
    millis = round(epoch * 1000) % 1000
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch)) + f".{millis:03d}+00"


def which_files(pg: PgBackRest) -> str:
    """pgBackRest's restore says that a file is damaged; its verify says which one."""
    try:
        pg.verify()
    except BackupFault as exc:
        return exc.detail
    return "pgbackrest verify found every file intact"


def user_data(*files: dict) -> str:
    return "#cloud-config\n" + yaml.safe_dump({"locale": "C.UTF-8", "users": {}, "write_files": list(files)})


def file_sums(shell: Channel) -> dict[str, str]:
    result = shell.run(
        ["sh", "-c", f'cd {UPLOADS} && find . -type f ! -name ".upload-*" -print0 | xargs -0r sha256sum']
    )
    if not result.ok:
        raise OperationFailed(f"sha256 of {UPLOADS} in {shell.name}: {result.tail()}")
    sums = {}
    for line in result.out.splitlines():
        digest, _, name = line.partition("  ")
        sums[name.removeprefix("./")] = digest
    return sums


def load_history(settings: Settings, env: str | None = None) -> list[dict]:
    """Every drill report in every state store (kiln.statestore), whichever checkout wrote it; with
    `env`, that environment's reports from its own store. A store that cannot be read (a bucket
    this machine has no keys for, or cannot reach) is left out, and said so in one line."""
    stores = [statestore.for_environment(settings, env)] if env else statestore.every_store(settings)
    reports = {}
    for store in stores:
        try:
            keys = store.keys("drills/")
        except OperationFailed as exc:
            console.say(f"left out the drills in {exc}")
            continue
        for key in keys:
            if key.endswith(".json"):
                with contextlib.suppress(ValueError, TypeError):
                    report = json.loads(store.get(key) or b"")
                    reports[report["id"]] = report
    return sorted((r for r in reports.values() if env in (None, r["env"])), key=lambda r: r["started"])


def write_chart(settings: Settings, history: list[dict]) -> Path:
    """<state_dir>/drills/chart.svg: RTO and RPO over the drills in `history`."""
    chart = settings.state_dir / "drills" / "chart.svg"
    write_atomic(chart, chart_svg(history))
    return chart


def chart_svg(reports: list[dict], width: int = 1000, height: int = 560) -> str:
    """RTO and RPO of past drills by date (kiln.charts), `width` x `height` pixels at 100 dpi."""
    from kiln import charts  # matplotlib loads only when a chart is drawn

    return charts.drill_trend(reports, size=(width / 100, height / 100))
