"""Rolling out a role that takes no traffic (the worker) on the in-memory provider: judged by its
role's health_command, never put behind the load balancer, stopped as its drain, zone by zone
within the policy, rolled back, resumed after a kill; and the roles that may not roll out."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kiln.config import parse
from kiln.environments import Environment, EnvironmentSpec
from kiln.errors import KilnError, OperationFailed
from kiln.providers.fake import Crash, FakeProvider, Script
from kiln.rollout import lifecycle
from kiln.rollout.engine import Engine
from kiln.settings import Settings
from tests.conftest import REPO, copy_project

ZONES, WORKERS = 2, 4


def approve(env, what):
    return None


class WorkerRig:
    """web 1.0 behind the load balancer and worker 1.0 up on the fake; worker 2.0 baked."""

    def __init__(
        self,
        tmp_path,
        script: Script | None = None,
        instances: dict | None = None,
        project: Path = REPO,
        settings: dict | None = None,  # more of the environment file
    ):
        data = {
            "provider": "local",  # any registered name: the Engine is handed a FakeProvider
            "zones": [f"z{i}" for i in range(ZONES)],
            "instances": instances or {"web": 2, "worker": WORKERS},
            "frontend": {"port": 0},
            "health": {"timeout": 0.5, "rise": 2, "interval": 0.001},
            "rollout": {"drain_timeout": 0},
            **(settings or {}),
        }
        self.env = Environment(
            "wk", parse(EnvironmentSpec, data, "environments/wk.yml"), "environments/wk.yml"
        )
        self.settings = Settings(project_root=project, state_dir=tmp_path)
        self.provider = FakeProvider(self.settings, self.env, script)
        for role in self.env.spec.instances:
            self.provider.add_image(role, "1.0")
        lifecycle.up(self.engine())
        self.after_up = len(self.provider.changes)
        self.provider.add_image("worker", "2.0")

    def engine(self) -> Engine:
        return Engine(self.settings, self.env, self.provider, lambda line: None)

    def workers(self) -> dict[str, str]:
        return {i.name: i.version for i in self.provider.instances("worker")}

    def worker_changes(self) -> list[tuple[str, str]]:
        return [(c.action, c.instance) for c in self.provider.changes[self.after_up :]]

    def assert_never_short(self) -> None:
        """Per zone, from `up` on: never fewer workers running than the zone's count (surge first)."""
        running = {z: self.env.zone_count("worker", z) for z in range(ZONES)}
        for action, name in self.worker_changes():
            zone = self.env.zone_of(int(name.removeprefix("worker")))
            running[zone] += {"launch": 1, "terminate": -1}[action]
            assert running[zone] >= self.env.zone_count("worker", zone), (action, name)


def test_a_worker_rolls_out_zone_by_zone_without_the_load_balancer(tmp_path):
    rig = WorkerRig(tmp_path)
    web_servers = set(rig.provider.lb_servers())
    done = lifecycle.deploy(rig.engine(), approve, role="worker")
    assert (done.role, done.state.status) == ("worker", "succeeded")
    assert set(rig.workers().values()) == {"2.0"} and len(rig.workers()) == WORKERS
    # Launches and stops only: no worker was ever registered, drained or deregistered.
    assert {action for action, _ in rig.worker_changes()} == {"launch", "terminate"}
    assert set(rig.provider.lb_servers()) == web_servers
    rig.assert_never_short()
    # Zone by zone: every launch of z1 comes after the last stop of z0.
    order = [(a, rig.env.zone_of(int(n.removeprefix("worker")))) for a, n in rig.worker_changes()]
    last_z0 = max(i for i, (_, zone) in enumerate(order) if zone == 0)
    assert all(zone == 1 for _, zone in order[last_z0 + 1 :]) and order[0][1] == 0
    [record] = rig.engine().store.read_audit()
    assert (record["role"], record["from"], record["to"]) == ("worker", "1.0", "2.0")


def test_a_worker_whose_health_command_never_passes_is_rolled_back(tmp_path):
    rig = WorkerRig(tmp_path, Script(never_healthy={"2.0"}))
    with pytest.raises(
        OperationFailed, match=r"health_command passed 0/2 did not pass its role's health_command"
    ):
        lifecycle.deploy(rig.engine(), approve, role="worker")
    assert set(rig.workers().values()) == {"1.0"} and len(rig.workers()) == WORKERS
    rig.assert_never_short()


def test_rollback_and_resume_follow_the_role_the_rollout_was_of(tmp_path):
    rig = WorkerRig(tmp_path)
    lifecycle.deploy(rig.engine(), approve, role="worker")
    undone = lifecycle.rollback(rig.engine(), approve)  # no role named: the record says worker
    assert (undone.role, undone.status) == ("worker", "rolled-back")
    assert set(rig.workers().values()) == {"1.0"}

    rig.provider.script.crash_before = len(rig.provider.changes) + 3
    with pytest.raises(Crash):
        lifecycle.deploy(rig.engine(), approve, role="worker", image="2.0")
    rig.provider.revive()
    done = lifecycle.deploy(rig.engine(), approve, resume=True)  # again no role named
    assert (done.role, done.state.status) == ("worker", "succeeded")
    assert set(rig.workers().values()) == {"2.0"} and len(rig.workers()) == WORKERS


@pytest.mark.parametrize(
    ("instances", "role", "message"),
    [
        (
            {"web": 2, "worker": 2, "db": 1},
            "db",
            r"db does not roll out: a database rolls out through its standby: set instances.db: 2",
        ),
        (
            {"web": 2, "worker": 2},
            "cron",
            r"environments/wk.yml runs no cron instances \(it runs web, worker\)",
        ),
        # a role of its own (see the test) with no health_command
        ({"web": 2, "worker": 2, "cron": 1}, "cron", r"images/cron/role.yml declares no health_command"),
        # the fake provider's load balancer is a managed one, like a cloud's
        ({"web": 2, "worker": 2}, "lb", r"lb does not roll out on the \w+ provider: .* managed service"),
    ],
    ids=["db", "not-in-environment", "no-health-command", "managed-load-balancer"],
)
def test_roles_that_cannot_roll_out_are_refused_before_any_change(tmp_path, instances, role, message):
    project = copy_project(tmp_path / "project")
    (project / "images" / "cron").mkdir()
    (project / "images" / "cron" / "role.yml").write_text(
        "name: cron\ndescription: no health\nparent: base\n"
    )
    shutil.copy(project / "cloud-init" / "worker.yml.j2", project / "cloud-init" / "cron.yml.j2")
    rig = WorkerRig(tmp_path, instances=instances, project=project)
    with pytest.raises(KilnError, match=message):
        lifecycle.deploy(rig.engine(), approve, role=role)
    assert len(rig.provider.changes) == rig.after_up
    assert rig.engine().store.load() is None


def test_failover_without_a_standby_is_refused_before_any_change(tmp_path):
    from kiln.failover import failover

    rig = WorkerRig(tmp_path, instances={"web": 2, "db": 1})
    with pytest.raises(KilnError, match=r"field 'instances.db': 1 db instance, so no standby to promote"):
        failover(rig.engine(), lambda line: None)
    assert len(rig.provider.changes) == rig.after_up
