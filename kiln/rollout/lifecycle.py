"""An environment's lifecycle, as the CLI calls it: up, status, plan, deploy, rollback, down.

Every function that changes an environment takes its lock itself, so every caller (the CLI,
benchmarks, tests) is serialised the same way. Whether a change needs approval is decided here
(`protected`); how to ask is the caller's `approve`, called before anything changes.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass

from kiln import cloudinit, environments, readiness, tls, versions
from kiln.backup.base import human_size
from kiln.environments import Environment
from kiln.errors import KilnError, OperationFailed
from kiln.images import ImageRecord
from kiln.providers import get_provider
from kiln.providers.base import Instance, LbServer, Provider
from kiln.replication import standbys_behind
from kiln.roles import RoleCatalog
from kiln.rollout.engine import Engine, in_place
from kiln.rollout.planning import describe, majority_version, missing_numbers, plan, require_deployable
from kiln.rollout.state import RolloutState
from kiln.settings import Settings

# Called with the environment and what is about to happen ("roll out to"); raises to refuse.
Approve = Callable[[Environment, str], None]


def why_not_rolled_out(env: Environment, role: str) -> str | None:
    """Why a role may not roll out here, or None. A database holds the data it serves: it is
    replaced only through its standby (kiln/rollout/database.py)."""
    if role == "db" and env.count("db") < 2:
        return (
            "a database rolls out through its standby: set instances.db: 2 (a primary and a standby) "
            f"in {env.file}, or bake db and restore into a new environment (`invoke dr-drill`)"
        )
    return None


def rolls_out_lb(provider: Provider) -> None:
    """Only a load balancer running Kiln's lb image has a version to roll out."""
    if not provider.lb_from_image:
        raise KilnError(
            f"lb does not roll out on the {provider.env.spec.provider} provider: its load balancer is "
            "the cloud's managed service, with no Kiln image in it"
        )


def open_engine(settings: Settings, env_name: str, say: Callable[[str], None]) -> Engine:
    env = environments.load(settings, env_name)
    return Engine(settings, env, get_provider(settings, env), say)


def engine_for(engine: Engine, role: str | None) -> Engine:
    """The engine that rolls out `role` (the load-balanced one when None), after refusing, before
    anything changes, a role the environment does not run or that cannot roll out."""
    if not role or role == engine.role:
        return engine
    env = engine.env
    if role == "lb":
        rolls_out_lb(engine.provider)
        return Engine(engine.settings, env, engine.provider, engine.say, role=role)
    if not env.count(role):
        running = ", ".join(r for r, n in sorted(env.spec.instances.items()) if n)
        raise KilnError(f"{env.file} runs no {role} instances (it runs {running}): nothing to roll out")
    why = why_not_rolled_out(env, role)
    if why:
        raise KilnError(f"{role} does not roll out: {why}")
    return Engine(engine.settings, env, engine.provider, engine.say, role=role)


def approve_change(engine: Engine, approve: Approve, what: str) -> None:
    if engine.env.spec.protected:
        approve(engine.env, what)


@dataclass(frozen=True)
class RolloutPlan:
    environment: str
    role: str
    from_version: str | None
    to_version: str
    steps: list[str]  # one line per step, as `describe` puts it


@dataclass(frozen=True)
class Deployment:
    """What `deploy` did: `state` is None when every instance already ran `version`."""

    environment: str
    role: str
    version: str
    state: RolloutState | None


def plan_rollout(engine: Engine, role: str | None = None, image: str | None = None) -> RolloutPlan:
    """Exactly what a rollout would change, changing nothing (so no lock)."""
    engine = engine_for(engine, role)
    target = target_image(engine, image)
    state = engine.start(target)
    special = in_place(engine.role)
    if special:
        lines = special.plan_lines(engine, target)
    else:
        instances = engine.provider.instances(engine.role)
        steps = plan(engine.env, engine.role, instances, state.to_version, state.zones)
        lines = [describe(engine.env, engine.role, step) for step in steps]
    return RolloutPlan(engine.env.name, engine.role, state.from_version, state.to_version, lines)


def target_image(engine: Engine, image: str | None) -> ImageRecord:
    """The image `--image` names (a version, a prefix of one, a reference), or the newest deployable."""
    return image_of(engine.provider, engine.role, image)


def image_of(provider: Provider, role: str, image: str | None) -> ImageRecord:
    return provider.image(role, versions.resolve(role, image, provider.versions(role)))


def deploy(
    engine: Engine, approve: Approve, role: str | None = None, image: str | None = None, resume: bool = False
) -> Deployment:
    """Roll out `image` of `role` (default: the newest deployable of the load-balanced role), or
    continue an interrupted rollout, whichever role it was rolling out."""
    engine = engine_for(engine, role)
    approve_change(engine, approve, "roll out to")
    with engine.store.lock("rollout"):
        if resume:
            state = engine.store.load()
            if state is None or not state.active:
                raise KilnError(f"no interrupted or paused rollout of {engine.env.name} to resume")
            engine = engine_for(engine, state.role)
            engine.state = state
            if state.status == "rolling-back":
                return Deployment(
                    engine.env.name, engine.role, state.to_version, engine.roll_back(state.from_version)
                )
            target = engine.provider.image(engine.role, state.to_version)
            return Deployment(
                engine.env.name, engine.role, target.version, engine.run(state, target, resumed=True)
            )
        target = target_image(engine, image)
        state = engine.start(target)
        if not state.zones:
            return Deployment(engine.env.name, engine.role, target.version, None)
        return Deployment(engine.env.name, engine.role, target.version, engine.run(state, target))


def rollback(engine: Engine, approve: Approve) -> RolloutState:
    """Undo the last rollout (or finish an interrupted rollback): every zone back, surge first."""
    approve_change(engine, approve, "roll back")
    with engine.store.lock("rollback"):
        last = engine.store.load()
        if last is None:
            raise KilnError(f"no rollout of {engine.env.name} is recorded: nothing to roll back")
        if last.status == "rolled-back":
            raise KilnError(f"rollout {last.id} is already rolled back to {last.from_version}")
        engine = engine_for(engine, last.role)
        engine.state = last if last.status == "rolling-back" else last.rollback()
        return engine.roll_back(engine.state.from_version)


def down(engine: Engine, approve: Approve) -> list[str]:
    """Remove the environment's instances, load balancer and networks; the audit log stays."""
    approve_change(engine, approve, "remove")
    with engine.store.lock("down"):
        removed = engine.provider.destroy()
        engine.store.clear()
    return removed


def up(engine: Engine, bake: bool = False) -> str | None:
    """Networks, the load balancer, then every missing instance, from the newest verified images;
    the frontend's URL once every instance of every role is ready (readiness.py), within the
    environment's health timeout. Roles without a deployable image stop it before anything
    changes, naming the command that bakes them, or are baked and verified first with `bake`.

    Zones that already have instances keep the version they run: `up` fills, a rollout replaces.
    """
    missing = missing_images(engine)
    target_of = engine.provider.target_of
    if missing and bake:
        from kiln import bakeall  # Packer and the image store: only when there is something to bake

        rows = []
        for target in sorted({target_of(role) for role in missing}):
            roles = [role for role in missing if target_of(role) == target]
            rows += bakeall.bake_on(engine.settings, target, roles)
        bakeall.require_none_rejected(rows)
    elif missing:
        commands = " && ".join(bake_command(role, target_of(role)) for role in missing)
        raise KilnError(
            f"{engine.env.file}: no deployable image of {', '.join(missing)}: bake and verify "
            f"{'it' if len(missing) == 1 else 'them'} with `{commands}`, or run "
            f"`invoke up {engine.env.name} --bake`"
        )
    with engine.store.lock("up"):
        fill(engine)
        readiness.wait_ready(engine.provider, engine.say, engine.env.spec.health.timeout)
    return engine.provider.frontend()


def bake_command(role: str, target: str) -> str:
    return f"invoke bake {role}" + ("" if target == "docker" else f" --target {target}")


def missing_images(engine: Engine) -> list[str]:
    """Roles `up` would launch from the newest deployable image and has none of. Not asked of an
    environment that deploys only promoted images: baking does not make one promoted."""
    provider, env = engine.provider, engine.env
    if env.spec.require_promoted:
        return []
    needed = [r for r, n in sorted(env.spec.instances.items()) if n and not provider.instances(r)]
    if provider.lb_from_image:  # `fill` asks for the newest lb image even when the LB runs
        needed.append("lb")
    missing = []
    for role in needed:
        try:
            provider.image(role)
        except KilnError:
            missing.append(role)
    return missing


def fill(engine: Engine) -> None:
    provider, env = engine.provider, engine.env
    images = {}
    for role in sorted(r for r, n in env.spec.instances.items() if n):
        running = majority_version(provider.instances(role))
        images[role] = provider.image(role, running)
        if running is None:
            require_deployable(images[role], env)
    lb_image = provider.image("lb") if provider.lb_from_image else None
    if lb_image:
        require_deployable(lb_image, env)
    plans = {role: missing_numbers(env, role, provider.instances(role)) for role in images}
    for role, numbers in plans.items():
        engine.check_user_data(role, numbers, images[role])
    lb_user_data = engine.user_data("lb", "lb", 0, lb_image) if lb_image else ""
    if lb_image:
        provider.check_user_data(lb_image, [cloudinit.UserData("lb", lb_user_data)])
    provider.ensure_networks()
    ca_file = tls.ca_file(engine.settings, env.name)
    new_ca = env.spec.frontend.tls is not None and not ca_file.exists()
    provider.ensure_lb(lb_image, lb_user_data)
    engine.say(f"load balancer {provider.frontend()}")
    if new_ca and ca_file.exists():  # a CI runner's workspace forgets it unless it is committed
        engine.say(
            f"made the certificate authority of {env.name}: commit secrets/{ca_file.name} and "
            f"secrets/{env.name}.env.age (its key, sealed), or the next `up` elsewhere makes another"
        )
    # Other roles first: the balanced role's user-data names them (the database).
    for role in sorted(plans, key=lambda r: r == engine.role):
        for n in plans[role]:
            engine.launch(n, images[role], register=role == env.spec.balanced_role)
    if engine.role in images:
        for zone in range(len(env.zones)):
            engine.reconcile(zone, images[engine.role].version)


def status(provider: Provider) -> dict:
    servers = provider.lb_servers() if provider.frontend() else {}
    databases = provider.database_servers() if provider.frontend() else {}
    rows, catalog = [], RoleCatalog(provider.settings)
    instances = provider.instances()
    streams = replication_of(provider, instances, databases)
    for inst in instances:
        ready = readiness.state_of(provider, inst, servers, catalog)
        server = servers.get(inst.name)
        database = databases.get(inst.name) if inst.role == "db" else None
        if not inst.running:
            health = "stopped"
        elif server is None:
            health = "running"
        else:
            health = "healthy" if server.healthy else "unhealthy"
        rows.append(
            {
                "name": inst.name,
                "zone": provider.env.zones[inst.zone],
                "role": inst.role,
                "version": inst.version,
                "health": health,
                "ready": ready,
                "lb_state": server.state if server else "absent",
                # backup: takes traffic only while the home zone has no server up (zone affinity);
                # of db instances behind the LB, the primary is the one it routes to
                "lb_role": lb_role(inst, server, database),
                **streams.get(inst.name, {}),
            }
        )
    view = {"environment": provider.env.name, "frontend": provider.frontend(), "instances": rows}
    https = provider.https_frontend()
    if https:
        view["https"] = https
        view["certificate"] = served_certificate(https)
    return view


def replication_of(provider: Provider, instances: list[Instance], databases: dict[str, LbServer]) -> dict:
    """Of a primary and its standbys, each standby's `replication` (for people) and, while it
    streams, the WAL bytes it has not replayed and its replay lag (for --json)."""
    dbs = [i for i in instances if i.role == "db" and i.running]
    primary = next((i for i in dbs if (s := databases.get(i.name)) and s.healthy), None)
    if primary is None:
        return {}
    try:
        behind = standbys_behind(provider, primary)
    except OperationFailed as exc:
        return {primary.name: {"replication": f"primary; standbys unknown: {exc}"}}
    found = {primary.name: {"replication": "primary"}}
    for standby in (i for i in dbs if i is not primary):
        stream = behind.get(standby.name)
        if stream is None:
            found[standby.name] = {"replication": "not streaming"}
            continue
        text = f"{human_size(stream['behind_bytes'])} behind, replay lag {stream['replay_lag_seconds']:g} s"
        found[standby.name] = {"replication": text, **stream}
    return found


def lb_role(inst: Instance, server: LbServer | None, database: LbServer | None) -> str:
    if database is not None and (database.healthy or inst.running):
        return "primary" if database.healthy else "standby"
    return ("backup" if server.backup else "active") if server else "-"


def served_certificate(url: str) -> dict:
    """What the HTTPS frontend presents (expiry first of all), or why it could not be read."""
    parsed = urllib.parse.urlsplit(url)
    try:
        return tls.served(parsed.hostname or "", parsed.port or 443).as_json()
    except OperationFailed as exc:
        return {"error": str(exc)}
