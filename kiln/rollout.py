"""Environment lifecycle and the rollout engine, over any provider.

A rollout converges one zone at a time to the target image. Each step is computed from what
exists now (instances, load-balancer servers) by `next_step`, the same function `--plan`
simulates, so a resumed rollout simply continues from what it finds: an instance launched but
not registered is registered, a server left in drain is drained and removed. On failure every
touched zone converges back to the previous image the same way, surge first, so capacity never
drops below the policy's minimum.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import getpass
import json
import os
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import docker.errors

from kiln import cloudinit, report
from kiln.environments import Environment
from kiln.errors import KilnError, OperationFailed
from kiln.images import ImageRecord
from kiln.providers.base import Instance, Provider
from kiln.settings import Settings

ACTIVE = ("running", "paused", "rolling-back")


class RolloutFailed(OperationFailed):
    """A step failed (health never passed, an instance died, a timeout): roll back."""


# ---- planning: pure functions over instances ----------------------------------------------


@dataclass(frozen=True)
class Step:
    zone: int
    drain_first: list[str]  # taken out before launching (only when max_unavailable allows)
    launch: list[int]  # instance numbers to start at the target version
    retire: list[str]  # drained and removed once the new ones are healthy (+ warm-up)
    canary: bool = False


def free_numbers(zones: int, zone: int, used: set[int], count: int) -> list[int]:
    numbers, n = [], 1
    while len(numbers) < count:
        if n % zones == zone and n not in used:
            numbers.append(n)
        n += 1
    return numbers


def next_step(
    env: Environment,
    role: str,
    zone: int,
    instances: list[Instance],
    version: str,
    healthy: set[str],
    *,
    canary: int = 0,
    max_batch: int | None = None,
) -> Step | None:
    """The next step towards `desired` instances of `version` in `zone`, or None when there."""
    policy = env.spec.rollout
    desired = env.zone_count(role, zone)
    in_zone = [i for i in instances if i.role == role and i.zone == zone]
    have = [i for i in in_zone if i.version == version]
    # Unhealthy ones go first: a rollback removes the failed new instances before anything else.
    others = sorted((i for i in in_zone if i.version != version), key=lambda i: (i.name in healthy, i.number))
    missing = desired - len(have)
    if missing <= 0:
        surplus = others + sorted(have, key=lambda i: (i.name in healthy, -i.number))[: len(have) - desired]
        return Step(zone, [], [], [i.name for i in surplus]) if surplus else None
    batch = min(missing, max_batch or policy.max_surge + policy.max_unavailable)
    if canary:
        batch = min(batch, canary)
    serving = len(have) + len(others)
    first = others[: max(0, serving + batch - (desired + policy.max_surge))]
    remaining = others[len(first) :]
    after = remaining[: max(0, len(have) + batch + len(remaining) - desired)]
    used = {i.number for i in instances if i.role == role}
    numbers = free_numbers(len(env.zones), zone, used, batch)
    return Step(zone, [i.name for i in first], numbers, [i.name for i in after], canary=bool(canary))


def simulate(step: Step, instances: list[Instance], role: str, version: str) -> list[Instance]:
    gone = set(step.drain_first) | set(step.retire)
    kept = [i for i in instances if i.name not in gone]
    return kept + [Instance(f"{role}{n}", role, step.zone, version, "", True) for n in step.launch]


def plan(
    env: Environment, role: str, instances: list[Instance], version: str, zones: list[int]
) -> list[Step]:
    """Every step of a rollout, assuming each one succeeds: what `--plan` prints."""
    steps: list[Step] = []
    current = list(instances)
    for zone in zones:
        while True:
            canary = env.spec.rollout.canary if not steps else 0
            step = next_step(env, role, zone, current, version, {i.name for i in current}, canary=canary)
            if step is None:
                break
            steps.append(step)
            current = simulate(step, current, role, version)
    return steps


def describe(env: Environment, role: str, step: Step) -> str:
    zone = env.zones[step.zone]
    parts = []
    if step.drain_first:
        parts.append(f"drain and remove {', '.join(step.drain_first)}")
    if step.launch:
        parts.append(f"launch {', '.join(f'{role}{n}' for n in step.launch)} and wait until healthy")
    if step.retire:
        parts.append(f"drain and remove {', '.join(step.retire)}")
    label = f"zone {zone} (canary)" if step.canary else f"zone {zone}"
    return f"{label}: " + "; then ".join(parts)


def majority_version(instances: list[Instance]) -> str | None:
    counts = collections.Counter(i.version for i in instances)
    return counts.most_common(1)[0][0] if counts else None


def require_deployable(record: ImageRecord, env: Environment) -> None:
    if record.status == "rejected":
        raise KilnError(f"{record.image} was rejected by verification: it may not be deployed")
    if record.status == "verified" and env.spec.require_promoted:
        raise KilnError(
            f"{record.image} is verified but not promoted, and {env.file} deploys only promoted images "
            f"(require_promoted): once it has proved itself elsewhere, run "
            f"`invoke promote {record.role} --version {record.version}`"
        )
    if record.status not in env.deployable:
        raise KilnError(f"{record.image} is {record.status}, not verified: verify it before deploying it")


# ---- persisted state and the lock ---------------------------------------------------------


class Store:
    """<state_dir>/envs/<env>/: rollout.json (atomic), audit.jsonl, timelines, the lock."""

    def __init__(self, settings: Settings, env: Environment):
        self.folder = settings.state_dir / "envs" / env.name
        self.state_file = self.folder / "rollout.json"
        self.audit_file = self.folder / "audit.jsonl"

    def load(self) -> dict | None:
        if not self.state_file.exists():
            return None
        return json.loads(self.state_file.read_text())

    def save(self, state: dict) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(f".{os.getpid()}-{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps(state, indent=2, sort_keys=True))
        os.replace(tmp, self.state_file)

    @contextlib.contextmanager
    def lock(self, env: Environment, what: str) -> Iterator[None]:
        """flock: released by the kernel when the holder dies, even by SIGKILL."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / "lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = path.read_text().strip() or "another process"
                raise KilnError(
                    f"environment {env.name} is locked by {holder}: wait for it to finish"
                ) from None
            os.ftruncate(fd, 0)
            os.write(fd, f"{what} (pid {os.getpid()}, user {getpass.getuser()})".encode())
            yield
        finally:
            os.close(fd)


def db_settings(settings: Settings, env: Environment, provider: Provider) -> dict | None:
    """The application database's address and login; the password is made once, kept 0600."""
    if env.count("db") == 0:
        return None
    path = settings.state_dir / "envs" / env.name / "db-password"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, secrets.token_urlsafe(24).encode())
        os.close(fd)
    return {
        "host": provider.peer_address("db1"),
        "port": 5432,
        "name": "kiln",
        "user": "kiln",
        "password": path.read_text().strip(),
    }


# ---- the engine ---------------------------------------------------------------------------


@dataclass
class Engine:
    settings: Settings
    env: Environment
    provider: Provider
    say: Callable[[str], None]
    samples: list[dict] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.store = Store(self.settings, self.env)
        self.role = self.env.spec.balanced_role
        self.state: dict = {}
        self._lock = threading.Lock()  # events come from launch and terminate threads too
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="kiln-rollout")
        self._stopping: list[Future] = []
        self._retiring: set[str] = set()  # out of the load balancer, being stopped

    # ---- user-data --------------------------------------------------------------------------

    def user_data(self, role: str, instance: str, zone: int, image: ImageRecord) -> str:
        variables = {
            "environment": self.env.name,
            "zone": self.env.zones[zone],
            "zone_index": zone,
            "instance": instance,
            "role": role,
            "version": image.version,
            "db": db_settings(self.settings, self.env, self.provider),
            "app": self.env.spec.app,
        }
        return cloudinit.render(self.settings, role, variables)

    def check_user_data(self, role: str, numbers: list[int], image: ImageRecord) -> None:
        """Render and schema-check every planned instance's user-data before anything changes."""
        documents = [
            cloudinit.UserData(f"{role}{n}", self.user_data(role, f"{role}{n}", self.env.zone_of(n), image))
            for n in numbers
        ]
        self.provider.check_user_data(image, documents)

    # ---- events, samples, state -------------------------------------------------------------

    def event(self, action: str, **details) -> None:
        entry = {"t": round(time.monotonic() - self.started, 2), "action": action, **details}
        with self._lock:
            if self.state:
                self.state.setdefault("events", []).append({"at": _now(), **entry})
        self.save()
        self.say(f"  {action} " + " ".join(f"{k}={v}" for k, v in details.items()))

    def save(self) -> None:
        with self._lock:
            if self.state:
                self.store.save(self.state)

    def instances(self, role: str | None = None) -> list[Instance]:
        """The provider's instances less those already retired and still stopping."""
        with self._lock:
            retiring = set(self._retiring)
        return [i for i in self.provider.instances(role) if i.name not in retiring]

    def sample(self) -> dict[str, object]:
        """Healthy instances per zone and version, for the timeline; the servers as a bonus."""
        servers = self.provider.lb_servers()
        instances = self.instances(self.role)
        t = round(time.monotonic() - self.started, 2)
        for zone in range(len(self.env.zones)):
            healthy = collections.Counter(
                i.version
                for i in instances
                if i.zone == zone
                and i.name in servers
                and servers[i.name].healthy
                and servers[i.name].state == "ready"
            )
            self.samples.append({"t": t, "zone": zone, "healthy": dict(healthy)})
        return {"servers": servers, "instances": instances}

    # ---- primitive actions ------------------------------------------------------------------

    def launch(self, number: int, image: ImageRecord, register: bool = True) -> Instance:
        role = image.role
        user_data = self.user_data(role, f"{role}{number}", self.env.zone_of(number), image)
        instance = self.provider.launch(role, number, image, user_data)
        self.event(
            "launched", instance=instance.name, version=image.version, zone=self.env.zones[instance.zone]
        )
        if register:
            self.provider.lb_register(instance)
            self.event("registered", instance=instance.name)
        return instance

    def wait_healthy(self, names: list[str]) -> None:
        timeout = self.env.spec.health.timeout
        deadline = time.monotonic() + timeout
        while True:
            seen = self.sample()
            servers, instances = seen["servers"], {i.name: i for i in seen["instances"]}
            dead = [n for n in names if n not in instances or not instances[n].running]
            if dead:
                raise RolloutFailed(f"{', '.join(dead)} stopped before passing its health check")
            waiting = [n for n in names if not (n in servers and servers[n].healthy)]
            if not waiting:
                self.event("healthy", instances=",".join(names))
                return
            if time.monotonic() > deadline:
                checks = ", ".join(
                    f"{n}: {servers[n].check if n in servers else 'unregistered'}" for n in waiting
                )
                raise RolloutFailed(
                    f"{checks} did not pass the load balancer's health check in {timeout:g} s"
                )
            time.sleep(self.provider.poll_interval)

    def pause(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.sample()
            time.sleep(min(self.provider.poll_interval, max(0.0, end - time.monotonic())))

    def retire(self, names: list[str]) -> None:
        """Drain them together, wait for their sessions to end (or the drain timeout), remove."""
        if not names:
            return
        servers = self.provider.lb_servers()
        by_name = {i.name: i for i in self.instances()}
        for name in names:
            if name in servers and servers[name].state == "ready":
                self.provider.lb_drain(by_name[name])
                self.event("draining", instance=name)
        deadline = time.monotonic() + self.env.spec.rollout.drain_timeout
        while time.monotonic() < deadline:
            servers = self.sample()["servers"]
            if all(servers[n].sessions == 0 for n in names if n in servers):
                break
            time.sleep(self.provider.poll_interval)
        for name in names:
            if name in servers:
                self.provider.lb_deregister(name)
                self.event("deregistered", instance=name)
            if name in by_name:
                # Out of the load balancer it serves nobody: stop it while the next step runs.
                with self._lock:
                    self._retiring.add(name)
                self._stopping.append(self._pool.submit(self.terminate, by_name[name]))

    def terminate(self, instance: Instance) -> None:
        self.provider.terminate(instance)
        with self._lock:
            self._retiring.discard(instance.name)
        self.event("terminated", instance=instance.name)

    def settle(self) -> None:
        """Wait for the instances being stopped; raise the first failure."""
        stopping, self._stopping = self._stopping, []
        for future in stopping:
            future.result()

    # ---- converging a zone ------------------------------------------------------------------

    def reconcile(self, zone: int, version: str) -> None:
        """Finish what a crash left half done in this zone, before planning the next step."""
        servers = self.provider.lb_servers()
        instances = self.instances()
        names = {i.name for i in instances}
        for name in servers:
            if name not in names:
                self.provider.lb_deregister(name)
                self.event("deregistered", instance=name, reason="no such instance")
        pending, leftovers = [], []
        for inst in (i for i in instances if i.role == self.role and i.zone == zone):
            server = servers.get(inst.name)
            if server is None and inst.version == version and inst.running:
                self.provider.lb_register(inst)
                self.event("registered", instance=inst.name, reason="launched before an interruption")
                pending.append(inst.name)
            elif server is None or server.state != "ready" or not inst.running:
                leftovers.append(inst.name)
            elif inst.version == version and not server.healthy:
                pending.append(inst.name)
        self.retire(leftovers)
        if pending:
            self.wait_healthy(pending)

    def converge_zone(self, zone: int, image: ImageRecord, canary: int = 0) -> None:
        self.reconcile(zone, image.version)
        while True:
            seen = self.sample()
            healthy = {n for n, s in seen["servers"].items() if s.healthy}
            have_new = any(i.zone == zone and i.version == image.version for i in seen["instances"])
            step = next_step(
                self.env,
                self.role,
                zone,
                seen["instances"],
                image.version,
                healthy,
                canary=0 if have_new else canary,
            )
            if step is None:
                return
            self.say(describe(self.env, self.role, step))
            self.retire(step.drain_first)
            launched = [i.name for i in self._pool.map(lambda n: self.launch(n, image), step.launch)]
            if launched:
                self.wait_healthy(launched)
                if self.env.spec.rollout.warmup:
                    self.pause(self.env.spec.rollout.warmup)
            self.retire(step.retire)

    # ---- rollout, resume, rollback ----------------------------------------------------------

    def start(self, target: ImageRecord) -> dict:
        """A new rollout's state, after refusing what must not start."""
        require_deployable(target, self.env)
        previous = self.store.load()
        if previous and previous.get("status") in ACTIVE:
            raise KilnError(
                f"the {previous['role']} rollout {previous['id']} to {previous['to']} is "
                f"{previous['status']}: continue it with `invoke rollout {self.env.name} --resume` "
                f"or undo it with `invoke rollback {self.env.name}`"
            )
        instances = self.instances(self.role)
        if not instances:
            raise KilnError(
                f"environment {self.env.name} has no {self.role} instances: run `invoke up {self.env.name}`"
            )
        current = majority_version(instances)
        zones = list(range(len(self.env.zones)))
        steps = plan(self.env, self.role, instances, target.version, zones)
        self.check_user_data(self.role, [n for s in steps for n in s.launch], target)
        return {
            "id": time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:4],
            "environment": self.env.name,
            "role": self.role,
            "from": current,
            "to": target.version,
            "zones": sorted({s.zone for s in steps}),
            "done": [],
            "status": "running",
            "user": getpass.getuser(),
            "started_at": _now(),
            "zone_timings": {},
            "events": [],
        }

    def run(self, state: dict, target: ImageRecord, *, resumed: bool = False) -> dict:
        """Drive a rollout to its end: succeeded, paused, or rolled back (then OperationFailed)."""
        self.state = state
        self.state["status"] = "running"
        self.save()
        try:
            for zone in state["zones"]:
                if zone in state["done"]:
                    if resumed:  # an instance may have been stopping when the rollout died
                        self.reconcile(zone, target.version)
                    continue
                name = self.env.zones[zone]
                began = time.monotonic() - self.started
                canary = self.env.spec.rollout.canary if zone == state["zones"][0] else 0
                self.converge_zone(zone, target, canary)
                state["done"].append(zone)
                state["zone_timings"][name] = {
                    "start": round(began, 2),
                    "end": round(time.monotonic() - self.started, 2),
                }
                self.event("zone done", zone=name)
                if (
                    self.env.spec.rollout.stop_after_first_zone
                    and len(state["done"]) == 1
                    and not resumed
                    and len(state["zones"]) > 1
                ):
                    state["status"] = "paused"
                    return self.finish()
            state["status"] = "succeeded"
            return self.finish()
        except (OperationFailed, docker.errors.APIError) as exc:
            reason = str(exc)
            self.state["failure"] = reason
            self.event("failed", reason=reason)
        self.roll_back(state["from"])
        raise OperationFailed(
            f"rollout of {self.role} to {target.version} failed: {self.state['failure']}; rolled back to "
            f"{state['from']} automatically (timeline: {self.state['timeline']})"
        )

    def roll_back(self, version: str | None) -> dict:
        """Converge every zone that is not all at `version` back to it, surge first."""
        if not version:
            raise KilnError(
                f"no previous {self.role} version recorded for {self.env.name}: nothing to roll back to"
            )
        image = self.provider.image(self.role, version)
        self.state["status"] = "rolling-back"
        self.save()
        instances = self.instances(self.role)
        touched = sorted({i.zone for i in instances if i.version != version}, reverse=True)
        try:
            for zone in touched:
                name = self.env.zones[zone]
                self.say(f"rolling back zone {name} to {version}")
                began = round(time.monotonic() - self.started, 2)
                self.converge_zone(zone, image)
                ended = round(time.monotonic() - self.started, 2)
                self.state.setdefault("rollback_timings", {})[name] = {"start": began, "end": ended}
        except (OperationFailed, docker.errors.APIError) as exc:
            self.state["status"] = "failed"
            self.finish()
            raise OperationFailed(
                f"rollback to {version} failed too: {exc}; "
                f"fix the cause and run `invoke rollback {self.env.name}`"
            ) from exc
        self.state["status"] = "rolled-back"
        return self.finish()

    def finish(self) -> dict:
        """Persist the end state, append the audit record and draw the timeline."""
        self.settle()
        self.state["ended_at"] = _now()
        self.state["seconds"] = round(time.monotonic() - self.started, 2)
        timeline = self.store.folder / f"timeline-{self.state['id']}-{len(self.state.get('events', []))}.svg"
        s = self.state
        title = f"{self.env.name}: {self.role} {s['from']} -> {s['to']} ({s['status']})"
        timeline.write_text(report.timeline_svg(self.samples, self.env.zones, title))
        self.state["timeline"] = str(timeline)
        self.save()
        report.append_audit(
            self.store.audit_file,
            {
                k: self.state.get(k)
                for k in (
                    "id",
                    "environment",
                    "role",
                    "from",
                    "to",
                    "user",
                    "started_at",
                    "ended_at",
                    "seconds",
                    "status",
                    "failure",
                    "zone_timings",
                    "rollback_timings",
                    "timeline",
                )
            }
            | {"action": self.state.get("action", "rollout")},
        )
        return self.state


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# ---- environment lifecycle ----------------------------------------------------------------


def up(engine: Engine) -> None:
    """Networks, the load balancer, then every missing instance, from the newest verified images.

    Zones that already have instances keep the version they run: `up` fills, a rollout replaces.
    """
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
    plans = {role: _missing(env, role, provider.instances(role)) for role in images}
    for role, numbers in plans.items():
        engine.check_user_data(role, numbers, images[role])
    lb_user_data = engine.user_data("lb", "lb", 0, lb_image) if lb_image else ""
    if lb_image:
        provider.check_user_data(lb_image, [cloudinit.UserData("lb", lb_user_data)])
    provider.ensure_networks()
    provider.ensure_lb(lb_image, lb_user_data)
    engine.say(f"load balancer {provider.frontend()}")
    # Other roles first: the balanced role's user-data names them (the database).
    for role in sorted(plans, key=lambda r: r == engine.role):
        for n in plans[role]:
            engine.launch(n, images[role], register=role == engine.role)
    if engine.role in images:
        for zone in range(len(env.zones)):
            engine.reconcile(zone, images[engine.role].version)


def _missing(env: Environment, role: str, instances: list[Instance]) -> list[int]:
    numbers = []
    used = {i.number for i in instances}
    for zone in range(len(env.zones)):
        have = sum(1 for i in instances if i.zone == zone)
        numbers += free_numbers(len(env.zones), zone, used, max(0, env.zone_count(role, zone) - have))
    return sorted(numbers)


def status(provider: Provider) -> dict:
    servers = provider.lb_servers() if provider.frontend() else {}
    rows = []
    for inst in provider.instances():
        server = servers.get(inst.name)
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
                "lb_state": server.state if server else "absent",
            }
        )
    return {"environment": provider.env.name, "frontend": provider.frontend(), "instances": rows}


def state_path(settings: Settings, env: Environment) -> Path:
    return Store(settings, env).state_file


# ---- what the tasks call ------------------------------------------------------------------


def open_engine(env_name: str, say: Callable[[str], None]) -> Engine:
    from kiln import environments
    from kiln.providers import get_provider

    settings = Settings.from_env()
    env = environments.load(settings, env_name)
    return Engine(settings, env, get_provider(settings, env), say)


def confirm(env: Environment, yes: bool, what: str, ask: Callable[[str], str] = input) -> None:
    """A protected environment changes only after `--yes` or its name typed on a terminal."""
    if not env.spec.protected or yes:
        return
    if not os.isatty(0):
        raise KilnError(f"{env.file} is protected: pass --yes to {what} it")
    if ask(f"{env.name} is protected; type its name to {what} it: ").strip() != env.name:
        raise KilnError(f"not confirmed: {env.name} is unchanged")


def start_rollback(engine: Engine) -> dict:
    """A rollback record undoing the last rollout (or finishing an interrupted rollback)."""
    last = engine.store.load()
    if last is None:
        raise KilnError(f"no rollout of {engine.env.name} is recorded: nothing to roll back")
    if last["status"] == "rolled-back":
        raise KilnError(f"rollout {last['id']} is already rolled back to {last['from']}")
    if last["status"] == "rolling-back":
        return last
    return {
        **{k: last[k] for k in ("environment", "role", "from", "to", "zones")},
        "id": time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:4],
        "action": "rollback",
        "undoes": last["id"],
        "done": [],
        "status": "rolling-back",
        "user": getpass.getuser(),
        "started_at": _now(),
        "zone_timings": {},
        "events": [],
    }
