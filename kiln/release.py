"""Release manifests: `releases/<name>.yml` names the image version of every role it ships, in
deploy order. The same manifest deploys any environment (a standing DR environment first, then
prod); `diff` says what changed between two of them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from kiln.config import load_yaml, parse, spec
from kiln.errors import KilnError
from kiln.roles import RoleCatalog
from kiln.settings import Settings

RELEASE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class ReleaseRole:
    role: str = spec(help="a role under images/")
    version: str = spec(help="its image version, or a prefix of one as `invoke images` shows it")


@dataclass(frozen=True)
class ReleaseSpec:
    roles: list[ReleaseRole] = spec(help="the roles it ships, each with its image version, in deploy order")
    description: str = spec("", help="one line saying what the release changes")


@dataclass(frozen=True)
class Release:
    name: str
    spec: ReleaseSpec
    file: str  # display path, for messages

    @property
    def versions(self) -> dict[str, str]:
        """role -> version, in deploy order."""
        return {entry.role: entry.version for entry in self.spec.roles}


def names(settings: Settings) -> list[str]:
    return sorted(p.stem for p in (settings.project_root / "releases").glob("*.yml"))


def load(settings: Settings, name: str) -> Release:
    display = f"releases/{name}.yml"
    known = names(settings)
    if not RELEASE_NAME.match(name) or name not in known:
        listing = ", ".join(known) if known else "none"
        raise KilnError(
            f"unknown release '{name}'; known releases: {listing}. To make one, write {display} "
            f"with `roles: [{{role: web, version: <version from invoke images>}}]`"
        )
    spec_ = parse(ReleaseSpec, load_yaml(settings.project_root / display, display), display)
    if not spec_.roles:
        raise KilnError(f"{display}: field 'roles': list at least one role and its version")
    roles = RoleCatalog(settings).names()
    seen: set[str] = set()
    for i, entry in enumerate(spec_.roles):
        if entry.role not in roles:
            raise KilnError(
                f"{display}: field 'roles[{i}].role': unknown role '{entry.role}'; known: {', '.join(roles)}"
            )
        if entry.role in seen:
            raise KilnError(f"{display}: field 'roles[{i}].role': '{entry.role}' is listed twice")
        seen.add(entry.role)
        if not entry.version.strip():
            raise KilnError(f"{display}: field 'roles[{i}].version': give the image version")
    return Release(name, spec_, display)


@dataclass(frozen=True)
class Change:
    role: str
    before: str | None  # None: the role is new in the second release
    after: str | None  # None: the second release no longer ships it

    @property
    def kind(self) -> str:
        if self.before is None:
            return "added"
        if self.after is None:
            return "removed"
        return "unchanged" if self.before == self.after else "changed"

    def versions(self) -> str:
        """The version(s) a person reads beside the kind: `a -> b` only when it changed."""
        return f"{self.before} -> {self.after}" if self.kind == "changed" else str(self.after or self.before)


def diff(a: Release, b: Release) -> list[Change]:
    """Every role of either release, in b's deploy order then a's leftovers."""
    before, after = a.versions, b.versions
    order = list(after) + [role for role in before if role not in after]
    return [Change(role, before.get(role), after.get(role)) for role in order]
