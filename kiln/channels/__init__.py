"""Channel registry: name -> "module:Class", imported on first use (like the providers' table).

A provider picks the channel that reaches its instances (`Provider.channel`); nothing else
names a backend.
"""

from __future__ import annotations

import importlib

CHANNELS = {
    "docker": "kiln.channels.docker:DockerChannel",  # containers: docker exec, the archive API
    "ssh": "kiln.channels.ssh:SshChannel",  # VMs and cloud instances, optionally via a bastion
}


def channel_class(name: str) -> type:
    module, _, cls = CHANNELS[name].partition(":")
    return getattr(importlib.import_module(module), cls)
