"""Provider registry: name -> class, imported on first use (like testinfra's backends)."""

from __future__ import annotations

import importlib

from kiln.environments import Environment
from kiln.errors import KilnError
from kiln.providers.base import Provider
from kiln.settings import Settings

# aws and openstack are names environments may declare; their modules are not written yet.
PROVIDERS = {"local": "kiln.providers.local:LocalProvider", "aws": None, "openstack": None}


def get_provider(settings: Settings, env: Environment) -> Provider:
    target = PROVIDERS[env.spec.provider]
    if target is None:
        raise KilnError(
            f"{env.file}: field 'provider': the {env.spec.provider} provider is not implemented "
            "yet; only 'local' runs instances today"
        )
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)(settings, env)
