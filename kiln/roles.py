"""Roles as data: `images/<role>/role.yml`, validated on load, chained to their parents.

A role's version is a hash over everything that goes into its image (see `inputs_digest`),
so an unchanged role is recognised without building anything.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from kiln import __version__
from kiln.config import load_yaml, parse, spec
from kiln.errors import KilnError
from kiln.services import Service, check_command
from kiln.services import validate as validate_services
from kiln.settings import Settings

# Steps every bake runs around the role's own provisioners: the package install first (so
# provisioners can configure what it installed), the clean-up and image facts last.
LEADING_PROVISIONERS = ("packages",)
TRAILING_PROVISIONERS = ("services", "finish")

PACKAGE_NAME = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
ENV_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")
ROLE_NAME = re.compile(r"^[a-z][a-z0-9-]*$")


@dataclass(frozen=True)
class FileCopy:
    src: str = spec(help="path under the role's folder; a trailing / copies the folder's contents")
    dest: str = spec(help="absolute path in the image")


@dataclass(frozen=True)
class Health:
    path: str = spec("/health", help="HTTP path that answers 200 when the instance is ready")
    port: int = spec(80, help="TCP port that serves the health path")


@dataclass(frozen=True)
class RoleSpec:
    name: str = spec(help="role name; must match the folder name")
    description: str = spec(help="one line saying what instances of this role do")
    parent: str | None = spec(None, help="role this image is built from; only 'base' has none")
    packages: list[str] = spec([], help="Debian packages installed on top of the parent")
    provisioners: list[str] = spec([], help="ordered shell steps, provisioners/<name>.sh")
    files: list[FileCopy] = spec([], help="files copied into the image before the provisioners")
    cloud_init: str | None = spec(None, help="user-data template in cloud-init/ applied at boot")
    ports: list[int] = spec([], help="TCP ports the role serves (exposed, opened in the firewall)")
    health: Health | None = spec(None, help="health endpoint the load balancer checks")
    health_command: str | None = spec(
        None,
        help="command (absolute path first) that exits 0 inside a healthy instance: how Kiln judges "
        "instances no load balancer checks (`up` waits for it; a worker rolls out on it)",
    )
    tests: list[str] = spec([], help="testinfra files in images/<role>/tests/ that verify it")
    env: dict[str, str] = spec({}, help="extra environment for this role's provisioners")
    services: list[Service] = spec(
        [], help="what instances run, in order: systemd units on a VM, kiln-init in a container"
    )
    max_security_pending: int | None = spec(
        None, help="fail verification when more security updates than this are pending"
    )


@dataclass(frozen=True)
class Role:
    spec: RoleSpec
    folder: Path
    settings: Settings

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def parent(self) -> str | None:
        return self.spec.parent

    @property
    def role_file(self) -> Path:
        return self.folder / "role.yml"

    @property
    def lock_file(self) -> Path:
        return self.folder / "packages.lock"

    def display(self, path: Path) -> str:
        return str(path.relative_to(self.settings.project_root))

    @property
    def provisioner_paths(self) -> list[Path]:
        names = [*LEADING_PROVISIONERS, *self.spec.provisioners, *TRAILING_PROVISIONERS]
        return [self.settings.provisioners_dir / f"{name}.sh" for name in names]

    @cached_property
    def copied_files(self) -> list[Path]:
        """Every file the `files` entries copy, in a stable order."""
        found: list[Path] = []
        for copy in self.spec.files:
            src = self.folder / copy.src
            found.extend(sorted(p for p in src.rglob("*") if p.is_file()) if src.is_dir() else [src])
        return found

    def input_files(self) -> list[Path]:
        """Files whose bytes (and modes) decide the image: the version hashes them."""
        files = [self.role_file, *self.provisioner_paths, *self.copied_files]
        if self.lock_file.exists():
            files.append(self.lock_file)
        return files

    def inputs_digest(self, template_source: bytes, parent_identity: str) -> str:
        """sha256 over every input; the first 12 hex digits are the image version.

        `template_source` is the code that renders the Packer template for the target and
        `parent_identity` names the exact parent image (a bake id, never a mutable tag).
        """
        digest = hashlib.sha256()

        def add(label: str, data: bytes) -> None:
            digest.update(f"{label}\0{len(data)}\0".encode())
            digest.update(data)

        add("kiln", __version__.encode())
        add("parent", parent_identity.encode())
        add("template", template_source)
        for path in self.input_files():
            mode = oct(path.stat().st_mode & 0o777)
            add(f"{self.display(path)} {mode}", path.read_bytes())
        return digest.hexdigest()


def version_of(digest: str) -> str:
    return digest[:12]


class RoleCatalog:
    """The roles under images/, loaded on demand and validated as a whole chain."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._loaded: dict[str, Role] = {}

    def names(self) -> list[str]:
        if not self.settings.images_dir.is_dir():
            return []
        return sorted(p.parent.name for p in self.settings.images_dir.glob("*/role.yml"))

    def get(self, name: str) -> Role:
        if name not in self._loaded:
            self._loaded[name] = self._load(name)
        return self._loaded[name]

    def chain(self, name: str) -> list[Role]:
        """The role and its ancestors, root first: the order they are baked in."""
        chain: list[Role] = []
        role = self.get(name)
        while True:
            if role in chain:
                cycle = " -> ".join(r.name for r in [*chain, role])
                raise KilnError(f"{role.display(role.role_file)}: field 'parent': cycle {cycle}")
            chain.append(role)
            if role.parent is None:
                chain.reverse()
                _check_service_names(chain)
                return chain
            role = self.get(role.parent)

    def stop_grace(self, name: str) -> int:
        """Seconds an instance of the role may need to stop cleanly: its services stop one after
        another, in reverse order, each within its own stop_timeout."""
        return sum(s.stop_timeout for role in self.chain(name) for s in role.spec.services if not s.oneshot)

    def _load(self, name: str) -> Role:
        known = self.names()
        if name not in known:
            listing = ", ".join(known) if known else "none (images/ has no */role.yml)"
            raise KilnError(
                f"unknown role '{name}'; known roles: {listing}. "
                f"To add one, create images/{name}/role.yml (see README: Adding a role)."
            )
        folder = self.settings.images_dir / name
        role_file = folder / "role.yml"
        display = str(role_file.relative_to(self.settings.project_root))
        role_spec = parse(RoleSpec, load_yaml(role_file, display), display)
        role = Role(role_spec, folder, self.settings)
        self._validate(role, display, known)
        return role

    def _validate(self, role: Role, display: str, known: list[str]) -> None:
        s = role.spec

        def fail(field: str, message: str) -> None:
            raise KilnError(f"{display}: field '{field}': {message}")

        if s.name != role.folder.name:
            fail("name", f"'{s.name}' must match its folder name '{role.folder.name}'")
        if not ROLE_NAME.match(s.name):
            fail("name", "use lower-case letters, digits and '-', starting with a letter")
        if s.parent is not None and s.parent not in known:
            fail("parent", f"unknown role '{s.parent}'; known roles: {', '.join(known)}")
        if s.parent is None and s.name != "base":
            fail("parent", "only the 'base' role may have no parent; add 'parent: base'")
        for i, package in enumerate(s.packages):
            if not PACKAGE_NAME.match(package):
                fail(f"packages[{i}]", f"'{package}' is not a Debian package name")
        for i, name in enumerate(s.provisioners):
            if not (self.settings.provisioners_dir / f"{name}.sh").is_file():
                fail(f"provisioners[{i}]", f"no file provisioners/{name}.sh")
        for i, copy in enumerate(s.files):
            if not (role.folder / copy.src).exists():
                fail(f"files[{i}].src", f"no such path images/{s.name}/{copy.src}")
            if not copy.dest.startswith("/"):
                fail(f"files[{i}].dest", f"'{copy.dest}' must be an absolute path")
        if s.cloud_init and not (self.settings.project_root / "cloud-init" / s.cloud_init).is_file():
            fail("cloud_init", f"no file cloud-init/{s.cloud_init}")
        for i, port in enumerate(s.ports):
            if not 0 < port < 65536:
                fail(f"ports[{i}]", f"{port} is not a TCP port (1-65535)")
        for i, test in enumerate(s.tests):
            if not (role.folder / "tests" / test).is_file():
                fail(f"tests[{i}]", f"no file images/{s.name}/tests/{test}")
        for key in s.env:
            if not ENV_NAME.match(key):
                fail(f"env.{key}", "use upper-case letters, digits and '_', like APP_WORKERS")
        check_command(s.health_command, "health_command", fail)
        validate_services(s.services, fail)


def _check_service_names(chain: list[Role]) -> None:
    """A child's service may not reuse an ancestor's name: both would render one systemd unit."""
    owner: dict[str, Role] = {}
    for role in chain:
        for i, service in enumerate(role.spec.services):
            if service.name in owner:
                raise KilnError(
                    f"{role.display(role.role_file)}: field 'services[{i}].name': '{service.name}' "
                    f"is already a service of {owner[service.name].name}; choose another name"
                )
            owner[service.name] = role
