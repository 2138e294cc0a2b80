"""The local default: Packer's docker builder on this machine's engine, no registry."""

from __future__ import annotations

import json

from kiln.targets.base import BakeContext, Target


def bake_container_name(name_prefix: str, role: str, bake_id: str) -> str:
    return f"{name_prefix}-bake-{role}-{bake_id}"


def apt_cache_volume(name_prefix: str, role: str) -> str:
    """One .deb cache per name prefix and role: apt-get does not wait for the cache's lock, so two
    bakes sharing one (the pipeline bakes web, db and lb side by side) failed at once. Roles
    install different packages on top of their parent, so separate caches lose almost nothing."""
    return f"{name_prefix}-apt-archives-{role}"


class DockerTarget(Target):
    name = "docker"

    def builder(self, ctx: BakeContext) -> dict:
        labels = " ".join(f"{k}={json.dumps(v)}" for k, v in sorted(ctx.labels.items()))
        ports = [f"EXPOSE {p}" for p in ctx.role.spec.ports]
        return {
            "type": "docker",
            "image": ctx.parent_ref,
            "pull": False,  # no registry here: the parent is always a local image
            "commit": True,
            # Uploads go to / ; docker cp already makes them root's, and chowning / would walk /sys.
            "fix_upload_owner": False,
            # A named container is found and removed even if Packer dies; the .deb cache volume
            # makes rebakes fast and keeps downloaded packages out of the image.
            "run_command": [
                "-d",
                "-i",
                "-t",
                f"--network={ctx.bake_network}",
                "--name",
                bake_container_name(ctx.name_prefix, ctx.role.name, ctx.bake_id),
                "-v",
                f"{apt_cache_volume(ctx.name_prefix, ctx.role.name)}:/var/cache/apt/archives",
                "--entrypoint=/bin/sh",
                "--",
                "{{.Image}}",
            ],
            "changes": [
                f"LABEL {labels}",
                *ports,
                'ENTRYPOINT ["/usr/local/sbin/kiln-init"]',
                "CMD []",
            ],
        }

    def post_processors(self, ctx: BakeContext) -> list:
        return [
            {
                "type": "docker-tag",
                "repository": ctx.labels["kiln.repository"],
                "tags": [ctx.version],
            },
            self.manifest(ctx),
        ]
