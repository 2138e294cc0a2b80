"""Rolling a release manifest (kiln/release.py) out to an environment, role by role.

Every role is checked before anything changes: its image exists and may be deployed here, and
it can roll out (db only with a standby: without one a manifest may list it only at the version
that runs; lb only where the load balancer runs Kiln's lb image, and is skipped elsewhere).
Roles the environment does not run are skipped, so one manifest serves environments of different
shapes (a DR environment without workers). The roles then roll out in the manifest's order under
one lock; the first failure is rolled back by the engine as any rollout is, and stops the release:
the roles before it stay on their new versions, the ones after it are not touched. Each role's
rollout record names the release, and the release gets an audit line of its own.
"""

from __future__ import annotations

import dataclasses
import getpass
from dataclasses import dataclass

from kiln.errors import KilnError, OperationFailed
from kiln.release import Release
from kiln.rollout.engine import Engine
from kiln.rollout.lifecycle import Approve, approve_change, engine_for, image_of, why_not_rolled_out
from kiln.rollout.planning import majority_version, require_deployable
from kiln.stamps import utc_iso


@dataclass(frozen=True)
class ReleaseStep:
    role: str
    from_version: str | None  # what most of its instances run now
    to_version: str
    action: str  # "roll out", "unchanged", or "skip: <why>"
    status: str = "planned"  # then: succeeded, rolled-back, not started

    def line(self) -> str:
        if self.action == "roll out":
            return f"{self.role}: {self.from_version or '(none)'} -> {self.to_version}"
        return f"{self.role}: {self.action} ({self.to_version})"


def plan_release(engine: Engine, release: Release) -> list[ReleaseStep]:
    """What the release would do here, role by role, refusing (KilnError) before any change."""
    env, steps = engine.env, []
    for role, wanted in release.versions.items():
        if role == "lb":
            steps.append(load_balancer_step(engine, wanted))
            continue
        if not env.count(role):
            steps.append(ReleaseStep(role, None, wanted, f"skip: {env.file} runs no {role} instances"))
            continue
        instances = engine.provider.instances(role)
        running = majority_version(instances)
        why = why_not_rolled_out(env, role)
        if why:
            target = image_of(engine.provider, role, wanted)
            if target.version != running:
                raise KilnError(
                    f"{release.file}: {role} {target.version} differs from the {running} that runs in "
                    f"{env.name}, and {role} does not roll out: {why}"
                )
            steps.append(ReleaseStep(role, running, target.version, "unchanged"))
            continue
        role_engine = engine_for(engine, role)
        target = image_of(role_engine.provider, role, wanted)
        require_deployable(target, env)
        mixed = len({i.version for i in instances}) > 1
        action = "unchanged" if target.version == running and not mixed else "roll out"
        steps.append(ReleaseStep(role, running, target.version, action))
    return steps


def load_balancer_step(engine: Engine, wanted: str) -> ReleaseStep:
    if not engine.provider.lb_from_image:
        return ReleaseStep("lb", None, wanted, "skip: the cloud's managed load balancer runs no lb image")
    versions = engine.provider.lb_versions()
    target = image_of(engine.provider, "lb", wanted)
    require_deployable(target, engine.env)
    action = "unchanged" if versions == [target.version] else "roll out"  # two running: converge
    return ReleaseStep("lb", versions[0] if versions else None, target.version, action)


def deploy_release(engine: Engine, approve: Approve, release: Release) -> list[ReleaseStep]:
    """Roll the release out (see the module's docstring); the steps with their outcome. Raises
    OperationFailed naming the role that failed once that role is rolled back."""
    steps = plan_release(engine, release)
    approve_change(engine, approve, f"roll out release {release.name} to")
    started, done = utc_iso(), []
    with engine.store.lock("release"):
        for index, step in enumerate(steps):
            if step.action != "roll out":
                kept = "skipped" if step.action.startswith("skip") else "unchanged"
                done.append(dataclasses.replace(step, status=kept))
                continue
            role_engine = engine_for(engine, step.role)
            target = role_engine.provider.image(step.role, step.to_version)
            state = role_engine.start(target)
            state.release = release.name
            engine.say(f"release {release.name}: {step.line()}")
            try:
                role_engine.run(state, target)
            except OperationFailed as exc:
                done.append(dataclasses.replace(step, status="rolled-back"))
                rest = [dataclasses.replace(s, status="not started") for s in steps[index + 1 :]]
                record(engine, release, started, done + rest, "stopped")
                shipped = [s.role for s in done if s.status == "succeeded"]
                raise OperationFailed(
                    f"release {release.name} stopped at {step.role}: {exc}; "
                    + (f"{', '.join(shipped)} stay on the release's versions; " if shipped else "")
                    + (f"not started: {', '.join(s.role for s in rest)}" if rest else "nothing after it")
                ) from exc
            done.append(dataclasses.replace(step, status="succeeded"))
        record(engine, release, started, done, "succeeded")
    return done


def record(engine: Engine, release: Release, started: str, steps: list[ReleaseStep], status: str) -> None:
    engine.store.append_record(
        {
            "action": "release",
            "release": release.name,
            "environment": engine.env.name,
            "user": getpass.getuser(),
            "started_at": started,
            "ended_at": utc_iso(),
            "status": status,
            "roles": [
                {
                    "role": s.role,
                    "from": s.from_version,
                    "to": s.to_version,
                    "action": s.action,
                    "status": s.status,
                }
                for s in steps
            ],
        }
    )
