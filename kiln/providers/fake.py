"""An in-memory provider with scriptable failures, for fast tests of the rollout engine.

Instances and the load balancer are Python objects: a registered server passes its checks
after `rise` looks of the load balancer, a drained one has no sessions left. What can go wrong
is scripted: images that never turn healthy, launches that fail, a capacity (quota) limit, and
a crash before the Nth change, after which every call fails as if the process were gone
(`revive` brings a fresh process back). Every change is recorded with the capacity it left, so
tests can check the policy's floor and ceiling held at every moment.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace

from kiln.channels.base import Channel
from kiln.cloudinit import UserData
from kiln.environments import Environment
from kiln.errors import KilnError, OperationFailed
from kiln.images import ImageRecord
from kiln.providers.base import Instance, LbServer, Provider
from kiln.settings import Settings


class Crash(BaseException):
    """The process died here (a SIGKILL): no Kiln code may catch it, nothing is cleaned up."""


@dataclass
class Server:
    instance: str
    state: str = "ready"  # ready or drain
    looks: int = 0  # checks seen since registration
    healthy: bool = False


@dataclass
class Change:
    """One change the provider made, and the balanced role's capacity right after it."""

    action: str
    instance: str
    instances_per_zone: dict[int, int]  # running instances of the balanced role
    serving_per_zone: dict[int, int]  # of those, healthy and ready in the load balancer


@dataclass
class Script:
    """What goes wrong."""

    never_healthy: set[str] = field(default_factory=set)  # versions whose checks never pass
    launch_fails: set[str] = field(default_factory=set)  # versions the cloud refuses to start
    capacity: int | None = None  # most instances of the environment at once (a quota)
    crash_before: int | None = None  # the change (0-based) before which the process dies
    starting: dict[str, int] = field(default_factory=dict)  # role -> probes failing before it is ready


class FakeProvider(Provider):
    lb_from_image = False  # like a cloud's managed load balancer: no image, no user-data
    probes_instances = True

    def __init__(self, settings: Settings, env: Environment, script: Script | None = None):
        super().__init__(settings, env)
        self.script = script or Script()
        self.images: dict[tuple[str, str], ImageRecord] = {}
        self.running: dict[str, Instance] = {}
        self.user_data: dict[str, str] = {}
        self.servers: dict[str, Server] = {}
        self.probes: dict[str, int] = {}  # readiness probes per instance
        self.has_lb = False
        self.changes: list[Change] = []
        self.crashed = False
        self._lock = threading.RLock()  # the engine launches and terminates from threads

    @property
    def poll_interval(self) -> float:
        return 0.002

    # ---- scripting ----------------------------------------------------------------------------

    def add_image(self, role: str, version: str, status: str = "verified") -> ImageRecord:
        built = f"2026-01-01T00:00:{len(self.images):02d}Z"  # newer as added
        record = ImageRecord(
            role, version, status, f"fake/{role}:{version}", f"sha:{role}{version}", {"kiln.built": built}
        )
        self.images[(role, version)] = record
        return record

    def revive(self) -> None:
        """A new process after a crash: what was made stays, nothing more is scripted to crash."""
        with self._lock:
            self.crashed = False
            self.script = replace(self.script, crash_before=None)

    def _alive(self) -> None:
        if self.crashed:
            raise Crash("the process is gone")

    def _change(self, action: str, instance: str) -> None:
        """Count a change, crashing first when the script says so."""
        self._alive()
        if self.script.crash_before == len(self.changes):
            self.crashed = True
            raise Crash(f"killed before {action} {instance}")

    def _record(self, action: str, instance: str) -> None:
        balanced = [i for i in self.running.values() if i.role == self.env.spec.balanced_role]
        zones = range(len(self.env.zones))
        serving = {
            z: sum(
                1
                for i in balanced
                if i.zone == z
                and i.name in self.servers
                and self.servers[i.name].healthy
                and self.servers[i.name].state == "ready"
            )
            for z in zones
        }
        counts = {z: sum(1 for i in balanced if i.zone == z) for z in zones}
        self.changes.append(Change(action, instance, counts, serving))

    # ---- infrastructure -------------------------------------------------------------------------

    def ensure_networks(self) -> None:
        self._alive()

    def ensure_lb(self, image: ImageRecord | None, user_data: str) -> None:
        self._alive()
        self.has_lb = True

    def frontend(self) -> str | None:
        self._alive()
        return f"fake://{self.env.name}/" if self.has_lb else None

    def destroy(self) -> list[str]:
        with self._lock:
            self._alive()
            removed = sorted(self.running) + (["lb"] if self.has_lb else [])
            self.running.clear()
            self.servers.clear()
            self.has_lb = False
            return removed

    # ---- images and instances ------------------------------------------------------------------

    def image(self, role: str, version: str | None = None) -> ImageRecord:
        self._alive()
        if version:
            if (role, version) not in self.images:
                raise KilnError(f"no image fake/{role}:{version}")
            return self.images[(role, version)]
        usable = [
            r for (name, _), r in self.images.items() if name == role and r.status in self.env.deployable
        ]
        if not usable:
            raise KilnError(f"no verified {role} image")
        return max(usable, key=lambda r: r.labels["kiln.built"])

    def versions(self, role: str) -> list[str]:
        return [version for (name, version) in self.images if name == role]

    def check_user_data(self, image: ImageRecord, documents: list[UserData]) -> None:
        self._alive()
        for doc in documents:
            if not doc.text.startswith("#cloud-config"):
                raise KilnError(f"user-data of {doc.instance}: not a #cloud-config document")

    def peer_address(self, instance: str, zone: int = 0) -> str:
        return f"{instance}.fake"

    def launch(self, role: str, number: int, image: ImageRecord, user_data: str) -> Instance:
        name = f"{role}{number}"
        with self._lock:
            self._change("launch", name)
            if image.version in self.script.launch_fails:
                raise OperationFailed(f"the cloud refused to start {name} from {image.image}")
            limit = self.script.capacity
            if limit is not None and len(self.running) >= limit:
                raise OperationFailed(f"quota exceeded: {limit} instances at most, {name} would be one more")
            instance = Instance(name, role, self.env.zone_of(number), image.version, f"{name}.fake", True)
            self.running[name] = instance
            self.user_data[name] = user_data
            self._record("launch", name)
            return instance

    def instances(self, role: str | None = None) -> list[Instance]:
        with self._lock:
            self._alive()
            found = [i for i in self.running.values() if role is None or i.role == role]
        return sorted(found, key=lambda i: (i.role, i.number))

    def probe(self, instance: Instance, command: tuple[str, ...]) -> bool | None:
        with self._lock:
            self._alive()
            self.probes[instance.name] = self.probes.get(instance.name, 0) + 1
            return (
                instance.name in self.running
                and instance.version not in self.script.never_healthy
                and self.probes[instance.name] > self.script.starting.get(instance.role, 0)
            )

    def channel(self, instance: Instance, secrets: list[str] | None = None) -> Channel:
        raise OperationFailed(
            f"{instance.name} is a Python object of the fake provider: nothing runs inside it"
        )

    def terminate(self, instance: Instance) -> None:
        with self._lock:
            self._change("terminate", instance.name)
            self.running.pop(instance.name, None)
            self._record("terminate", instance.name)

    # ---- load balancer --------------------------------------------------------------------------

    def lb_register(self, instance: Instance) -> None:
        with self._lock:
            self._change("register", instance.name)
            self.servers[instance.name] = Server(instance.name)
            self._record("register", instance.name)

    def lb_drain(self, instance: Instance) -> None:
        with self._lock:
            self._change("drain", instance.name)
            self.servers[instance.name].state = "drain"
            self._record("drain", instance.name)

    def lb_servers(self) -> dict[str, LbServer]:
        with self._lock:
            self._alive()
            rise = self.env.spec.health.rise
            for server in self.servers.values():  # one check of each per look
                server.looks += 1
                instance = self.running.get(server.instance)
                server.healthy = (
                    instance is not None
                    and instance.version not in self.script.never_healthy
                    and server.looks >= rise
                )
            return {
                name: LbServer(name, s.healthy, s.state, 0, "L7OK" if s.healthy else "L7STS/503")
                for name, s in self.servers.items()
            }

    def lb_deregister(self, name: str) -> None:
        with self._lock:
            self._change("deregister", name)
            self.servers.pop(name, None)
            self._record("deregister", name)
