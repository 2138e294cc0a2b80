"""Packer targets: one short module per builder, registered by the name `--target` takes."""

from __future__ import annotations

from kiln.errors import KilnError
from kiln.targets.amazon_ebs import AmazonEbsTarget
from kiln.targets.base import BakeContext, Target
from kiln.targets.docker import DockerTarget
from kiln.targets.openstack import OpenStackTarget
from kiln.targets.qemu import QemuTarget

TARGETS: dict[str, type[Target]] = {
    t.name: t for t in (DockerTarget, QemuTarget, AmazonEbsTarget, OpenStackTarget)
}

__all__ = ["TARGETS", "BakeContext", "Target", "get_target"]


def get_target(name: str) -> Target:
    try:
        return TARGETS[name]()
    except KeyError:
        raise KilnError(f"unknown target '{name}'; known targets: {', '.join(TARGETS)}") from None
