"""One self-contained HTML page per rollout and per DR drill: verdict, figures, the picture
inline (SVG), every step with its time and every check, readable offline and attachable to a
pipeline as a single file (no scripts, stylesheets, fonts or images fetched from anywhere).

Pure functions from the records Kiln already writes (a rollout's `rollout.json` record, a
drill's `DrillReport.as_json()`) to text; the caller writes the file where `*_report_path`
says, next to the JSON, so `latest_report` finds it. Templates: kiln/templates/, autoescaped.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import jinja2
from markupsafe import Markup

from kiln import report
from kiln.backup.base import CAUSES
from kiln.errors import KilnError

if TYPE_CHECKING:  # matplotlib loads only when a picture is drawn, not to find a report's path
    from kiln import charts

TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True,
    trim_blocks=True,
    lstrip_blocks=True,
)
VERDICT_CLASS = {"succeeded": "good", "rolled-back": "bad", "failed": "bad"}


def rollout_report_path(state_dir: Path, env: str, rollout_id: str) -> Path:
    return state_dir / "envs" / env / f"rollout-{rollout_id}.html"


def drill_report_path(state_dir: Path, env: str, drill_id: str) -> Path:
    return state_dir / "drills" / env / f"{drill_id}.html"


def latest_report(state_dir: Path, env: str) -> Path | None:
    """The newest rollout or drill report written for `env`, or None."""
    written = [
        *rollout_report_path(state_dir, env, "*").parent.glob("rollout-*.html"),
        *drill_report_path(state_dir, env, "*").parent.glob("*.html"),
    ]
    return max(written, key=lambda path: path.stat().st_mtime, default=None)


def require_latest(state_dir: Path, env: str) -> Path:
    """`latest_report`, or the one line that says how to get one."""
    found = latest_report(state_dir, env)
    if found is None:
        raise KilnError(
            f"no rollout or drill report for environment '{env}' yet: one is written by "
            f"`invoke rollout {env}`, `invoke rollback {env}` and `invoke dr-drill {env}`"
        )
    return found


# ---- rollouts -----------------------------------------------------------------------------


def rollout_timeline(
    record: dict, zones: list[str], samples: list[dict] | None = None, canary: int = 0
) -> str:
    """The rollout's timeline (SVG) from its record, as `rollout_html` shows it."""
    title = (
        f"{record['environment']}: {record['role']} {record['from']} -> {record['to']} ({record['status']})"
    )
    return report.timeline_svg(samples or [], zones, title, report.timeline_events(record, zones, canary))


def rollout_html(
    record: dict, zones: list[str], samples: list[dict] | None = None, canary: int = 0, picture: str = ""
) -> str:
    """`record`: the rollout's state as the engine saves it; `samples`: its load-balancer samples
    (the capacity strips; left out when not kept); `canary`: the environment's canary count;
    `picture`: its `rollout_timeline` when the caller has drawn it already."""
    events = report.timeline_events(record, zones, canary)
    kind = "Rollback" if record.get("action") == "rollback" else "Rollout"
    heading = f"{kind} {record['id']}: {record['environment']}"
    picture = picture or rollout_timeline(record, zones, samples, canary)
    launched = {zone: _launched(events, z) for z, zone in enumerate(zones)}
    all_launched = [lane for lanes in launched.values() for lane in lanes]
    return TEMPLATES.get_template("rollout.html.j2").render(
        heading=heading,
        record=record,
        verdict_class=VERDICT_CLASS.get(record["status"], "neutral"),
        figures=_rollout_figures(record, events, all_launched),
        picture=Markup(picture),  # matplotlib escaped every text in it
        zones=_zone_rows(record, zones, events),
        checks=[_health_row(lane, zone) for zone, lanes in launched.items() for lane in lanes],
    )


def _launched(events: list[dict], zone: int) -> list[charts.Lane]:
    from kiln import charts

    marks = [charts.Mark(**e) for e in events]
    return [lane for lane in charts.lanes(marks, zone) if lane.launch is not None]


def _rollout_figures(record: dict, events: list[dict], launched: list[charts.Lane]) -> list[tuple[str, str]]:
    rises = [lane.healthy - lane.launch for lane in launched if lane.healthy is not None]
    figures = [
        ("seconds in all", f"{record.get('seconds', 0):g}"),
        ("zones done", f"{len(record.get('done', []))} of {len(record.get('zones', []))}"),
        ("instances launched", str(len(launched))),
        ("instances removed", str(sum(1 for e in events if e["kind"] == "removed"))),
    ]
    if rises:
        figures.append(("slowest health rise (s)", f"{max(rises):.1f}"))
    canaries = [e["instance"] for e in events if e["kind"] == "canary"]
    if canaries:
        figures.append(("canary", ", ".join(canaries)))
    return figures


def _zone_rows(record: dict, zones: list[str], events: list[dict]) -> list[dict]:
    rows = []
    for what, timings in (("rolled out", "zone_timings"), ("rolled back", "rollback_timings")):
        for zone, span in (record.get(timings) or {}).items():
            rows.append({"zone": zone, "what": what, **span})
    done = record.get("zone_timings") or {}
    # In a rollout record a rollback comes only from its failure (a rollback record has none of this).
    failed_at = next((e["t"] for e in events if e["kind"] == "rollback"), None)
    stopped = failed_at is not None
    untouched = "not reached" + (" (paused)" if record["status"] == "paused" else "")
    for index in record.get("zones", []) if record.get("action") != "rollback" else []:
        if zones[index] in done:
            continue
        if stopped:  # the zone the rollout was in began when the one before it was done
            start = max([span["end"] for span in done.values()] + [0.0])
            what = "failed here: " + record.get("failure", "")
            rows.append(
                {"zone": zones[index], "what": what, "start": start, "end": failed_at, "failed": True}
            )
            stopped = False
        else:
            rows.append({"zone": zones[index], "what": untouched})
    for row in rows:
        if "start" in row:
            row["seconds"] = round(row["end"] - row["start"], 2)
    return sorted(rows, key=lambda row: ("start" not in row, row.get("start", 0)))


def _health_row(lane: charts.Lane, zone: str) -> dict:
    return {
        "instance": lane.instance,
        "version": lane.version,
        "zone": zone,
        "ok": lane.healthy is not None,
        "launch": f"{lane.launch:g}",
        "rise": f"{lane.healthy - lane.launch:.1f}" if lane.healthy is not None else "",
    }


# ---- drills -------------------------------------------------------------------------------


def drill_html(drill: dict, history: list[dict] | None = None, goals: dict[str, float] | None = None) -> str:
    """`drill`: a drill report as written (`DrillReport.as_json()`); `history`: the drills to
    chart (`drill.load_history`, this one included), default this one alone; `goals`: the RTO and
    RPO goals in seconds (`rto_seconds`, `rpo_seconds`), else the report's own `goals`."""
    from kiln import charts

    goals = goals or drill.get("goals") or {}
    checks = drill.get("checks", [])
    failures = [
        {**check, "meaning": CAUSES.get(check.get("cause") or "", "")} for check in checks if not check["ok"]
    ]
    return TEMPLATES.get_template("drill.html.j2").render(
        heading=f"DR drill {drill['id']}: {drill['env']}",
        report=drill,
        failures=failures,
        figures=_drill_figures(drill, goals),
        longest=max([c["seconds"] for c in checks] + [0.01]),
        picture=Markup(charts.drill_trend(history or [drill], goals, current=drill["id"])),
    )


def _drill_figures(drill: dict, goals: dict[str, float]) -> list[dict]:
    figures = []
    for key, name in (("rto_seconds", "RTO"), ("rpo_seconds", "RPO")):
        value, goal = drill.get(key), goals.get(key)
        label = f"{name} (s)" + (f", goal {goal:g}" if goal is not None else "")
        figures.append(
            {
                "label": label,
                "value": "not measured" if value is None else f"{value:g}",
                "over": value is None or (goal is not None and value > goal),
            }
        )
    checks = drill.get("checks", [])
    figures.append({"label": "checks passed", "value": f"{sum(c['ok'] for c in checks)} of {len(checks)}"})
    figures += [{"label": name, "value": str(count)} for name, count in drill.get("counts", {}).items()]
    return figures
