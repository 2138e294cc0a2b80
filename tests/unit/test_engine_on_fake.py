"""The rollout engine on the in-memory provider: rollback, resume after a kill at every step,
reconcile, capacity limits and the lock. No Docker: the whole file runs in seconds.

A kill is the fake provider raising `Crash` (a BaseException, as uncatchable by Kiln as SIGKILL)
before its Nth change; `revive` and a new Engine stand for the next `invoke rollout --resume`.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from pathlib import Path

import pytest

from kiln.config import parse
from kiln.environments import Environment, EnvironmentSpec
from kiln.errors import KilnError, OperationFailed
from kiln.providers.fake import Crash, FakeProvider, Script
from kiln.rollout import lifecycle
from kiln.rollout.engine import Engine
from kiln.settings import Settings
from tests.conftest import REPO

WEB, ZONES = 4, 2
# A clean 1.0 -> 2.0 rollout of 4 instances changes 5 things per instance:
# launch, register, drain, deregister, terminate.
ROLLOUT_CHANGES = 5 * WEB
# A canary that never turns healthy: launch, register, then back out: drain, deregister, terminate.
FAILED_CANARY_CHANGES = 5


def approve(env, what):  # the CLI's --yes
    return None


def make_env(protected: bool = False, notify: dict | None = None, **policy) -> Environment:
    data = {
        "protected": protected,
        "notify": notify,
        "provider": "local",  # any registered name: the tests hand the Engine a FakeProvider
        "zones": [f"z{i}" for i in range(ZONES)],
        "instances": {"web": WEB},
        "frontend": {"port": 0},
        "health": {"timeout": 0.3, "rise": 2},
        "rollout": {"drain_timeout": 0, **policy},
    }
    return Environment("fk", parse(EnvironmentSpec, data, "environments/fk.yml"), "environments/fk.yml")


class Rig:
    """An environment up at web 1.0 on the fake, with 2.0 baked and verified."""

    def __init__(self, tmp_path, script: Script | None = None, notify: dict | None = None, **policy):
        self.settings = Settings(project_root=REPO, state_dir=tmp_path)
        self.env = make_env(notify=notify, **policy)
        self.provider = FakeProvider(self.settings, self.env, script)
        self.provider.add_image("web", "1.0")
        self.said: list[str] = []
        lifecycle.up(self.engine())
        self.after_up = len(self.provider.changes)
        self.provider.add_image("web", "2.0")

    def engine(self) -> Engine:
        """A fresh Engine: what a new `invoke` process would build."""
        return Engine(self.settings, self.env, self.provider, self.said.append)

    def versions(self) -> dict[str, str]:
        return {i.name: i.version for i in self.provider.instances("web")}

    def assert_settled_at(self, version: str) -> None:
        """Every zone has its count of `version`, all registered, ready and healthy; nothing else."""
        web = self.provider.instances("web")
        assert {i.version for i in web} == {version}
        for zone in range(ZONES):
            assert sum(i.zone == zone for i in web) == self.env.zone_count("web", zone)
        servers = self.provider.lb_servers()
        assert set(servers) == {i.name for i in web}
        assert all(s.healthy and s.state == "ready" for s in servers.values())

    def assert_capacity_held(self) -> None:
        """From `up` on, per zone: never more than desired + max_surge instances, never fewer than
        desired - max_unavailable serving."""
        policy = self.env.spec.rollout
        for change in self.provider.changes[self.after_up :]:
            for zone in range(ZONES):
                desired = self.env.zone_count("web", zone)
                assert change.instances_per_zone[zone] <= desired + policy.max_surge, change
                assert change.serving_per_zone[zone] >= desired - policy.max_unavailable, change


@pytest.mark.parametrize(
    ("max_surge", "max_unavailable"),
    [(1, 0), (2, 0), (1, 1), (0, 1)],
    ids=["surge1", "surge2", "mixed", "drain"],
)
def test_a_rollout_converges_every_zone_within_the_policy(tmp_path, max_surge, max_unavailable):
    rig = Rig(tmp_path, max_surge=max_surge, max_unavailable=max_unavailable)
    done = lifecycle.deploy(rig.engine(), approve)
    assert done.state is not None and done.state.status == "succeeded"
    assert (done.state.from_version, done.state.to_version) == ("1.0", "2.0")
    rig.assert_settled_at("2.0")
    rig.assert_capacity_held()
    [record] = rig.engine().store.read_audit()
    assert (record["status"], record["action"], record["from"], record["to"]) == (
        "succeeded",
        "rollout",
        "1.0",
        "2.0",
    )


def test_a_clean_rollout_makes_the_changes_the_kill_tests_walk_through(tmp_path):
    rig = Rig(tmp_path)
    lifecycle.deploy(rig.engine(), approve)
    actions = [c.action for c in rig.provider.changes[rig.after_up :]]
    assert len(actions) == ROLLOUT_CHANGES
    assert {a: actions.count(a) for a in set(actions)} == dict.fromkeys(
        ("launch", "register", "drain", "deregister", "terminate"), WEB
    )


def test_nothing_to_do_when_every_instance_runs_the_image(tmp_path):
    rig = Rig(tmp_path)
    done = lifecycle.deploy(rig.engine(), approve, image="1.0")
    assert done.state is None and done.version == "1.0"
    assert len(rig.provider.changes) == rig.after_up


def test_an_image_that_never_turns_healthy_is_rolled_back(tmp_path):
    rig = Rig(tmp_path, Script(never_healthy={"2.0"}))
    with pytest.raises(
        OperationFailed, match=r"did not pass the load balancer's health check.*rolled back to 1.0"
    ):
        lifecycle.deploy(rig.engine(), approve)
    rig.assert_settled_at("1.0")
    rig.assert_capacity_held()
    state = rig.engine().store.load()
    assert state is not None and state.status == "rolled-back" and "health check" in state.failure
    actions = [c.action for c in rig.provider.changes[rig.after_up :]]
    assert len(actions) == FAILED_CANARY_CHANGES  # only the canary was ever touched


def test_a_launch_the_cloud_refuses_is_rolled_back(tmp_path):
    rig = Rig(tmp_path, Script(launch_fails={"2.0"}))
    before = rig.versions()
    with pytest.raises(OperationFailed, match="the cloud refused to start web"):
        lifecycle.deploy(rig.engine(), approve)
    assert rig.versions() == before
    rig.assert_settled_at("1.0")


def test_a_quota_without_room_to_surge_fails_safely_and_draining_first_fits(tmp_path):
    rig = Rig(tmp_path / "surge", Script(capacity=WEB))
    with pytest.raises(OperationFailed, match="quota exceeded"):
        lifecycle.deploy(rig.engine(), approve)
    rig.assert_settled_at("1.0")

    drain_first = Rig(tmp_path / "drain", Script(capacity=WEB), max_surge=0, max_unavailable=1)
    assert lifecycle.deploy(drain_first.engine(), approve).state.status == "succeeded"
    drain_first.assert_settled_at("2.0")
    drain_first.assert_capacity_held()


@pytest.mark.parametrize("killed_before", range(ROLLOUT_CHANGES))
def test_a_rollout_killed_at_any_step_resumes_to_the_end(tmp_path, killed_before):
    rig = Rig(tmp_path)
    rig.provider.script.crash_before = rig.after_up + killed_before
    with pytest.raises(Crash):
        lifecycle.deploy(rig.engine(), approve)
    assert rig.engine().store.load().status == "running"  # what a SIGKILL leaves
    rig.provider.revive()
    changes = len(rig.provider.changes)
    with pytest.raises(KilnError, match="is running: continue it with `invoke rollout fk --resume`"):
        lifecycle.deploy(rig.engine(), approve)  # a new rollout is refused before any change
    assert len(rig.provider.changes) == changes

    done = lifecycle.deploy(rig.engine(), approve, resume=True)
    assert done.state.status == "succeeded"
    rig.assert_settled_at("2.0")
    rig.assert_capacity_held()
    # Nothing done before the kill is redone: an instance launched then is registered, not replaced.
    launches = [c for c in rig.provider.changes[rig.after_up :] if c.action == "launch"]
    assert len(launches) == WEB


@pytest.mark.parametrize("killed_before", range(FAILED_CANARY_CHANGES))
def test_a_failing_rollout_killed_at_any_step_still_ends_rolled_back(tmp_path, killed_before):
    rig = Rig(tmp_path, Script(never_healthy={"2.0"}))
    rig.provider.script.crash_before = rig.after_up + killed_before
    with pytest.raises(Crash):
        lifecycle.deploy(rig.engine(), approve)
    rig.provider.revive()
    # Killed before the failure showed, the resumed rollout finds it again and rolls back.
    try:
        state = lifecycle.deploy(rig.engine(), approve, resume=True).state
    except OperationFailed as exc:
        assert "rolled back to 1.0 automatically" in str(exc)
        state = rig.engine().store.load()
    assert state.status == "rolled-back"
    rig.assert_settled_at("1.0")
    rig.assert_capacity_held()


def test_reconcile_finishes_what_a_crash_left_half_done(tmp_path):
    rig = Rig(tmp_path)
    engine = rig.engine()
    provider = rig.provider
    image = provider.image("web", "2.0")
    # Launched but never registered, and an old one drained but never removed, both in zone 0.
    stray = provider.launch("web", 6, image, engine.user_data("web", "web6", 0, image))
    old = next(i for i in provider.instances("web") if i.zone == 0)
    provider.lb_drain(old)

    engine.reconcile(0, "2.0")
    engine.settle()
    servers = provider.lb_servers()
    assert servers[stray.name].healthy and servers[stray.name].state == "ready"
    assert old.name not in servers and old.name not in rig.versions()
    assert all(s.state == "ready" for s in servers.values())


def test_rollback_undoes_the_last_rollout_once(tmp_path):
    rig = Rig(tmp_path)
    rolled = lifecycle.deploy(rig.engine(), approve).state
    undone = lifecycle.rollback(rig.engine(), approve)
    assert (undone.action, undone.undoes, undone.status) == ("rollback", rolled.id, "rolled-back")
    rig.assert_settled_at("1.0")
    with pytest.raises(KilnError, match=f"rollout {undone.id} is already rolled back to 1.0"):
        lifecycle.rollback(rig.engine(), approve)
    assert [r["action"] for r in rig.engine().store.read_audit()] == ["rollout", "rollback"]


def test_the_library_takes_the_lock_and_asks_before_changing(tmp_path):
    rig = Rig(tmp_path)
    engine = rig.engine()
    with engine.store.lock("rollout"), pytest.raises(KilnError, match=r"environment fk is locked by rollout"):
        lifecycle.deploy(rig.engine(), approve)

    guarded = Engine(rig.settings, make_env(protected=True), rig.provider, rig.said.append)

    def refuse(env, what):
        raise KilnError(f"not confirmed: {env.name} is unchanged ({what})")

    for change in (lambda: lifecycle.deploy(guarded, refuse), lambda: lifecycle.down(guarded, refuse)):
        with pytest.raises(KilnError, match="not confirmed"):
            change()
    assert len(rig.provider.changes) == rig.after_up


def test_down_removes_everything_and_forgets_the_rollout(tmp_path):
    rig = Rig(tmp_path)
    lifecycle.deploy(rig.engine(), approve)
    removed = lifecycle.down(rig.engine(), approve)
    assert len(removed) == WEB + 1 and rig.provider.instances() == []
    assert rig.engine().store.load() is None
    assert len(rig.engine().store.read_audit()) == 1  # the audit log stays


# ---- what the reports and notifications are made of ---------------------------------------------


def test_a_rollout_records_what_its_timeline_and_report_draw(tmp_path):
    rig = Rig(tmp_path)
    done = lifecycle.deploy(rig.engine(), approve).state
    state = rig.engine().store.load()
    [canary] = [e for e in state.events if e["action"] == "canary"]
    first = next(e for e in state.events if e["action"] == "launched")
    assert (canary["instances"], canary["zone"]) == (first["instance"], "z0")
    removals = [e for e in state.events if e["action"] in ("draining", "deregistered", "terminated")]
    assert len(removals) == 3 * WEB
    assert all(e["version"] == "1.0" and e["zone"] in ("z0", "z1") for e in removals)
    # Samples are kept with the record, each one a change of some zone's healthy counts.
    assert state.samples and state.samples[-1]["t"] <= state.seconds
    for zone in range(ZONES):
        counts = [x["healthy"] for x in state.samples if x["zone"] == zone]
        assert counts[0] == {"1.0": WEB // ZONES} and counts[-1] == {"2.0": WEB // ZONES}
        assert all(a != b for a, b in itertools.pairwise(counts))
    page = Path(done.report)
    assert page == tmp_path / "envs" / "fk" / f"rollout-{done.id}.html" and state.report == done.report
    html = page.read_text()
    assert html.count("<svg") == 1 and f"{first['instance']} (2.0) canary" in html
    assert rig.engine().store.read_audit()[-1]["report"] == done.report


def test_a_resumed_rollout_keeps_counting_from_its_start(tmp_path):
    rig = Rig(tmp_path)
    rig.provider.script.crash_before = rig.after_up + ROLLOUT_CHANGES // 2
    with pytest.raises(Crash):
        lifecycle.deploy(rig.engine(), approve)
    rig.provider.revive()
    before = rig.engine().store.load().events
    time.sleep(1.1)  # the next `invoke rollout --resume`, a while later
    lifecycle.deploy(rig.engine(), approve, resume=True)
    after = rig.engine().store.load().events[len(before) :]
    assert after and after[0]["t"] >= before[-1]["t"] + 1.0
    times = [e["t"] for e in before + after]
    assert times == sorted(times)


def test_a_rolled_back_rollout_sends_one_message_naming_the_environment_and_the_cause(tmp_path, webhook):
    url, received = webhook
    rig = Rig(tmp_path, Script(never_healthy={"2.0"}), notify={"webhooks": [url]})
    with pytest.raises(OperationFailed):
        lifecycle.deploy(rig.engine(), approve)
    texts = [m["text"] for m in received]
    assert len(texts) == 2 and "kiln fk: rollout started" in texts[0]
    [rolled_back] = [t for t in texts if "ROLLED BACK" in t]
    assert "kiln fk: rollout ROLLED BACK" in rolled_back
    assert "cause: web6: L7STS/503 did not pass the load balancer's health check" in rolled_back
    assert "version: 1.0 -> 2.0" in rolled_back


# ---- readiness: `up` returns when every instance of every role is ready -------------------------


def web_and_db(tmp_path, script: Script) -> Engine:
    env = make_env()
    spec = dataclasses.replace(env.spec, instances={"web": WEB, "db": 1})
    env = Environment("fk", spec, env.file)
    provider = FakeProvider(Settings(project_root=REPO, state_dir=tmp_path), env, script)
    provider.add_image("web", "1.0")
    provider.add_image("db", "1.0")
    return Engine(provider.settings, env, provider, lambda line: None)


def test_up_waits_for_the_database_not_only_the_balanced_role(tmp_path):
    engine = web_and_db(tmp_path, Script(starting={"db": 5}))
    lifecycle.up(engine)
    assert engine.provider.probes["db1"] == 6  # five looks said "starting", the sixth "ready"
    rows = {row["name"]: row for row in lifecycle.status(engine.provider)["instances"]}
    assert {name: row["ready"] for name, row in rows.items()} == dict.fromkeys(rows, "ready")
    assert rows["db1"]["health"] == "running" and rows["web1"]["health"] == "healthy"


def test_up_names_the_instance_that_never_became_ready(tmp_path):
    engine = web_and_db(tmp_path, Script(starting={"db": 10**6}))
    late = r"^db1 \(starting\) not ready after 0.3 s; see `invoke status fk`"
    with pytest.raises(OperationFailed, match=late):
        lifecycle.up(engine)
    [db] = lifecycle.status(engine.provider)["instances"][:1]
    assert (db["name"], db["ready"]) == ("db1", "starting")


def test_up_without_an_image_names_the_command_that_bakes_it_and_changes_nothing(tmp_path):
    engine = web_and_db(tmp_path, Script())
    del engine.provider.images[("db", "1.0")]
    fix = r"no deployable image of db: bake and verify it with `invoke bake db`, or run `invoke up fk --bake`"
    with pytest.raises(KilnError, match=fix):
        lifecycle.up(engine)
    assert engine.provider.changes == [] and engine.provider.frontend() is None


@pytest.mark.parametrize("given", ["2.0", "fake/web:2.0"])
def test_a_rollout_takes_the_image_as_images_and_status_print_it(tmp_path, given):
    rig = Rig(tmp_path)
    assert lifecycle.plan_rollout(rig.engine(), image=given).to_version == "2.0"
    assert lifecycle.deploy(rig.engine(), approve, image=given).state.to_version == "2.0"
