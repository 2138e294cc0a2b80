"""Kiln's command line: each task parses its arguments and calls the kiln library.

Run `invoke --list` for the tasks and `invoke --help TASK` for one task's options.
"""

import sys

from invoke import task

from kiln import audit as audits
from kiln import images as image_catalog
from kiln import locks
from kiln import rollout as rollouts
from kiln import verify as verification
from kiln.bake import Baker, dump_json, images_table
from kiln.cli import kiln_task, print_table, settings
from kiln.console import say
from kiln.images import docker_client, image_store

TARGET_HELP = "docker (default) or qemu: whose images"


@task(
    help={
        "role": "role to bake (a folder under images/)",
        "target": "docker (default, this machine), qemu (a VM disk, this machine), amazon-ebs or openstack",
        "force": "rebake the role even when an image of its version exists",
        "locked": "fail instead of resolving when the role's packages.lock is missing or stale",
        "verify": "verify the chain's unverified images (default; --no-verify leaves them baked)",
    }
)
@kiln_task
def bake(c, role, target="docker", force=False, locked=False, verify=True):
    """Bake a role's golden image (and any missing or stale parent) with Packer, then verify it."""
    baker = Baker(settings(), target)
    outcomes = baker.bake(role, force=force, locked=locked)
    for outcome in outcomes:
        print(f"{outcome.role}\t{outcome.version}\t{outcome.image}")
    if verify and baker.local:
        roles = [(o.role, o.version) for o in outcomes]
        verification.report(verification.verify_chain(settings(), roles, target))


@task(
    help={
        "role": "role whose image to verify",
        "version": "image version (default: the newest)",
        "target": "docker (a throwaway container, default) or qemu (a throwaway VM over SSH)",
    }
)
@kiln_task
def verify(c, role, version=None, target="docker"):
    """Run the role's testinfra suites in a throwaway container or VM; mark the image verified or rejected."""
    verification.report([verification.verifier_for(settings(), target).verify(role, version)])


@task(
    help={
        "role": "role whose image to audit",
        "version": "image version (default: the newest)",
        "json": "print the figures as JSON",
        "target": "docker (a throwaway container, default) or qemu (a throwaway VM)",
    }
)
@kiln_task
def audit(c, role, version=None, json=False, target="docker"):
    """Score an image with Lynis and OpenSCAP (ANSSI BP-028) in a throwaway container or VM."""
    result = audits.auditor_for(settings(), target).audit(role, version)
    print(dump_json(result.as_json()) if json else audits.render(result))
    if not result.passed:
        raise audits.OperationFailed(f"audit of {role} {result.version} missed: {'; '.join(result.misses)}")


@task(help={"role": "only this role's images", "json": "print JSON, not a table", "target": TARGET_HELP})
@kiln_task
def images(c, role=None, json=False, target="docker"):
    """List baked images with their version, status, lock hash and freshness."""
    store = image_store(settings(), target)
    rows = images_table(store.list(role))
    if json:
        print(dump_json(rows))
    else:
        columns = ["role", "version", "status", "lock-hash", "security-pending", "lynis-index", "scap-score"]
        columns += ["built", "image"]
        print_table(rows, columns)


@task(
    help={
        "role": "role whose image to promote",
        "version": "image version (default: the newest)",
        "target": TARGET_HELP,
    }
)
@kiln_task
def promote(c, role, version=None, target="docker"):
    """Mark a verified image promoted: the only kind an environment with require_promoted deploys."""
    record = image_catalog.promote(image_store(settings(), target), role, version)
    say(f"{record.image} is promoted ({record.labels.get('kiln.promoted', '')})")
    print(f"{record.role}\t{record.version}\t{record.image}")


@task(
    help={
        "keep": "newest images to keep per role",
        "yes": "remove them (without it: only show the plan)",
        "target": TARGET_HELP,
    }
)
@kiln_task
def prune(c, keep=3, yes=False, target="docker"):
    """Remove old images: keeps each role's newest, promoted ones, those containers use, and parents."""
    store = image_store(settings(), target)
    decisions = image_catalog.prune(store, int(keep), remove=yes)
    print_table([d.as_row() for d in decisions], ["image", "status", "action", "why"])
    gone = sum(not d.keep for d in decisions)
    if yes:
        say(f"removed {gone} of {len(decisions)} images")
    else:
        say(f"would remove {gone} of {len(decisions)} images: add --yes to remove them")


@task(help={"role": "role to render", "target": "docker, amazon-ebs or openstack"})
@kiln_task
def render(c, role, target="docker"):
    """Write a role's Packer template for a target and `packer validate` it."""
    path, version = Baker(settings(), target).render(role)
    print(f"{role}\t{version}\t{path}")


@task(help={"role": "role whose packages.lock to re-resolve", "update": "write the new lock"})
@kiln_task
def lock(c, role, update=False):
    """Re-resolve a role's packages against the mirror and show the diff to its lock."""
    baker = Baker(settings())
    target_role = baker.catalog.get(role)
    parent_image, _ = baker.parent_of(target_role)
    old = locks.read_lock(target_role)
    resolution = locks.resolve(baker.client, parent_image, target_role, baker.settings)
    changes = locks.diff(old, resolution)
    print(changes.render())
    if update:
        locks.write_lock(target_role, resolution.lock)
        say(f"wrote {target_role.display(target_role.lock_file)}")
    elif not changes.is_empty():
        say(f"run `invoke lock {role} --update` to write these changes")


@task(help={"unit": "only the fast unit tests (no Docker, no Packer)", "k": "pytest -k filter"})
def test(c, unit=False, k=""):
    """Lint (ruff, shellcheck) and run the test suite, integration tests included."""
    python = sys.executable  # the venv's, so a bare `.venv/bin/invoke test` finds its tools
    c.run(f"{python} -m ruff check .", echo=True)
    c.run(
        "shellcheck -x setup.sh .ci/run provisioners/*.sh images/*/files/etc/kiln/start.d/* "
        "images/base/files/usr/local/sbin/*",
        echo=True,
    )
    selection = "-m 'not integration'" if unit else ""
    keyword = f"-k '{k}'" if k else ""
    c.run(f"{python} -m pytest {selection} {keyword}", echo=True, pty=False)


@task(help={"env": "environment name: environments/<env>.yml"})
@kiln_task
def up(c, env):
    """Create an environment: zone networks, load balancer, instances from verified images."""
    engine = rollouts.open_engine(env, say)
    with engine.store.lock(engine.env, "up"):
        rollouts.up(engine)
    print(engine.provider.frontend())


@task(help={"env": "environment name", "json": "print JSON (frontend, instances) instead of a table"})
@kiln_task
def status(c, env, json=False):
    """Show an environment's instances: zone, role, version, health and load-balancer state."""
    view = rollouts.status(rollouts.open_engine(env, say).provider)
    if json:
        print(dump_json(view))
        return
    print(f"frontend: {view['frontend'] or '(no load balancer)'}")
    print_table(view["instances"], ["name", "zone", "role", "version", "health", "lb_state"])


@task(
    help={
        "env": "environment name",
        "role": "role to roll out (the load-balanced one, web by default)",
        "image": "image version to roll out (default: the newest verified)",
        "plan": "print exactly what would change, change nothing",
        "resume": "continue an interrupted or paused rollout",
        "yes": "do not ask before changing a protected environment",
    }
)
@kiln_task
def rollout(c, env, role=None, image=None, plan=False, resume=False, yes=False):
    """Replace instances zone by zone behind the load balancer; roll back by itself on failure."""
    engine = rollouts.open_engine(env, say)
    if role and role != engine.role:
        raise rollouts.KilnError(f"only {engine.role}, the load-balanced role, rolls out; not '{role}'")
    if plan:
        state = engine.start(engine.provider.image(engine.role, image))
        steps = rollouts.plan(engine.env, engine.role, engine.provider.instances(engine.role),
                              state["to"], state["zones"])
        if not steps:
            print(f"nothing to do: {env} runs {engine.role} {state['to']} everywhere")
            return
        print(f"{env}: {engine.role} {state['from']} -> {state['to']}, {len(steps)} steps")
        for step in steps:
            print(rollouts.describe(engine.env, engine.role, step))
        return
    rollouts.confirm(engine.env, yes, "roll out to")
    with engine.store.lock(engine.env, "rollout"):
        if resume:
            state = engine.store.load()
            if not state or state["status"] not in rollouts.ACTIVE:
                raise rollouts.KilnError(f"no interrupted or paused rollout of {env} to resume")
            engine.state = state
            if state["status"] == "rolling-back":
                result = engine.roll_back(state["from"])
            else:
                result = engine.run(state, engine.provider.image(engine.role, state["to"]), resumed=True)
        else:
            target = engine.provider.image(engine.role, image)
            state = engine.start(target)
            if not state["zones"]:
                print(f"nothing to do: {env} runs {engine.role} {target.version} everywhere")
                return
            result = engine.run(state, target)
    print(f"rollout {result['id']} {result['status']}: {engine.role} {result['from']} -> {result['to']}"
          f" in {result['seconds']} s")
    print(f"timeline: {result['timeline']}")


@task(help={"env": "environment name", "yes": "do not ask before changing a protected environment"})
@kiln_task
def rollback(c, env, yes=False):
    """Undo the last rollout: every zone back to the previous image, surge first."""
    engine = rollouts.open_engine(env, say)
    rollouts.confirm(engine.env, yes, "roll back")
    with engine.store.lock(engine.env, "rollback"):
        engine.state = rollouts.start_rollback(engine)
        result = engine.roll_back(engine.state["from"])
    print(f"rollback {result['id']} {result['status']}: {engine.role} back to {result['from']}")
    print(f"timeline: {result['timeline']}")


@task(help={"env": "environment name", "yes": "do not ask before removing a protected environment"})
@kiln_task
def down(c, env, yes=False):
    """Remove an environment's instances, load balancer and networks (the audit log stays)."""
    engine = rollouts.open_engine(env, say)
    rollouts.confirm(engine.env, yes, "remove")
    with engine.store.lock(engine.env, "down"):
        removed = engine.provider.destroy()
        engine.store.state_file.unlink(missing_ok=True)
    print(f"removed {len(removed)}: {', '.join(removed) or 'nothing'}")


@task(help={"env": "environment name: environments/<env>.yml", "type": "full (default), diff or incr"})
@kiln_task
def backup(c, env, type="full"):
    """Back up an environment: PostgreSQL with pgBackRest, uploaded files with restic (both encrypted)."""
    from kiln import backup as backups
    from kiln.backup.base import human_size

    backups.require_kind(type)
    config = backups.backup_settings(settings(), env)
    for record in backups.take_backup(settings(), env, type, config, docker_client()):
        print(f"{record.tool}\t{record.kind}\t{record.id}\t{human_size(record.size)}")


@task(help={"env": "environment name", "json": "print JSON instead of a table"})
@kiln_task
def backups(c, env, json=False):
    """List an environment's backups: tool, kind, id, age and size."""
    from kiln import backup as backup_tools
    from kiln.backup.base import human_age, human_size

    config = backup_tools.backup_settings(settings(), env)
    rows = [r.as_json() for r in backup_tools.list_backups(settings(), env, config, docker_client())]
    if json:
        print(dump_json(rows))
        return
    for row in rows:
        row["age"], row["size"], row["stored"] = (
            human_age(row["age_seconds"]), human_size(row["size"]), human_size(row["stored"]))
    print_table(rows, ["tool", "kind", "id", "finished", "age", "size", "stored"])


@task(
    help={
        "env": "environment whose backups to restore",
        "target_time": "point in time to restore to, ISO 8601 with a zone (default: everything archived)",
        "keep": "keep the DR environment running after the drill",
    }
)
@kiln_task
def dr_drill(c, env, target_time=None, keep=False):
    """Restore the backups into a fresh DR environment, verify the data, smoke-test, report RTO/RPO."""
    from kiln import backup as backup_tools
    from kiln.drill import Drill, parse_target_time
    from kiln.errors import OperationFailed

    if target_time:
        parse_target_time(target_time)  # bad input stops here, before anything is created
    config = backup_tools.backup_settings(settings(), env)
    report = Drill(settings(), env, config, target_time, keep, docker_client()).run()
    verdict = "passed" if report.ok else "failed"
    print(f"{report.id}\t{verdict}\trto={report.rto_seconds}\trpo={report.rpo_seconds}")
    if not report.ok:
        causes = ", ".join(f"{c.name}: {c.cause}" for c in report.failures)
        raise OperationFailed(f"drill {report.id} failed ({causes})")


@task(help={"json": "print the history as JSON"})
@kiln_task
def drills(c, json=False):
    """Show the DR drill history and write a chart of RTO and RPO over past drills (SVG)."""
    from kiln.drill import chart_svg, load_history

    history = load_history(settings())
    chart = settings().state_dir / "drills" / "chart.svg"
    chart.parent.mkdir(parents=True, exist_ok=True)
    chart.write_text(chart_svg(history))
    if json:
        print(dump_json(history))
        return
    rows = [{**r, "result": "passed" if r["ok"] else "FAILED", "failures": "; ".join(r["failures"])[:80]}
            for r in history]
    print_table(rows, ["id", "env", "result", "rto_seconds", "rpo_seconds", "failures"])
    say(f"chart: {chart}")


@task(help={"env": "environment name", "mb": "MiB to load: 4/5 database rows, 1/5 uploaded files"})
@kiln_task
def load_data(c, env, mb=64):
    """Load realistic, poorly compressible data through the app: records in PostgreSQL and files."""
    from kiln.backup.load import load_data as load

    print(dump_json(load(docker_client(), env, int(mb))))
