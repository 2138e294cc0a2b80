"""Release manifests: loading and diffing them, and rolling one out role by role on the in-memory
provider (in order, one lock, stopped and rolled back at the first failing role, audited)."""

from __future__ import annotations

import json

import pytest

from kiln import release as manifests
from kiln.errors import KilnError, OperationFailed
from kiln.providers.fake import Script
from kiln.rollout import releases
from tests.unit.test_worker_rollout import WorkerRig, approve


def write(project, name: str, body: str) -> None:
    (project / "releases").mkdir(exist_ok=True)
    (project / "releases" / f"{name}.yml").write_text(body)


def release_of(rig, name: str):
    return manifests.load(rig.settings, name)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("roles: []\n", r"releases/r.yml: field 'roles': list at least one role"),
        (
            "roles: [{role: web, version: a, extra: 1}]\n",
            r"releases/r.yml: field 'roles\[0\].extra': unknown field",
        ),
        (
            "roles: [{role: cron, version: a}]\n",
            r"field 'roles\[0\].role': unknown role 'cron'; known: base, db",
        ),
        (
            "roles: [{role: web, version: a}, {role: web, version: b}]\n",
            r"field 'roles\[1\].role': 'web' is listed twice",
        ),
        ("roles: [{role: web, version: 3}]\n", r"field 'roles\[0\].version': expected a string"),
    ],
)
def test_a_bad_manifest_names_its_file_and_field(project, settings, body, message):
    write(project, "r", body)
    with pytest.raises(KilnError, match=message):
        manifests.load(settings, "r")


def test_an_unknown_release_lists_the_known_ones(project, settings):
    write(project, "2026-12", "roles: [{role: web, version: a}]\n")
    with pytest.raises(KilnError, match=r"unknown release 'nope'; known releases: 2026-12\. To make one"):
        manifests.load(settings, "nope")


def test_diff_says_what_changed_in_the_second_releases_order(project, settings):
    write(
        project, "a", "roles: [{role: web, version: w1}, {role: db, version: d1}, {role: lb, version: l1}]\n"
    )
    write(
        project,
        "b",
        "roles: [{role: worker, version: k1}, {role: web, version: w2}, {role: db, version: d1}]\n",
    )
    changes = manifests.diff(manifests.load(settings, "a"), manifests.load(settings, "b"))
    assert [(c.role, c.kind, c.before, c.after) for c in changes] == [
        ("worker", "added", None, "k1"),
        ("web", "changed", "w1", "w2"),
        ("db", "unchanged", "d1", "d1"),
        ("lb", "removed", "l1", None),
    ]


def test_a_two_role_release_rolls_out_in_its_order_and_is_audited(tmp_path, project):
    rig = WorkerRig(tmp_path, project=project)
    rig.provider.add_image("web", "2.0")
    write(
        project,
        "r1",
        "description: both\nroles: [{role: worker, version: '2.0'}, {role: web, version: '2.0'}]\n",
    )
    asked = []
    steps = releases.deploy_release(rig.engine(), lambda env, what: asked.append(what), release_of(rig, "r1"))
    assert [(s.role, s.from_version, s.to_version, s.status) for s in steps] == [
        ("worker", "1.0", "2.0", "succeeded"),
        ("web", "1.0", "2.0", "succeeded"),
    ]
    assert asked == []  # not protected: nobody is asked
    launched = [c.instance for c in rig.provider.changes[rig.after_up :] if c.action == "launch"]
    assert all(n.startswith("worker") for n in launched[:4]) and all(
        n.startswith("web") for n in launched[4:]
    )
    audit = rig.engine().store.read_audit()
    assert [(r["action"], r.get("role"), r["release"], r["status"]) for r in audit] == [
        ("rollout", "worker", "r1", "succeeded"),
        ("rollout", "web", "r1", "succeeded"),
        ("release", None, "r1", "succeeded"),
    ]


def test_a_failing_role_stops_the_release_and_is_rolled_back(tmp_path, project):
    rig = WorkerRig(tmp_path, Script(never_healthy={"bad"}), project=project)
    rig.provider.add_image("web", "bad")
    write(
        project,
        "r2",
        "roles: [{role: worker, version: '2.0'}, {role: web, version: bad}, {role: db, version: '1.0'}]\n",
    )
    with pytest.raises(
        OperationFailed, match=r"release r2 stopped at web: .*rolled back to 1.0.*; worker stay"
    ):
        releases.deploy_release(rig.engine(), approve, release_of(rig, "r2"))
    assert set(rig.workers().values()) == {"2.0"}
    assert {i.version for i in rig.provider.instances("web")} == {"1.0"}
    last = rig.engine().store.read_audit()[-1]
    assert (last["action"], last["status"]) == ("release", "stopped")
    assert [(r["role"], r["status"]) for r in last["roles"]] == [
        ("worker", "succeeded"),
        ("web", "rolled-back"),
        ("db", "not started"),
    ]


def test_what_cannot_roll_out_is_refused_before_any_change_and_absent_roles_are_skipped(tmp_path, project):
    rig = WorkerRig(tmp_path, instances={"web": 2, "worker": 2, "db": 1}, project=project)
    rig.provider.add_image("db", "2.0")
    write(project, "db2", "roles: [{role: worker, version: '2.0'}, {role: db, version: '2.0'}]\n")
    with pytest.raises(
        KilnError, match=r"releases/db2.yml: db 2.0 differs from the 1.0 that runs in wk, and db does not"
    ):
        releases.deploy_release(rig.engine(), approve, release_of(rig, "db2"))
    assert len(rig.provider.changes) == rig.after_up and rig.engine().store.read_audit() == []

    write(project, "lb", "roles: [{role: lb, version: '1.0'}, {role: worker, version: '2.0'}]\n")
    plan = releases.plan_release(rig.engine(), release_of(rig, "lb"))
    assert [s.line() for s in plan] == [
        "lb: skip: the cloud's managed load balancer runs no lb image (1.0)",  # the fake's is one
        "worker: 1.0 -> 2.0",
    ]


def test_a_protected_environment_is_asked_once_for_the_whole_release(tmp_path, project):
    rig = WorkerRig(tmp_path, project=project)
    rig.env = type(rig.env)(
        rig.env.name, type(rig.env.spec)(**{**rig.env.spec.__dict__, "protected": True}), rig.env.file
    )
    write(project, "r1", "roles: [{role: worker, version: '2.0'}]\n")
    asked = []

    def refuse(env, what):
        asked.append(what)
        raise KilnError("not confirmed")

    with pytest.raises(KilnError, match="not confirmed"):
        releases.deploy_release(rig.engine(), refuse, release_of(rig, "r1"))
    assert asked == ["roll out release r1 to"] and len(rig.provider.changes) == rig.after_up
    assert json.dumps(rig.engine().store.read_audit()) == "[]"
