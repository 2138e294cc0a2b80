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


class Target(ABC):
    name: ClassVar[str]
    # How Packer runs shell steps; cloud targets connect as an unprivileged user and need sudo.
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

    def provisioners(self, ctx: BakeContext) -> list[dict]:
        role = ctx.role
        env = {
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
        steps: list[dict] = [
            {
                "type": "file",
                # pathlib drops a trailing "/", which tells Packer to copy a folder's contents
                "source": str(role.folder / copy.src) + ("/" if copy.src.endswith("/") else ""),
                "destination": copy.dest,
            }
            for copy in role.spec.files
        ]
        shell = {
            "type": "shell",
            "scripts": [str(p) for p in role.provisioner_paths],
            "environment_vars": [f"{k}={v}" for k, v in env.items()],
        }
        if self.execute_command:
            shell["execute_command"] = self.execute_command
        steps.append(shell)
        return steps

    def manifest(self, ctx: BakeContext) -> dict:
        return {
            "type": "manifest",
            "output": str(ctx.build_dir / "manifest.json"),
            "strip_path": True,
            "custom_data": {"role": ctx.role.name, "version": ctx.version, "bake_id": ctx.bake_id},
        }
