"""The rollout engine: converges one zone at a time to an image, over any provider.

Each step comes from `planning.next_step` over what exists now, so a resumed rollout simply
continues from what it finds: an instance launched but not registered is registered, a server
left in drain is drained and removed (`reconcile`). On failure every touched zone converges
back to the previous image the same way, surge first, so capacity never drops below the
policy's minimum. Providers turn their SDK's errors into Kiln's; the engine catches only those.
"""

from __future__ import annotations

import collections
import importlib
import os
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from kiln import cloudinit, environments, notify, tls
from kiln.environments import Environment
from kiln.errors import KilnError, OperationFailed
from kiln.files import write_atomic
from kiln.images import ImageRecord
from kiln.providers.base import Instance, Provider
from kiln.rollout.gates import gate_for
from kiln.rollout.planning import describe, majority_version, next_step, plan, require_deployable
from kiln.rollout.state import RolloutState, Store
from kiln.settings import Settings
from kiln.stamps import epoch_of, utc_iso


class RolloutFailed(OperationFailed):
    """A step failed (health never passed, an instance died, a timeout): roll back."""


# Roles whose instances are replaced in place by a module of their own (plan_lines, converge)
# rather than zone by zone behind the load balancer.
IN_PLACE = {"db": "kiln.rollout.database", "lb": "kiln.rollout.balancer"}


def in_place(role: str):
    """The module rolling out `role` in place, or None. Imported when asked: the database's
    pulls in failover and replication."""
    module = IN_PLACE.get(role)
    return importlib.import_module(module) if module else None


def kept_secret(settings: Settings, env: Environment, name: str) -> str:
    """A random value made once per environment and kept 0600 (O_EXCL: never replaced, since
    instances already running use it)."""
    path = settings.state_dir / "envs" / env.name / name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, secrets.token_urlsafe(24).encode())
        os.close(fd)
    return path.read_text().strip()


def db_settings(settings: Settings, env: Environment, provider: Provider, zone: int = 0) -> dict | None:
    """The application database's address (as instances in `zone` reach it) and login."""
    if env.count("db") == 0:
        return None
    return {
        "host": provider.database_address(zone),
        "port": 5432,
        "name": "kiln",
        "user": "kiln",
        "password": kept_secret(settings, env, "db-password"),
    }


def replication_settings(
    settings: Settings, env: Environment, provider: Provider, instance: str, zone: int
) -> dict | None:
    """A db instance's part in a primary/standby pair: db1 starts as the primary of a new
    environment; any other, or one launched while another db instance runs (after a failover),
    starts as a standby copying the primary through the load balancer."""
    if env.count("db") < 2:
        return None
    others = [i for i in provider.instances("db") if i.name != instance]
    standby = instance != "db1" or bool(others)
    return {
        "password": kept_secret(settings, env, "replication-password"),
        "primary": provider.database_address(zone) if standby else None,
        # pgBackRest's TLS server admits these: a standby's backup reads the primary through it
        "peers": [f"db{number}" for number in range(1, env.count("db") + 1)],
    }


def instance_tls(
    authority: Callable[[], tls.Authority],
    env: Environment,
    provider: Provider,
    role: str,
    instance: str,
    zone: int,
) -> dict | None:
    """What an instance needs to speak TLS with its peers (the environment's CA, and a certificate
    for an instance others connect to): for a db pair's pgBackRest, and everywhere with
    `internal_tls`, where the load balancer reaches the balanced role over HTTPS too. A db
    certificate names every address the others reach it by: its own, and the database's as each
    zone sees it (the load balancer's, in a pair); a balanced instance's names the instance, as
    the load balancer checks it."""
    internal = env.spec.internal_tls
    in_a_pair = role == "db" and env.count("db") > 1
    if not (internal or in_a_pair):
        return None
    ca = authority()
    if role not in ("db", env.spec.balanced_role):
        return {"ca": ca.pem.decode(), "internal": internal}
    names = [instance, provider.peer_address(instance, zone)]
    if role == "db":
        names += [provider.database_address(z) for z in range(len(env.zones))]
    issued = tls.issue_instance(ca, list(dict.fromkeys(names)))
    return {"ca": issued.ca, "certificate": issued.certificate, "key": issued.key, "internal": internal}


@dataclass
class Engine:
    settings: Settings
    env: Environment
    provider: Provider
    say: Callable[[str], None]
    role: str = ""  # the role it rolls out: the load-balanced one unless named
    samples: list[dict] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.store = Store(self.settings, self.env.name)
        self.role = self.role or self.env.spec.balanced_role
        # The load balancer is handed over (kiln/rollout/balancer.py), no instance of it gated.
        self.gate = None if self.role == "lb" else gate_for(self.provider, self.env, self.role)
        self.state: RolloutState | None = None
        self._lock = threading.Lock()  # events come from launch and terminate threads too
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="kiln-rollout")
        self._stopping: list[Future] = []
        self._retiring: set[str] = set()  # out of the load balancer, being stopped
        self._authority: tls.Authority | None = None

    # ---- user-data --------------------------------------------------------------------------

    def authority(self) -> tls.Authority:
        """The environment's CA, opened (an age decryption) once per engine, not per instance."""
        if self._authority is None:
            self._authority = tls.authority(self.settings, self.env.name)
        return self._authority

    def user_data(self, role: str, instance: str, zone: int, image: ImageRecord) -> str:
        variables = {
            "environment": self.env.name,
            "zone": self.env.zones[zone],
            "zone_index": zone,
            "instance": instance,
            "role": role,
            "version": image.version,
            "db": db_settings(self.settings, self.env, self.provider, zone),
            "app": self.env.spec.app,
            "syslog": environments.syslog_variables(self.settings, self.env),
            "replication": (
                replication_settings(self.settings, self.env, self.provider, instance, zone)
                if role == "db"
                else None
            ),
            "tls": instance_tls(self.authority, self.env, self.provider, role, instance, zone),
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

    def elapsed(self) -> float:
        return round(time.monotonic() - self.started, 2)

    def adopt(self, state: RolloutState) -> None:
        """Carry on `state`: its clock counts from its start (also after a resume in a new
        process) and its samples grow on, so a report rebuilt later has the whole picture."""
        self.state = state
        self.started = time.monotonic() - max(0.0, time.time() - epoch_of(state.started_at))
        self.samples = state.samples

    def event(self, action: str, **details) -> None:
        entry = {"at": utc_iso(), "t": self.elapsed(), "action": action, **details}
        with self._lock:
            if self.state:
                self.state.events.append(entry)
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
        instances = self.instances(self.role)
        servers = self.gate.servers(instances)
        t = self.elapsed()
        for zone in range(len(self.env.zones)):
            healthy = collections.Counter(
                i.version
                for i in instances
                if i.zone == zone
                and i.name in servers
                and servers[i.name].healthy
                and servers[i.name].state == "ready"
            )
            last = next((x for x in reversed(self.samples) if x["zone"] == zone), None)
            if last is None or last["healthy"] != dict(healthy):  # kept only when counts change
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
        if register and self.gate.takes_traffic:
            self.gate.register(instance)
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
                raise RolloutFailed(f"{checks} did not pass {self.gate.judge} in {timeout:g} s")
            time.sleep(self.provider.poll_interval)

    def pause(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.sample()
            time.sleep(min(self.provider.poll_interval, max(0.0, end - time.monotonic())))

    def retire(self, names: list[str]) -> None:
        """Take them out of service together and stop them. Behind the load balancer they are
        drained first, until their sessions end (or the drain timeout); a role that takes no
        traffic drains by stopping: its services get their stop signal and stop timeouts."""
        if not names:
            return
        by_name = {i.name: i for i in self.instances()}
        if self.gate.takes_traffic:
            self.drain(names, by_name)
        for name in names:
            if name in by_name:
                # Out of service it serves nobody: stop it while the next step runs.
                with self._lock:
                    self._retiring.add(name)
                self._stopping.append(self._pool.submit(self.terminate, by_name[name]))

    def drain(self, names: list[str], by_name: dict[str, Instance]) -> None:
        servers = self.gate.servers([i for i in by_name.values() if i.role == self.role])
        for name in names:
            if name in servers and servers[name].state == "ready":
                self.gate.drain(by_name[name])
                self.event("draining", instance=name, **self.placement(by_name[name]))
        deadline = time.monotonic() + self.env.spec.rollout.drain_timeout
        while time.monotonic() < deadline:
            servers = self.sample()["servers"]
            if all(servers[n].sessions == 0 for n in names if n in servers):
                break
            time.sleep(self.provider.poll_interval)
        for name in names:
            if name in servers:
                self.gate.deregister(name)
                self.event("deregistered", instance=name, **self.placement(by_name.get(name)))

    def terminate(self, instance: Instance) -> None:
        self.provider.terminate(instance)
        with self._lock:
            self._retiring.discard(instance.name)
        self.event("terminated", instance=instance.name, **self.placement(instance))

    def placement(self, instance: Instance | None) -> dict[str, str]:
        """Zone and version of an instance, for the events the timeline draws."""
        if instance is None:
            return {}
        return {"zone": self.env.zones[instance.zone], "version": instance.version}

    def settle(self) -> None:
        """Wait for the instances being stopped; raise the first failure."""
        stopping, self._stopping = self._stopping, []
        for future in stopping:
            future.result()

    # ---- converging a zone ------------------------------------------------------------------

    def reconcile(self, zone: int, version: str) -> None:
        """Finish what a crash left half done in this zone, before planning the next step."""
        instances = self.instances()
        servers = self.gate.servers([i for i in instances if i.role == self.role])
        names = {i.name for i in instances}
        for name in servers:
            if name not in names:
                self.gate.deregister(name)
                self.event("deregistered", instance=name, reason="no such instance")
        pending, leftovers = [], []
        for inst in (i for i in instances if i.role == self.role and i.zone == zone):
            server = servers.get(inst.name)
            if server is None and inst.version == version and inst.running:
                self.gate.register(inst)
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
            if launched and canary and not have_new:
                self.event("canary", instances=",".join(launched), zone=self.env.zones[zone])
            if launched:
                self.wait_healthy(launched)
                if self.env.spec.rollout.warmup:
                    self.pause(self.env.spec.rollout.warmup)
            self.retire(step.retire)

    # ---- rollout, resume, rollback ----------------------------------------------------------

    def start(self, target: ImageRecord) -> RolloutState:
        """A new rollout's record, after refusing what must not start."""
        require_deployable(target, self.env)
        previous = self.store.load()
        if previous and previous.active:
            raise KilnError(
                f"the {previous.role} rollout {previous.id} to {previous.to_version} is "
                f"{previous.status}: continue it with `invoke rollout {self.env.name} --resume` "
                f"or undo it with `invoke rollback {self.env.name}`"
            )
        if self.role == "lb":  # one load balancer, not instances in zones
            from kiln.rollout import balancer

            versions = balancer.running_versions(self)  # the oldest served before any handover
            zones = [] if versions == [target.version] else [0]
            return RolloutState(self.env.name, self.role, versions[0], target.version, zones)
        instances = self.instances(self.role)
        if not instances:
            raise KilnError(
                f"environment {self.env.name} has no {self.role} instances: run `invoke up {self.env.name}`"
            )
        zones = list(range(len(self.env.zones)))
        steps = plan(self.env, self.role, instances, target.version, zones)
        self.check_user_data(self.role, [n for s in steps for n in s.launch], target)
        return RolloutState(
            self.env.name,
            self.role,
            majority_version(instances),
            target.version,
            sorted({s.zone for s in steps}),
        )

    def run(self, state: RolloutState, target: ImageRecord, *, resumed: bool = False) -> RolloutState:
        """Drive a rollout to its end: succeeded, paused, or rolled back (then OperationFailed)."""
        self.adopt(state)
        state.status = "running"
        self.save()
        if not resumed:
            self.tell("rollout-started")
        try:
            special = in_place(self.role)
            if special:  # a primary and its standby; the load balancer's handover
                special.converge(self, target)
                state.status = "succeeded"
                return self.finish()
            for zone in state.zones:
                if zone in state.done:
                    if resumed:  # an old instance may have been stopping when the rollout died
                        self.converge_zone(zone, target)
                    continue
                began = self.elapsed()
                canary = self.env.spec.rollout.canary if zone == state.zones[0] else 0
                self.converge_zone(zone, target, canary)
                state.done.append(zone)
                state.zone_timings[self.env.zones[zone]] = {"start": began, "end": self.elapsed()}
                self.event("zone done", zone=self.env.zones[zone])
                if self.pauses_after(state, resumed):
                    state.status = "paused"
                    return self.finish()
            state.status = "succeeded"
            return self.finish()
        except OperationFailed as exc:
            state.failure = str(exc)
            self.event("failed", reason=state.failure)
        self.roll_back(state.from_version)
        raise OperationFailed(
            f"rollout of {self.role} to {target.version} failed: {state.failure}; rolled back to "
            f"{state.from_version} automatically (timeline: {state.timeline})"
        )

    def pauses_after(self, state: RolloutState, resumed: bool) -> bool:
        """stop_after_first_zone: pause once, after the first of several zones."""
        return (
            self.env.spec.rollout.stop_after_first_zone
            and len(state.done) == 1
            and not resumed
            and len(state.zones) > 1
        )

    def roll_back(self, version: str | None) -> RolloutState:
        """Converge every zone that is not all at `version` back to it, surge first."""
        assert self.state is not None, "roll_back continues a rollout or a rollback record"
        self.adopt(self.state)
        if not version:
            raise KilnError(
                f"no previous {self.role} version recorded for {self.env.name}: nothing to roll back to"
            )
        image = self.provider.image(self.role, version)
        self.state.status = "rolling-back"
        self.save()
        instances = self.instances(self.role)
        touched = sorted({i.zone for i in instances if i.version != version}, reverse=True)
        try:
            special = in_place(self.role)
            if special:
                self.say(f"rolling {self.role} back to {version}")
                special.converge(self, image)
            else:
                for zone in touched:
                    name = self.env.zones[zone]
                    self.say(f"rolling back zone {name} to {version}")
                    began = self.elapsed()
                    self.converge_zone(zone, image)
                    timings = self.state.rollback_timings = self.state.rollback_timings or {}
                    timings[name] = {"start": began, "end": self.elapsed()}
        except OperationFailed as exc:
            self.state.status = "failed"
            self.finish()
            raise OperationFailed(
                f"rollback to {version} failed too: {exc}; "
                f"fix the cause and run `invoke rollback {self.env.name}`"
            ) from exc
        self.state.status = "rolled-back"
        return self.finish()

    def finish(self) -> RolloutState:
        """Persist the end state, append the audit record, draw the timeline, write the HTML
        report and tell the environment's people how it ended."""
        state = self.state
        assert state is not None
        self.settle()
        state.ended_at = utc_iso()
        state.seconds = self.elapsed()
        state.timeline, state.report = (str(path) for path in self.write_pictures(state))
        self.save()
        self.store.append_audit(state)
        if state.status == "succeeded":
            self.tell("rollout-finished")
        elif state.status in ("rolled-back", "failed"):
            cause = state.failure or (f"rollback of rollout {state.undoes}" if state.undoes else "")
            self.tell("rollout-rolled-back", cause)
        return state

    def write_pictures(self, state: RolloutState) -> tuple[Path, Path]:
        """The timeline (SVG) and the self-contained HTML report, next to rollout.json."""
        from kiln import htmlreport  # matplotlib loads only when a picture is drawn

        record, zones, canary = state.as_json(), self.env.zones, self.env.spec.rollout.canary
        timeline = self.store.timeline_file(state)
        picture = htmlreport.rollout_timeline(record, zones, state.samples, canary)
        write_atomic(timeline, picture)
        page = htmlreport.rollout_report_path(self.settings.state_dir, self.env.name, state.id)
        write_atomic(page, htmlreport.rollout_html(record, zones, state.samples, canary, picture))
        return timeline, page

    def tell(self, kind: str, cause: str = "") -> None:
        state = self.state
        assert state is not None
        notify.notify(
            self.env.name, self.env.spec.notify, kind, cause,
            role=self.role, version=f"{state.from_version} -> {state.to_version}", rollout=state.id,
        )  # fmt: skip
