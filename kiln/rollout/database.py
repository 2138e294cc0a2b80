"""The db role's rollout: a primary and its standby, each replaced in place.

The standby goes first (a new one of the target version copies the primary and streams from it),
then a switchover promotes it (the old primary, stopped cleanly, sends its last WAL before it is
removed: nothing is lost), then the old primary's replacement comes back as the new primary's
standby. Instances keep their numbers, so the load balancer's `db` section, which names them,
follows the primary throughout. A rollback is the same walk back to the previous version.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kiln.failover import switch_over
from kiln.images import ImageRecord
from kiln.providers.base import Instance
from kiln.replication import running_standbys

if TYPE_CHECKING:  # the engine calls converge for the db role
    from kiln.rollout.engine import Engine


def pair(engine: Engine) -> tuple[list[Instance], list[Instance]]:
    """The running standbys, then the rest: the primary, and any stopped instance (replaced as a
    standby, with no switchover)."""
    standbys = running_standbys(engine.provider)
    return standbys, [i for i in engine.provider.instances("db") if i not in standbys]


def plan_lines(engine: Engine, image: ImageRecord) -> list[str]:
    standbys, primaries = pair(engine)
    lines = [
        f"replace standby {i.name} ({i.version}) and wait until healthy"
        for i in standbys
        if i.version != image.version
    ]
    for old in primaries:
        if old.version == image.version:
            continue
        if not old.running:
            lines.append(f"replace stopped {old.name} ({old.version}) as a standby and wait until healthy")
            continue
        lines.append(f"switch over: remove {old.name} ({old.version}), promote a standby at {image.version}")
        lines.append(f"launch {old.name} again as its standby and wait until healthy")
    return lines


def converge(engine: Engine, image: ImageRecord) -> None:
    """Every db instance at `image`: standbys first, then the primary through a switchover."""
    provider = engine.provider
    standbys, primaries = pair(engine)
    for old in standbys:
        if old.version != image.version:
            replace(engine, old, image)
    for old in primaries:
        if old.version == image.version:
            continue
        # A stopped instance (a new standby that died, rolled back) holds no data: only a running
        # primary hands over to a standby first.
        if old.running:
            report = switch_over(provider, engine.say, version=image.version)
            engine.event(
                "switched over",
                instance=report.new_primary,
                old=old.name,
                seconds=report.repointed_seconds,
                lost=report.old_primary_state,
            )
        replace(engine, old, image)


def replace(engine: Engine, old: Instance, image: ImageRecord) -> None:
    """Remove it, then launch the same number at `image` and wait for its health command (a
    standby answers once it has copied the primary and replayed to a consistent point)."""
    engine.terminate(old)
    new = engine.launch(old.number, image, register=False)
    engine.wait_healthy([new.name])
