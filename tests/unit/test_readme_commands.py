"""Every `invoke ...` line of the README's usage blocks parses as written, so the README and the
CLI cannot drift apart: each line is parsed by Invoke itself (Program's core, collection and task
parsing, as `invoke` does before running anything), once without its optional [parts] and once
with all of them. Nothing runs."""

from __future__ import annotations

import re
import shlex

import pytest
from invoke import Collection, Program
from invoke.exceptions import ParseError

import tasks
from tests.conftest import REPO

PLACEHOLDERS = {"V": "3f2a9c", "DIR": "schemas"}


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    lines = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        for line in block.splitlines():
            command = line.split("#")[0].strip()
            if "invoke " in command:
                lines.append(command.split("invoke ", 1)[1].strip())
    return lines


def variants(command: str) -> list[list[str]]:
    """Without the optional [parts], and with each of them (an a|b|c choice takes its first)."""
    bare = re.sub(r"\s*\[[^\]]*\]", "", command)
    full = re.sub(r"\[([^\]]*)\]", r"\1", command)
    words = [shlex.split(text) for text in dict.fromkeys((bare, full))]
    return [[PLACEHOLDERS.get(w, w.split("|")[0]) for w in argv] for argv in words]


def parse(argv: list[str]) -> list:
    program = Program(namespace=Collection.from_module(tasks), binary="invoke")
    program.argv = ["invoke", *argv]
    program.create_config()
    program.parse_core(program.argv)
    program.parse_collection()
    program.parse_tasks()  # raises ParseError: "No idea what 'web' is!", a missing argument...
    return program.tasks


COMMANDS = readme_commands()


def test_the_readme_shows_the_tour_and_the_two_setup_commands():
    assert COMMANDS[:2] == ["bake web", "test"]
    assert {"bake --all", "up local [--bake]", "report local [--open]"} <= set(COMMANDS)


@pytest.mark.parametrize("command", sorted(set(COMMANDS)))
def test_every_readme_command_parses_as_written(command, capsys):
    for argv in variants(command):
        parsed = parse(argv)
        if "--help" not in argv:
            assert [context.name for context in parsed] == [argv[0]], argv
    capsys.readouterr()  # --help prints the task's help


def test_a_wrong_readme_line_would_fail_here():
    with pytest.raises(ParseError, match="No idea what 'web' is"):
        parse(["images", "web"])


def test_bake_takes_its_role_by_position_unless_all_is_given():
    [bake] = parse(["bake", "--all"])
    assert (bake.args["role"].value, bake.args["all"].value) == ("", True)
    [bake] = parse(["bake", "web", "--force"])
    assert (bake.args["role"].value, bake.args["all"].value) == ("web", False)
    with pytest.raises(ParseError, match="'bake' did not receive required positional arguments: 'role'"):
        parse(["bake"])
