"""Per-target tables of where a class lives ("module:Class"), imported on first use."""

from __future__ import annotations

import importlib

from kiln.errors import KilnError


def for_target(table: dict[str, str], target: str, doing: str) -> type:
    """The class `table` names for `target`, or one line saying which targets Kiln `doing`."""
    if target not in table:
        raise KilnError(f"--target {target}: Kiln {doing} {' and '.join(table)} images on this machine")
    module, _, name = table[target].partition(":")
    return getattr(importlib.import_module(module), name)
