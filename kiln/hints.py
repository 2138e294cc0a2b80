"""The one-line "next:" a task prints after it succeeds, in the order of the README's tour:
bake, up, status, rollout, backup, dr-drill, down. Each says what the next step needs, so no
step stops for a reason the one before could have told.
"""

from __future__ import annotations

from kiln import environments
from kiln.errors import KilnError
from kiln.settings import Settings

TOUR_ENV = "local"  # the environment the README's tour uses, which works out of the box

AFTER = {
    "up": "`invoke status {env}` shows every instance, its health and readiness",
    "status": "bake a changed role (`invoke bake web`), then `invoke rollout {env} --plan` and "
    "`invoke rollout {env}`; or back it up: `invoke backup {env}`",
    "rollout": "`invoke report {env} --open` shows the rollout; `invoke backup {env}` backs it up",
    "rollout-unchanged": "a rollout needs a new version: change a role, `invoke bake web`, roll out again; "
    "or back it up: `invoke backup {env}`",
    "rollback": "`invoke report {env} --open` shows the rollback",
    "backup": "`invoke dr-drill {env}` proves the backup restores (RTO and RPO)",
    "dr-drill": "`invoke report {env} --open` shows the drill; `invoke down {env}` when you are done",
    "down": "`invoke up {env}` brings it back; its backups stayed",
    "failover": "`invoke up {env}` launches a new standby in place of the removed primary",
}


def after(task: str, env: str) -> str:
    return "next: " + AFTER[task].format(env=env)


def after_bake(settings: Settings, env: str = TOUR_ENV, *, target: str = "docker", role: str = "") -> str:
    """After a bake: `invoke up`, or first the bakes `up` would ask for. A VM disk is not deployed
    on this machine (no environment runs qemu disks): its next step is the audit."""
    if target == "qemu":
        return f"next: `invoke audit {role} --target qemu` scores the disk with Lynis and OpenSCAP in a VM"
    from kiln.console import say
    from kiln.rollout import lifecycle  # the provider's image catalog: only once a bake succeeded

    if env not in environments.names(settings):
        return f"next: `invoke up ENV` for an environment in {environments.env_dir(settings).name}/"
    try:
        missing = lifecycle.missing_images(lifecycle.open_engine(settings, env, say))
    except KilnError:  # a provider this machine cannot reach: the plain hint
        missing = []
    if missing:
        needs = ", ".join(missing)
        return f"next: `invoke up {env} --bake` bakes what {env} still needs ({needs})"
    return f"next: `invoke up {env}`"
