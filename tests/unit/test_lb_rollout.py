"""The engine's lb rollout (kiln/rollout/balancer.py) on the fake provider, given an lb image.

The handover itself (Docker, HAProxy's -x) is tests/integration/test_lb_rollout.py's; here the
provider records what the engine asks of it: which version to hand over to, with what
user-data, and what it reports running.
"""

from __future__ import annotations

import pytest

from kiln.config import parse
from kiln.environments import Environment, EnvironmentSpec
from kiln.errors import KilnError, OperationFailed
from kiln.providers.fake import FakeProvider
from kiln.rollout import lifecycle, releases
from kiln.rollout.engine import Engine
from kiln.settings import Settings
from tests.unit.test_release import release_of, write


class HandingOver(FakeProvider):
    """A fake whose load balancer runs lb images, as the local provider's does."""

    lb_from_image = True

    def __init__(self, settings, env):
        super().__init__(settings, env)
        self.lb = ["1.0"]  # HAProxy versions running, oldest first
        self.handovers: list[tuple[str, str]] = []  # (version, user-data) per handover asked
        self.refusing: set[str] = set()  # versions that never take the frontend over

    def lb_versions(self) -> list[str]:
        return list(self.lb)

    def replace_lb(self, image, user_data, say) -> None:
        self.handovers.append((image.version, user_data))
        if image.version in self.refusing:
            raise OperationFailed(f"kiln-lb-{image.version} did not take the frontend over in 1 s")
        self.lb = [image.version]


def approve(env, what) -> None:
    pass


@pytest.fixture
def rig(tmp_path, project):
    data = {
        "provider": "local",
        "zones": ["z0", "z1"],
        "instances": {"web": 2},
        "frontend": {"port": 0},
        "health": {"timeout": 0.5, "rise": 2, "interval": 0.001},
        "rollout": {"drain_timeout": 0},
    }
    env = Environment("lbt", parse(EnvironmentSpec, data, "environments/lbt.yml"), "environments/lbt.yml")
    provider = HandingOver(Settings(project_root=project, state_dir=tmp_path / "state"), env)
    for role, version in (("web", "1.0"), ("lb", "1.0"), ("lb", "2.0"), ("lb", "3.0")):
        provider.add_image(role, version)
    engine = Engine(provider.settings, env, provider, say=lambda line: None)
    lifecycle.up(engine)
    return engine


def test_an_lb_rollout_hands_over_once_and_is_recorded(rig):
    plan = lifecycle.plan_rollout(rig, role="lb", image="2.0")
    assert (plan.role, plan.from_version, plan.to_version, len(plan.steps)) == ("lb", "1.0", "2.0", 3)
    done = lifecycle.deploy(rig, approve, role="lb", image="2.0")
    assert (done.role, done.state.status, done.state.from_version) == ("lb", "succeeded", "1.0")
    [(version, user_data)] = rig.provider.handovers
    assert version == "2.0" and user_data.startswith("#cloud-config") and '"role": "lb"' in user_data
    assert rig.provider.lb == ["2.0"]
    [record] = rig.store.read_audit()
    assert (record["role"], record["from"], record["to"], record["status"]) == (
        "lb",
        "1.0",
        "2.0",
        "succeeded",
    )
    assert [e["action"] for e in done.state.events] == ["load balancer handed over"]

    again = lifecycle.deploy(rig, approve, role="lb", image="2.0")
    assert again.state is None and lifecycle.plan_rollout(rig, role="lb", image="2.0").steps == []

    back = lifecycle.rollback(rig, approve)
    assert (back.role, back.status) == ("lb", "rolled-back") and rig.provider.lb == ["1.0"]


def test_an_lb_that_never_takes_over_is_rolled_back_and_the_old_one_left_alone(rig):
    rig.provider.refusing.add("3.0")
    with pytest.raises(OperationFailed, match=r"rollout of lb to 3.0 failed: kiln-lb-3.0 did not take"):
        lifecycle.deploy(rig, approve, role="lb", image="3.0")
    assert rig.provider.lb == ["1.0"] and [v for v, _ in rig.provider.handovers] == ["3.0"]
    assert rig.store.read_audit()[-1]["status"] == "rolled-back"


def test_a_handover_interrupted_with_two_haproxies_running_converges(rig):
    rig.provider.lb = ["1.0", "2.0"]  # the process died after the new one started
    done = lifecycle.deploy(rig, approve, role="lb", image="2.0")
    assert done.state.from_version == "1.0" and rig.provider.lb == ["2.0"]


def test_a_release_rolls_lb_out_in_its_order(rig, project):
    write(project, "r", "roles: [{role: lb, version: '2.0'}, {role: web, version: '1.0'}]\n")
    steps = releases.deploy_release(rig, approve, release_of(rig, "r"))
    assert [(s.role, s.action, s.status) for s in steps] == [
        ("lb", "roll out", "succeeded"),
        ("web", "unchanged", "unchanged"),
    ]
    assert rig.provider.lb == ["2.0"]


def test_no_load_balancer_running_is_one_line(rig):
    rig.provider.lb = []
    with pytest.raises(KilnError, match=r"environment lbt has no load balancer running: run `invoke up lbt`"):
        lifecycle.deploy(rig, approve, role="lb", image="2.0")
