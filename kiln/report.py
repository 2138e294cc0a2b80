"""A rollout's timeline picture (SVG); the audit log it accompanies lives in `rollout.state`.

The timeline (drawn by kiln.charts) shows, zone by zone, how many instances of each version the
load balancer counted healthy over time, and each instance's launch, health, drain and removal,
the canary and any rollback, derived here from what the rollout engine records.
"""

from __future__ import annotations

from kiln.stamps import epoch_of


def timeline_svg(samples: list[dict], zones: list[str], title: str, events: list[dict] | None = None) -> str:
    """The rollout timeline as SVG (kiln.charts): `samples` as `Engine.sample` records them,
    `events` as `timeline_events` derives them from the rollout's record."""
    from kiln import charts  # matplotlib loads only when a picture is drawn

    return charts.rollout_timeline(samples, zones, title, events or ())


# engine action -> timeline kind; `terminated` is the removal (`deregistered` only leaves the LB)
KIND_OF_ACTION = {
    "launched": "launch",
    "healthy": "healthy",
    "draining": "drain",
    "terminated": "removed",
    "canary": "canary",
}


def timeline_events(record: dict, zones: list[str], canary: int = 0) -> list[dict]:
    """The timeline's events from a rollout record (`rollout.json`: its `events`, `from`, `to`).

    The engine records each instance's launch (with zone and version), health, drain and
    termination. What it does not record is derived: the zone of an instance it found already
    running (instance numbers are dealt round-robin over the zones), its version (the one being
    replaced), the canary (the first `canary` launches in the first zone, unless a `canary`
    action names them) and the rollback (at the `failed` action, or the whole run when the
    record is itself a rollback). Times are seconds since the rollout started; in records from
    before the engine kept one clock across a resume, a resumed rollout's clock restarts, so its
    events are placed by their wall-clock `at`.
    """
    index = {name: i for i, name in enumerate(zones)}
    rollback_run = record.get("action") == "rollback"
    replaced = record.get("to") if rollback_run else record.get("from")
    zone_of, version_of, out = {}, {}, []
    for entry, t in zip(record.get("events", []), _times(record.get("events", [])), strict=True):
        action = entry["action"]
        if action == "launched":
            zone_of[entry["instance"]] = index.get(entry.get("zone"))
            version_of[entry["instance"]] = entry.get("version", "")
        names = entry.get("instance") or entry.get("instances", "")
        for name in filter(None, names.split(",")):
            if action in KIND_OF_ACTION:
                zone = zone_of.get(name, _number(name) % len(zones) if zones else None)
                out.append(
                    _event(t, zone, KIND_OF_ACTION[action], name, version_of.get(name, replaced or ""))
                )
        if action == "failed":
            out.append(_event(t, None, "rollback", detail=entry.get("reason", "")))
    if rollback_run:
        out.insert(0, _event(0.0, None, "rollback", detail=f"undoing rollout {record.get('undoes', '')}"))
    if canary and not rollback_run and not any(e["kind"] == "canary" for e in out):
        first_zone = record.get("zones", [None])[0]
        launches = [e for e in out if e["kind"] == "launch" and e["zone"] == first_zone][:canary]
        out += [{**e, "kind": "canary"} for e in launches]
    return sorted(out, key=lambda e: e["t"])


def _event(t: float, zone: int | None, kind: str, instance: str = "", version: str = "", detail: str = ""):
    return {"t": t, "zone": zone, "kind": kind, "instance": instance, "version": version, "detail": detail}


def _times(events: list[dict]) -> list[float]:
    """Each event's seconds since the start; after a resume `t` restarts, `at` goes on."""
    times, offset, previous = [], 0.0, None
    for entry in events:
        if previous is not None and entry["t"] < previous["t"]:
            offset = epoch_of(entry["at"]) - epoch_of(events[0]["at"]) + events[0]["t"] - entry["t"]
        times.append(round(entry["t"] + offset, 2))
        previous = entry
    return times


def _number(instance: str) -> int:
    digits = instance[len(instance.rstrip("0123456789")) :]
    return int(digits) if digits else 0
