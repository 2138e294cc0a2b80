"""The rollout timeline and the drill trend, drawn from recorded runs and read back from the SVG."""

from __future__ import annotations

import struct

import pytest

from kiln import charts, report
from kiln.drill import chart_svg
from tests.unit import recorded
from tests.unit.svgread import Chart

GOALS = {"rto_seconds": 60.0, "rpo_seconds": 5.0}


def timeline(name: str, canary: int = 1) -> tuple[Chart, list[dict]]:
    record, samples = recorded.rollout(name)
    events = report.timeline_events(record, recorded.ZONES, canary)
    title = f"local: web {record['from']} -> {record['to']} ({record['status']})"
    return Chart.parse(report.timeline_svg(samples, recorded.ZONES, title, events)), events


@pytest.fixture(scope="module")
def succeeded():
    return timeline("succeeded")


@pytest.fixture(scope="module")
def rolled_back():
    return timeline("rolled-back")


def test_events_are_derived_from_what_the_engine_records(succeeded, rolled_back):
    _, events = succeeded
    by_kind = {
        kind: [(e["instance"], e["zone"]) for e in events if e["kind"] == kind] for kind in charts.KINDS
    }
    assert by_kind["launch"] == [("web6", 0), ("web4", 1), ("web5", 2)]
    assert by_kind["healthy"] == by_kind["launch"]
    # web3, web1, web2 were running before: zone from their number, version the replaced one
    assert by_kind["drain"] == [("web3", 0), ("web1", 1), ("web2", 2)] == by_kind["removed"]
    assert by_kind["canary"] == [("web6", 0)] and by_kind["rollback"] == []
    old = next(e for e in events if e["instance"] == "web3")
    assert old["version"] == "3f9a1c2e7b44"
    assert [e["t"] for e in events] == sorted(e["t"] for e in events)

    _, events = rolled_back
    (rollback,) = [e for e in events if e["kind"] == "rollback"]
    assert rollback["t"] == 36.6 and rollback["zone"] is None
    assert "web4" in rollback["detail"] and "health check" in rollback["detail"]
    assert not any(e["kind"] == "healthy" and e["instance"] == "web4" for e in events)


def test_a_rollback_record_is_a_rollback_from_its_start_and_a_resumed_clock_goes_on():
    record, _ = recorded.rollout("succeeded")
    undo = {**record, "action": "rollback", "undoes": record["id"], "events": record["events"][:3]}
    events = report.timeline_events(undo, recorded.ZONES, canary=1)
    assert events[0]["kind"] == "rollback" and events[0]["t"] == 0.0
    assert "undoing rollout 20261130-140211-a3f0" in events[0]["detail"]
    assert not any(e["kind"] == "canary" for e in events)  # a rollback has no canary
    # Resumed 60 s of wall clock later: the new engine's clock restarts at 0.
    resumed = [
        {
            "at": "2026-11-30T14:02:11Z",
            "t": 0.9,
            "action": "launched",
            "instance": "web6",
            "version": "v2",
            "zone": "z0",
        },
        {"at": "2026-11-30T14:03:12Z", "t": 0.4, "action": "healthy", "instances": "web6"},
    ]
    times = [e["t"] for e in report.timeline_events({"events": resumed}, recorded.ZONES)]
    assert times == [0.9, 61.9]


def test_timeline_has_a_time_axis_with_ticks_and_one_row_per_zone(succeeded):
    chart, _ = succeeded
    texts = chart.texts()
    assert "seconds since the rollout started" in texts
    assert [t for t in texts if t.startswith("zone ")] == ["zone z0", "zone z1", "zone z2"]
    ticks = [float(label) for label in chart.tick_labels("x", chart.group("lanes-2"))]
    assert len(ticks) >= 5 and ticks == sorted(ticks) and ticks[0] == 0 and ticks[-1] >= 16
    for zone in range(3):  # each zone: a capacity strip and a lane per instance
        assert chart.tick_labels("y", chart.group(f"capacity-{zone}"))[0] == "0"
    assert chart.tick_labels("y", chart.group("lanes-0")) == [
        "web3 (3f9a1c2e7b44)",
        "web6 (8d02e6b1a9c5) canary",
    ]
    assert "3f9a1c2e7b44 serving" in texts and "8d02e6b1a9c5 serving" in texts


def test_timeline_marks_launch_health_drain_removal_and_the_canary(succeeded):
    chart, _ = succeeded
    for kind, instances in (
        ("launch", {"web6", "web4", "web5"}),
        ("healthy", {"web6", "web4", "web5"}),
        ("drain", {"web3", "web1", "web2"}),
        ("removed", {"web3", "web1", "web2"}),
        ("canary", {"web6"}),
    ):
        assert {mark.split("-")[1] for mark in chart.marks(f"{kind}-")} == instances, kind
        assert charts.MARKS[kind][2] in chart.texts()  # and the legend explains the mark
    assert not chart.marks("rollback-")


def test_timeline_of_a_rolled_back_rollout_shows_the_rollback_across_every_zone(rolled_back):
    chart, _ = rolled_back
    rows = {"capacity-0", "lanes-0", "capacity-1", "lanes-1", "capacity-2"}
    assert chart.marks("rollback-") == {f"rollback-{row}-36.6" for row in rows}
    label = next(t for t in chart.texts() if t.startswith("rollback at 36.6 s"))
    assert "web4" in label
    # web3 is drained, removed, and launched again by the rollback: two lives, two lanes
    assert chart.tick_labels("y", chart.group("lanes-0")).count("web3 (3f9a1c2e7b44)") == 2
    assert chart.marks("launch-web3-") == {"launch-web3-37.6"}
    assert chart.marks("drain-web4-") == {"drain-web4-36.9"} and not chart.marks("healthy-web4")


def test_timeline_keeps_its_old_call_and_escapes_its_title():
    samples = [
        {"t": 0.0, "zone": 0, "healthy": {"old": 2}},
        {"t": 1.0, "zone": 0, "healthy": {"old": 2, "new": 1}},
        {"t": 2.0, "zone": 0, "healthy": {"new": 2}},
    ]
    chart = Chart.parse(report.timeline_svg(samples, ["z0", "z1"], "t: <web> & co"))
    assert "t: <web> & co" in chart.texts()
    assert [t for t in chart.texts() if t.startswith("zone ")] == ["zone z0", "zone z1"]
    assert "old serving" in chart.texts() and "new serving" in chart.texts()
    assert chart.tick_labels("x")


def test_timeline_from_the_record_alone_still_has_a_row_per_zone():
    record, _ = recorded.rollout("rolled-back")
    events = report.timeline_events(record, recorded.ZONES, canary=1)
    chart = Chart.parse(report.timeline_svg([], recorded.ZONES, "no samples kept", events))
    assert [t for t in chart.texts() if t.startswith("zone ")] == ["zone z0", "zone z1", "zone z2"]
    assert "no instance changed here" in chart.texts()  # z2: the rollout never reached it
    assert chart.tick_labels("x", chart.group("lanes-2"))


def test_a_long_rollout_counts_in_minutes():
    # prod's policy: 60 s warm-up and up to 300 s of drain per instance make a rollout long
    events = [
        {"t": 12.0, "zone": 0, "kind": "launch", "instance": "web10", "version": "v2"},
        {"t": 95.5, "zone": 0, "kind": "healthy", "instance": "web10", "version": "v2"},
        {"t": 160.0, "zone": 0, "kind": "drain", "instance": "web1", "version": "v1"},
        {"t": 1460.0, "zone": 0, "kind": "removed", "instance": "web1", "version": "v1"},
    ]
    chart = Chart.parse(report.timeline_svg([], ["eu-west-1a"], "prod", events))
    assert "minutes:seconds since the rollout started" in chart.texts()
    ticks = chart.tick_labels("x")
    assert ticks[:3] == ["0:00", "5:00", "10:00"] and ticks[-1] == "20:00"  # ends at 24:20
    legend = [t for t in chart.texts() if t.endswith(" serving")]
    assert legend == ["v1 serving", "v2 serving"]  # the one running from the start comes first


def test_an_unknown_event_kind_is_refused():
    with pytest.raises(ValueError, match="expected one of launch"):
        charts.Mark(1.0, 0, "exploded")


@pytest.fixture(scope="module")
def trend():
    return Chart.parse(charts.drill_trend(recorded.drills(), GOALS))


def test_drill_trend_has_dates_and_seconds_on_its_axes(trend):
    texts = trend.texts()
    assert {"RTO (seconds)", "RPO (seconds)", "drill started (UTC)"} <= set(texts)
    dates = trend.tick_labels("x")
    assert {"24", "26", "28", "30"} <= set(dates) and "2026-Nov" in texts
    assert trend.tick_labels("y")[:2] == ["0", "20"]


def test_drill_trend_draws_the_goal_lines(trend):
    assert {"goal-rto_seconds", "goal-rpo_seconds"} <= trend.ids()
    assert "RTO goal 60 s" in trend.texts() and "RPO goal 5 s" in trend.texts()


def test_drill_trend_marks_each_failed_drill_with_its_cause(trend):
    history = recorded.drills()
    failed = [r["id"] for r in history if not r["ok"]]
    assert trend.marks("failed-rto_seconds-") == {f"failed-rto_seconds-{i}" for i in failed}
    assert trend.marks("failed-rpo_seconds-") == {f"failed-rpo_seconds-{i}" for i in failed}
    texts = trend.texts()
    assert texts.count("checksum-mismatch") == 2  # RTO and RPO were measured before the check failed
    assert "missing-wal (no RTO)" in texts and "missing-wal (no RPO)" in texts  # it stopped at restore


def test_drill_trend_takes_goals_from_the_reports_and_keeps_the_old_call():
    history = recorded.drills()
    history[-1]["goals"] = {"rto_seconds": 45.0}
    chart = Chart.parse(chart_svg(history))
    assert "goal-rto_seconds" in chart.ids() and "goal-rpo_seconds" not in chart.ids()
    assert "RTO goal 45 s" in chart.texts()
    empty = Chart.parse(chart_svg([]))
    assert "no drill recorded yet" in empty.texts() and "goal" not in empty.texts()


def test_a_chart_also_renders_as_png_for_a_ticket_or_a_chat():
    png = charts.drill_trend(recorded.drills(), GOALS, fmt="png", size=(6, 4))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])  # the IHDR chunk: pixels at 110 dpi
    assert (width, height) == (660, 440)
