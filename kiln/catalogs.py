"""Where each target's images are catalogued: a table, like the other per-target registries."""

from __future__ import annotations

from kiln.errors import KilnError
from kiln.images import docker_client
from kiln.registry import for_target
from kiln.settings import Settings

# target -> "module:Class"; cloud targets keep their catalog in the cloud (AMI tags, Glance)
CATALOGS = {"docker": "kiln.images:DockerImageStore", "qemu": "kiln.diskimages:DiskImageStore"}


def image_store(settings: Settings, target: str, client=docker_client):
    """The catalog a target's images live in: the engine's labels, or disks with sidecars."""
    if target not in CATALOGS:
        raise KilnError(f"--target {target}: its images live in the cloud; Kiln lists docker and qemu images")
    store = for_target(CATALOGS, target, "lists")
    return store(client(), settings) if target == "docker" else store(settings)
