"""How a rollout tells that an instance of its role serves, and takes one out of service.

The load-balanced role is judged by the load balancer's own checks and drained there. A role that
takes no traffic (a worker) is judged by its `health_command` (role.yml) run inside the instance,
`rise` passes in a row, and has nothing to drain: stopping it is its drain, its services get their
stop signal and stop timeouts (a worker finishes the job in hand). Both give the engine the same
view, LbServer rows by instance name, so planning, reconcile and rollback stay one code path.
"""

from __future__ import annotations

import abc
import time

from kiln.environments import Environment
from kiln.errors import KilnError
from kiln.providers.base import Instance, LbServer, Provider
from kiln.readiness import health_command
from kiln.roles import RoleCatalog


class Gate(abc.ABC):
    takes_traffic = True  # registered, drained and deregistered around its instances' lives
    judge = "the load balancer's health check"  # for people: what a new instance must pass

    def __init__(self, provider: Provider, env: Environment, role: str):
        self.provider, self.env, self.role = provider, env, role

    @abc.abstractmethod
    def servers(self, instances: list[Instance]) -> dict[str, LbServer]:
        """Every instance in service or on its way in, by name (`instances`: the role's)."""

    @abc.abstractmethod
    def register(self, instance: Instance) -> None:
        """Put a new instance on its way into service (only when it takes traffic)."""

    @abc.abstractmethod
    def drain(self, instance: Instance) -> None:
        """No new connections for it; those in hand continue."""

    @abc.abstractmethod
    def deregister(self, name: str) -> None:
        """Out of service for good, before it is stopped."""


class LoadBalancerGate(Gate):
    def servers(self, instances: list[Instance]) -> dict[str, LbServer]:
        return self.provider.lb_servers()

    def register(self, instance: Instance) -> None:
        self.provider.lb_register(instance)

    def drain(self, instance: Instance) -> None:
        self.provider.lb_drain(instance)

    def deregister(self, name: str) -> None:
        self.provider.lb_deregister(name)


class CommandGate(Gate):
    """The role's health command, run at most once per `health.interval` per instance."""

    takes_traffic = False
    judge = "its role's health_command"

    def __init__(self, provider: Provider, env: Environment, role: str):
        super().__init__(provider, env, role)
        command = health_command(RoleCatalog(provider.settings), role)
        if command is None:
            raise KilnError(
                f"images/{role}/role.yml declares no health_command: a rollout of {role} could not tell "
                f"when a new instance works; add one (a command that exits 0 inside a healthy instance)"
            )
        if not provider.probes_instances:
            raise KilnError(
                f"the {env.spec.provider} provider cannot run {role}'s health_command in its instances, "
                f"so {role} cannot roll out there yet; replace its instances with `invoke down` and `up`"
            )
        self.command = command
        self.passes: dict[str, int] = {}  # consecutive passes per instance
        self.looked: dict[str, float] = {}

    def servers(self, instances: list[Instance]) -> dict[str, LbServer]:
        rise, now = self.env.spec.health.rise, time.monotonic()
        for instance in instances:
            if now - self.looked.get(instance.name, -1e9) < self.env.spec.health.interval:
                continue
            self.looked[instance.name] = now
            answered = instance.running and self.provider.probe(instance, self.command)
            self.passes[instance.name] = self.passes.get(instance.name, 0) + 1 if answered else 0
        return {
            i.name: LbServer(
                i.name,
                self.passes.get(i.name, 0) >= rise,
                "ready",
                0,
                f"health_command passed {min(self.passes.get(i.name, 0), rise)}/{rise}",
            )
            for i in instances
        }

    # Nothing routes work to a worker: it takes jobs itself, and stopping it is its drain.
    def register(self, instance: Instance) -> None:
        pass

    def drain(self, instance: Instance) -> None:
        pass

    def deregister(self, name: str) -> None:
        pass


def gate_for(provider: Provider, env: Environment, role: str) -> Gate:
    return (LoadBalancerGate if role == env.spec.balanced_role else CommandGate)(provider, env, role)
