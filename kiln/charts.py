"""The two pictures people look at: a rollout's timeline and the DR drills' trend (SVG or PNG).

Drawn with matplotlib rather than hand-written SVG: its axes, date and second ticks, legends,
markers, hatching and layout are maintained and tested by others, the same figure writes SVG
for the HTML reports and PNG for a chat or a ticket, and the Agg/SVG backends need no display.
Figures are built on `matplotlib.figure.Figure` directly, never through pyplot, so no global
backend or current-figure state leaks between calls or threads. SVG text stays text
(`svg.fonttype: none`), so a reader's browser fonts draw it and tests can parse the labels.

Timeline input (plain dicts, as the rollout engine records them, times in seconds since the
rollout started and zones as indices into the environment's zone list):

- samples: `{"t": 3.5, "zone": 0, "healthy": {"<version>": 2}}`, instances the load balancer
  counted healthy per version; drawn as a capacity strip above each zone's instances;
- events: `{"t": 3.5, "zone": 0, "kind": "launch", "instance": "web4", "version": "<v>",
  "detail": ""}` with kind one of KINDS; `zone` None for a rollback that concerns every zone.
"""

from __future__ import annotations

import datetime
import io
from collections.abc import Iterable
from dataclasses import dataclass

import matplotlib
from matplotlib import dates as mdates
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, MaxNLocator, MultipleLocator

KINDS = ("launch", "healthy", "drain", "removed", "canary", "rollback")
COLOURS = ["#4c78a8", "#f58518", "#54a24b", "#e45756", "#b279a2", "#9d755d"]
FAILED, PASSED, GOAL = "#c62828", "#2e7d32", "#555555"
# marker, size, label: one shape per instance event, black-edged so it shows on any version colour
MARKS = {
    "launch": ("^", 8, "launched"),
    "healthy": ("o", 7, "passed health check"),
    "drain": ("v", 8, "drain started"),
    "removed": ("X", 8, "removed"),
    "canary": ("*", 15, "canary"),
}
SVG_STYLE = {
    "svg.fonttype": "none",
    "svg.hashsalt": "kiln",  # stable element ids: the same run draws the same file
}


@dataclass(frozen=True)
class Mark:
    """One event of a rollout timeline (see the module docstring)."""

    t: float
    zone: int | None
    kind: str
    instance: str = ""
    version: str = ""
    detail: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"timeline event kind {self.kind!r}: expected one of {', '.join(KINDS)}")


@dataclass
class Lane:
    """One instance's life in its zone: launched (or already there), healthy, draining, removed."""

    instance: str
    version: str = ""
    launch: float | None = None
    healthy: float | None = None
    drain: float | None = None
    removed: float | None = None
    canary: bool = False


def render(figure: Figure, fmt: str) -> str | bytes:
    """SVG as text, PNG as bytes."""
    buffer = io.BytesIO()
    with matplotlib.rc_context(SVG_STYLE):
        figure.savefig(buffer, format=fmt, dpi=110, metadata={"Date": None} if fmt == "svg" else None)
    data = buffer.getvalue()
    if fmt != "svg":
        return data
    text = data.decode()
    return text[text.index("<svg") :]  # no XML prolog: the same text is a file and an inline element


# ---- the rollout timeline -----------------------------------------------------------------


def lanes(events: Iterable[Mark], zone: int) -> list[Lane]:
    """The instances of a zone in the order they appear, with the time of each of their events.

    A name launched again after its removal (a rollback reuses free numbers) is a new instance.
    """
    found: list[Lane] = []
    current: dict[str, Lane] = {}
    for mark in sorted(events, key=lambda m: m.t):
        if mark.zone != zone or not mark.instance:
            continue
        lane = current.get(mark.instance)
        if lane is None or (mark.kind == "launch" and (lane.launch is not None or lane.removed is not None)):
            lane = current[mark.instance] = Lane(mark.instance)
            found.append(lane)
        lane.version = lane.version or mark.version
        if mark.kind == "canary":
            lane.canary = True
        elif getattr(lane, mark.kind) is None:
            setattr(lane, mark.kind, mark.t)
    return sorted(found, key=lambda lane: (lane.launch is not None, lane.launch or 0.0))


def rollout_timeline(
    samples: list[dict],
    zones: list[str],
    title: str,
    events: Iterable[dict | Mark] = (),
    fmt: str = "svg",
) -> str | bytes:
    """Zones as rows: healthy capacity per version over time, then one lane per instance."""
    marks = [m if isinstance(m, Mark) else Mark(**m) for m in events]
    end = max([s["t"] for s in samples] + [m.t for m in marks] + [1.0])
    zone_lanes = [lanes(marks, z) for z in range(len(zones))]
    versions = _versions(samples, zone_lanes)
    colour = {v: COLOURS[i % len(COLOURS)] for i, v in enumerate(versions)}
    rows = []  # (zone, what, height): a capacity strip when sampled, then the instances' lanes
    for z, found in enumerate(zone_lanes):
        rows += [(z, "capacity", 1.1)] if samples else []
        rows += [(z, "lanes", 0.35 * max(len(found), 1) + 0.3)] if found or not samples else []
    figure = Figure(figsize=(11, 1.6 + sum(r[2] for r in rows) * 0.95), layout="constrained")
    grid = figure.add_gridspec(len(rows) or 1, 1, height_ratios=[r[2] for r in rows] or [1])
    axes_list: list = []
    for i, (z, what, _) in enumerate(rows):
        axes = figure.add_subplot(grid[i], sharex=axes_list[0] if axes_list else None, gid=f"{what}-{z}")
        if what == "capacity":
            _draw_capacity(axes, [s for s in samples if s["zone"] == z], versions, colour, end)
        else:
            _draw_lanes(axes, zone_lanes[z], colour, end)
        if i == 0 or rows[i - 1][0] != z:
            axes.set_title(f"zone {zones[z]}", loc="left", fontsize=11, fontweight="bold")
        rollbacks = [m for m in marks if m.kind == "rollback" and m.zone in (None, z)]
        _draw_rollbacks(axes, rollbacks, end, labelled=i == 0)
        axes_list.append(axes)
    if not axes_list:  # nothing recorded: still an honest, labelled, empty chart
        axes_list.append(figure.add_subplot(grid[0]))
        axes_list[0].text(0.5, 0.5, "nothing was recorded", ha="center", transform=axes_list[0].transAxes)
    for axes in axes_list[:-1]:
        axes.tick_params(labelbottom=False)
    bottom = axes_list[-1]
    bottom.set_xlim(0, end * 1.02)
    _time_axis(bottom, end)
    figure.suptitle(title, fontsize=13, fontweight="bold", x=0.01, ha="left")
    figure.legend(
        handles=_timeline_legend(versions, colour, marks),
        loc="outside lower center",
        ncols=6,
        frameon=False,
        fontsize=9,
    )
    return render(figure, fmt)


def _time_axis(axes, end: float) -> None:
    """Seconds for a short rollout; minutes:seconds on whole minutes for a long one (a cloud's)."""
    if end <= 300:
        axes.set_xlabel("seconds since the rollout started")
        axes.xaxis.set_major_locator(MaxNLocator(nbins=12, steps=[1, 2, 2.5, 5, 10]))
        return
    step = next((m * 60 for m in (1, 2, 5, 10, 15, 30, 60) if end / (m * 60) <= 12), 120 * 60)
    axes.set_xlabel("minutes:seconds since the rollout started")
    axes.xaxis.set_major_locator(MultipleLocator(step))
    axes.xaxis.set_major_formatter(FuncFormatter(lambda t, _: f"{int(t) // 60}:{int(t) % 60:02d}"))


def _versions(samples: list[dict], zone_lanes: list[list[Lane]]) -> list[str]:
    """Versions in order of first appearance: the old one first (already running at 0), the new next."""
    seen = [(s["t"], v) for s in samples for v, n in s["healthy"].items() if n]
    seen += [(lane.launch or 0.0, lane.version) for found in zone_lanes for lane in found if lane.version]
    return list(dict.fromkeys(v for _, v in sorted(seen, key=lambda pair: pair[0])))


def _draw_capacity(axes, samples: list[dict], versions: list[str], colour: dict, end: float) -> None:
    times = [s["t"] for s in samples] + [end]
    stacks = [[s["healthy"].get(v, 0) for s in samples] + [0] for v in versions]
    if samples:
        for series in stacks:  # the last sample holds until the end of the chart
            series[-1] = series[-2]
        axes.stackplot(times, stacks, colors=[colour[v] for v in versions], step="post", alpha=0.85)
    axes.set_ylabel("healthy\nin the LB", fontsize=9)
    axes.yaxis.set_major_locator(MaxNLocator(integer=True, nbins=4))
    axes.set_ylim(0, max([sum(s["healthy"].values()) for s in samples] + [1]) + 0.5)
    axes.grid(axis="x", color="#dddddd", linewidth=0.6)


def _draw_lanes(axes, found: list[Lane], colour: dict, end: float) -> None:
    if not found:
        axes.text(0.5, 0.5, "no instance changed here", ha="center", va="center", transform=axes.transAxes)
    for y, lane in enumerate(found):
        fill = colour.get(lane.version, "#999999")
        start = lane.launch if lane.launch is not None else 0.0
        stop = lane.removed if lane.removed is not None else end
        serving_from = lane.healthy if lane.healthy is not None else (start if lane.launch is None else None)
        serving_to = lane.drain if lane.drain is not None else stop
        if lane.launch is not None:  # starting: launched, not healthy yet (maybe never)
            ready = next(t for t in (lane.healthy, lane.drain, stop) if t is not None)
            axes.barh(y, ready - start, left=start, height=0.5, color=fill, alpha=0.3)
        if serving_from is not None:
            axes.barh(y, serving_to - serving_from, left=serving_from, height=0.5, color=fill)
        if lane.drain is not None:
            axes.barh(
                y, stop - lane.drain, left=lane.drain, height=0.5, color="white", edgecolor=fill, hatch="////"
            )
        for kind in ("launch", "healthy", "drain", "removed"):
            if getattr(lane, kind) is not None:
                shape, size, _ = MARKS[kind]
                when = getattr(lane, kind)
                axes.plot(
                    when, y, shape, ms=size, mfc="white", mec="black", zorder=3, gid=_gid(kind, lane, when)
                )
        if lane.canary:
            shape, size, _ = MARKS["canary"]
            axes.plot(
                start,
                y - 0.42,
                shape,
                ms=size,
                color="#f9a825",
                mec="black",
                zorder=4,
                clip_on=False,
                gid=_gid("canary", lane, start),
            )
    axes.set_yticks(range(len(found)), [_lane_label(lane) for lane in found], fontsize=9)
    axes.set_ylim(len(found) - 0.4, -0.6)
    axes.grid(axis="x", color="#dddddd", linewidth=0.6)
    axes.set_axisbelow(True)


def _gid(kind: str, lane: Lane, when: float) -> str:
    """The mark's SVG id (e.g. `launch-web6-0.9`): what a test or a stylesheet can find."""
    return f"{kind}-{lane.instance}-{when:g}"


def _lane_label(lane: Lane) -> str:
    version = f" ({lane.version[:12]})" if lane.version else ""
    return f"{lane.instance}{version}" + (" canary" if lane.canary else "")


def _draw_rollbacks(axes, rollbacks: list[Mark], end: float, labelled: bool) -> None:
    """A red line across the rows; the top row says when and why."""
    for mark in rollbacks:
        axes.axvline(
            mark.t,
            color=FAILED,
            linestyle="--",
            linewidth=1.6,
            zorder=5,
            gid=f"rollback-{axes.get_gid()}-{mark.t:g}",
        )
        if labelled:
            late = mark.t > end * 0.6  # keep the label inside the chart: left of a late line
            axes.annotate(
                f"rollback at {mark.t:g} s" + (f": {mark.detail[:80]}" if mark.detail else ""),
                (mark.t, 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(-4 if late else 4, -2),
                textcoords="offset points",
                ha="right" if late else "left",
                va="top",
                color=FAILED,
                fontsize=9,
                fontweight="bold",
                bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.85, "pad": 1},
                zorder=6,
            )


def _timeline_legend(versions: list[str], colour: dict, marks: list[Mark]) -> list:
    handles: list = [Patch(color=colour[v], label=f"{v[:12]} serving") for v in versions]
    handles.append(Patch(color="#999999", alpha=0.3, label="starting (not yet healthy)"))
    handles.append(Patch(facecolor="white", edgecolor="#666666", hatch="////", label="draining"))
    kinds = {m.kind for m in marks}
    for kind, (shape, size, label) in MARKS.items():
        if kind in kinds:
            face = "#f9a825" if kind == "canary" else "white"
            handles.append(
                Line2D([], [], marker=shape, ms=size * 0.9, mfc=face, mec="black", ls="", label=label)
            )
    if "rollback" in kinds:
        handles.append(Line2D([], [], color=FAILED, ls="--", label="rollback"))
    return handles


# ---- the DR drill trend -------------------------------------------------------------------


def drill_trend(
    reports: list[dict],
    goals: dict[str, float] | None = None,
    fmt: str = "svg",
    current: str | None = None,
    size: tuple[float, float] = (10, 5.6),
) -> str | bytes:
    """RTO and RPO of each drill by date, against their goals; failed drills marked with their cause.

    `reports` are drill reports as written (`DrillReport.as_json()`); `goals` maps
    `rto_seconds`/`rpo_seconds` to seconds, else the newest report's own `goals` if it has them;
    `current`: the id of a drill to highlight (the one a report is about); `size` in inches.
    """
    goals = goals or next((r["goals"] for r in reversed(reports) if r.get("goals")), {})
    figure = Figure(figsize=size, layout="constrained")
    rto_axes, rpo_axes = figure.subplots(2, 1, sharex=True)
    when = [_started(r) for r in reports]
    for axes, key, name in ((rto_axes, "rto_seconds", "RTO"), (rpo_axes, "rpo_seconds", "RPO")):
        _draw_figure_series(axes, reports, when, key, name, goals.get(key))
    highlighted = [w for w, r in zip(when, reports, strict=True) if r["id"] == current]
    for w in highlighted:
        for axes in (rto_axes, rpo_axes):
            axes.axvline(w, color="#fbc02d", linewidth=14, alpha=0.35, zorder=0)
        rto_axes.annotate(
            "this drill",
            (w, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(0, 3),
            textcoords="offset points",
            ha="center",
            fontsize=9,
        )
    rto_axes.set_title(
        "DR drills: recovery time (RTO) and data loss window (RPO)", loc="left", fontweight="bold"
    )
    if not reports:
        rto_axes.text(0.5, 0.5, "no drill recorded yet", ha="center", transform=rto_axes.transAxes)
    locator = mdates.AutoDateLocator(minticks=3, maxticks=8)
    rpo_axes.xaxis.set_major_locator(locator)
    rpo_axes.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    rpo_axes.set_xlabel("drill started (UTC)")
    if when:
        margin = max((max(when) - min(when)) * 0.08, datetime.timedelta(hours=1))
        rpo_axes.set_xlim(min(when) - margin, max(when) + margin)
    handles = [
        Line2D([], [], marker="o", color=PASSED, ls="", label="passed"),
        Line2D([], [], marker="X", color=FAILED, ms=9, ls="", label="failed (cause)"),
    ]
    if goals:
        handles.append(Line2D([], [], color=GOAL, ls="--", label="goal"))
    figure.legend(handles=handles, loc="outside lower center", ncols=3, frameon=False)
    return render(figure, fmt)


def _started(report: dict) -> datetime.datetime:
    return datetime.datetime.fromisoformat(report["started"].replace("Z", "+00:00")).replace(tzinfo=None)


def _draw_figure_series(axes, reports: list[dict], when: list, key: str, name: str, goal) -> None:
    measured = [(w, r[key]) for w, r in zip(when, reports, strict=True) if r.get(key) is not None]
    top = max([v for _, v in measured] + [goal or 0, 1.0]) * 1.25
    if measured:
        axes.plot(*zip(*measured, strict=True), color="#90a4ae", linewidth=1, zorder=1)
    for w, report in zip(when, reports, strict=True):
        value = report.get(key)
        if report.get("ok"):
            axes.plot(w, value, "o", color=PASSED, ms=7, zorder=3, gid=f"passed-{key}-{report['id']}")
            continue
        # A drill that failed before measuring this figure sits on the axis, still marked.
        axes.plot(
            w,
            value or 0,
            "X",
            color=FAILED,
            ms=10,
            zorder=3,
            clip_on=False,
            gid=f"failed-{key}-{report['id']}",
        )
        axes.annotate(
            failure_cause(report) + ("" if value is not None else f" (no {name})"),
            (w, value or 0),
            xytext=(6, 8),
            textcoords="offset points",
            color=FAILED,
            fontsize=9,
            fontweight="bold",
        )
    if measured:  # the newest figure, readable without hovering
        newest_when, newest = measured[-1]
        axes.annotate(
            f"latest {newest:g} s",
            (newest_when, newest),
            xytext=(-6, -14),
            textcoords="offset points",
            ha="right",
            fontsize=9,
        )
    if goal is not None:
        axes.axhline(goal, color=GOAL, linestyle="--", linewidth=1.2, zorder=2, gid=f"goal-{key}")
        axes.annotate(
            f"{name} goal {goal:g} s",
            (0, goal),
            xycoords=("axes fraction", "data"),
            xytext=(4, 3),
            textcoords="offset points",
            color=GOAL,
            fontsize=9,
        )
    axes.set_ylim(0, top)
    axes.set_ylabel(f"{name} (seconds)")
    axes.grid(axis="y", color="#e0e0e0", linewidth=0.6)


def failure_cause(report: dict) -> str:
    """The cause of a drill's first failed check, e.g. `checksum-mismatch`."""
    causes = [c.get("cause") or c["name"] for c in report.get("checks", []) if not c.get("ok")]
    if causes:
        return causes[0]
    return report["failures"][0].split(": ")[1] if report.get("failures") else "failed"
