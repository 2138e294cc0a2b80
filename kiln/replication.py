"""A db instance's part in a primary/standby pair, asked inside the instance (`Provider.probe`,
`Provider.channel`): who is the standby, and SQL as the postgres account."""

from __future__ import annotations

from kiln.errors import OperationFailed
from kiln.providers.base import Instance, Provider

STANDBY_SIGNAL = "/var/lib/postgresql/15/main/standby.signal"


def sql(provider: Provider, instance: Instance, query: str) -> str:
    result = provider.channel(instance).run(
        ["/usr/bin/psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", query],
        user="postgres",
        timeout=90,
    )
    if not result.ok:
        raise OperationFailed(f"{instance.name}: {query.split()[1]}: {result.tail(1)}")
    return result.out.strip()


def answers(provider: Provider, instance: Instance) -> bool:
    return bool(provider.probe(instance, ("/usr/bin/pg_isready", "-q", "-h", "/var/run/postgresql")))


def is_standby(provider: Provider, instance: Instance) -> bool:
    return bool(provider.probe(instance, ("/usr/bin/test", "-e", STANDBY_SIGNAL)))


def running_standbys(provider: Provider) -> list[Instance]:
    return [i for i in provider.instances("db") if i.running and is_standby(provider, i)]


def standbys_behind(provider: Provider, primary: Instance) -> dict[str, dict]:
    """Per standby streaming from the primary (by instance name): WAL bytes it has not replayed
    yet, and the replay lag PostgreSQL measured."""
    query = (
        "SELECT application_name, pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint, "
        "round(coalesce(extract(epoch FROM replay_lag), 0)::numeric, 3) FROM pg_stat_replication"
    )
    found = {}
    for line in sql(provider, primary, query).splitlines():
        name, behind, lag = line.split("|")
        found[name] = {"behind_bytes": int(behind or 0), "replay_lag_seconds": float(lag)}
    return found
