"""Baking several roles in one go (`invoke bake --all`, `invoke up --bake`): parents first, each
image verified, and one summary row per role.

Roles run one after another. Each role's bake has its own apt cache volume
(<prefix>-apt-archives-<role>, see kiln.targets.docker), so children of one parent could run side
by side, as the pipeline's bake jobs do; on a 2-core machine that saves little and interleaves
their output, so this keeps them in order.
"""

from __future__ import annotations

from dataclasses import dataclass

from kiln import verify as verification
from kiln.bake import Baker
from kiln.errors import KilnError, OperationFailed
from kiln.roles import RoleCatalog
from kiln.settings import Settings

COLUMNS = ["role", "version", "action", "seconds", "status", "image"]


@dataclass(frozen=True)
class RoleRow:
    """One line of the summary table."""

    role: str
    version: str
    action: str  # baked, or up to date
    seconds: float
    status: str  # the image's kiln.status after verification
    image: str

    def as_row(self) -> dict:
        return {**self.__dict__, "seconds": f"{self.seconds:.1f}"}


def parents_first(catalog: RoleCatalog, names: list[str]) -> list[str]:
    """`names` and their ancestors, each after its parent, each once."""
    ordered: list[str] = []
    for name in names:
        ordered += [role.name for role in catalog.chain(name) if role.name not in ordered]
    return ordered


def bake_roles(
    settings: Settings, names: list[str] | None = None, *, force: bool = False, locked: bool = False,
    verify: bool = True, role: str | None = None, target: str = "docker",
) -> list[RoleRow]:  # fmt: skip
    """`invoke bake --all`: every role (or `names`) on the docker target. `role` and `target` are
    what the command line gave beside --all, refused when set."""
    if role or target != "docker":
        raise KilnError("--all bakes every role on the docker target: give no role and no --target")
    return bake_on(settings, "docker", names, force=force, locked=locked, verify=verify)


def bake_on(
    settings: Settings, target: str, names: list[str] | None = None, *, force: bool = False,
    locked: bool = False, verify: bool = True,
) -> list[RoleRow]:  # fmt: skip
    """Bake `names` (default: every role) on `target`, parents first, one at a time (see the
    module's note), verifying each unverified image; the summary, one row per role."""
    baker = Baker(settings, target)
    order = parents_first(baker.catalog, names or baker.catalog.names())
    rows: list[RoleRow] = []
    for name in order:
        *_, outcome = baker.bake(name, force=force, locked=locked)
        if verify:
            verification.verify_chain(settings, [(outcome.role, outcome.version)], target)
        record = baker.store.find(outcome.role, outcome.version)
        status = record.status if record else "missing"
        action = "baked" if outcome.baked else "up to date"
        seconds = round(outcome.seconds, 1)
        rows.append(RoleRow(outcome.role, outcome.version, action, seconds, status, outcome.image))
    return rows


def require_none_rejected(rows: list[RoleRow]) -> None:
    rejected = [f"{row.role} {row.version}" for row in rows if row.status == "rejected"]
    if rejected:
        raise OperationFailed(
            f"rejected by verification: {', '.join(rejected)}; `invoke verify ROLE` shows the failed controls"
        )
