"""`invoke ci-schedules` and the lock merge request, tested at the python-gitlab (SDK) boundary.

No GitLab exists here: a small HTTP server on 127.0.0.1 answers the few REST endpoints
python-gitlab calls (pipeline schedules and their variables, resource groups, commits, merge
requests) from an in-memory project, and records every request. So what is proven is the plan
and the requests Kiln makes; GitLab's own behaviour behind those endpoints is not.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kiln import ci_schedules
from kiln.errors import KilnError
from kiln.settings import Settings
from tests.fake_gitlab import PROJECT, FakeGitLab, serve_fake_gitlab
from tests.fake_gitlab import connection as gitlab_connection

REPO = Path(__file__).resolve().parents[2]
TOKEN = "glpat-kilntest-secret"  # a test value, asserted never to be printed


@pytest.fixture
def gitlab_server():
    with serve_fake_gitlab(TOKEN) as fake:
        yield fake


def connection(fake: FakeGitLab, token: str = TOKEN) -> dict[str, str]:
    return gitlab_connection(fake, token)


@pytest.fixture
def schedules_project(project: Path) -> Path:
    # Not the kilntest* environments a pipeline test's scratch copy adds (its job runs this suite).
    for part in ("pipelines", "environments"):
        shutil.copytree(REPO / part, project / part, ignore=shutil.ignore_patterns("kilntest*"))
    return project


def test_the_plan_compares_with_gitlab_and_changes_nothing(gitlab_server, schedules_project):
    gitlab_server.add_schedule(
        "nightly backup of prod", "30 1 * * *", {"KILN_SCHEDULE": "backup", "KILN_ENV": "prod", "OLD": "x"}
    )
    gitlab_server.schedules[1]["ref"] = "refs/heads/main"  # as newer GitLab answers: no change
    gitlab_server.resource_groups["env-prod"] = {"key": "env-prod", "process_mode": "unordered"}
    declared = ci_schedules.load(Settings(project_root=schedules_project))
    changes = ci_schedules.plan_and_apply(
        declared, ci_schedules.project(connection(gitlab_server)), apply=False
    )
    lines = [change.line() for change in changes]
    assert lines[0].startswith("update    schedule nightly backup of prod: cron '30 1 * * *' -> '0 2 * * *'")
    assert "variable KILN_BACKUP_TYPE=incr" in lines[0] and "remove variable OLD" in lines[0]
    assert "refs/heads" not in lines[0]
    assert {c.name for c in changes if c.action == "create"} == {
        "weekly full backup of prod",
        "monthly DR drill of prod",
        "weekly security refresh",
    }
    assert "update    resource group env-prod: process_mode 'unordered' -> 'oldest_first'" in lines
    assert any(line.startswith("missing   resource group env-staging") for line in lines)
    assert {method for method, _, _ in gitlab_server.requests} == {"GET"}


def test_apply_makes_gitlab_match_the_file_and_a_second_plan_finds_nothing_to_do(
    gitlab_server, schedules_project
):
    gitlab_server.add_schedule(
        "nightly backup of prod", "30 1 * * *", {"KILN_SCHEDULE": "backup", "KILN_ENV": "prod", "OLD": "x"}
    )
    gitlab_server.resource_groups["env-prod"] = {"key": "env-prod", "process_mode": "unordered"}
    declared = ci_schedules.load(Settings(project_root=schedules_project))
    gitlab_project = ci_schedules.project(connection(gitlab_server))
    ci_schedules.plan_and_apply(declared, gitlab_project, apply=True)

    writes = [(m, p.removeprefix(PROJECT), b) for m, p, b in gitlab_server.requests if m != "GET"]
    assert (
        "PUT",
        "/pipeline_schedules/1",
        {"cron": "0 2 * * *", "ref": "main", "cron_timezone": "UTC", "active": True},
    ) in writes
    assert ("DELETE", "/pipeline_schedules/1/variables/OLD", {}) in writes
    assert ("POST", "/pipeline_schedules/1/variables", {"key": "KILN_BACKUP_TYPE", "value": "incr"}) in writes
    assert ("PUT", "/resource_groups/env-prod", {"process_mode": "oldest_first"}) in writes
    created = [b for m, p, b in writes if (m, p) == ("POST", "/pipeline_schedules")]
    assert [b["description"] for b in created] == [
        "weekly full backup of prod",
        "monthly DR drill of prod",
        "weekly security refresh",
    ]
    drill = next(
        s for s in gitlab_server.schedules.values() if s["description"] == "monthly DR drill of prod"
    )
    assert drill["cron"] == "0 4 1 * *"
    assert {v["key"]: v["value"] for v in drill["variables"]} == {
        "KILN_SCHEDULE": "drill",
        "KILN_ENV": "prod",
    }

    again = ci_schedules.plan_and_apply(declared, gitlab_project, apply=False)
    assert {c.action for c in again} == {"unchanged", "missing"}  # env-staging, refresh: made by GitLab


def run_task(project: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("KILN_", "CI_"))}
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**clean, "KILN_PROJECT_ROOT": str(project), **env},
    )


def test_the_task_applies_and_never_prints_the_token(gitlab_server, schedules_project):
    shutil.copy2(REPO / "tasks.py", schedules_project / "tasks.py")
    proc = run_task(schedules_project, "ci-schedules", "--apply", env=connection(gitlab_server))
    assert proc.returncode == 0, proc.stderr
    assert "create    schedule monthly DR drill of prod" in proc.stdout
    assert TOKEN not in proc.stdout + proc.stderr
    wrong = run_task(
        schedules_project, "ci-schedules", env=connection(gitlab_server, token="glpat-wrong-one")
    )
    assert wrong.returncode == 2
    assert wrong.stderr.strip() == (
        "kiln: GitLab refused the token in KILN_GITLAB_TOKEN (401): give it the api "
        "scope and the Maintainer role"
    )
    assert "glpat-wrong-one" not in wrong.stdout + wrong.stderr


def test_without_a_token_the_plan_is_what_the_file_declares(schedules_project):
    shutil.copy2(REPO / "tasks.py", schedules_project / "tasks.py")
    proc = run_task(schedules_project, "ci-schedules", env={})
    assert proc.returncode == 0, proc.stderr
    assert (
        proc.stdout.splitlines()[2] == "declared  schedule monthly DR drill of prod: 0 4 1 * * on main; "
        "KILN_SCHEDULE=drill; KILN_ENV=prod"
    )
    assert "declared  resource group env-prod: process_mode oldest_first" in proc.stdout
    assert "set KILN_GITLAB_TOKEN, CI_SERVER_URL and CI_PROJECT_PATH to compare with GitLab" in proc.stderr


def test_apply_without_a_token_is_one_line_and_exit_2(schedules_project):
    shutil.copy2(REPO / "tasks.py", schedules_project / "tasks.py")
    proc = run_task(schedules_project, "ci-schedules", "--apply", env={})
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "kiln: set KILN_GITLAB_TOKEN and CI_SERVER_URL and CI_PROJECT_PATH to reach GitLab "
        "(KILN_GITLAB_TOKEN: a token with the api scope, e.g. a masked CI/CD variable)"
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("schedules: {a: {cron: '0 2 * * *'", "pipelines/schedules.yml: line 1, column"),
        (
            "schedules: {a: {cron: '0 2 * * *', variables: {KILN_SCHEDULE: refresh}, when: now}}",
            "pipelines/schedules.yml: field 'schedules.a.when': unknown field",
        ),
        (
            "schedules: {a: {cron: 'nightly', variables: {KILN_SCHEDULE: refresh}}}",
            "pipelines/schedules.yml: field 'schedules.a.cron': 'nightly' is not five cron fields",
        ),
        (
            "schedules: {a: {cron: '0 2 * * *', variables: {KILN_SCHEDULE: backups, KILN_ENV: prod}}}",
            "field 'schedules.a.variables.KILN_SCHEDULE': 'backups' selects no job; use one of backup, drill",
        ),
        (
            "schedules: {a: {cron: '0 2 * * *', variables: {KILN_SCHEDULE: drill, KILN_ENV: qa}}}",
            "field 'schedules.a.variables.KILN_ENV': 'qa' is not an environment; known: cve-alerts, fintech,",
        ),
        (
            "schedules: {}\nresource_groups: {env-prod: fifo}",
            "field 'resource_groups.env-prod': 'fifo' is not a process mode",
        ),
    ],
)
def test_bad_schedules_file_names_the_field(schedules_project, text, message):
    (schedules_project / "pipelines" / "schedules.yml").write_text(text)
    with pytest.raises(KilnError) as error:
        ci_schedules.load(Settings(project_root=schedules_project))
    assert message in str(error.value) and "\n" not in str(error.value)


def git(root: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=root, check=True, capture_output=True
    )


@pytest.fixture
def refreshed_locks(project: Path) -> Path:
    """A git checkout whose web lock changed, as the refresh jobs leave it."""
    git(project, "init", "-q")
    git(project, "add", "images")
    git(project, "commit", "-qm", "locks")
    with (project / "images" / "web" / "packages.lock").open("a") as lock:
        lock.write("libexample1=1.2-3+deb12u1\n")
    return project


def test_the_lock_refresh_opens_a_merge_request_with_the_new_locks(gitlab_server, refreshed_locks, tmp_path):
    diff = tmp_path / "lock-refresh.diff"
    said = ci_schedules.propose_locks(
        Settings(project_root=refreshed_locks),
        diff,
        {**connection(gitlab_server), "CI_DEFAULT_BRANCH": "main"},
    )
    assert said == "merge request http://gitlab/mr/7 proposes 1 lock(s)"
    assert "+libexample1=1.2-3+deb12u1" in diff.read_text()
    commit, request = gitlab_server.created
    assert commit["start_branch"] == "main" and commit["branch"].startswith("kiln/lock-refresh-")
    assert [a["file_path"] for a in commit["actions"]] == ["images/web/packages.lock"]
    assert commit["actions"][0]["content"].endswith("libexample1=1.2-3+deb12u1\n")
    assert (request["source_branch"], request["target_branch"]) == (commit["branch"], "main")
    assert "+libexample1=1.2-3+deb12u1" in request["description"]


def test_without_a_token_the_lock_diff_is_only_the_artifact(gitlab_server, refreshed_locks, tmp_path):
    diff = tmp_path / "lock-refresh.diff"
    said = ci_schedules.propose_locks(Settings(project_root=refreshed_locks), diff, {})
    assert "no KILN_GITLAB_TOKEN: no merge request" in said and "+libexample1" in diff.read_text()
    assert gitlab_server.requests == []
