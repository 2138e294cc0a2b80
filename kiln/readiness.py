"""Whether each instance of an environment is ready to serve, per role.

The balanced role is ready when the load balancer counts it healthy and in service. Other roles
have no load balancer looking at them: a role whose role.yml declares `health_command` is ready
when that command succeeds inside the instance (db: the application's database answers a query,
not merely a running PostgreSQL; a worker: its heartbeat is fresh); any other role when it runs.
Providers that cannot run a command inside their instances (the clouds) report those as
"unknown", and `up` does not wait for them.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable

from kiln.errors import OperationFailed
from kiln.polling import poll
from kiln.providers.base import Instance, LbServer, Provider
from kiln.roles import RoleCatalog

READY, UNKNOWN = "ready", "unknown"


def health_command(catalog: RoleCatalog, role: str) -> tuple[str, ...] | None:
    """The role's `health_command` as argv, or None when it declares none."""
    command = catalog.get(role).spec.health_command
    return tuple(shlex.split(command)) if command else None


def state_of(
    provider: Provider, instance: Instance, servers: dict[str, LbServer], catalog: RoleCatalog
) -> str:
    """ready, starting, stopped, or unknown (a probe this provider cannot run). `catalog` reads
    each role.yml once for a whole look at the environment."""
    if not instance.running:
        return "stopped"
    if instance.role == provider.env.spec.balanced_role:
        server = servers.get(instance.name)
        return READY if server and server.healthy and server.state == "ready" else "starting"
    command = health_command(catalog, instance.role)
    if command is None:
        return READY
    answered = provider.probe(instance, command)
    return UNKNOWN if answered is None else READY if answered else "starting"


def states(provider: Provider) -> dict[str, str]:
    """Every instance's readiness, by name."""
    servers = provider.lb_servers() if provider.frontend() else {}
    catalog = RoleCatalog(provider.settings)
    return {i.name: state_of(provider, i, servers, catalog) for i in provider.instances()}


def wait_ready(provider: Provider, say: Callable[[str], None], timeout: float) -> dict[str, str]:
    """Every instance's readiness once all are ready (or unknown); OperationFailed naming the
    ones that are not after `timeout` seconds."""
    seen = states(provider)
    if not_ready(seen):
        say(f"waiting for {', '.join(not_ready(seen))} to be ready")

    def all_ready() -> dict[str, str] | None:
        seen.update(states(provider))
        return None if not_ready(seen) else seen

    try:
        return poll(all_ready, timeout=timeout, interval=provider.poll_interval, what="readiness")
    except OperationFailed:
        late = ", ".join(f"{name} ({seen[name]})" for name in not_ready(seen))
        raise OperationFailed(
            f"{late} not ready after {timeout:g} s; see `invoke status {provider.env.name}` "
            f"and the instance's log"
        ) from None


def not_ready(seen: dict[str, str]) -> list[str]:
    return [name for name, state in seen.items() if state not in (READY, UNKNOWN)]
