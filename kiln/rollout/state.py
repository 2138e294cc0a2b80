"""A rollout's record (typed), and where it is kept: <state_dir>/envs/<env>/.

rollout.json holds the newest rollout or rollback, rewritten atomically at every event, so a
crash leaves a record to resume from; audit.jsonl gets one line per finished one; the lock file
is held (flock) by whoever changes the environment.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import getpass
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from kiln.errors import KilnError
from kiln.files import write_atomic
from kiln.settings import Settings
from kiln.stamps import new_id, utc_iso

ACTIVE = ("running", "paused", "rolling-back")

# Fields a finished rollout leaves in the audit log (the events stay in rollout.json).
AUDITED = (
    "id", "environment", "role", "from", "to", "user", "started_at", "ended_at", "seconds", "status",
    "failure", "zone_timings", "rollback_timings", "timeline", "report", "action",
)  # fmt: skip


@dataclass
class RolloutState:
    """One rollout (or rollback) of an environment's balanced role, as rollout.json keeps it."""

    environment: str
    role: str
    from_version: str | None  # what most instances ran before; a rollback converges back to it
    to_version: str
    zones: list[int]  # zone indexes the rollout changes, in order
    action: str = "rollout"  # or "rollback"
    status: str = "running"  # running, paused, rolling-back, succeeded, rolled-back, failed
    id: str = field(default_factory=new_id)
    user: str = field(default_factory=getpass.getuser)
    started_at: str = field(default_factory=utc_iso)
    done: list[int] = field(default_factory=list)  # zones finished
    zone_timings: dict[str, dict[str, float]] = field(default_factory=dict)
    rollback_timings: dict[str, dict[str, float]] | None = None
    events: list[dict] = field(default_factory=list)
    undoes: str | None = None  # the rollout a rollback undoes
    failure: str | None = None
    ended_at: str | None = None
    seconds: float | None = None
    timeline: str | None = None
    report: str | None = None  # the HTML report
    samples: list[dict] = field(default_factory=list)  # healthy counts per zone, when they change

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    def rollback(self) -> RolloutState:
        """A new record undoing this rollout."""
        return RolloutState(
            self.environment, self.role, self.from_version, self.to_version, list(self.zones),
            action="rollback", status="rolling-back", undoes=self.id,
        )  # fmt: skip

    def as_json(self) -> dict:
        data = dataclasses.asdict(self)
        data["from"], data["to"] = data.pop("from_version"), data.pop("to_version")
        return data

    @classmethod
    def from_json(cls, data: dict) -> RolloutState:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        return cls(from_version=data.get("from"), to_version=data["to"], **values)

    def audit_record(self) -> dict:
        data = self.as_json()
        return {key: data.get(key) for key in AUDITED}


class Store:
    """<state_dir>/envs/<env>/: rollout.json (atomic), audit.jsonl, timelines, the lock."""

    def __init__(self, settings: Settings, env_name: str):
        self.env_name = env_name
        self.folder = settings.state_dir / "envs" / env_name
        self.state_file = self.folder / "rollout.json"
        self.audit_file = self.folder / "audit.jsonl"

    def load(self) -> RolloutState | None:
        if not self.state_file.exists():
            return None
        return RolloutState.from_json(json.loads(self.state_file.read_text()))

    def save(self, state: RolloutState) -> None:
        write_atomic(self.state_file, json.dumps(state.as_json(), indent=2, sort_keys=True))

    def clear(self) -> None:
        """Forget the last rollout (the environment is gone); the audit log stays."""
        self.state_file.unlink(missing_ok=True)

    def timeline_file(self, state: RolloutState) -> Path:
        return self.folder / f"timeline-{state.id}-{len(state.events)}.svg"

    def append_audit(self, state: RolloutState) -> None:
        """One line per finished rollout, written with O_APPEND so concurrent writers never interleave."""
        self.folder.mkdir(parents=True, exist_ok=True)
        line = (json.dumps(state.audit_record(), sort_keys=True) + "\n").encode()
        fd = os.open(self.audit_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    def read_audit(self) -> list[dict]:
        if not self.audit_file.exists():
            return []
        return [json.loads(line) for line in self.audit_file.read_text().splitlines() if line.strip()]

    @contextlib.contextmanager
    def lock(self, what: str) -> Iterator[None]:
        """flock: released by the kernel when the holder dies, even by SIGKILL."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / "lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = path.read_text().strip() or "another process"
                raise KilnError(
                    f"environment {self.env_name} is locked by {holder}: wait for it to finish"
                ) from None
            os.ftruncate(fd, 0)
            os.write(fd, f"{what} (pid {os.getpid()}, user {getpass.getuser()})".encode())
            yield
        finally:
            os.close(fd)
