"""The rollout scenario every provider must pass, written once: test_rollout.py runs it on
containers (local), test_qemu_provider.py on VMs (qemu), through `invoke` as a user would.

A rollout under bounded loopback load fails no request and leaves every zone serving the new
version; a bad image (its health check fails) is refused while it is rejected and, marked
verified as if verification had missed the fault, is rolled back by the rollout itself, never
serving a request.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from benchmarks.load import Load
from tests.integration.conftest import KilnRun


def status(run: KilnRun, env: str) -> dict:
    return json.loads(run.invoke("status", env, "--json").stdout)


def balanced(run: KilnRun, env: str, role: str) -> list[dict]:
    return [i for i in status(run, env)["instances"] if i["role"] == role]


def assert_all_serving(run: KilnRun, env: str, role: str, version: str, zones: list[str]) -> None:
    """The role's instances: in the zones given, all of `version`, healthy, in service."""
    rows = balanced(run, env, role)
    assert sorted(i["zone"] for i in rows) == sorted(zones), rows
    assert {(i["version"], i["health"], i["lb_state"]) for i in rows} == {(version, "healthy", "ready")}, rows


def roll_out_under_load(run: KilnRun, env: str, role: str, target: str, seconds: float) -> tuple:
    """`invoke rollout --image target` under load: it succeeds with no failed request, both
    versions answer on the way, and every zone serves the target after. (The finished process,
    the load's figures.)"""
    before = balanced(run, env, role)
    zones = [i["zone"] for i in before]
    (running,) = {i["version"] for i in before}
    with Load(status(run, env)["frontend"], workers=2, max_seconds=seconds) as load:
        proc = run.invoke("rollout", env, "--image", target, timeout=int(seconds) + 300)
    assert f"-> {target}" in proc.stdout and "succeeded" in proc.stdout, proc.stdout
    assert load.failed == 0, load.summary()
    assert load.requests > 100 and {running, target} <= set(load.versions), load.summary()
    assert_all_serving(run, env, role, target, zones)
    return proc, load.summary()


def bad_image_rolls_back(
    run: KilnRun, env: str, role: str, bad: str, mark: Callable[[str], None], seconds: float
) -> dict:
    """`mark(status)` sets the bad image's status; it is left rejected whatever happens. The
    load's figures."""
    before = status(run, env)["instances"]
    zones = [i["zone"] for i in before if i["role"] == role]
    (running,) = {i["version"] for i in before if i["role"] == role}
    refused = run.invoke("rollout", env, "--image", bad, check=False)
    assert refused.returncode == 2 and "was rejected by verification" in refused.stderr, refused.stderr
    mark("verified")
    try:
        with Load(status(run, env)["frontend"], workers=2, max_seconds=seconds) as load:
            proc = run.invoke("rollout", env, "--image", bad, check=False, timeout=int(seconds) + 300)
    finally:
        mark("rejected")  # or the next `up` would deploy it as the newest verified image
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "did not pass the load balancer's health check" in proc.stderr, proc.stderr
    assert f"rolled back to {running}" in proc.stderr, proc.stderr
    assert load.failed == 0, load.summary()
    assert bad not in load.versions, "the bad version must never serve a request"
    assert_all_serving(run, env, role, running, zones)
    assert sorted(i["name"] for i in status(run, env)["instances"]) == sorted(i["name"] for i in before)
    return load.summary()
