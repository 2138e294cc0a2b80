"""What every backup tool shares: the settings, the records and the faults.

A tool (pgbackrest.py, restic.py) runs inside an instance through the provider's channel
(kiln.channels): the commands it needs are baked into the role's image, so the host needs
neither tool. Secrets reach the instance as files written through the channel (never a command
line, never a log line), and any tool output quoted in an error is scrubbed of them first.
"""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass, field
from typing import ClassVar

from kiln.channels.base import Channel, Result
from kiln.config import spec
from kiln.errors import OperationFailed
from kiln.stamps import utc_iso

# Named causes a drill or a backup reports; tests and the drill history key on them.
CAUSES = {
    "repository-missing": "the backup repository is empty or missing",
    "wrong-key": "the encryption key does not open the repository",
    "corrupt-backup": "a backup file is corrupted",
    "missing-wal": "a WAL segment is missing from the archive",
    "checksum-mismatch": "a restored table differs from the source",
    "file-mismatch": "a restored file differs from the source",
    "restore-failed": "the restore did not complete",
    "recovery-failed": "PostgreSQL did not finish recovery",
    "smoke-failed": "the application smoke test failed",
    "amcheck-failed": "pg_amcheck found corruption",
    "repository-unreachable": "the backup repository's server did not answer",
    "tool-failed": "a backup tool failed",
}
CA_PATH = "/etc/kiln/s3-ca.pem"  # in the instance: the CA the tools trust for the S3 endpoint


@dataclass(frozen=True)
class S3Repository:
    bucket: str = spec(help="bucket holding the pgBackRest repository")
    endpoint: str = spec(
        help="S3 endpoint host[:port], e.g. s3.eu-west-1.amazonaws.com",
        pattern=r"[A-Za-z0-9.-]+(:[0-9]{1,5})?",
        pattern_help="host or host:port, without https://",
    )
    region: str = spec("us-east-1", help="bucket region")
    path: str = spec("/kiln", help="folder inside the bucket")
    uri_style: str = spec(
        "host", help="'host' (virtual-hosted) or 'path' (S3-compatible servers)", choices=("host", "path")
    )
    verify_tls: bool = spec(True, help="check the endpoint's TLS certificate")
    ca_file: str | None = spec(
        None, help="PEM file of the CA the tools trust for the endpoint (a private CA); default: the system's"
    )
    timeout_seconds: float = spec(
        30,
        help="how long a tool waits for a silent or refusing server before the backup fails "
        "(pgBackRest io-timeout, tried twice; restic stopped after retrying this long)",
        above=0,
        maximum=600,  # pgBackRest's db-timeout (1800 s) and protocol-timeout (1830 s) stay above it
    )

    @property
    def host_port(self) -> tuple[str, int]:
        host, sep, port = self.endpoint.partition(":")
        return host, int(port) if sep else 443


@dataclass(frozen=True)
class S3Access:
    """What a tool needs to reach an S3 repository: where, the credentials, the CA to trust."""

    repository: S3Repository
    key_id: str
    key_secret: str
    ca: bytes | None = None


@dataclass(frozen=True)
class Retention:
    full: int = spec(2, help="full PostgreSQL backups kept (older ones expire with their WAL)", minimum=1)
    diff: int = spec(4, help="differential PostgreSQL backups kept", minimum=1)
    keep_last: int = spec(7, help="file snapshots kept by restic forget --keep-last", minimum=1)
    keep_daily: int = spec(7, help="daily file snapshots kept by restic forget --keep-daily", minimum=0)


@dataclass(frozen=True)
class BackupSettings:
    """The `backup:` section of an environment file."""

    repository: str = spec(
        "volume", help="'volume' (a docker volume off the instance) or 's3'", choices=("volume", "s3")
    )
    s3: S3Repository | None = spec(None, help="the S3 repository when repository is 's3'")
    retention: Retention = spec(Retention(), help="how many backups each tool keeps")
    process_max: int = spec(
        2, help="parallel pgBackRest processes (compression, transfer)", minimum=1, maximum=999
    )
    restore_from: str | None = spec(
        None, help="a DR environment's: mount this environment's repositories, read-only"
    )
    rto_goal_seconds: float | None = spec(
        None, help="recovery time a DR drill should stay within (its report and trend show it)", above=0
    )
    rpo_goal_seconds: float | None = spec(
        None, help="data loss window a DR drill should stay within (its report and trend show it)", above=0
    )


class BackupFault(OperationFailed):
    """A backup or restore failed for a named cause (a key of CAUSES)."""

    def __init__(self, cause: str, detail: str):
        super().__init__(f"{CAUSES[cause]} ({cause}): {detail}")
        self.cause = cause
        self.detail = detail


@dataclass
class BackupRecord:
    """One backup as a tool reports it: what `invoke backups` lists."""

    tool: str
    id: str
    kind: str  # full, diff, incr, snapshot
    started: float  # epoch seconds
    finished: float
    size: int  # bytes of the data backed up
    stored: int  # bytes the repository holds for it
    details: dict = field(default_factory=dict)

    def as_json(self) -> dict:
        return {
            "tool": self.tool,
            "id": self.id,
            "kind": self.kind,
            "started": utc_iso(self.started),
            "finished": utc_iso(self.finished),
            "age_seconds": round(time.time() - self.finished),
            "size": self.size,
            "stored": self.stored,
            **self.details,
        }


def human_size(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def human_age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} d"


class BackupTool(abc.ABC):
    """One backup tool working in one instance (like testinfra's backends)."""

    name: ClassVar[str]
    # (cause, words): the first cause one of whose words the tool's output holds.
    causes: ClassVar[tuple[tuple[str, tuple[str, ...]], ...]] = ()

    def __init__(self, shell: Channel, settings: BackupSettings, key: str, s3: S3Access | None = None):
        self.shell = shell
        self.settings = settings
        self.key = key
        self.s3 = s3
        for secret in (key, *((s3.key_id, s3.key_secret) if s3 else ())):
            if secret not in shell.secrets:
                shell.secrets.append(secret)

    def put_ca(self) -> None:
        """The S3 endpoint's CA, when the environment names one, where the tools look for it."""
        if self.s3 is not None and self.s3.ca is not None:
            self.shell.put(CA_PATH, self.s3.ca, 0o644)

    @abc.abstractmethod
    def configure(self) -> None:
        """Write the repository settings and the key into the instance (idempotent)."""

    @abc.abstractmethod
    def prepare_repository(self) -> None:
        """Create the repository when it does not exist yet (idempotent)."""

    @abc.abstractmethod
    def backup(self, kind: str) -> BackupRecord:
        """Take a backup, then apply retention."""

    @abc.abstractmethod
    def list(self) -> list[BackupRecord]:
        """Backups in the repository, oldest first; BackupFault if it cannot be read."""

    @abc.abstractmethod
    def check(self) -> list[str]:
        """Check the repository's integrity; findings as lines, BackupFault when it is unusable."""

    def run(
        self,
        argv: list[str],
        cause: str = "tool-failed",
        user: str = "root",
        env: dict[str, str] | None = None,
    ) -> Result:
        result = self.shell.run(argv, user=user, env=env)
        if not result.ok:
            raise self.fault(result, cause)
        return result

    def fault(self, result: Result, default: str) -> BackupFault:
        """The named cause a failed command reveals (from the tool's `causes`)."""
        return BackupFault(self.classify(result.err + result.out) or default, f"{self.name}: {result.tail()}")

    @classmethod
    def classify(cls, output: str) -> str | None:
        lowered = output.lower()
        for cause, words in cls.causes:
            if any(word.lower() in lowered for word in words):
                return cause
        return None
