"""The HTML reports of a rollout and a drill, rendered from recorded runs and parsed back."""

from __future__ import annotations

import os
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from kiln import htmlreport
from tests.unit import recorded
from tests.unit.svgread import Chart

GOALS = {"rto_seconds": 60.0, "rpo_seconds": 5.0}


class Page(HTMLParser):
    """Elements, the text of each table row, and every external reference a browser would fetch."""

    def __init__(self, html: str):
        super().__init__()
        self.tags: list[str] = []
        self.fetched: list[str] = []
        self.rows: list[list[str]] = []
        self.text: list[str] = []
        self.svg = html[html.index("<svg") : html.index("</svg>") + len("</svg>")]
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("src", "href", "xlink:href", "data", "action") and not (value or "").startswith("#"):
                self.fetched.append(value)
            if name == "style" and re.search(r"url\((?!#)", value or ""):  # url(#id) is this page
                self.fetched.append(value)
        if tag == "tr":
            self.rows.append([])

    def handle_data(self, data):
        if data.strip():
            self.text.append(data.strip())
            if self.rows and "tr" in self.tags:
                self.rows[-1].append(data.strip())

    def row(self, first: str) -> list[str]:
        return next(r for r in self.rows if r and r[0] == first)


def assert_self_contained(page: Page) -> None:
    assert not page.fetched, page.fetched
    assert not {"script", "link", "img", "iframe", "object"} & set(page.tags)
    assert "@import" not in "".join(page.text)


@pytest.fixture(scope="module")
def rolled_back() -> Page:
    record, samples = recorded.rollout("rolled-back")
    return Page(htmlreport.rollout_html(record, recorded.ZONES, samples, canary=1))


def test_rollout_report_has_verdict_figures_picture_and_every_step(rolled_back):
    page = rolled_back
    assert_self_contained(page)
    text = " ".join(page.text)
    assert "Rollout 20261130-140211-a3f0: local" in text and "rolled-back" in text
    assert "web4: L7STS/500 did not pass the load balancer's health check in 30 s" in text
    for figure in ("44.1", "1 of 3", "seconds in all", "zones done", "canary"):
        assert figure in page.text
    chart = Chart.parse(page.svg)  # the timeline, inline
    assert [t for t in chart.texts() if t.startswith("zone ")] == ["zone z0", "zone z1", "zone z2"]
    assert chart.marks("rollback-")
    record, _ = recorded.rollout("rolled-back")
    steps = [r for r in page.rows if r and r[0].replace(".", "").isdigit() and "T14:" in r[1]]
    assert [(r[0], r[2]) for r in steps] == [(f"{e['t']}", e["action"]) for e in record["events"]]


def test_rollout_report_lists_zones_and_health_checks(rolled_back):
    page = rolled_back
    assert page.row("z1")[1].startswith("failed here: web4")
    zones = [(r[0], r[1]) for r in page.rows if r and r[0] in recorded.ZONES]
    assert zones[0] == ("z0", "rolled out") and ("z2", "not reached") in zones
    assert ("z1", "rolled back") in zones and ("z0", "rolled back") in zones
    assert page.row("web4")[1:4] == ["8d02e6b1a9c5", "z1", "never passed"]
    assert page.row("web6")[1:] == ["8d02e6b1a9c5", "z0", "passed", "0.9", "3.3"]


def test_a_rollback_record_and_a_paused_rollout_report_their_zones():
    record, _ = recorded.rollout("rolled-back")
    undo = {**record, "action": "rollback", "undoes": "20261129-101500-77aa", "failure": None}
    page = Page(htmlreport.rollout_html(undo, recorded.ZONES))
    assert page.text[0] == "Rollback 20261130-140211-a3f0: local"
    assert [(r[0], r[1]) for r in page.rows if r and r[0] in recorded.ZONES][:2] == [
        ("z0", "rolled out"),
        ("z1", "rolled back"),
    ]
    assert not any(r[1].startswith("failed here") for r in page.rows if len(r) > 1)
    record, _ = recorded.rollout("succeeded")
    paused = {**record, "status": "paused", "done": [0], "zone_timings": {"z0": record["zone_timings"]["z0"]}}
    page = Page(htmlreport.rollout_html(paused, recorded.ZONES))
    assert page.row("z1")[1] == page.row("z2")[1] == "not reached (paused)"


def test_rollout_report_escapes_what_it_quotes():
    record, samples = recorded.rollout("rolled-back")
    hostile = '<script>alert("x")</script> & <img src=http://example.invalid/x>'
    record = {**record, "failure": hostile, "user": "<b>eve</b>"}
    record["events"] = [*record["events"], {**record["events"][-1], "instance": hostile}]
    html = htmlreport.rollout_html(record, recorded.ZONES, samples)
    page = Page(html)
    assert_self_contained(page)
    assert "script" not in page.tags
    assert hostile in " ".join(page.text) and "by <b>eve</b>," in " ".join(page.text)


@pytest.fixture(scope="module")
def failed_drill() -> Page:
    history = recorded.drills()
    return Page(htmlreport.drill_html(history[3], history, GOALS))


def test_drill_report_names_the_cause_and_lists_every_check(failed_drill):
    page = failed_drill
    assert_self_contained(page)
    text = " ".join(page.text)
    assert "DR drill 20261128-020500-001c: local" in text and "FAILED" in page.text
    assert "tables: checksum-mismatch" in page.text
    assert "a restored table differs from the source" in text  # the cause, in words
    drill = recorded.drills()[3]
    for check in drill["checks"]:
        row = page.row(check["name"])
        assert row[1] == ("ok" if check["ok"] else f"FAILED ({check['cause']})")
        assert row[2] == f"{check['seconds']:.1f}"
    for value, label in (
        ("44.9", "RTO (s), goal 60"),
        ("2.1", "RPO (s), goal 5"),
        ("9 of 10", "checks passed"),
    ):
        assert page.text[page.text.index(label) - 1] == value


def test_drill_report_charts_the_history_with_this_drill_highlighted(failed_drill):
    chart = Chart.parse(failed_drill.svg)
    assert "this drill" in chart.texts() and "RTO goal 60 s" in chart.texts()
    assert "goal-rpo_seconds" in chart.ids() and chart.marks("failed-")


def test_a_drill_that_stopped_early_reports_what_it_could_not_measure():
    drill = recorded.drills()[2]
    page = Page(htmlreport.drill_html(drill))
    assert "restore: missing-wal" in page.text and "not measured" in page.text
    assert [r[0] for r in page.rows[1:5]] == [
        "source reference",
        "dr environment",
        "pre-check repositories",
        "restore",
    ]


def test_latest_report_is_the_newest_rollout_or_drill_page(tmp_path: Path):
    assert htmlreport.latest_report(tmp_path, "local") is None
    rollout_page = htmlreport.rollout_report_path(tmp_path, "local", "20261130-140211-a3f0")
    drill_page = htmlreport.drill_report_path(tmp_path, "local", "20261130-020500-001e")
    other_env = htmlreport.drill_report_path(tmp_path, "staging", "20261201-000000-0000")
    for age, path in ((200, rollout_page), (100, drill_page), (0, other_env)):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("<!doctype html>")
        os.utime(path, (1_800_000_000 - age, 1_800_000_000 - age))
    assert htmlreport.latest_report(tmp_path, "local") == drill_page
    os.utime(rollout_page, (1_800_000_001, 1_800_000_001))
    assert htmlreport.latest_report(tmp_path, "local") == rollout_page
