"""Backup tools registry: name -> "module:Class", imported on first use (like testinfra's backends).

What `invoke backup` and `invoke backups` call lives in `kiln.backup.operations`.
"""

from __future__ import annotations

import importlib

TOOLS = {
    "pgbackrest": "kiln.backup.pgbackrest:PgBackRest",  # the database, in the db instance
    "restic": "kiln.backup.restic:Restic",  # uploaded files, in a web instance
}


def tool_class(name: str) -> type:
    module, _, cls = TOOLS[name].partition(":")
    return getattr(importlib.import_module(module), cls)
