"""A primary and its standby as user-data decides them (on the in-memory provider), and what a
failover report says may be lost."""

from __future__ import annotations

import re

import pytest

from kiln.failover import FailoverReport, lost_window
from tests.unit.test_worker_rollout import WorkerRig


def db_env(user_data: str) -> dict[str, str]:
    block = user_data[user_data.index("path: /etc/kiln/db.env") :]
    return dict(re.findall(r"^\s+(KILN_DB_[A-Z_]+)=(.*)$", block.split("\n  - path:")[0], re.MULTILINE))


def web_db_host(user_data: str) -> str:
    return re.search(r"KILN_DB_HOST=(\S+)", user_data)[1]


def test_db1_starts_as_the_primary_and_db2_as_its_standby_through_the_load_balancer(tmp_path):
    rig = WorkerRig(tmp_path, instances={"web": 1, "db": 2})
    primary, standby = db_env(rig.provider.user_data["db1"]), db_env(rig.provider.user_data["db2"])
    assert "KILN_DB_PRIMARY" not in primary and primary["KILN_DB_REPLICATION_PASSWORD"]
    assert standby["KILN_DB_PRIMARY"] == "lb.fake"  # whichever instance the LB routes to
    assert standby["KILN_DB_INSTANCE"] == "db2"  # its name in the primary's pg_stat_replication
    assert standby["KILN_DB_REPLICATION_PASSWORD"] == primary["KILN_DB_REPLICATION_PASSWORD"]
    assert web_db_host(rig.provider.user_data["web1"]) == "lb.fake"


def test_db1_relaunched_beside_a_running_db2_comes_back_as_its_standby(tmp_path):
    rig = WorkerRig(tmp_path, instances={"web": 1, "db": 2})
    engine = rig.engine()
    [db1] = [i for i in rig.provider.instances("db") if i.name == "db1"]
    engine.terminate(db1)  # what a failover does to the old primary
    engine.launch(1, rig.provider.image("db"), register=False)
    assert db_env(rig.provider.user_data["db1"])["KILN_DB_PRIMARY"] == "lb.fake"


def test_one_db_instance_is_reached_by_name_and_has_no_replication(tmp_path):
    rig = WorkerRig(tmp_path, instances={"web": 1, "db": 1})
    settings = db_env(rig.provider.user_data["db1"])
    assert settings["KILN_DB_NAME"] == "kiln"
    assert not {"KILN_DB_PRIMARY", "KILN_DB_REPLICATION_PASSWORD"} & set(settings)
    assert web_db_host(rig.provider.user_data["web1"]) == "db1.fake"


@pytest.mark.parametrize(
    ("state", "newest", "down", "window"),
    [
        ("stopped cleanly", 100.0, None, 0.0),  # all WAL reached the streaming standby
        ("dead", 100.0, 102.5, 2.5),
        ("dead", 100.0, 99.0, 0.0),  # HAProxy counts whole seconds: never negative
        ("dead", None, 102.5, None),  # nothing replayed yet: unknown, not zero
        ("dead", 100.0, None, None),  # the LB never saw it down
    ],
)
def test_the_lost_write_window(state, newest, down, window):
    assert lost_window(state, newest, down) == window


def test_the_report_says_lost_writes_in_one_line():
    base = dict(
        environment="shop", old_primary="db1", new_primary="db2", old_primary_state="dead",
        newest_saved_commit="2026-12-03T18:00:00.000+00:00", primary_down_since=None,
        fenced_seconds=0.4, promoted_seconds=0.9, repointed_seconds=1.1, at="2026-12-03T18:00:03Z",
    )  # fmt: skip
    assert FailoverReport(**base, lost_window_seconds=0.0).lost_writes() == "lost writes: none"
    assert FailoverReport(**base, lost_window_seconds=None).lost_writes().startswith("lost writes: unknown")
    assert (
        "in the 2.1 s after 2026-12-03T18:00:00.000+00:00"
        in FailoverReport(**base, lost_window_seconds=2.1).lost_writes()
    )
