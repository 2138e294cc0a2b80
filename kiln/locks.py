"""Package locks: the exact Debian versions a role installs on top of its parent.

`images/<role>/packages.lock` is committed and hashed into the role's version, so two bakes
of the same version install the same packages, and a security refresh is a visible change.
Resolution runs `apt-get install --simulate` in a throwaway container of the parent image,
which reports every package it would install with its version and the suite it comes from.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass, field

import docker

from kiln.errors import KilnError, OperationFailed
from kiln.files import write_atomic
from kiln.roles import Role
from kiln.settings import Settings

HEADER = "# Kiln package lock for role '{role}': every package installed on top of its parent.\n"
REQUESTED = "# requested: "
REGENERATE = "# Regenerate with: invoke lock {role} --update\n"

# `Inst libssl3 [3.0.15-1~deb12u1] (3.0.17-1~deb12u2 Debian-Security:12/stable-security [amd64])`
INST_LINE = re.compile(r"^Inst (?P<name>\S+) (?:\[(?P<old>[^]]+)\] )?\((?P<version>\S+) (?P<suites>[^[]*)")

APT_OPTIONS = "-o Acquire::Languages=none -o APT::Install-Recommends=false"


@dataclass(frozen=True)
class Lock:
    requested: tuple[str, ...]
    packages: dict[str, str]  # name -> exact version

    def specs(self) -> list[str]:
        return [f"{name}={version}" for name, version in sorted(self.packages.items())]

    def render(self, role: str) -> str:
        lines = [
            HEADER.format(role=role),
            REQUESTED + " ".join(self.requested) + "\n",
            REGENERATE.format(role=role),
        ]
        lines += [spec + "\n" for spec in self.specs()]
        return "".join(lines)

    def digest(self) -> str:
        return hashlib.sha256("\n".join(self.specs()).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Resolution:
    lock: Lock
    security: frozenset[str] = frozenset()  # packages whose resolved version is from -security


@dataclass
class LockDiff:
    added: list[tuple[str, str]] = field(default_factory=list)
    removed: list[tuple[str, str]] = field(default_factory=list)
    changed: list[tuple[str, str, str, bool]] = field(default_factory=list)  # name, old, new, sec

    def is_empty(self) -> bool:
        return not (self.added or self.removed or self.changed)

    def render(self) -> str:
        if self.is_empty():
            return "no change"
        lines = [f"+ {n} {v}" for n, v in self.added]
        lines += [f"- {n} {v}" for n, v in self.removed]
        lines += [f"~ {n} {o} -> {v}{'  [security]' if sec else ''}" for n, o, v, sec in self.changed]
        return "\n".join(lines)


def read_lock(role: Role) -> Lock | None:
    if not role.lock_file.exists():
        return None
    display = role.display(role.lock_file)
    requested: tuple[str, ...] = ()
    packages: dict[str, str] = {}
    for number, line in enumerate(role.lock_file.read_text().splitlines(), 1):
        if line.startswith(REQUESTED):
            requested = tuple(line[len(REQUESTED) :].split())
        if not line.strip() or line.startswith("#"):
            continue
        name, sep, version = line.strip().partition("=")
        if not sep or not name or not version:
            raise KilnError(
                f"{display}: line {number}: expected name=version, got {line.strip()!r}; "
                f"regenerate it with `invoke lock {role.name} --update`"
            )
        packages[name] = version
    return Lock(requested, packages)


def write_lock(role: Role, lock: Lock) -> None:
    write_atomic(role.lock_file, lock.render(role.name))


def lock_is_current(role: Role, lock: Lock | None) -> bool:
    """A lock fits the role when it was resolved for exactly the packages the role asks for."""
    return lock is not None and sorted(lock.requested) == sorted(role.spec.packages)


def resolve(client: docker.DockerClient, parent_image: str, role: Role, settings: Settings) -> Resolution:
    """Ask apt, in a throwaway container of the parent image, what installing the role's
    packages would install today."""
    if not role.spec.packages:
        return Resolution(Lock((), {}))
    packages = " ".join(role.spec.packages)
    script = (
        f"apt-get {APT_OPTIONS} update -qq >/dev/null && "
        f"apt-get {APT_OPTIONS} install --simulate -qq {packages}"
    )
    name = f"{settings.name_prefix}-lock-{role.name}-{uuid.uuid4().hex[:8]}"
    container = client.containers.create(
        parent_image,
        ["/bin/sh", "-c", script],
        name=name,
        network_mode=settings.bake_network,
        entrypoint=[],
        labels={"kiln.purpose": "lock"},
    )
    try:
        container.start()
        status = container.wait(timeout=600)["StatusCode"]
        output = container.logs().decode(errors="replace")
    finally:
        container.remove(force=True)
    if status != 0:
        detail = " ".join(line for line in output.splitlines() if line.startswith("E:"))
        raise OperationFailed(
            f"resolving packages of {role.display(role.role_file)} failed: {detail or output.strip()[-300:]}"
        )
    versions: dict[str, str] = {}
    security: set[str] = set()
    for line in output.splitlines():
        match = INST_LINE.match(line)
        if match:
            versions[match["name"]] = match["version"]
            if "security" in match["suites"].lower():
                security.add(match["name"])
    return Resolution(Lock(tuple(role.spec.packages), versions), frozenset(security))


def diff(old: Lock | None, new: Resolution) -> LockDiff:
    before = old.packages if old else {}
    after = new.lock.packages
    result = LockDiff()
    for name in sorted(after.keys() - before.keys()):
        result.added.append((name, after[name]))
    for name in sorted(before.keys() - after.keys()):
        result.removed.append((name, before[name]))
    for name in sorted(before.keys() & after.keys()):
        if before[name] != after[name]:
            result.changed.append((name, before[name], after[name], name in new.security))
    return result
