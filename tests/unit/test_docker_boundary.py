"""One instance channel: outside the local provider and the docker channel, no deploy-side module
knows that an instance may be a container (DESIGN.md, "Conventions worth keeping").

Every module of kiln/ is read as Python syntax (nothing imported): a module that imports the
docker SDK, a Docker-only module or name of Kiln's, or calls the engine's exec and archive API
must be listed in KNOWS_DOCKER with the reason it may.
"""

from __future__ import annotations

import ast
from pathlib import Path

KILN = Path(__file__).resolve().parents[2] / "kiln"

KNOWS_DOCKER = {
    # Deploying: the runtime that is Docker, and the channel into its containers.
    "kiln.providers.local": "the local provider: instances are containers",
    "kiln.providers.lbcontainers": "the local load balancer's network holder and HAProxy containers",
    "kiln.providers.qemu": "the qemu provider: its VMs join the local provider's Docker bridges and LB",
    "kiln.channels.docker": "the channel into a container: docker exec and the archive API",
    "kiln.backup.containers": "the local provider's backup volumes; sites tests and benchmarks start",
    # Baking with the docker target and gating its images: a Packer builder, not a runtime.
    "kiln.images": "the docker target's image catalog (labels)",
    "kiln.bake": "bakes with Packer's docker builder",
    "kiln.bootstrap": "imports the Debian root the docker target builds from",
    "kiln.locks": "resolves package locks in a throwaway container of the parent image",
    "kiln.verify": "testinfra's docker backend on a throwaway container of the image",
    "kiln.audit": "Lynis and OpenSCAP in a throwaway layer of the image",
    "kiln.container_options": "what every container of an image is started with",
    "kiln.containerfiles": "files into and out of throwaway containers before they start",
    "kiln.cloudinit": "checks user-data with the image's own cloud-init, in a throwaway container",
    "kiln.catalogs": "opens the docker target's image catalog",
    "kiln.publish": "publishes the docker target's images",
}
DOCKER_MODULES = {"docker", "kiln.providers.local", "kiln.channels.docker", "kiln.backup.containers",
                  "kiln.container_options"}  # fmt: skip
DOCKER_NAMES = {("kiln.images", "docker_client"), ("kiln.images", "DockerImageStore"),
                ("kiln.containerfiles", "put_file"), ("kiln.containerfiles", "read_file")}  # fmt: skip
DOCKER_CALLS = {"exec_run", "exec_create", "exec_start", "put_archive", "get_archive"}


def module_name(path: Path) -> str:
    parts = path.relative_to(KILN.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def docker_uses(tree: ast.AST) -> list[str]:
    """What in this module shows it talks to Docker, as `line: what`."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [f"{node.lineno}: import {a.name}" for a in node.names
                      if a.name.split(".")[0] == "docker" or a.name in DOCKER_MODULES]  # fmt: skip
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] == "docker" or node.module in DOCKER_MODULES:
                found.append(f"{node.lineno}: from {node.module}")
            found += [f"{node.lineno}: {node.module}.{a.name}" for a in node.names
                      if (node.module, a.name) in DOCKER_NAMES]  # fmt: skip
        elif isinstance(node, ast.Attribute) and node.attr in DOCKER_CALLS:
            found.append(f"{node.lineno}: .{node.attr}")
    return found


def modules() -> dict[str, list[str]]:
    return {module_name(p): docker_uses(ast.parse(p.read_text(), str(p))) for p in sorted(KILN.rglob("*.py"))}


def test_only_the_listed_modules_know_they_talk_to_docker():
    unlisted = {name: uses for name, uses in modules().items() if uses and name not in KNOWS_DOCKER}
    assert unlisted == {}, "use the provider's channel (Provider.channel) instead"


def test_every_listed_module_still_needs_its_place():
    found = modules()
    stale = sorted(name for name in KNOWS_DOCKER if not found.get(name))
    assert stale == []


def test_the_deploy_side_is_checked():
    """The check reads the modules this boundary is about; a rename would silently skip them."""
    names = set(modules())
    deploy = {"kiln.drill", "kiln.backup.operations", "kiln.backup.pgbackrest", "kiln.backup.restic",
              "kiln.backup.load", "kiln.readiness", "kiln.providers.aws", "kiln.channels.ssh"}  # fmt: skip
    assert deploy <= names
