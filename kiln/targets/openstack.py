"""OpenStack: a Glance image built on Nova from the parent role's image (found by properties)."""

from __future__ import annotations

from kiln.targets.base import SUDO_EXECUTE, BakeContext, Target


class OpenStackTarget(Target):
    name = "openstack"
    execute_command = SUDO_EXECUTE

    def variables(self) -> dict[str, str]:
        return {
            "flavor": "{{env `OS_FLAVOR`}}",
            "network": "{{env `OS_NETWORK`}}",
            "debian_image": "debian-12-genericcloud-amd64",
        }

    def builder(self, ctx: BakeContext) -> dict:
        role = ctx.role
        builder = {
            "type": "openstack",
            "flavor": "{{user `flavor`}}",
            "networks": ["{{user `network`}}"],
            "ssh_username": "debian",
            "image_name": f"kiln-{role.name}-{ctx.version}",
            "image_visibility": "private",
            "metadata": dict(ctx.labels),
        }
        if role.parent is None:
            builder["source_image_name"] = "{{user `debian_image`}}"
        else:
            builder["source_image_filter"] = {
                "filters": {"properties": {"kiln.role": role.parent, "kiln.version": ctx.parent_ref}},
                "most_recent": True,
            }
        return builder

    def post_processors(self, ctx: BakeContext) -> list:
        return [self.manifest(ctx)]
