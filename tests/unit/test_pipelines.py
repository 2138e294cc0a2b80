"""GitLab pipelines: which jobs each kind of pipeline holds (rules evaluated by gitlab-ci-local,
no job run), and what gitlab-ci-local cannot check (resource_group, environment), read from the
YAML. tests/integration/test_pipelines_run.py runs them."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
GITLAB_CI_LOCAL = REPO / ".venv" / "npm" / "node_modules" / ".bin" / "gitlab-ci-local"
ROLES = ("base", "web", "db", "lb", "worker")
SCHEDULES = {
    "backup": {"backup"},
    "drill": {"drill"},
    "refresh": {"refresh:lock:base", "refresh:merge-request"}
    | {f"refresh:{step}: [{role}]" for step in ("lock:role", "bake") for role in ROLES[1:]},
}


def jobs_for(**variables: str) -> dict[str, dict]:
    """The jobs a pipeline with these variables would hold (rules evaluated), by name. The default
    branch is pinned: gitlab-ci-local would take it from the checkout's origin, which varies."""
    variables = {"CI_DEFAULT_BRANCH": "main", **variables}
    if not GITLAB_CI_LOCAL.exists():
        pytest.fail(f"{GITLAB_CI_LOCAL} is missing: run ./setup.sh, which installs it")
    args = [str(GITLAB_CI_LOCAL), "--list-json", "--ignore-predefined-vars", ",".join(variables)]
    for name, value in variables.items():
        args += ["--variable", f"{name}={value}"]
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    listing = json.loads(proc.stdout[proc.stdout.index("[") :])
    return {job["name"]: job for job in listing if job["when"] != "never"}


def needs(job: dict) -> set[str]:
    return {need["job"] for need in job["needs"] or []}


def pipeline_yaml() -> dict[str, dict]:
    """Every job of .gitlab-ci.yml and its includes, as written (templates resolved by hand)."""
    root = yaml.safe_load((REPO / ".gitlab-ci.yml").read_text())
    documents = [root] + [yaml.safe_load((REPO / i["local"]).read_text()) for i in root["include"]]
    merged = {k: v for doc in documents for k, v in doc.items() if isinstance(v, dict)}
    jobs = {}
    for name, body in merged.items():
        if name.startswith(".") or "script" not in body:
            continue
        resolved: dict = {}
        for template in body.get("extends", []):
            for parent in [*merged[template].get("extends", []), template]:
                resolved.update(merged[parent])
        jobs[name] = {**resolved, **body}
    return jobs


def test_a_push_to_a_branch_validates_bakes_base_then_the_children_then_verifies_and_audits():
    jobs = jobs_for(CI_PIPELINE_SOURCE="push", CI_COMMIT_BRANCH="feature")
    renders = {f"validate:render: [{role},amazon-ebs]" for role in ROLES}
    bakes = {"bake:base"} | {f"bake:role: [{role}]" for role in ROLES[1:]}
    checks = {f"{kind}: [{role}]" for kind in ("verify", "audit") for role in ROLES}
    assert set(jobs) == {"validate:lint"} | renders | bakes | checks  # nothing ships from a branch
    assert needs(jobs["bake:base"]) == {"validate:lint", "validate:render"}
    for role in ROLES[1:]:
        assert needs(jobs[f"bake:role: [{role}]"]) == {"bake:base"}
    for check in checks:  # audit after verify: both relabel the image
        after = {"bake:base", "bake:role"} | ({"verify"} if check.startswith("audit") else set())
        assert needs(jobs[check]) == after and jobs[check]["stage"] == "verify"


@pytest.mark.parametrize("audited", ["web", "none"])
def test_kiln_audit_roles_restricts_the_audit_to_one_role_or_none(audited):
    jobs = jobs_for(CI_PIPELINE_SOURCE="push", CI_COMMIT_BRANCH="main", KILN_AUDIT_ROLES=audited)
    expected = set() if audited == "none" else {f"audit: [{audited}]"}
    assert {name for name in jobs if name.startswith("audit")} == expected
    assert {f"verify: [{role}]" for role in ROLES} | {"publish"} <= set(jobs)


def test_openstack_templates_are_validated_where_the_runner_has_a_cloud():
    jobs = jobs_for(CI_PIPELINE_SOURCE="push", CI_COMMIT_BRANCH="feature", OS_CLOUD="kiln")
    assert {f"validate:render:openstack: [{role}]" for role in ROLES} <= set(jobs)


def test_a_push_to_the_default_branch_publishes_deploys_staging_and_waits_for_a_person_for_prod():
    jobs = jobs_for(CI_PIPELINE_SOURCE="push", CI_COMMIT_BRANCH="main")
    assert needs(jobs["publish"]) == {"verify", "audit"}
    assert (jobs["deploy:staging"]["when"], needs(jobs["deploy:staging"])) == ("on_success", {"publish"})
    prod = jobs["deploy:prod"]
    assert (prod["when"], needs(prod)) == ("manual", {"publish", "deploy:staging"})
    assert prod["allow_failure"] is False  # the pipeline stays blocked until prod is done


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_each_schedule_runs_only_its_jobs(schedule):
    jobs = jobs_for(CI_PIPELINE_SOURCE="schedule", KILN_SCHEDULE=schedule)
    assert set(jobs) == SCHEDULES[schedule]


def test_every_job_runs_setup_then_exactly_one_invoke_task():
    for name, job in pipeline_yaml().items():
        assert job["before_script"] == ["./setup.sh"], name
        assert len(job["script"]) == 1, name
        assert re.fullmatch(r"\$KILN_INVOKE [a-z][a-z-]*( .*)?", job["script"][0]), name


def test_every_deploy_and_operation_declares_a_resource_group_in_oldest_first_order():
    """gitlab-ci-local ignores resource_group, so only this test guards it."""
    jobs = pipeline_yaml()
    operations = [n for n in jobs if n.startswith(("deploy:", "backup", "drill", "refresh:"))]
    assert len(operations) == 9
    ordered = yaml.safe_load((REPO / "pipelines" / "schedules.yml").read_text())["resource_groups"]
    for name in operations:
        group = jobs[name].get("resource_group", "")
        group = group.replace("$KILN_ENV", jobs[name].get("variables", {}).get("KILN_ENV", "?"))
        assert ordered.get(group) == "oldest_first", f"{name}: resource_group {group!r}"
        environment = jobs[name].get("environment", {}).get("name")
        if environment:  # one group per environment, shared by its deploys and operations
            assert group == f"env-{environment}", name
    assert jobs["deploy:prod"]["environment"] == {"name": "prod", "deployment_tier": "production"}
    assert jobs["deploy:staging"]["environment"] == {"name": "staging", "deployment_tier": "staging"}


def test_both_deploys_roll_out_the_version_publish_wrote_and_bakes_never_rewrite_locks():
    jobs = pipeline_yaml()
    assert jobs["publish"]["artifacts"]["reports"]["dotenv"] == "release.env"
    for name in ("deploy:staging", "deploy:prod"):
        assert '--image "$KILN_RELEASE_WEB"' in jobs[name]["script"][0], name
    bakes = [job["script"][0] for name, job in jobs.items() if " bake " in job["script"][0]]
    assert len(bakes) == 3 and all("--locked" in line for line in bakes)
