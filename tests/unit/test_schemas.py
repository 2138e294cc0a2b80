"""`invoke schema`: JSON Schemas generated from the same declarations `config.parse` checks."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import pytest
import yaml
from invoke import MockContext

import tasks
from kiln.config import json_schema, spec
from kiln.schemas import schemas
from tests.conftest import REPO


def validator(name: str) -> jsonschema.Draft202012Validator:
    schema = schemas()[name]
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize(
    ("name", "pattern"),
    [("environment.schema.json", "environments/*.yml"), ("role.schema.json", "images/*/role.yml")],
)
def test_the_project_files_satisfy_their_schema(name, pattern):
    check = validator(name)
    files = sorted(REPO.glob(pattern))
    assert files
    for path in files:
        assert [e.message for e in check.iter_errors(yaml.safe_load(path.read_text()))] == [], path


def test_the_schema_refuses_what_parse_refuses():
    check = validator("environment.schema.json")
    good = yaml.safe_load((REPO / "environments" / "local.yml").read_text())
    for bad in (
        {**good, "provider": "gce"},
        {**good, "zones": ["Zone A"]},
        {**good, "frontend": {"port": 70000}},
        {**good, "backup": {"repository": "s4"}},
        {**good, "backup": {"rto_goal_seconds": 0}},
        {**good, "backup": {"rpo_goal_seconds": "a minute"}},
        {**good, "health": {"interval": 0}},
        {**good, "rollout": {"max_surj": 1}},
    ):
        assert not check.is_valid(bad), bad
    assert check.is_valid({**good, "backup": {"rto_goal_seconds": 120, "rpo_goal_seconds": 60.5}})


@dataclass(frozen=True)
class Service:
    name: str = spec(help="unit name")
    restart: str = spec("always", help="when to restart", choices=("always", "on-failure"))


@dataclass(frozen=True)
class Spec:
    """A spec as another feature would extend one: a new field, declared with `spec`."""

    services: list[Service] = spec([], help="what the role runs")
    workers: int | None = spec(None, help="worker processes", minimum=1, maximum=64)


def test_a_field_declared_the_usual_way_appears_with_its_help_default_and_limits():
    schema = json_schema(Spec, "t")
    services = schema["properties"]["services"]
    assert services["description"] == "what the role runs" and services["default"] == []
    item = services["items"]
    assert item["required"] == ["name"] and item["additionalProperties"] is False
    assert item["properties"]["restart"] == {
        "description": "when to restart",
        "type": "string",
        "enum": ["always", "on-failure"],
        "default": "always",
    }
    assert schema["properties"]["workers"]["anyOf"][0] == {"type": "integer", "minimum": 1, "maximum": 64}


def test_schema_task_writes_both_files(tmp_path: Path, capsys):
    tasks.schema(MockContext(), out=str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["environment.schema.json", "role.schema.json"]
    assert json.loads((tmp_path / "role.schema.json").read_text())["properties"]["name"]["type"] == "string"
    assert str(tmp_path / "role.schema.json") in capsys.readouterr().out
