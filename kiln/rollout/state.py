"""A rollout's record (typed), and where it is kept: envs/<env>/ of the environment's state store.

rollout.json holds the newest rollout or rollback, rewritten atomically at every event, so a
crash leaves a record to resume from; audit.jsonl gets one line per finished one; the lock is
held by whoever changes the environment (kiln.statestore: flock, or a conditional write on S3).
"""

from __future__ import annotations

import contextlib
import dataclasses
import getpass
import json
from dataclasses import dataclass, field
from pathlib import Path

from kiln import statestore
from kiln.settings import Settings
from kiln.stamps import new_id, utc_iso

ACTIVE = ("running", "paused", "rolling-back")

# Fields a finished rollout leaves in the audit log (the events stay in rollout.json).
AUDITED = (
    "id", "environment", "role", "from", "to", "user", "started_at", "ended_at", "seconds", "status",
    "failure", "zone_timings", "rollback_timings", "timeline", "report", "action", "release",
)  # fmt: skip


@dataclass
class RolloutState:
    """One rollout (or rollback) of one of an environment's roles, as rollout.json keeps it."""

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
    release: str | None = None  # the release manifest this rollout is part of

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
    """An environment's rollout.json (atomic), audit log and lock in its state store
    (kiln.statestore: a folder, or the environment's bucket); timelines stay in the folder."""

    def __init__(self, settings: Settings, env_name: str):
        self.env_name = env_name
        self.settings = settings
        self.backing = statestore.for_environment(settings, env_name)
        self.prefix = f"envs/{env_name}/"
        self.folder = settings.store_dir / "envs" / env_name
        self.state_file = self.folder / "rollout.json"

    def load(self) -> RolloutState | None:
        data = self.backing.get(self.prefix + "rollout.json")
        return None if data is None else RolloutState.from_json(json.loads(data))

    def save(self, state: RolloutState) -> None:
        self.backing.put(self.prefix + "rollout.json", json.dumps(state.as_json(), indent=2, sort_keys=True))

    def clear(self) -> None:
        """Forget the last rollout (the environment is gone); the audit log stays."""
        self.backing.delete(self.prefix + "rollout.json")

    def timeline_file(self, state: RolloutState) -> Path:
        return self.folder / f"timeline-{state.id}-{len(state.events)}.svg"

    def append_audit(self, state: RolloutState) -> None:
        """One line per finished rollout; concurrent writers never interleave."""
        self.backing.append(self.prefix + "audit.jsonl", json.dumps(state.audit_record(), sort_keys=True))

    def append_record(self, record: dict) -> None:
        """An audit line of another kind than a rollout's (a release's)."""
        self.backing.append(self.prefix + "audit.jsonl", json.dumps(record, sort_keys=True))

    def read_audit(self) -> list[dict]:
        return [json.loads(line) for line in self.backing.lines(self.prefix + "audit.jsonl")]

    def lock(self, what: str) -> contextlib.AbstractContextManager[None]:
        """Held by whoever changes the environment; a refusal names the holder and its start."""
        return self.backing.lock(self.prefix + "lock", self.env_name, statestore.holder(what, self.settings))
