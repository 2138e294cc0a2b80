"""Kiln's command line: each task parses its arguments and calls the kiln library.

Run `invoke --list` for the tasks and `invoke --help TASK` for one task's options.
"""

import sys
from pathlib import Path

from invoke import task

from kiln import audit as audits
from kiln import hints, lint, tls
from kiln import images as image_catalog
from kiln import verify as verification
from kiln.bake import Baker, images_table
from kiln.catalogs import image_store
from kiln.cli import PositionalUnlessFlagTask, confirm, dump_json, kiln_task, print_table, settings
from kiln.console import say
from kiln.errors import KilnError
from kiln.images import DockerImageStore, docker_client
from kiln.rollout import lifecycle

TARGET_HELP = "docker (default) or qemu: whose images"

# ---- images: bake, check, list, promote, prune ---------------------------------------------------


@task(
    klass=PositionalUnlessFlagTask,
    positional=["role"],
    unless_flag="all",
    help={
        "role": "role to bake (a folder under images/); leave it out with --all",
        "all": "every role, parents first, one at a time (they share the apt cache), then a summary",
        "target": "docker (default, this machine), qemu (a VM disk, this machine), amazon-ebs or openstack",
        "force": "rebake the role even when an image of its version exists",
        "locked": "fail instead of resolving when the role's packages.lock is missing or stale",
        "verify": "verify the chain's unverified images (default; --no-verify leaves them baked)",
    },
)
@kiln_task
def bake(c, role, all=False, target="docker", force=False, locked=False, verify=True):
    """Bake a role's golden image (and any missing or stale parent) with Packer, then verify it."""
    if all:
        from kiln import bakeall

        rows = bakeall.bake_roles(
            settings(), force=force, locked=locked, verify=verify, role=role, target=target
        )
        print_table([row.as_row() for row in rows], bakeall.COLUMNS)
        bakeall.require_none_rejected(rows)
        say(hints.after_bake(settings()))
        return
    baker = Baker(settings(), target)
    outcomes = baker.bake(role, force=force, locked=locked)
    for outcome in outcomes:
        print(f"{outcome.role}\t{outcome.version}\t{outcome.image}")
    if verify and baker.local:
        roles = [(o.role, o.version) for o in outcomes]
        verification.report(verification.verify_chain(settings(), roles, target))
        say(hints.after_bake(settings(), target=target, role=role))


@task(
    help={
        "role": "role whose image to verify",
        "version": "image version (default: the newest)",
        "target": "docker (a throwaway container, default) or qemu (a throwaway VM over SSH)",
        "reuse": "skip an image these very suites already verified (a CI rerun of an unchanged image)",
    }
)
@kiln_task
def verify(c, role, version=None, target="docker", reuse=False):
    """Run the role's testinfra suites in a throwaway container or VM; mark the image verified or rejected."""
    verification.report([verification.verifier_for(settings(), target).verify(role, version, reuse)])


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
    result.require_passed()


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
    changes, target_role = Baker(settings()).refresh_lock(role, update)
    print(changes.render())
    if update:
        say(f"wrote {target_role.display(target_role.lock_file)}")
    elif not changes.is_empty():
        say(f"run `invoke lock {role} --update` to write these changes")


# ---- the project itself --------------------------------------------------------------------------


@task(help={"out": "folder to write them to (default: schemas/ in the project)"})
@kiln_task
def schema(c, out=None):
    """Write JSON Schemas for role.yml and environment files, for editors to complete and check them."""
    from kiln.schemas import write_schemas

    for path in write_schemas(Path(out) if out else settings().project_root / "schemas"):
        print(path)


@task(
    help={
        "unit": "only the fast unit tests (no Docker, no Packer)",
        "k": "pytest -k filter",
        "vm": "also the hardened chain as VM disks (QEMU; 30-40 min more under TCG)",
    }
)
def test(c, unit=False, k="", vm=False):
    """Lint (ruff, shellcheck) and run the test suite, integration tests included."""
    python = sys.executable  # the venv's, so a bare `.venv/bin/invoke test` finds its tools
    root = Path(".")
    c.run(f"{python} -m ruff check . {' '.join(lint.python_scripts(root))}", echo=True)
    c.run(f"shellcheck -x {' '.join(lint.shell_scripts(root))}", echo=True)
    selection = "-m 'not integration'" if unit else ""
    keyword = f"-k '{k}'" if k else ""
    vms = {"KILN_TEST_VMS": "1"} if vm else {}
    c.run(f"{python} -m pytest {selection} {keyword}", echo=True, pty=False, env=vms)


# ---- environments: create, inspect, roll out, roll back, remove ----------------------------------


@task(help={"env": "environments/<env>.yml", "bake": "bake and verify missing images first"})
@kiln_task
def up(c, env, bake=False):
    """Create an environment: zone networks, load balancer, instances from verified images; returns
    when every instance of every role is ready."""
    print(lifecycle.up(lifecycle.open_engine(settings(), env, say), bake))
    say(hints.after("up", env))


@task(help={"env": "environment name", "json": "print JSON: frontend, https, certificate, instances"})
@kiln_task
def status(c, env, json=False):
    """Show an environment's instances: zone, role, version, health, readiness and load-balancer state."""
    view = lifecycle.status(lifecycle.open_engine(settings(), env, say).provider)
    if json:
        print(dump_json(view))
        return
    print(f"frontend: {view['frontend'] or '(no load balancer)'}")
    if "https" in view:
        print(f"https: {view['https']} ({tls.describe(view['certificate'])})")
    columns = ["name", "zone", "role", "version", "health", "ready", "lb_state", "lb_role"]
    rows = [{"replication": "", **row} for row in view["instances"]]
    print_table(rows, columns + (["replication"] if any(r["replication"] for r in rows) else []))
    say(hints.after("status", env))


@task(
    help={
        "env": "environment name",
        "role": "role to roll out: the load-balanced one (default), a worker, db (through its standby) or lb",
        "image": "image version to roll out (default: the newest verified)",
        "plan": "print exactly what would change, change nothing",
        "resume": "continue an interrupted or paused rollout",
        "release": "roll out releases/<name>.yml: every role it lists, in its order",
        "yes": "do not ask before changing a protected environment",
    }
)
@kiln_task
def rollout(c, env, role=None, image=None, plan=False, resume=False, release=None, yes=False):
    """Replace a role's instances zone by zone, health-gated; roll back by itself on failure."""
    engine = lifecycle.open_engine(settings(), env, say)
    if release:
        roll_out_release(engine, release, plan, yes, other=role or image or resume)
        return
    if plan:
        steps = lifecycle.plan_rollout(engine, role, image)
        if not steps.steps:
            print(f"nothing to do: {env} runs {steps.role} {steps.to_version} everywhere")
            say(hints.after("rollout-unchanged", env))
            return
        print(f"{env}: {steps.role} {steps.from_version} -> {steps.to_version}, {len(steps.steps)} steps")
        print("\n".join(steps.steps))
        return
    done = lifecycle.deploy(engine, confirm(yes), role, image, resume)
    if done.state is None:
        print(f"nothing to do: {env} runs {done.role} {done.version} everywhere")
        say(hints.after("rollout-unchanged", env))
        return
    result = done.state
    print_finished(f"rollout {result.id} {result.status}: {done.role} {result.from_version} -> "
                   f"{result.to_version} in {result.seconds} s", result, "rollout")


@task(help={"env": "environment name", "yes": "do not ask before changing a protected environment"})
@kiln_task
def rollback(c, env, yes=False):
    """Undo the last rollout: every zone back to the previous image, surge first."""
    result = lifecycle.rollback(lifecycle.open_engine(settings(), env, say), confirm(yes))
    print_finished(f"rollback {result.id} {result.status}: {result.role} back to {result.from_version}",
                   result, "rollback")


@task(
    help={
        "env": "environment name",
        "yes": "do not ask before changing a protected environment",
        "json": "print the report as JSON",
    }
)
@kiln_task
def failover(c, env, yes=False, json=False):
    """Promote the db standby: the old primary is removed, every instance repointed through the LB."""
    from kiln import failover as failovers

    engine = lifecycle.open_engine(settings(), env, say)
    lifecycle.approve_change(engine, confirm(yes), "fail over the database of")
    done = failovers.failover(engine, say)
    if json:
        print(dump_json(done.as_json()))
        return
    print(
        f"failover of {env}: {done.new_primary} is the primary (was {done.old_primary or 'none'}, "
        f"{done.old_primary_state}); routed to it in {done.repointed_seconds} s"
    )
    print(done.lost_writes())
    say(hints.after("failover", env))


def roll_out_release(engine, name: str, plan: bool, yes: bool, other) -> None:
    from kiln import release as manifests
    from kiln.rollout import releases

    if other:
        raise KilnError("--release names every role and version itself: drop --role, --image and --resume")
    manifest = manifests.load(settings(), name)
    steps = releases.plan_release(engine, manifest)
    about = f": {manifest.spec.description}" if manifest.spec.description else ""
    print(f"release {name} to {engine.env.name}{about}")
    print("\n".join(f"  {step.line()}" for step in steps))
    if plan:
        return
    done = releases.deploy_release(engine, confirm(yes), manifest)
    print(f"release {name} succeeded: " + ", ".join(f"{s.role} {s.status}" for s in done))


@task(
    help={
        "action": "diff",
        "first": "a release name (releases/<name>.yml)",
        "second": "the release to compare it with",
    }
)
@kiln_task
def release(c, action, first, second):
    """Compare two release manifests: `invoke release diff <a> <b>` says which role versions changed."""
    from kiln import release as manifests

    if action != "diff":
        raise KilnError(f"unknown release action '{action}': use `invoke release diff <a> <b>`")
    changes = manifests.diff(manifests.load(settings(), first), manifests.load(settings(), second))
    for change in changes:
        print(f"{change.role:<10} {change.kind:<9} {change.versions()}")
    changed = [c.role for c in changes if c.kind != "unchanged"]
    say(f"{len(changed)} of {len(changes)} roles differ" + (f": {', '.join(changed)}" if changed else ""))


def print_finished(headline: str, result, task_name: str) -> None:
    """A finished rollout or rollback: the headline, its timeline and report, what to do next."""
    print(headline)
    print(f"timeline: {result.timeline}")
    print(f"report: {result.report}")
    say(hints.after(task_name, result.environment))


@task(help={"env": "environment name", "open": "open it in the web browser"})
@kiln_task
def report(c, env, open=False):
    """Print the path of an environment's newest HTML report (rollout, rollback or DR drill)."""
    from kiln.htmlreport import require_latest

    path = require_latest(settings().state_dir, env)
    print(path)
    if open:
        import webbrowser

        webbrowser.open(path.as_uri())


@task(help={"env": "environment name", "yes": "do not ask before removing a protected environment"})
@kiln_task
def down(c, env, yes=False):
    """Remove an environment's instances, load balancer and networks (the audit log stays)."""
    removed = lifecycle.down(lifecycle.open_engine(settings(), env, say), confirm(yes))
    print(f"removed {len(removed)}: {', '.join(removed) or 'nothing'}")
    say(hints.after("down", env))


# ---- backups and DR drills -----------------------------------------------------------------------


@task(help={"env": "environment name: environments/<env>.yml", "type": "full (default), diff or incr"})
@kiln_task
def backup(c, env, type="full"):
    """Back up an environment: PostgreSQL with pgBackRest, uploaded files with restic (both encrypted)."""
    from kiln.backup.base import human_size
    from kiln.backup.operations import backup_environment

    for record in backup_environment(settings(), env, type):
        print(f"{record.tool}\t{record.kind}\t{record.id}\t{human_size(record.size)}")
    say(hints.after("backup", env))


@task(help={"env": "environment name", "json": "print JSON instead of a table"})
@kiln_task
def backups(c, env, json=False):
    """List an environment's backups: tool, kind, id, age and size."""
    from kiln.backup.base import human_age, human_size
    from kiln.backup.operations import environment_backups

    rows = [r.as_json() for r in environment_backups(settings(), env)]
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
    from kiln.drill import run_drill

    report = run_drill(settings(), env, target_time, keep)
    verdict = "passed" if report.ok else "failed"
    print(f"{report.id}\t{verdict}\trto={report.rto_seconds}\trpo={report.rpo_seconds}")
    report.raise_if_failed()
    say(hints.after("dr-drill", env))


@task(help={"json": "print the history as JSON"})
@kiln_task
def drills(c, json=False):
    """Show the DR drill history and write a chart of RTO and RPO over past drills (SVG)."""
    from kiln.drill import drill_history

    history, chart = drill_history(settings())
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

    print(dump_json(load(settings(), env, int(mb))))


@task(help={"dotenv": "also write the versions to this file as KILN_RELEASE_<ROLE>=VERSION lines"})
@kiln_task
def publish(c, dotenv=None):
    """Promote the newest image of every role (each must be verified) and print their versions."""
    from pathlib import Path

    from kiln import publish

    versions = publish.publish(settings(), DockerImageStore(docker_client(), settings()),
                               Path(dotenv) if dotenv else None)
    for role, version in versions.items():
        print(f"{role}\t{version}")


@task(help={"apply": "create and update the schedules in GitLab (without it: only show the plan)"})
@kiln_task
def ci_schedules(c, apply=False):
    """Show (or --apply) pipelines/schedules.yml's GitLab pipeline schedules and resource groups."""
    from kiln import ci_schedules as schedules

    changes = schedules.plan(settings(), apply)
    for change in changes:
        print(change.line())
    if not apply and any(change.action in ("create", "update") for change in changes):
        say("run `invoke ci-schedules --apply` to make these changes")


@task(help={"diff": "file to write the lock diff to (the pipeline keeps it as an artifact)"})
@kiln_task
def lock_merge_request(c, diff="lock-refresh.diff"):
    """Propose the refreshed package locks: a merge request when KILN_GITLAB_TOKEN is set."""
    from pathlib import Path

    from kiln import ci_schedules as schedules

    print(schedules.propose_locks(settings(), Path(diff)))


# ---- secrets: encrypted in the repository with age -----------------------------------------------


@task(
    help={
        "action": "edit (in $EDITOR), show-keys (the public keys that open them) or rotate (a new age key)",
        "env": "environment name: secrets/<env>.env.age",
        "key_out": "rotate: file outside the checkout to write the new age key to (mode 0600)",
    }
)
@kiln_task
def secrets(c, action, env, key_out=None):
    """Edit or re-key an environment's secrets, encrypted in secrets/<env>.env.age (never shown)."""
    import os
    from pathlib import Path

    from kiln import secrets as sealed

    if action == "edit":
        say(f"saved {sealed.edit(settings(), env, os.environ.get('EDITOR') or 'vi')}")
    elif action == "show-keys":
        for public, mine in sealed.show_keys(settings(), env):
            print(f"{public}\t{'current key' if mine else ''}".rstrip())
    elif action == "rotate" and key_out:
        say(f"new age key {sealed.rotate(settings(), env, Path(key_out))} written to {key_out}: "
            f"put it in {sealed.KEY_VARIABLE} and commit secrets/{env}.*")
    else:
        raise KilnError(f"secrets {action}: use edit, show-keys or rotate --key-out FILE")
