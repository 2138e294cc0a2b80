"""pgBackRest in the db instance: full/diff/incr backups, continuous WAL archiving, restore.

The baked /etc/pgbackrest/pgbackrest.conf holds what never changes (stanza `main`, paths,
compression); `configure` writes conf.d/kiln.conf with the repository, retention and the cipher
key, readable by postgres only. Every command runs as postgres: as root pgBackRest refuses.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable

from kiln.backup.base import CA_PATH, BackupFault, BackupRecord, BackupSettings, BackupTool, Result, S3Access

STANZA = "main"
CONF_D = "/etc/pgbackrest/conf.d/kiln.conf"
DATA = "/var/lib/postgresql/15/main"
TLS_DIR = "/etc/kiln/tls"  # a pair's instance certificate, from user-data (cloud-init/db.yml.j2)
REPO_PATH = "/var/lib/pgbackrest"  # the docker volume standing for off-site storage
SEGMENT = re.compile(r"(?:^|/)([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})(?:-[0-9a-f]{40})?(?:\.\w+)?$")
SEGMENTS_PER_LOG = 0x100  # 16 MiB segments: 4 GiB of WAL per log file number
ERROR_SETTLE = 5.0  # seconds pgBackRest may take to exit after printing its error (see FailedWatch)

# pgBackRest's words for each named cause, most specific first: a missing file is missing
# whatever else is said; an info file present but unreadable means the key is wrong.
_CAUSES = (
    (
        "repository-missing",
        (
            "FileMissingError",
            "PathMissingError",
            "missing stanza path",
            "no valid backups",
            "missing stanza data",
        ),
    ),
    (
        "repository-unreachable",
        ("HostConnectError", "unable to connect to", "connection refused", "TLS error"),
    ),
    ("missing-wal", ("unable to find WAL segment", "could not find WAL", "ArchiveMismatch")),
    (
        "corrupt-backup",
        (
            "invalid checksum",
            "checksum mismatch",
            "unexpected eof",
            "invalid size",
            "ChecksumError",
            "lz4",
            "decompress",
        ),
    ),
    (
        "wrong-key",
        (
            "CryptoError",
            "cipher header invalid",
            "bad decrypt",
            "unable to load info file",
            "is the cipher passphrase correct",
        ),
    ),
)


class FailedWatch:
    """Whether pgBackRest, having printed its ERROR, should be stopped: the backup has failed, and
    what follows is the wait for its other workers to give up on their own jobs. Against a dead
    S3 server each of them retries for as long again (measured with io-timeout 10: the error after
    80 s, the exit 100 s later), which tells nothing more."""

    def __init__(self, settle: float = ERROR_SETTLE, clock: Callable[[], float] = time.monotonic):
        self.settle = settle
        self.clock = clock
        self.failed_at: float | None = None

    def __call__(self, line: str | None) -> str | None:
        now = self.clock()
        if self.failed_at is None and line is not None and line.startswith("ERROR:"):
            self.failed_at = now
        if self.failed_at is not None and now - self.failed_at >= self.settle:
            return f"pgbackrest still running {now - self.failed_at:.0f} s after its error"
        return None


def render_conf(settings: BackupSettings, key: str, s3: S3Access | None = None) -> str:
    """conf.d/kiln.conf: the repository, its retention and its cipher (the key is a secret)."""
    lines = ["[global]"]
    if s3 is not None:
        repo = s3.repository
        host, port = repo.host_port
        lines += [
            "repo1-type=s3",
            f"repo1-path={repo.path}",
            f"repo1-s3-bucket={repo.bucket}",
            f"repo1-s3-endpoint={host}",
            f"repo1-storage-port={port}",
            f"repo1-s3-region={repo.region}",
            f"repo1-s3-uri-style={repo.uri_style}",
            f"repo1-s3-verify-tls={'y' if repo.verify_tls else 'n'}",
            f"repo1-s3-key={s3.key_id}",
            f"repo1-s3-key-secret={s3.key_secret}",
            *([f"repo1-s3-ca-file={CA_PATH}"] if s3.ca else []),
            # A dead server: each request tries twice, each try retrying its connection for
            # io-timeout, and a file's job is tried once more (pgBackRest's own: 60 s, three
            # times): the error after about eight timeouts. 2.45 calls job-retry internal;
            # restore's --job-retry=0 relies on it too.
            f"io-timeout={repo.timeout_seconds:g}",
            "job-retry=1",
            # Small files go into bundles: one request instead of one per file (a cluster has a
            # thousand), which an object store bills and makes wait a round trip each.
            "repo1-bundle=y",
        ]
    else:
        lines += ["repo1-type=posix", f"repo1-path={REPO_PATH}"]
    lines += [
        "repo1-cipher-type=aes-256-cbc",
        f"repo1-cipher-pass={key}",
        f"repo1-retention-full={settings.retention.full}",
        f"repo1-retention-diff={settings.retention.diff}",
        f"process-max={settings.process_max}",
    ]
    return "\n".join(lines) + "\n"


def parse_info(text: str) -> tuple[int, str, list[BackupRecord], dict]:
    """`pgbackrest info --output=json` → (status code, message, backups oldest first, archive)."""
    stanzas = json.loads(text, strict=False)  # messages may quote raw bytes
    if not stanzas:
        return 1, "missing stanza path", [], {}
    stanza = stanzas[0]
    status = stanza.get("status", {})
    if status.get("code") == 99:  # the repository's own message says more than "other"
        status = next((r["status"] for r in stanza.get("repo", []) if r["status"]["code"]), status)
    records = [
        BackupRecord(
            tool="pgbackrest",
            id=b["label"],
            kind=b["type"],
            started=float(b["timestamp"]["start"]),
            finished=float(b["timestamp"]["stop"]),
            size=int(b["info"]["size"]),
            stored=int(b["info"]["repository"]["delta"]),
            details={
                "wal_start": b["archive"]["start"],
                "wal_stop": b["archive"]["stop"],
                "prior": b.get("prior"),
                "error": bool(b.get("error", False)),
            },
        )
        for b in stanza.get("backup", [])
    ]
    archives = stanza.get("archive") or [{}]
    archive = {"id": archives[-1].get("id"), "min": archives[-1].get("min"), "max": archives[-1].get("max")}
    return int(status.get("code", 99)), str(status.get("message", "")), records, archive


def verify_findings(output: str) -> list[str]:
    """The per-file problems `pgbackrest verify` logs (it exits 0 even when it finds some)."""
    findings = []
    for line in output.splitlines():
        match = re.search(r"INFO: ((?:invalid|missing|corrupt)\b.*)", line)
        if match:
            findings.append(match[1].strip())
    return findings


def segment_number(name: str) -> tuple[int, int]:
    """(timeline, position) of a WAL segment file name."""
    match = SEGMENT.search(name)
    if not match:
        raise ValueError(name)
    timeline, log, seg = (int(part, 16) for part in match.groups())
    return timeline, log * SEGMENTS_PER_LOG + seg


def segment_name(timeline: int, position: int) -> str:
    return f"{timeline:08X}{position // SEGMENTS_PER_LOG:08X}{position % SEGMENTS_PER_LOG:08X}"


def wal_gaps(names: list[str], start: str) -> list[str]:
    """Segments missing between `start` (a backup's first segment) and the newest archived one."""
    first_timeline, first = segment_number(start)
    present = set()
    for name in names:
        if name.endswith((".history", ".backup")) or not SEGMENT.search(name):
            continue
        timeline, position = segment_number(name)
        if timeline == first_timeline and position >= first:
            present.add(position)
    if not present:
        return [start]
    return [segment_name(first_timeline, p) for p in range(first, max(present) + 1) if p not in present]


def primary_options(primary: str) -> list[str]:
    """pgBackRest run on a standby: the primary is pg2, reached through its pgBackRest TLS server
    (both instances present certificates from the environment's CA). With --backup-standby, a
    backup is started and stopped on the primary and its files are copied from the standby."""
    return [
        f"--pg2-host={primary}",
        "--pg2-host-type=tls",
        f"--pg2-host-ca-file={TLS_DIR}/ca.pem",
        f"--pg2-host-cert-file={TLS_DIR}/instance.pem",
        f"--pg2-host-key-file={TLS_DIR}/instance.key",
        f"--pg2-path={DATA}",
    ]


class PgBackRest(BackupTool):
    name = "pgbackrest"
    causes = _CAUSES
    # Set when this instance is a standby: the primary's address as the standby reaches it.
    primary: str | None = None

    def pgbackrest(self, *args: str, cause: str = "tool-failed") -> Result:
        return self.run(["pgbackrest", f"--stanza={STANZA}", *args], cause=cause, user="postgres")

    def configure(self) -> None:
        self.put_ca()
        conf = render_conf(self.settings, self.key, self.s3)
        self.shell.put(CONF_D, conf.encode(), 0o600, self.shell.ids("postgres"))

    def prepare_repository(self) -> None:
        """Create the stanza (idempotent)."""
        self.pgbackrest(*(primary_options(self.primary) if self.primary else []), "stanza-create")

    def backup(self, kind: str) -> BackupRecord:
        remote = ["--backup-standby", *primary_options(self.primary)] if self.primary else []
        if self.s3 is None:
            self.pgbackrest(*remote, f"--type={kind}", "backup")
        else:
            command = ["pgbackrest", f"--stanza={STANZA}", *remote, f"--type={kind}", "backup"]
            result = self.shell.stream(command, FailedWatch(), user="postgres")
            if not result.ok or result.stopped:
                raise self.fault(result, "tool-failed")
        return self.list()[-1]

    def info(self) -> tuple[int, str, list[BackupRecord], dict]:
        result = self.shell.run(
            ["pgbackrest", f"--stanza={STANZA}", "--output=json", "info"], user="postgres"
        )
        if not result.ok:
            raise self.fault(result, "repository-missing")
        code, message, records, archive = parse_info(result.out)
        if code == 99:
            first = self.shell.scrub(message.splitlines()[0] if message else "unknown error")
            raise BackupFault(self.classify(message) or "tool-failed", f"pgbackrest info: {first}")
        return code, message, records, archive

    def list(self) -> list[BackupRecord]:
        return self.listing()[0]

    def listing(self) -> tuple[list[BackupRecord], dict]:
        """The backups and the WAL archive's info, from one `pgbackrest info`."""
        code, message, records, archive = self.info()
        if code in (1, 3):
            raise BackupFault("repository-missing", f"pgbackrest repository: {message}")
        return records, archive

    def latest(self, records: list[BackupRecord] | None = None) -> BackupRecord:
        valid = [r for r in (self.list() if records is None else records) if not r.details["error"]]
        if not valid:
            raise BackupFault("repository-missing", "pgbackrest repository holds no valid backup")
        return valid[-1]

    def archived_segments(self, archive_id: str) -> list[str]:
        result = self.pgbackrest("--recurse", "--output=json", "repo-ls", f"archive/{STANZA}/{archive_id}")
        return sorted(json.loads(result.out))

    def continuity(self, latest: BackupRecord, archive: dict) -> None:
        """BackupFault when a WAL segment after `latest` started is missing from the archive
        (`archive`: its info, from `listing`)."""
        gaps = wal_gaps(self.archived_segments(archive["id"]), latest.details["wal_start"])
        if gaps:
            shown = ", ".join(gaps[:3]) + (f" and {len(gaps) - 3} more" if len(gaps) > 3 else "")
            raise BackupFault(
                "missing-wal", f"archive {archive['id']} lacks {shown} after backup {latest.id}"
            )

    def verify(self) -> None:
        """Read back every backup file and archived segment and compare its checksum."""
        result = self.shell.run(
            ["pgbackrest", f"--stanza={STANZA}", "--log-level-console=info", "verify"], user="postgres"
        )
        findings = verify_findings(result.out + result.err)
        if not result.ok or findings:
            detail = " | ".join(findings[:3]) or result.tail()
            raise BackupFault(self.classify(detail) or "corrupt-backup", f"pgbackrest verify: {detail}")

    def check(self) -> list[str]:
        """Every backup and archived segment readable with this key, and WAL continuous."""
        records, archive = self.listing()
        latest = self.latest(records)
        self.continuity(latest, archive)
        self.verify()
        return [
            f"pgbackrest: every file of {len(records)} backups verified; WAL continuous after {latest.id}"
        ]

    def source_check(self) -> None:
        """In the running source: switch WAL and wait until the segment is archived."""
        self.pgbackrest("check")

    def restore(
        self, target: str | None = None, target_type: str = "time", exclusive: bool = False
    ) -> Result:
        """Into the held (stopped) cluster: empty the data folder, restore, leave archiving off.
        `exclusive`: stop just before the target (an LSN where a standby's replay paused)."""
        self.run(["find", DATA, "-mindepth", "1", "-delete"], user="postgres")
        # A local volume has no transient errors worth pgBackRest's retry after 15 s.
        retry = ["--job-retry=0"] if self.settings.repository == "volume" else []
        args = ["--archive-mode=off", "--log-level-console=warn", *retry]
        if target:
            args += [f"--type={target_type}", f"--target={target}", "--target-action=promote"]
            args += ["--target-exclusive"] if exclusive else []
        return self.pgbackrest(*args, "restore", cause="restore-failed")
