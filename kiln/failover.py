"""`invoke failover <env>`: promote the db standby, fence the old primary, repoint every client.

Instances reach the database through the load balancer (`Provider.database_address`), which
sends connections to whichever db instance's agent says it is the primary (no standby.signal).
So promoting the standby repoints the web and worker instances within a check interval, with
none of them touched, and the old primary is fenced by removing its instance before the standby
is promoted: it can never take a write again. `invoke up` then launches its replacement, which
copies the new primary and streams from it (kiln-db-standby).

What may be lost is measured, not assumed. A primary still running is stopped cleanly, and
PostgreSQL sends all of its WAL to a streaming standby before it stops: nothing is lost. A primary
found dead took with it whatever it committed after the standby's newest replayed transaction,
up to when the load balancer saw it go down; that window is the report's `lost_window_seconds`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from kiln.environments import Environment
from kiln.errors import KilnError, OperationFailed
from kiln.providers.base import Instance, Provider
from kiln.replication import answers, is_standby, sql
from kiln.stamps import utc_iso

if TYPE_CHECKING:  # the engine rolls the db out through switch_over
    from kiln.rollout.engine import Engine

ROUTE_TIMEOUT = 30.0  # seconds for the load balancer to send connections to the new primary
CATCH_UP_TIMEOUT = 10.0  # seconds for the standby to replay what it already received


@dataclass(frozen=True)
class FailoverReport:
    environment: str
    old_primary: str | None  # None when no primary instance was left
    new_primary: str
    old_primary_state: str  # "stopped cleanly", "dead" or "absent"
    newest_saved_commit: str | None  # the newest transaction the new primary has (UTC)
    primary_down_since: str | None  # when the load balancer saw the old primary go down (UTC)
    lost_window_seconds: float | None  # writes in this window may be lost; 0: none; None: unknown
    fenced_seconds: float
    promoted_seconds: float
    repointed_seconds: float  # from the start until the load balancer routes to the new primary
    at: str

    def as_json(self) -> dict:
        return asdict(self)

    def lost_writes(self) -> str:
        if self.lost_window_seconds is None:
            return f"lost writes: unknown; the newest saved commit is {self.newest_saved_commit or 'none'}"
        if not self.lost_window_seconds:
            return "lost writes: none"
        return (
            f"lost writes: any committed on {self.old_primary} in the {self.lost_window_seconds} s "
            f"after {self.newest_saved_commit}, before it went down"
        )


def choose(provider: Provider, version: str | None = None) -> tuple[Instance, list[Instance]]:
    """The standby to promote (of `version` when given; the one furthest along) and every other
    db instance."""
    dbs = provider.instances("db")
    standbys = [
        i
        for i in dbs
        if i.running and version in (None, i.version) and is_standby(provider, i) and answers(provider, i)
    ]
    if not standbys:
        of = f" of version {version}" if version else ""
        raise KilnError(
            f"{provider.env.file}: no running standby{of} to promote: `invoke up {provider.env.name}` "
            "launches one (it copies the primary)"
        )

    def replayed(instance: Instance) -> int:
        lsn = sql(provider, instance, "SELECT pg_last_wal_replay_lsn() - '0/0'")
        return int(lsn or 0)

    chosen = max(standbys, key=replayed)
    return chosen, [i for i in dbs if i.name != chosen.name]


def wait_caught_up(provider: Provider, standby: Instance) -> None:
    """Promotion replays what was received anyway; waiting first makes `newest_saved_commit` true."""
    deadline = time.monotonic() + CATCH_UP_TIMEOUT
    query = "SELECT coalesce(pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn(), true)"
    while sql(provider, standby, query) != "t" and time.monotonic() < deadline:
        time.sleep(0.2)


def require_standby(env: Environment) -> None:
    if env.count("db") < 2:
        raise KilnError(
            f"{env.file}: field 'instances.db': {env.count('db')} db instance, so no standby to "
            f"promote: set it to 2 and run `invoke up {env.name}`"
        )


def failover(engine: Engine, say: Callable[[str], None]) -> FailoverReport:
    require_standby(engine.env)
    with engine.store.lock("failover"):
        report = switch_over(engine.provider, say)
    engine.store.append_record({"action": "failover", **report.as_json()})
    return report


def switch_over(provider: Provider, say: Callable[[str], None], version: str | None = None) -> FailoverReport:
    """Fence the primary (remove its instance), promote the standby (of `version`, when given),
    and return once the load balancer routes to it."""
    started = time.monotonic()
    standby, others = choose(provider, version)
    routes = provider.database_servers()
    # the primary: the instance the LB routed to, or a non-standby one, or the one left
    old = next((i for i in others if (s := routes.get(i.name)) and s.healthy), None)
    old = old or next((i for i in others if not (i.running and is_standby(provider, i))), None)
    state, down_since = "absent", None
    if old is not None and old.running and answers(provider, old):
        streaming = sql(provider, old, "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")
        state = "stopped cleanly" if int(streaming) > 0 else "stopped, no standby streaming"
    elif old is not None:
        state = "dead"
        seen = routes.get(old.name)
        if seen is not None and not seen.healthy:
            down_since = time.time() - seen.changed_ago
    if old is not None:
        say(f"fencing {old.name} ({state}): removing it, so it can never take a write again")
        # out of the LB first: a connection sent to a stopping or removed instance hangs, not fails
        provider.database_hold(old.name)
        provider.terminate(old)
    fenced = time.monotonic() - started
    wait_caught_up(provider, standby)
    newest = sql(provider, standby, "SELECT extract(epoch FROM pg_last_xact_replay_timestamp())")
    say(f"promoting {standby.name}")
    if sql(provider, standby, "SELECT pg_promote(true, 60)") != "t":
        raise OperationFailed(f"{standby.name} was not promoted within 60 s: see its PostgreSQL log")
    promoted = time.monotonic() - started
    wait_routed(provider, standby.name)
    newest_at = float(newest) if newest else None
    return FailoverReport(
        environment=provider.env.name,
        old_primary=old.name if old else None,
        new_primary=standby.name,
        old_primary_state=state,
        newest_saved_commit=iso(newest_at),
        primary_down_since=iso(down_since),
        lost_window_seconds=lost_window(state, newest_at, down_since),
        fenced_seconds=round(fenced, 2),
        promoted_seconds=round(promoted, 2),
        repointed_seconds=round(time.monotonic() - started, 2),
        at=utc_iso(),
    )


def lost_window(state: str, newest: float | None, down_since: float | None) -> float | None:
    if state == "stopped cleanly":
        return 0.0
    if newest is None or down_since is None:
        return None
    return round(max(0.0, down_since - newest), 2)


def wait_routed(provider: Provider, name: str) -> None:
    deadline = time.monotonic() + ROUTE_TIMEOUT
    while True:
        server = provider.database_servers().get(name)
        if server is not None and server.healthy:
            return
        if time.monotonic() > deadline:
            check = server.check if server else "not listed"
            raise OperationFailed(
                f"the load balancer did not route to the new primary {name} within {ROUTE_TIMEOUT:g} s "
                f"(its check: {check}); the promotion stands: look at `invoke status {provider.env.name}`"
            )
        time.sleep(0.2)


def iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")
