"""What every Packer target shares: the provisioner sequence, labels and the template frame."""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from kiln import services
from kiln.roles import Role


@dataclass
class BakeContext:
    """Everything a target needs to render one role's template."""

    role: Role
    version: str
    parent_ref: str  # what the builder starts from: a docker image id, or the parent's version
    labels: dict[str, str]
    package_specs: list[str]
    build_dir: Path
    bake_id: str
    bake_network: str = "host"
    name_prefix: str = "kiln"  # of the build container and cache volume
    vm_accelerator: str = "tcg"  # VM targets: kvm where it really works here
    vm_memory: int = 1024  # MiB


# Where SSH targets upload `files:` before a root step moves them into place.
STAGING = "/tmp/kiln-staging"
# Packer single-quotes each of .Vars: inside another quoted `sh -c '...'` they would split the
# command (the scripts never ran); the login shell parses them here, and env hands them to root.
SUDO_EXECUTE = "chmod +x {{ .Path }}; sudo env {{ .Vars }} {{ .Path }}"


class Target(ABC):
    name: ClassVar[str]
    # How Packer runs shell steps; SSH targets connect as an unprivileged user and need sudo.
    execute_command: ClassVar[str | None] = None

    def template_source(self) -> bytes:
        """The code that shapes this target's templates: part of every version hash."""
        return inspect.getsource(Target).encode() + inspect.getsource(type(self)).encode()

    @abstractmethod
    def builder(self, ctx: BakeContext) -> dict: ...

    @abstractmethod
    def post_processors(self, ctx: BakeContext) -> list: ...

    def variables(self) -> dict[str, str]:
        return {}

    def render(self, ctx: BakeContext) -> dict:
        template = {
            "builders": [self.builder(ctx)],
            "provisioners": self.provisioners(ctx),
            "post-processors": [self.post_processors(ctx)],
        }
        if self.variables():
            template = {"variables": self.variables(), **template}
        return template

    def prepare(self, ctx: BakeContext) -> None:  # noqa: B027 (most targets need nothing)
        """Write what the template refers to besides the role (keys, seeds) into ctx.build_dir."""

    def provisioners(self, ctx: BakeContext) -> list[dict]:
        role = ctx.role
        env = {
            "KILN_TARGET": self.name,
            "KILN_ROLE": role.name,
            "KILN_VERSION": ctx.version,
            "KILN_PACKAGES": " ".join(ctx.package_specs),
            "KILN_REQUESTED": " ".join(role.spec.packages),
            "KILN_PORTS": " ".join(str(p) for p in role.spec.ports),
            "KILN_HEALTH_PATH": role.spec.health.path if role.spec.health else "",
            "KILN_HEALTH_PORT": str(role.spec.health.port) if role.spec.health else "",
            "KILN_SERVICES": services.payload(role.spec.services),
            **role.spec.env,
        }
        steps = self.file_steps(ctx) if self.execute_command is None else self.staged_file_steps(ctx)
        shell = {
            "type": "shell",
            "scripts": [str(p) for p in role.provisioner_paths],
            "environment_vars": [f"{k}={v}" for k, v in env.items()],
        }
        if self.execute_command:
            shell["execute_command"] = self.execute_command
        steps.append(shell)
        return steps

    @staticmethod
    def source(ctx: BakeContext, src: str) -> str:
        # pathlib drops a trailing "/", which tells Packer to copy a folder's contents
        return str(ctx.role.folder / src) + ("/" if src.endswith("/") else "")

    def file_steps(self, ctx: BakeContext) -> list[dict]:
        """Uploads straight to their destination: the builder writes as root (docker cp)."""
        return [
            {"type": "file", "source": self.source(ctx, copy.src), "destination": copy.dest}
            for copy in ctx.role.spec.files
        ]

    def staged_file_steps(self, ctx: BakeContext) -> list[dict]:
        """The SSH user may not write to /: upload each copy to its own staging folder, then
        copy it into place as root (root-owned, modes kept) and remove the staging folder."""
        copies = ctx.role.spec.files
        if not copies:
            return []
        uploads, moves = [], []
        for index, copy in enumerate(copies):
            stage = f"{STAGING}/{index}"
            uploads.append({"type": "file", "source": self.source(ctx, copy.src), "destination": stage + "/"})
            staged = f"{stage}/." if copy.src.endswith("/") else f"{stage}/{Path(copy.src).name}"
            moves.append(f"cp -R --preserve=mode,timestamps {staged} {copy.dest}")
        folders = " ".join(f"{STAGING}/{index}" for index in range(len(copies)))
        return [
            {"type": "shell", "inline": [f"rm -rf {STAGING}", f"mkdir -p {folders}"]},
            *uploads,
            {
                "type": "shell",
                "inline": [*moves, f"rm -rf {STAGING}"],
                "execute_command": self.execute_command,
            },
        ]

    def manifest(self, ctx: BakeContext) -> dict:
        return {
            "type": "manifest",
            "output": str(ctx.build_dir / "manifest.json"),
            "strip_path": True,
            "custom_data": {"role": ctx.role.name, "version": ctx.version, "bake_id": ctx.bake_id},
        }
