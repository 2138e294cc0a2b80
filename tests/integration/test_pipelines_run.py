"""The GitLab pipelines RUN by gitlab-ci-local's shell executor in a scratch git copy of the project.

What runs for real: gitlab-ci-local evaluating .gitlab-ci.yml and its includes (workflow, rules,
stages, needs, parallel matrices, `when: manual`, artifacts and the dotenv report between jobs),
every job's `./setup.sh`, `invoke render ROLE --target amazon-ebs` (packer validate),
`invoke publish` (promotes images in Docker, writes the dotenv), `invoke drills` (report, chart),
`invoke lock-merge-request` (python-gitlab against the loopback fake GitLab of tests/fake_gitlab.py).

What a recorder stands in for (KILN_HEAVY_INVOKE -> tests/integration/pipeline_standin.py):
`test --unit`, `bake`, `verify`, `audit`, `rollout`, `backup`, `dr-drill`, `lock`. Each has its own
tests (tests/integration/test_bake.py, test_verify_images.py, test_audit_image.py, test_rollout.py,
test_backup_drill.py, test_package_locks.py); here they would bake and boot for many minutes on a
2-core machine to prove nothing about the pipeline. The images publish promotes are cheap stand-ins
(`FROM scratch` with kiln.* labels) named with this run's prefix, so nothing of others is touched.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fake_gitlab import connection, serve_fake_gitlab
from tests.integration.conftest import remove_prefixed

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
GITLAB_CI_LOCAL = REPO / ".venv" / "npm" / "node_modules" / ".bin" / "gitlab-ci-local"
ROLES = ("base", "web", "db", "lb")
RESULT = re.compile(r"^\s*(PASS|FAIL|WARN)\s+(\S.*?)\s*$")


class Pipelines:
    """A scratch git checkout (branch main) and a way to run its pipelines."""

    def __init__(self, project: Path, prefix: str):
        self.project, self.prefix = project, prefix
        self.log = project / ".standin.log"

    def calls(self) -> list[dict]:
        lines = self.log.read_text().splitlines() if self.log.exists() else []
        self.log.unlink(missing_ok=True)
        return [json.loads(line) for line in lines]

    def run(self, *args: str, fail: str = "", **variables: str) -> tuple[int, dict[str, str], str]:
        """(exit code, job -> PASS/FAIL/WARN, output) of one gitlab-ci-local run."""
        settings = {
            "KILN_IMAGE_REPO": self.prefix,
            "KILN_PROJECT_ROOT": str(self.project),
            "KILN_HEAVY_INVOKE": f"{sys.executable} tests/integration/pipeline_standin.py",
            "KILN_STANDIN_LOG": str(self.log),
            "KILN_STANDIN_FAIL": fail,
            **variables,
        }
        # tests/unit/test_pipelines.py validates the schema; here that would cost 2 s a run.
        command = [str(GITLAB_CI_LOCAL), "--concurrency", "2", "--no-json-schema-validation"]
        predefined = ",".join(name for name in variables if name.startswith("CI_"))  # ours win
        command += ["--ignore-predefined-vars", predefined, *args]
        for name, value in settings.items():
            command += ["--variable", f"{name}={value}"]
        # Its own session, so a timeout ends node and every job shell it started.
        proc = subprocess.Popen(
            command,
            cwd=self.project,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        try:
            output, _ = proc.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
            raise AssertionError(
                f"gitlab-ci-local {' '.join(args)} ran over 600 s:\n{output[-3000:]}"
            ) from None
        results = {m[2]: m[1] for m in map(RESULT.match, output.splitlines()) if m}
        return proc.returncode, results, output

    def artifact(self, job: str, path: str) -> Path:
        folder = job.replace(":", "Og")  # how gitlab-ci-local 4.65 names a job's artifact folder
        return self.project / ".gitlab-ci-local" / "artifacts" / folder / path


def scratch_copy(dest: Path) -> Path:
    """The project's files (tracked and new, as in this worktree) in a fresh git repository on main;
    the .venv is this worktree's, linked."""
    listing = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for name in filter(None, listing.split("\0")):
        source = REPO / name
        if source.exists() or source.is_symlink():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name, follow_symlinks=False)
    # The worktree's .venv entry by entry, with a stamp of its own: ./setup.sh in the copy then
    # finds Kiln installed and never reinstalls it (from the copy) into the shared environment.
    (dest / ".venv").mkdir()
    for entry in (REPO / ".venv").iterdir():
        if entry.name != ".kiln-installed":
            (dest / ".venv" / entry.name).symlink_to(entry)
    (dest / ".venv" / ".kiln-installed").touch()

    def git(*args: str) -> None:
        subprocess.run(
            ["git", "-c", "user.name=kiln-test", "-c", "user.email=kiln-test@localhost", *args],
            cwd=dest,
            check=True,
            capture_output=True,
        )

    git("init", "-q", "-b", "main")
    ignored = (".venv", ".standin.log", "release.env", "drills.json", "drill-report.html")
    (dest / ".git" / "info" / "exclude").write_text("".join(f"{name}\n" for name in ignored))
    git("add", "-A")
    git("commit", "-qm", "scratch copy for the pipeline tests")
    return dest


def stand_in_image(
    client,
    prefix: str,
    role: str,
    version: str,
    status: str = "verified",
    built: str = "2026-12-01T00:00:00Z",
) -> None:
    """An image as bake and verify leave it (`built` orders them): only the kiln.* labels, no layers."""
    labels = {
        "kiln.role": role,
        "kiln.version": version,
        "kiln.status": status,
        "kiln.built": built,
        "kiln.bake-id": f"bake-{version}",
    }
    dockerfile = "FROM scratch\n" + "".join(f'LABEL {k}="{v}"\n' for k, v in labels.items())
    client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=f"{prefix}/{role}:{version}", rm=True)


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory, kiln, docker_client):
    if not GITLAB_CI_LOCAL.exists():
        pytest.fail(f"{GITLAB_CI_LOCAL} is missing: run ./setup.sh, which installs it")
    # A prefix of its own: `publish` takes each role's newest image, and the session's prefix also
    # holds real images other tests baked (a newer, unverified base among them).
    prefix = f"{kiln.prefix}pipe"
    scratch = tmp_path_factory.mktemp("pipelines")
    try:
        yield Pipelines(scratch_copy(scratch), prefix)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)  # artifacts and job files: nothing is kept
        remove_prefixed(docker_client, prefix)


@pytest.fixture(scope="module")
def versions(pipelines, docker_client) -> dict[str, str]:
    made = {role: f"{role[:2]}{os.getpid():010x}"[:12] for role in ROLES}
    for role, version in made.items():
        stand_in_image(docker_client, pipelines.prefix, role, version)
    return made


def test_a_push_to_main_deploys_staging_and_prod_only_when_asked_with_the_version_staging_ran(
    pipelines, versions, docker_client
):
    code, results, output = pipelines.run(CI_PIPELINE_SOURCE="push")
    assert code == 0, output[-4000:]
    assert results.pop("deploy:staging") == "PASS" and "deploy:prod" not in results
    assert set(results.values()) == {"PASS"} and len(results) == 18, results  # validate .. publish
    calls = pipelines.calls()
    jobs = [call["job"] for call in calls]
    assert jobs.index("bake:base") < min(jobs.index(f"bake:role: [{r}]") for r in ROLES[1:])
    published = set(pipelines.artifact("publish", "release.env").read_text().split())
    assert published == {f"KILN_RELEASE_{role.upper()}={version}" for role, version in versions.items()}
    for role, version in versions.items():
        labels = docker_client.images.get(f"{pipelines.prefix}/{role}:{version}").labels
        assert labels["kiln.status"] == "promoted", role
    staging = [call["task"] for call in calls if call["job"].startswith("deploy:")]
    assert staging == [["rollout", "staging", "--image", versions["web"], "--yes"]]

    # A later bake makes a newer verified web; then someone presses play on this pipeline's prod
    # job: gitlab-ci-local runs that one job with the pipeline's artifacts, as GitLab does.
    stand_in_image(docker_client, pipelines.prefix, "web", "web-newer", built="2026-12-01T00:00:09Z")
    code, results, output = pipelines.run("--manual", "deploy:prod", "deploy:prod", CI_PIPELINE_SOURCE="push")
    assert code == 0 and results == {"deploy:prod": "PASS"}, output[-4000:]
    assert pipelines.calls() == [
        {"job": "deploy:prod", "task": ["rollout", "prod", "--image", versions["web"], "--yes"]}
    ]


def test_a_failing_verify_stops_the_pipeline_before_publish(pipelines, versions):
    code, results, output = pipelines.run(CI_PIPELINE_SOURCE="push", fail="verify web")
    assert code != 0
    assert results["verify: [web]"] == "FAIL", output[-4000:]
    assert not {"publish", "deploy:staging", "deploy:prod"} & set(results)
    assert not any(call["job"].startswith("deploy:") for call in pipelines.calls())


def test_a_backup_schedule_runs_only_the_backup(pipelines):
    code, results, output = pipelines.run(CI_PIPELINE_SOURCE="schedule", KILN_SCHEDULE="backup")
    assert code == 0 and results == {"backup": "PASS"}, output[-4000:]
    assert pipelines.calls() == [{"job": "backup", "task": ["backup", "prod", "--type", "incr"]}]


def test_a_drill_schedule_runs_only_the_drill_and_leaves_its_report(pipelines):
    earlier = {
        "id": "drill-20261101-040000",
        "env": "prod",
        "started": "2026-11-01T04:00:00Z",
        "ok": False,
        "rto_seconds": 36.4,
        "rpo_seconds": 4.1,
        "failures": ["files: checksum-mismatch"],
    }
    history = pipelines.project / ".kiln" / "drills" / "prod"
    history.mkdir(parents=True, exist_ok=True)
    (history / f"{earlier['id']}.json").write_text(json.dumps(earlier))  # as the drill cache keeps it
    (history / f"{earlier['id']}.html").write_text("<html>the newest drill's report</html>")
    code, results, output = pipelines.run(CI_PIPELINE_SOURCE="schedule", KILN_SCHEDULE="drill")
    assert code == 0 and results == {"drill": "PASS"}, output[-4000:]
    assert pipelines.calls() == [{"job": "drill", "task": ["dr-drill", "prod"]}]
    assert json.loads(pipelines.artifact("drill", "drills.json").read_text()) == [earlier]
    chart = pipelines.artifact("drill", ".kiln/drills/chart.svg").read_text()
    assert chart.startswith("<svg") and f'id="failed-rto_seconds-{earlier["id"]}"' in chart  # marked failed
    exposed = pipelines.artifact("drill", "drill-report.html")  # `invoke report prod`, under a fixed name
    assert exposed.read_text() == "<html>the newest drill's report</html>"


def test_publish_refuses_when_a_newest_image_is_not_verified_and_promotes_nothing(
    kiln, docker_client, tmp_path
):
    prefix = f"{kiln.prefix}pub"
    try:
        for role in ROLES:
            stand_in_image(docker_client, prefix, role, f"{role}-v1")
        stand_in_image(docker_client, prefix, "web", "web-v2", "rejected", built="2026-12-01T00:00:01Z")
        proc = kiln.invoke(
            "publish", "--dotenv", str(tmp_path / "release.env"), check=False, env={"KILN_IMAGE_REPO": prefix}
        )
        assert proc.returncode == 1
        assert proc.stderr.strip() == (
            f"kiln: nothing published: {prefix}/web:web-v2 is rejected (only verified images ship)"
        )
        statuses = {
            i.labels["kiln.version"]: i.labels["kiln.status"]
            for i in docker_client.images.list(filters={"label": "kiln.role"})
            if i.tags and i.tags[0].startswith(prefix + "/")
        }
        assert set(statuses.values()) == {"verified", "rejected"} and not (tmp_path / "release.env").exists()
    finally:
        remove_prefixed(docker_client, prefix)


def test_a_refresh_schedule_locks_base_first_rebakes_and_opens_a_merge_request(pipelines):
    """The lock jobs are recorded; the new web lock is written by the test, as `lock web --update`
    would; the merge request goes to a fake GitLab on loopback (tests/fake_gitlab.py)."""
    lock = pipelines.project / "images" / "web" / "packages.lock"
    committed = lock.read_text()
    lock.write_text(committed + "libexample1=1.2-3+deb12u1\n")
    try:
        with serve_fake_gitlab("glpat-kilntest") as gitlab:
            code, results, output = pipelines.run(
                CI_PIPELINE_SOURCE="schedule",
                KILN_SCHEDULE="refresh",
                CI_DEFAULT_BRANCH="main",
                **connection(gitlab, "glpat-kilntest"),
            )
    finally:
        lock.write_text(committed)
    assert code == 0 and set(results.values()) == {"PASS"} and len(results) == 8, output[-4000:]
    tasks = [" ".join(call["task"]) for call in pipelines.calls()]
    assert tasks[0] == "lock base --update"
    assert sorted(tasks[1:4]) == [f"lock {role} --update" for role in ("db", "lb", "web")]
    assert sorted(tasks[4:]) == [f"bake {role} --locked" for role in ("db", "lb", "web")]
    commit, request = gitlab.created
    assert [action["file_path"] for action in commit["actions"]] == ["images/web/packages.lock"]
    assert "+libexample1=1.2-3+deb12u1" in request["description"]
    assert (
        "+libexample1=1.2-3+deb12u1"
        in pipelines.artifact("refresh:merge-request", "lock-refresh.diff").read_text()
    )
    assert "glpat-kilntest" not in output
