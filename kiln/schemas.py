"""JSON Schemas of Kiln's files, generated from the dataclasses that parse them.

Point an editor at them (the YAML language server reads a `# yaml-language-server: $schema=...`
first line) to complete and check `role.yml` and environment files while typing.
"""

from __future__ import annotations

import json
from pathlib import Path

from kiln.config import json_schema
from kiln.environments import EnvironmentSpec
from kiln.files import write_atomic
from kiln.roles import RoleSpec

# file name -> (the dataclass a file is parsed into, the files it describes)
SCHEMAS = {
    "role.schema.json": (RoleSpec, "images/<role>/role.yml"),
    "environment.schema.json": (EnvironmentSpec, "environments/<env>.yml"),
}


def schemas() -> dict[str, dict]:
    return {name: json_schema(cls, f"Kiln {files}") for name, (cls, files) in SCHEMAS.items()}


def write_schemas(folder: Path) -> list[Path]:
    """Write every schema into `folder`; the paths written."""
    written = []
    for name, schema in schemas().items():
        path = folder / name
        write_atomic(path, json.dumps(schema, indent=2) + "\n")
        written.append(path)
    return written
