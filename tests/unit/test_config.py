from dataclasses import dataclass
from pathlib import Path

import pytest

from kiln.config import load_yaml, parse, spec
from kiln.errors import KilnError


@dataclass
class Check:
    path: str = spec("/health", help="path")
    port: int = spec(80, help="port")


@dataclass
class Sample:
    name: str = spec(help="the name")
    items: list[int] = spec([], help="numbers")
    check: Check | None = spec(None, help="nested")
    env: dict[str, str] = spec({}, help="mapping")
    flag: bool = spec(False, help="a flag")


def test_parses_nested_and_defaults():
    sample = parse(Sample, {"name": "x", "items": [1, 2], "check": {"port": 8080}}, "f.yml")
    assert sample.items == [1, 2]
    assert sample.check == Check("/health", 8080)
    assert sample.env == {}


def test_defaults_are_not_shared_between_instances():
    a = parse(Sample, {"name": "a"}, "f.yml")
    a.items.append(1)
    assert parse(Sample, {"name": "b"}, "f.yml").items == []


def test_unknown_field_suggests_the_close_one():
    with pytest.raises(KilnError, match=r"f.yml: field 'itmes': unknown field; did you mean 'items'\?"):
        parse(Sample, {"name": "x", "itmes": []}, "f.yml")


def test_unknown_field_without_close_match_lists_fields():
    with pytest.raises(KilnError, match="known fields: name, items, check, env, flag"):
        parse(Sample, {"name": "x", "zzz": 1}, "f.yml")


def test_missing_required_field_names_it_and_its_help():
    with pytest.raises(KilnError, match=r"field 'name': required field is missing \(the name\)"):
        parse(Sample, {}, "f.yml")


@pytest.mark.parametrize(
    ("data", "where", "what"),
    [
        ({"name": 3}, "name", "expected a string, got int 3"),
        ({"name": "x", "items": [1, "two"]}, r"items\[1\]", "expected an integer, got str 'two'"),
        ({"name": "x", "items": 5}, "items", "expected a list"),
        ({"name": "x", "check": {"port": "http"}}, "check.port", "expected an integer"),
        ({"name": "x", "check": {"prot": 1}}, "check.prot", "unknown field; did you mean 'port'"),
        ({"name": "x", "flag": "yes"}, "flag", "expected true or false"),
        ({"name": "x", "items": [True]}, r"items\[0\]", "expected an integer, got bool"),
        ({"name": "x", "env": {"A": 1}}, "env.A", "expected a string"),
    ],
)
def test_type_errors_name_the_field(data, where, what):
    with pytest.raises(KilnError, match=f"f.yml: field '{where}': {what}"):
        parse(Sample, data, "f.yml")


def test_malformed_yaml_names_file_and_line(tmp_path: Path):
    path = tmp_path / "role.yml"
    path.write_text("name: web\npackages: [nginx\nparent: base\n")
    with pytest.raises(KilnError, match=r"images/web/role.yml: line \d+, column \d+: malformed YAML"):
        load_yaml(path, "images/web/role.yml")


def test_top_level_must_be_a_mapping(tmp_path: Path):
    path = tmp_path / "role.yml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(KilnError, match="expected a mapping of fields at the top, got a list"):
        load_yaml(path, "role.yml")
