"""AWS: an EBS-backed AMI built from the parent role's AMI (found by its kiln tags)."""

from __future__ import annotations

from kiln.targets.base import SUDO_EXECUTE, BakeContext, Target

# Debian's own AWS account publishes the official Debian 12 AMIs that `base` starts from.
DEBIAN_AMI_OWNER = "136693071363"


class AmazonEbsTarget(Target):
    name = "amazon-ebs"
    execute_command = SUDO_EXECUTE

    def variables(self) -> dict[str, str]:
        return {
            "aws_region": "{{env `AWS_REGION`}}",
            "instance_type": "t3.small",
            "subnet_id": "",
        }

    def builder(self, ctx: BakeContext) -> dict:
        role = ctx.role
        if role.parent is None:
            filters = {"name": "debian-12-amd64-*", "architecture": "x86_64"}
            owners = [DEBIAN_AMI_OWNER]
        else:
            filters = {"tag:kiln.role": role.parent, "tag:kiln.version": ctx.parent_ref}
            owners = ["self"]
        return {
            "type": "amazon-ebs",
            "region": "{{user `aws_region`}}",
            "instance_type": "{{user `instance_type`}}",
            "subnet_id": "{{user `subnet_id`}}",
            "ssh_username": "admin",
            "ami_name": f"kiln-{role.name}-{ctx.version}",
            "source_ami_filter": {"filters": filters, "owners": owners, "most_recent": True},
            "tags": dict(ctx.labels),
            "run_tags": {"kiln.bake": ctx.bake_id},
        }

    def post_processors(self, ctx: BakeContext) -> list:
        return [self.manifest(ctx)]
