"""What every Packer target shares: the provisioner sequence, labels and the template frame."""

from __future__ import annotations

import inspect
import tarfile
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
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


def archive_path(ctx: BakeContext, index: int) -> Path:
    return ctx.build_dir / f"files-{index}.tar"


def write_archive(src: Path, copy, archive: Path) -> None:
    """`copy` (a role's files: entry) as a tarball of root-owned entries, named as it lands."""

    def as_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        return info

    with tarfile.open(archive, "w") as tar:
        if copy.src.endswith("/"):
            for child in sorted(src.iterdir()):
                tar.add(child, arcname=child.name, filter=as_root)
        else:
            renamed = src.is_file() and not copy.dest.endswith("/")
            tar.add(src, arcname=PurePosixPath(copy.dest).name if renamed else src.name, filter=as_root)


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

    def prepare(self, ctx: BakeContext) -> None:
        """Write what the template refers to besides the role (archives, keys, seeds) into
        ctx.build_dir."""
        if self.execute_command is not None:
            for index, copy in enumerate(ctx.role.spec.files):
                write_archive(ctx.role.folder / copy.src, copy, archive_path(ctx, index))

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
        """The SSH user may not write to /, and its umask would change the files' modes: each copy
        travels as a tarball made by `prepare` (root-owned, modes as in the repository) that root
        unpacks, leaving folders that exist (/, /etc) as they are."""
        copies = ctx.role.spec.files
        if not copies:
            return []
        uploads, unpacks = [], []
        for index, copy in enumerate(copies):
            staged = f"{STAGING}/{index}.tar"
            uploads.append({"type": "file", "source": str(archive_path(ctx, index)), "destination": staged})
            whole_folder = copy.src.endswith("/") or copy.dest.endswith("/")
            into = copy.dest if whole_folder or (ctx.role.folder / copy.src).is_dir() else str(
                PurePosixPath(copy.dest).parent
            )
            unpacks.append(f"tar -xpf {staged} -C {into} --no-overwrite-dir")
        return [
            {"type": "shell", "inline": [f"rm -rf {STAGING}", f"mkdir -p {STAGING}"]},
            *uploads,
            {
                "type": "shell",
                "inline": [*unpacks, f"rm -rf {STAGING}"],
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
