"""Tasks parse arguments and call the library: checked with invoke's MockContext."""

import os
import re
import sys

import pytest
from invoke import Exit, MockContext, Result

import tasks


def test_test_task_lints_then_runs_pytest_with_the_unit_selection():
    c = MockContext(
        run={
            re.compile(r".*python.* -m ruff check \. .*"): Result(),
            re.compile(r"shellcheck .*"): Result(),
            re.compile(r".*python.* -m pytest -m 'not integration'.*"): Result(),
        },
        repeat=False,
    )
    tasks.test(c, unit=True)
    commands = [call.args[0] for call in c.run.call_args_list]
    # each script is read by the linter of its #! line: kiln-init is Python, kiln-firewall shell
    assert commands[0].startswith(f"{sys.executable} -m ruff check . ")
    assert "kiln-init" in commands[0] and "kiln-init" not in commands[1]
    assert commands[1].startswith("shellcheck -x ")
    assert "provisioners/packages.sh" in commands[1] and "kiln-firewall" in commands[1]
    assert commands[2].startswith(f"{sys.executable} -m pytest -m 'not integration'")


def test_bake_of_unknown_role_exits_2_with_one_line(monkeypatch, project):
    monkeypatch.setenv("KILN_PROJECT_ROOT", str(project))
    with pytest.raises(Exit) as exc:
        tasks.bake(MockContext(), "nope")
    assert exc.value.code == 2
    known = "base, db, lb, web, worker"
    assert str(exc.value.message).startswith(f"kiln: unknown role 'nope'; known roles: {known}")


def test_bake_with_unknown_target_exits_2(monkeypatch, project):
    monkeypatch.setenv("KILN_PROJECT_ROOT", str(project))
    with pytest.raises(Exit) as exc:
        tasks.bake(MockContext(), "web", target="gce")
    assert exc.value.code == 2


def test_report_prints_the_newest_report_or_says_how_to_get_one(monkeypatch, project, capsys):
    monkeypatch.setenv("KILN_PROJECT_ROOT", str(project))
    monkeypatch.setenv("KILN_STATE_DIR", str(project / ".kiln"))
    with pytest.raises(Exit) as exc:
        tasks.report(MockContext(), "local")
    assert exc.value.code == 2
    assert "no rollout or drill report for environment 'local' yet" in str(exc.value.message)
    older = project / ".kiln" / "envs" / "local" / "rollout-20261201-000000-aaaa.html"
    newer = project / ".kiln" / "drills" / "local" / "20261202-000000-bbbb.html"
    for age, page in enumerate((newer, older)):
        page.parent.mkdir(parents=True)
        page.write_text("<html></html>")
        os.utime(page, (1_000_000 - age, 1_000_000 - age))
    tasks.report(MockContext(), "local")
    assert capsys.readouterr().out.strip() == str(newer)


def test_scripts_are_linted_by_their_interpreter(tmp_path):
    from kiln import lint

    sbin = tmp_path / "images/base/files/usr/local/sbin"
    sbin.mkdir(parents=True)
    (sbin / "a").write_text("#!/usr/bin/env bash\nset -euo pipefail\n")
    (sbin / "b").write_text("#!/usr/bin/python3\nprint(1)\n")
    (sbin / "c").write_text("no interpreter line\n")
    assert lint.shell_scripts(tmp_path) == ["images/base/files/usr/local/sbin/a"]
    assert lint.python_scripts(tmp_path) == ["images/base/files/usr/local/sbin/b"]
