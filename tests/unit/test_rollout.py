"""The rollout plan and its rules, the lock, the state record, confirmation, and the tasks."""

import json
from pathlib import Path

import pytest
from invoke import Exit, MockContext

import tasks
from kiln.cli import confirm
from kiln.config import parse
from kiln.environments import Environment, EnvironmentSpec
from kiln.errors import KilnError
from kiln.images import ImageRecord
from kiln.providers.base import Instance
from kiln.rollout import planning as rollout
from kiln.rollout.state import RolloutState, Store
from kiln.settings import Settings


def make_env(web=3, zones=3, protected=False, require_promoted=False, **policy) -> Environment:
    data = {
        "provider": "local",
        "zones": [f"z{i}" for i in range(zones)],
        "instances": {"web": web},
        "frontend": {"port": 0},
        "rollout": {"canary": 0, **policy},
        "protected": protected,
        "require_promoted": require_promoted,
    }
    return Environment("t", parse(EnvironmentSpec, data, "t.yml"), "environments/t.yml")


def fleet(env: Environment, version: str = "old", numbers=None) -> list[Instance]:
    numbers = numbers or range(1, env.count("web") + 1)
    return [Instance(f"web{n}", "web", env.zone_of(n), version, f"10.0.0.{n}", True) for n in numbers]


def test_surge_one_replaces_one_instance_at_a_time_in_zone_order():
    env = make_env(web=3)
    steps = rollout.plan(env, "web", fleet(env), "new", [0, 1, 2])
    assert [(s.zone, s.drain_first, s.launch, s.retire) for s in steps] == [
        (0, [], [6], ["web3"]),
        (1, [], [4], ["web1"]),
        (2, [], [5], ["web2"]),
    ]


def test_canary_goes_alone_first_then_the_zone_in_surge_batches():
    env = make_env(web=6, max_surge=2, canary=1)
    steps = rollout.plan(env, "web", fleet(env), "new", [0, 1, 2])
    assert [(s.zone, len(s.launch), len(s.retire), s.canary) for s in steps] == [
        (0, 1, 1, True),
        (0, 1, 1, False),
        (1, 2, 2, False),
        (2, 2, 2, False),
    ]


def test_capacity_never_exceeds_surge_nor_drops_below_unavailable():
    env = make_env(web=9, max_surge=1, max_unavailable=1)
    current = fleet(env)
    for zone in range(3):
        while step := rollout.next_step(env, "web", zone, current, "new", {i.name for i in current}):
            in_zone = [i for i in current if i.zone == zone]
            serving_low = len(in_zone) - len(step.drain_first)
            serving_high = serving_low + len(step.launch)
            assert serving_low >= 3 - 1, step
            assert serving_high <= 3 + 1, step
            current = rollout.simulate(step, current, "web", "new")
    assert {i.version for i in current} == {"new"} and len(current) == 9


def test_no_surge_drains_first():
    env = make_env(web=3, zones=1, max_surge=0, max_unavailable=1)
    step = rollout.next_step(env, "web", 0, fleet(env), "new", set())
    assert (len(step.drain_first), len(step.launch), step.retire) == (1, 1, [])


def test_rollback_removes_unhealthy_new_instances_without_launching():
    env = make_env(web=2, zones=1)
    current = [*fleet(env), Instance("web3", "web", 0, "bad", "", True)]
    step = rollout.next_step(env, "web", 0, current, "old", {"web1", "web2"})
    assert (step.launch, step.retire) == ([], ["web3"])


def test_rollback_of_a_finished_zone_surges_old_instances_back():
    env = make_env(web=2, zones=1)
    steps = rollout.plan(env, "web", fleet(env, "new", [3, 4]), "old", [0])
    assert [(s.launch, s.retire) for s in steps] == [([1], ["web3"]), ([2], ["web4"])]


def test_nothing_to_do_when_all_run_the_target():
    env = make_env(web=3)
    assert rollout.plan(env, "web", fleet(env, "new"), "new", [0, 1, 2]) == []


def test_new_numbers_stay_in_their_zone_and_reuse_freed_ones():
    assert rollout.free_numbers(3, 1, {1, 4}, 2) == [7, 10]
    assert rollout.free_numbers(3, 0, {6}, 1) == [3]


def test_describe_says_what_changes():
    env = make_env(web=3, canary=1)
    (first, *_) = rollout.plan(env, "web", fleet(env), "new", [0, 1, 2])
    assert rollout.describe(env, "web", first) == (
        "zone z0 (canary): launch web6 and wait until healthy; then drain and remove web3"
    )


def record(status: str) -> ImageRecord:
    return ImageRecord("web", "abc", status, "kiln/web:abc", "sha256:1", {})


@pytest.mark.parametrize(
    ("status", "message"),
    [("baked", "is baked, not verified"), ("rejected", "was rejected by verification")],
)
def test_unverified_and_rejected_images_are_refused(status, message):
    with pytest.raises(KilnError, match=message):
        rollout.require_deployable(record(status), make_env())


def test_verified_and_promoted_images_deploy():
    rollout.require_deployable(record("verified"), make_env())
    rollout.require_deployable(record("promoted"), make_env())


def test_an_environment_that_requires_promotion_refuses_a_merely_verified_image():
    prod = make_env(require_promoted=True)
    with pytest.raises(KilnError) as refused:
        rollout.require_deployable(record("verified"), prod)
    assert str(refused.value) == (
        "kiln/web:abc is verified but not promoted, and environments/t.yml deploys only promoted images "
        "(require_promoted): once it has proved itself elsewhere, run `invoke promote web --version abc`"
    )
    rollout.require_deployable(record("promoted"), prod)
    assert prod.deployable == ("promoted",)


def test_majority_version_is_the_previous_one():
    env = make_env(web=3)
    current = [*fleet(env, "a", [1, 2]), *fleet(env, "b", [3])]
    assert rollout.majority_version(current) == "a"
    assert rollout.majority_version([]) is None


def test_lock_refuses_a_second_holder_and_frees_on_exit(tmp_path):
    env = make_env()
    store = Store(Settings(project_root=tmp_path, state_dir=tmp_path), env.name)
    with (
        store.lock("rollout"),
        pytest.raises(KilnError, match=r"locked by rollout \(\S+ pid \d+ in .*\) since \d{4}-"),
        store.lock("rollout"),
    ):
        pass
    with store.lock("rollback"):
        pass


def test_state_is_saved_atomically_and_reloaded(tmp_path):
    env = make_env()
    store = Store(Settings(project_root=tmp_path, state_dir=tmp_path), env.name)
    state = RolloutState("t", "web", "1.0", "2.0", [0, 2], id="1")
    store.save(state)
    assert store.load() == state
    saved = json.loads(store.state_file.read_text())
    assert (saved["from"], saved["to"], saved["status"]) == ("1.0", "2.0", "running")
    assert [p.name for p in store.folder.iterdir()] == ["rollout.json"]


def test_a_rollback_record_undoes_its_rollout():
    rolled = RolloutState("t", "web", "1.0", "2.0", [0, 1], id="r1", status="paused", done=[0])
    undo = rolled.rollback()
    assert (undo.action, undo.undoes, undo.status, undo.from_version) == (
        "rollback",
        "r1",
        "rolling-back",
        "1.0",
    )
    assert undo.id != rolled.id and undo.done == []


def test_protected_environment_needs_yes_or_its_name(monkeypatch):
    prod = make_env(protected=True)
    monkeypatch.setattr("kiln.cli.os.isatty", lambda fd: False)
    with pytest.raises(KilnError, match=r"environments/t.yml is protected: pass --yes to roll out to it"):
        confirm(False)(prod, "roll out to")
    confirm(True)(prod, "roll out to")
    monkeypatch.setattr("kiln.cli.os.isatty", lambda fd: True)
    confirm(False, ask=lambda prompt: "t")(prod, "roll out to")
    with pytest.raises(KilnError, match="not confirmed: t is unchanged"):
        confirm(False, ask=lambda prompt: "yes")(prod, "roll out to")


def test_audit_log_appends_lines(tmp_path):
    store = Store(Settings(project_root=tmp_path, state_dir=tmp_path), "t")
    store.append_audit(RolloutState("t", "web", "1.0", "2.0", [0], id="1", status="succeeded"))
    store.append_audit(RolloutState("t", "web", "2.0", "3.0", [0], id="2", status="rolled-back"))
    audit = store.read_audit()
    assert [(r["id"], r["status"], r["action"]) for r in audit] == [
        ("1", "succeeded", "rollout"),
        ("2", "rolled-back", "rollout"),
    ]
    assert "events" not in audit[0]


def test_rollout_task_with_unknown_environment_exits_2(monkeypatch, tmp_path: Path):
    (tmp_path / "environments").mkdir()
    monkeypatch.setenv("KILN_PROJECT_ROOT", str(tmp_path))
    with pytest.raises(Exit) as exc:
        tasks.rollout(MockContext(), "nope", plan=True)
    assert exc.value.code == 2
    assert str(exc.value.message) == (
        "kiln: unknown environment 'nope'; known environments: none. "
        "To add one, create environments/nope.yml (copy environments/local.yml)"
    )


def test_status_task_with_a_bad_environment_file_exits_2(monkeypatch, tmp_path: Path):
    (tmp_path / "environments").mkdir()
    (tmp_path / "environments" / "t.yml").write_text("provider: local\nzones: [a]\n")
    monkeypatch.setenv("KILN_PROJECT_ROOT", str(tmp_path))
    with pytest.raises(Exit) as exc:
        tasks.status(MockContext(), "t", json=True)
    assert exc.value.code == 2
    assert "environments/t.yml: field 'instances': required field is missing" in str(exc.value.message)


def test_surplus_instances_of_the_target_go_unhealthy_first():
    env = make_env(web=1, zones=1)
    current = [*fleet(env, "new", [1, 2, 3])]
    step = rollout.next_step(env, "web", 0, current, "new", {"web1", "web3"})
    assert (step.launch, sorted(step.retire)) == ([], ["web2", "web3"])
