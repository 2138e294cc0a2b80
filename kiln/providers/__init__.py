"""Provider registry: name -> "module:Class", imported on first use (like testinfra's backends)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kiln.environments import Environment
    from kiln.providers.base import Provider
    from kiln.settings import Settings

PROVIDERS = {
    "local": "kiln.providers.local:LocalProvider",
    "qemu": "kiln.providers.qemu:QemuProvider",
    "aws": "kiln.providers.aws:AwsProvider",
    "openstack": "kiln.providers.openstack:OpenStackProvider",
}


def provider_class(name: str) -> type[Provider]:
    # environments.validate has refused any name not in PROVIDERS.
    module, _, attribute = PROVIDERS[name].partition(":")
    return getattr(importlib.import_module(module), attribute)


def get_provider(settings: Settings, env: Environment) -> Provider:
    return provider_class(env.spec.provider)(settings, env)
