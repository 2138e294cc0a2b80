"""Templates for current Packer: a rendered legacy JSON template translated to HCL2-JSON.

Since Packer 1.10 the docker, amazon, openstack and qemu builders are plugins, which `packer
init` installs from a template's `packer { required_plugins }` block; that block exists from
Packer 1.7 on and only in HCL2 (legacy JSON cannot name plugins). Targets keep rendering the
legacy JSON Packer 1.6.6 (Debian 12) runs; Kiln translates it here when `packer version` is 1.7
or later, so both Packers build the same template.
"""

from __future__ import annotations

import re
from typing import Any

# Where current Packer finds each builder and post-processor Kiln uses (file, shell and manifest
# are still built in), and the oldest plugin release with what the templates ask of it.
PLUGINS: dict[str, tuple[str, str, str]] = {
    "docker": ("docker", "github.com/hashicorp/docker", ">= 1.0.8"),
    "docker-tag": ("docker", "github.com/hashicorp/docker", ">= 1.0.8"),
    "amazon-ebs": ("amazon", "github.com/hashicorp/amazon", ">= 1.2.1"),
    "openstack": ("openstack", "github.com/hashicorp/openstack", ">= 1.1.1"),
    "qemu": ("qemu", "github.com/hashicorp/qemu", ">= 1.1.0"),
}
SOURCE_NAME = "kiln"
USER_VARIABLE = re.compile(r"\{\{\s*user\s+`([^`]+)`\s*\}\}")
ENV_VARIABLE = re.compile(r"^\{\{\s*env\s+`([^`]+)`\s*\}\}$")
# Go templates Packer still expands at build time in HCL2 (execute_command, run_command).
BUILD_TIME = re.compile(r"\{\{\s*\.\w+\s*\}\}")


def translate(template: dict, plugins: bool = True) -> dict:
    """The HCL2-JSON equivalent of a legacy template with one builder. `plugins=False` leaves out
    the `packer` block, which only Packer 1.7+ reads (so 1.6.6 can validate the rest)."""
    (builder,) = template["builders"]
    builder = dict(builder)
    kind = builder.pop("type")
    chain = template.get("post-processors", [[]])[0]
    hcl: dict[str, Any] = {}
    if plugins:
        hcl["packer"] = {"required_plugins": required_plugins([kind, *(p["type"] for p in chain)])}
    if template.get("variables"):
        hcl["variable"] = {name: _variable(default) for name, default in template["variables"].items()}
    hcl["source"] = {kind: {SOURCE_NAME: _expressions(builder)}}
    hcl["build"] = {
        "sources": [f"source.{kind}.{SOURCE_NAME}"],
        "provisioner": [_typed_block(step) for step in template["provisioners"]],
    }
    if chain:
        hcl["build"]["post-processors"] = [{"post-processor": [_typed_block(p) for p in chain]}]
    return hcl


def required_plugins(types: list[str]) -> dict[str, dict[str, str]]:
    needed = {}
    for kind in types:
        if kind in PLUGINS:
            name, source, version = PLUGINS[kind]
            needed[name] = {"source": source, "version": version}
    return needed


def _variable(default: str) -> dict:
    # HCL2 reads the environment only in a variable's default, through env().
    from_env = ENV_VARIABLE.match(default)
    value = f'${{env("{from_env[1]}")}}' if from_env else _expressions(default)
    return {"type": "string", "default": value}


def _typed_block(step: dict) -> dict:
    body = dict(step)
    return {body.pop("type"): _expressions(body)}


def _expressions(value: Any) -> Any:
    """Legacy `{{user `x`}}` becomes `${var.x}`; a literal `${` or `%{` is escaped for HCL2."""
    if isinstance(value, dict):
        return {key: _expressions(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_expressions(item) for item in value]
    if not isinstance(value, str):
        return value
    text = value.replace("${", "$${").replace("%{", "%%{")
    text = USER_VARIABLE.sub(lambda m: f"${{var.{m[1]}}}", text)
    leftover = BUILD_TIME.sub("", text)
    if "{{" in leftover:
        raise ValueError(f"no HCL2 translation for the template expression in {value!r}")
    return text
