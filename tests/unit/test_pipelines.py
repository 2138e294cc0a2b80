"""GitLab pipelines, evaluated by gitlab-ci-local (schema validation and rules, no job run)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
GITLAB_CI_LOCAL = REPO / ".venv" / "npm" / "node_modules" / ".bin" / "gitlab-ci-local"


def jobs_for(**variables: str) -> dict[str, dict]:
    """The jobs a pipeline with these variables would run (rules evaluated), by name."""
    if not GITLAB_CI_LOCAL.exists():
        pytest.fail(f"{GITLAB_CI_LOCAL} is missing: run ./setup.sh, which installs it")
    args = [str(GITLAB_CI_LOCAL), "--file", "pipelines/main.gitlab-ci.yml", "--list-json",
            "--ignore-predefined-vars", "CI_PIPELINE_SOURCE"]
    for name, value in variables.items():
        args += ["--variable", f"{name}={value}"]
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    listing = json.loads(proc.stdout[proc.stdout.index("["):])
    return {job["name"]: job for job in listing if job["when"] != "never"}


def test_push_runs_lint_then_bakes_base_then_each_role_then_audits_every_role():
    jobs = jobs_for(CI_PIPELINE_SOURCE="push")
    bakes = {"bake:base", "bake:role: [web]", "bake:role: [db]", "bake:role: [lb]"}
    audits = {f"audit: [{role}]" for role in ("base", "web", "db", "lb")}
    assert set(jobs) == {"lint"} | bakes | audits
    assert [need["job"] for need in jobs["bake:base"]["needs"]] == ["lint"]
    for role in ("web", "db", "lb"):
        assert [need["job"] for need in jobs[f"bake:role: [{role}]"]["needs"]] == ["bake:base"]
    for audit in audits:
        assert {need["job"] for need in jobs[audit]["needs"]} == {"bake:base", "bake:role"}
        assert jobs[audit]["stage"] == "audit"


@pytest.mark.parametrize(
    ("schedule", "job"),
    [("backup", "backup"), ("dr-drill", "dr-drill"), ("security-refresh", "security-refresh")],
)
def test_each_schedule_runs_only_its_job(schedule, job):
    jobs = jobs_for(CI_PIPELINE_SOURCE="schedule", KILN_SCHEDULE=schedule, KILN_ENV="prod")
    assert set(jobs) == {job}


def test_bakes_never_rewrite_locks_in_ci():
    text = (REPO / "pipelines" / "images.gitlab-ci.yml").read_text()
    bake_lines = [line for line in text.splitlines() if "invoke bake" in line]
    assert bake_lines and all("--locked" in line for line in bake_lines)
