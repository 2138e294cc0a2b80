"""Recorded runs for the chart and report tests, in the shapes Kiln writes them.

Rollouts: `fixtures/rollout-*.json` hold a `rollout.json` record as the engine leaves it (its
events, zone timings, failure) and the load-balancer samples it drew the timeline from, taken
from a local three-zone environment (one web per zone, surge 1, canary 1): one rollout that
succeeded, one whose second zone never passed its health check and was rolled back.
Drills: reports made by `DrillReport.as_json()` itself, so they follow its fields.
"""

from __future__ import annotations

import json
from pathlib import Path

from kiln.drill import Check, DrillReport

FIXTURES = Path(__file__).parent / "fixtures"
ZONES = ["z0", "z1", "z2"]


def rollout(name: str) -> tuple[dict, list[dict]]:
    """(record, samples) of `succeeded` or `rolled-back`."""
    data = json.loads((FIXTURES / f"rollout-{name}.json").read_text())
    return data["record"], data["samples"]


def _checks(drill_id: str, restore: float, failed: str | None) -> list[Check]:
    steps = [
        ("source reference", f"12 tables, 40 files; restore point kiln-drill-{drill_id}", 1.9),
        ("dr environment", f"dr-{drill_id} (local): db 5c1e04a7d2b9, web 8d02e6b1a9c5 (verified)", 3.2),
        ("pre-check repositories", "pgbackrest 20261130-020000F (full); WAL continuous after it", 2.4),
        (
            "restore",
            "pgbackrest restore 9.8 s, start, WAL replay and promotion 6.1 s; files of restic "
            "snapshot 4f1a2b3c 7.4 s (in parallel)",
            restore,
        ),
        ("smoke test", "http://172.30.5.3:8080: health, newest record 51234, a file, a new record", 2.1),
        (
            "rpo",
            "restore covers commits to 2026-11-30T02:14:09Z; newest in the source 2026-11-30T02:14:09Z",
            0.1,
        ),
        (
            "verify backups",
            "pgbackrest verify: 1 backup, 38 WAL files ok; restic check --read-data: no errors",
            11.6,
        ),
        ("pg_amcheck", "every relation and index of every database", 4.8),
        ("tables", "12 tables match the reference in rows and checksums", 1.3),
        ("files", "40 files match by sha256", 0.7),
    ]
    faults = {
        "restore": ("missing-wal", "recovery ended before configured recovery target was reached"),
        "tables": ("checksum-mismatch", "kiln:public.records: 51230 rows restored, 51234 in the source"),
    }
    checks = []
    for name, detail, seconds in steps:
        if name == failed:
            cause, detail = faults[name]
            checks.append(Check(name, False, detail, cause, seconds))
            if name == "restore":  # a fatal step: the drill stops here
                break
        else:
            checks.append(Check(name, True, detail, None, seconds))
    return checks


def drills() -> list[dict]:
    """A week of drills of `local`, oldest first: two failed ones among them."""
    history = []
    for day, rto, rpo, failed in (
        (24, 41.3, 0.8, None),
        (25, 39.7, 1.4, None),
        (26, None, None, "restore"),
        (28, 44.9, 2.1, "tables"),
        (30, 38.2, 0.6, None),
    ):
        drill_id = f"202611{day}-020500-{day:04x}"
        report = DrillReport(
            drill_id,
            "local",
            f"dr-{drill_id}",
            f"2026-11-{day}T02:05:00Z",
            ok=failed is None,
            rto_seconds=rto,
            rpo_seconds=rpo,
            backups={"pgbackrest": "20261130-020000F", "restic": "4f1a2b3c"},
            images={"db": "kiln/db:5c1e04a7d2b9", "web": "kiln/web:8d02e6b1a9c5"},
            counts={"tables": 12, "records": 51234, "files": 40} if rto else {},
            checks=_checks(drill_id, 17.5 if rto else 8.3, failed),
        )
        history.append(report.as_json())
    return history
