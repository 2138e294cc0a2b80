"""The lb role's rollout: the load balancer's HAProxy replaced in place, no connection refused.

Only a load balancer that runs Kiln's lb image has a version to roll out (local and qemu
environments; a cloud's is its managed service). The new version's HAProxy starts beside the
old one, takes the frontend's listening sockets over, and only then does the old one stop
softly, finishing its requests (kiln/providers/lbcontainers.py). Every server keeps its place:
the new HAProxy starts from the config Kiln keeps in step with the runtime API. A rollback is
the same handover back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kiln.cloudinit import UserData
from kiln.errors import KilnError
from kiln.images import ImageRecord

if TYPE_CHECKING:  # the engine calls converge for the lb role
    from kiln.rollout.engine import Engine

ROLE = "lb"


def running_versions(engine: Engine) -> list[str]:
    versions = engine.provider.lb_versions()
    if not versions:
        raise KilnError(
            f"environment {engine.env.name} has no load balancer running: run `invoke up {engine.env.name}`"
        )
    return versions


def plan_lines(engine: Engine, image: ImageRecord) -> list[str]:
    versions = running_versions(engine)
    if versions == [image.version]:
        return []
    current = versions[0]  # what served before any handover began
    return [
        f"start HAProxy {image.version} beside {current} in the frontend's network namespace",
        f"wait until it holds the frontend's sockets (health.timeout: {engine.env.spec.health.timeout:g} s)",
        f"stop HAProxy {current} softly: its requests finish, no connection is refused",
    ]


def converge(engine: Engine, image: ImageRecord) -> None:
    """The load balancer at `image` alone (also after a handover interrupted half-way)."""
    versions = running_versions(engine)
    if versions == [image.version]:
        return
    current = versions[0]
    began = engine.elapsed()
    user_data = engine.user_data(ROLE, ROLE, 0, image)
    engine.provider.check_user_data(image, [UserData(ROLE, user_data)])  # before anything changes
    engine.provider.replace_lb(image, user_data, engine.say)
    engine.event(
        "load balancer handed over",
        old=current,
        new=image.version,
        seconds=round(engine.elapsed() - began, 2),
    )
