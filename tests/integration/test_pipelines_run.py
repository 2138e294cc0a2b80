"""The GitLab pipelines RUN by gitlab-ci-local's shell executor in a scratch git copy of the project,
every job calling the real `invoke` task.

The images are the session's own, every role baked and verified once (`baked_all`), tagged under a
prefix of this module: `bake --locked` in a job finds its version and is a real no-op, `verify
--reuse` finds each image verified by the very same suites and runs nothing (the failing pipeline's
changed web suite runs for real), `publish` promotes them and the deploy jobs roll them out.
Staging and prod are two local environments of the scratch copy (one zone each; prod with a
database and backups, protected, promoted images only). They are brought up before the pipeline
from "previous" images (the same content under older version labels), so each deploy replaces a
running container behind HAProxy. The backup and drill schedules back up and drill prod for real.

Smaller than the project, and why: the copy's tests/ holds only the unit tests that load its role
and environment files (UNIT_TESTS_KEPT), so validate:lint's `invoke test --unit` takes seconds, not
the 3 minutes of the whole unit suite, which this CI run runs anyway.
Left out, and why: the audit jobs (KILN_AUDIT_ROLES=none: Lynis and OpenSCAP take 10+ minutes per
role; tests/integration/test_audit_image.py runs them), and the refresh schedule's lock and bake
jobs (they re-resolve packages against the Debian mirror, whose answer changes from day to day):
its merge-request job runs alone, on a lock this test changes.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import docker
import pytest

from kiln.images import DockerImageStore
from kiln.settings import Settings
from tests.fake_gitlab import connection, serve_fake_gitlab
from tests.integration.conftest import KilnRun, relabelled, remove_prefixed
from tests.integration.test_backup_drill import remove_env

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
GITLAB_CI_LOCAL = REPO / ".venv" / "npm" / "node_modules" / ".bin" / "gitlab-ci-local"
ROLES = ("base", "web", "db", "lb", "worker")
RESULT = re.compile(r"^\s*(PASS|FAIL|WARN)\s+(\S.*?)\s*$")
PREVIOUS_BUILT = "2026-01-01T00:00:00Z"  # older than any real bake: `up` takes the previous images
ENV_FILE = """provider: local
zones: [z0]
instances: {instances}
frontend: {{port: 0}}
health: {{path: /health, interval: 0.5, rise: 2, fall: 2, timeout: 90}}
rollout: {{max_surge: 1, max_unavailable: 0, warmup: 0.5, drain_timeout: 2, canary: 0}}
"""
PROD_EXTRA = "protected: true\nrequire_promoted: true\nbackup: {}\n"
# The validate:lint job runs `invoke test --unit` for real (ruff and shellcheck over the whole
# copy, then pytest) on a copy holding only these tests: the ones that load the copy's role and
# environment files against their schemas. The whole unit suite (3 min here) is this CI run's own.
UNIT_TESTS_KEPT = {
    "tests/__init__.py",
    "tests/conftest.py",
    "tests/unit/__init__.py",
    "tests/unit/test_schemas.py",
    "tests/unit/test_environments.py",
    "tests/integration/__init__.py",  # what benchmarks/ imports: ruff sorts it as the project's
    "tests/integration/conftest.py",
    "tests/integration/vm_chain.py",  # conftest.py imports it
    "tests/integration/db_writer.py",  # benchmarks/vm_scenario.py imports it
    "tests/s3server.py",  # benchmarks/ import it: ruff sorts it as the project's only if it is there
}
# Appended to web's suite (tests are no input of the version: the image stays the session's).
FAILING_WEB_TEST = """

def test_a_control_this_pipeline_test_breaks(host):
    assert host.file("/etc/kiln-pipeline-test-control").exists
"""


class Pipelines:
    """A scratch git checkout (branch main), its images' prefix, and a way to run its pipelines."""

    def __init__(self, project: Path, prefix: str, staging: str = "", prod: str = ""):
        self.project, self.prefix, self.staging, self.prod = project, prefix, staging, prod
        self.kiln = KilnRun(project, prefix)

    def run(self, *args: str, timeout: int = 900, **variables: str) -> tuple[int, dict[str, str], str]:
        """(exit code, job -> PASS/FAIL/WARN, output) of one gitlab-ci-local run."""
        settings = {
            "KILN_IMAGE_REPO": self.prefix,
            "KILN_PROJECT_ROOT": str(self.project),
            "KILN_STAGING_ENV": self.staging,
            "KILN_PROD_ENV": self.prod,
            "KILN_ENV": self.prod,  # what a backup or drill schedule of prod sets
            "KILN_AUDIT_ROLES": "none",
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
            output, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
            raise AssertionError(
                f"gitlab-ci-local {' '.join(args)} ran over {timeout} s:\n{output[-3000:]}"
            ) from None
        results = {m[2]: m[1] for m in map(RESULT.match, output.splitlines()) if m}
        return proc.returncode, results, output

    def artifact(self, job: str, path: str) -> Path:
        folder = job.replace(":", "Og")  # how gitlab-ci-local 4.65 names a job's artifact folder
        return self.project / ".gitlab-ci-local" / "artifacts" / folder / path

    def instances(self, env: str) -> dict[str, tuple[str, str]]:
        """instance -> (version, health) of every instance of `env`, from `invoke status`."""
        view = json.loads(self.kiln.invoke("status", env, "--json").stdout)
        return {i["name"]: (i["version"], i["health"]) for i in view["instances"]}

    def container_ids(self, client: docker.DockerClient, env: str) -> set[str]:
        return {c.id for c in client.containers.list(all=True, filters={"label": f"kiln.env={env}"})}

    def status(self, client: docker.DockerClient, role: str, version: str) -> str:
        return client.images.get(f"{self.prefix}/{role}:{version}").labels["kiln.status"]


def scratch_copy(dest: Path) -> Path:
    """The project's files (tracked and new, as in this worktree) in a fresh git repository on main,
    its tests only UNIT_TESTS_KEPT; the .venv is this worktree's, linked."""
    listing = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for name in filter(None, listing.split("\0")):
        if name.startswith("tests/") and name not in UNIT_TESTS_KEPT:
            continue
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
    ignored = (".venv", ".kiln", "release.env", "drills.json", "drill-report.html")
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


def store_of(client: docker.DockerClient, prefix: str, project: Path) -> DockerImageStore:
    return DockerImageStore(client, Settings(project_root=project, image_repo=prefix))


def tag_session_images(client: docker.DockerClient, session_prefix: str, prefix: str, baked: dict[str, str]):
    """The session's images, the same image ids and labels, also under `prefix`."""
    for role, version in baked.items():
        client.images.get(f"{session_prefix}/{role}:{version}").tag(f"{prefix}/{role}", version)


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory, kiln, baked_all, docker_client):
    """Staging and prod up on the previous images, then the session's images under the prefix."""
    if not GITLAB_CI_LOCAL.exists():
        pytest.fail(f"{GITLAB_CI_LOCAL} is missing: run ./setup.sh, which installs it")
    # A prefix of its own: `publish` takes each role's newest image, and the session's prefix also
    # holds images other tests baked (a newer, rejected web among them).
    prefix = f"{kiln.prefix}pipe"
    scratch = scratch_copy(tmp_path_factory.mktemp("pipelines"))
    found = Pipelines(scratch, prefix, staging=f"{kiln.prefix}st", prod=f"{kiln.prefix}pr")
    envs = scratch / "environments"
    (envs / f"{found.staging}.yml").write_text(ENV_FILE.format(instances="{web: 1}"))
    (envs / f"{found.prod}.yml").write_text(ENV_FILE.format(instances="{web: 1, db: 1}") + PROD_EXTRA)
    try:
        store = store_of(docker_client, prefix, scratch)
        for role in ("lb", "db", "web"):
            session_image = docker_client.images.get(f"{kiln.prefix}/{role}:{baked_all[role]}")
            relabelled(store, session_image, role, f"{role}-previous", PREVIOUS_BUILT, "promoted")
        for env in (found.staging, found.prod):
            found.kiln.invoke("up", env, timeout=300)
        # Every session image verified by these suites, as the push test expects: an earlier test
        # may have rebuilt one under the same version (test_package_locks' forced web bakes), and
        # --reuse verifies only such an image again.
        for role, version in baked_all.items():
            kiln.invoke("verify", role, "--version", version, "--reuse")
        tag_session_images(docker_client, kiln.prefix, prefix, baked_all)
        yield found
    finally:
        for env in (found.staging, found.prod):
            remove_env(docker_client, scratch, env)
        remove_prefixed(docker_client, prefix)
        shutil.rmtree(scratch, ignore_errors=True)  # artifacts and job files: nothing is kept


def test_a_push_to_main_deploys_staging_and_prod_only_when_asked_with_the_images_staging_ran(
    pipelines, baked_all, docker_client
):
    prod_before = pipelines.instances(pipelines.prod)
    prod_containers = pipelines.container_ids(docker_client, pipelines.prod)
    assert {version for version, _ in prod_before.values()} == {"web-previous", "db-previous"}

    code, results, output = pipelines.run(CI_PIPELINE_SOURCE="push")
    assert code == 0, output[-4000:]
    assert results.pop("deploy:staging") == "PASS" and "deploy:prod" not in results
    # validate:lint, bake:base, then per role its render, bake and verify, publish, deploy:staging
    assert set(results.values()) == {"PASS"} and len(results) == 17, results
    for role, version in baked_all.items():  # each bake job found its image: a real no-op
        assert f"{role} {version} is up to date" in output, role
        # The session verified these very images with these very suites: the verify job says so
        # and runs nothing (the failing pipeline below shows a changed suite running for real).
        assert f"{role} {version} verified: already verified by these suites, nothing ran" in output, role
    published = set(pipelines.artifact("publish", "release.env").read_text().split())
    assert published == {f"KILN_RELEASE_{role.upper()}={version}" for role, version in baked_all.items()}
    for role, version in baked_all.items():
        assert pipelines.status(docker_client, role, version) == "promoted", role
    staging = pipelines.instances(pipelines.staging)
    assert set(staging.values()) == {(baked_all["web"], "healthy")}, staging
    assert pipelines.instances(pipelines.prod) == prod_before  # untouched until a person asks
    assert pipelines.container_ids(docker_client, pipelines.prod) == prod_containers

    # A later bake makes a newer verified web; then someone presses play on this pipeline's prod
    # job: gitlab-ci-local runs that one job with the pipeline's artifacts, as GitLab does.
    store = store_of(docker_client, pipelines.prefix, pipelines.project)
    real_web = docker_client.images.get(f"{pipelines.prefix}/web:{baked_all['web']}")
    relabelled(store, real_web, "web", "web-newer", "2099-01-01T00:00:00Z", "promoted")
    code, results, output = pipelines.run("--manual", "deploy:prod", "deploy:prod", CI_PIPELINE_SOURCE="push")
    assert code == 0 and results == {"deploy:prod": "PASS"}, output[-4000:]
    prod = pipelines.instances(pipelines.prod)
    web = {name: state for name, state in prod.items() if name.startswith("web")}
    assert set(web.values()) == {(baked_all["web"], "healthy")}, prod  # staging's, not the newer one
    assert {v for name, (v, _) in prod.items() if name.startswith("db")} == {"db-previous"}


@pytest.fixture(scope="module")
def backup_run(pipelines):
    """A nightly backup schedule of prod, run once for the backup and drill tests."""
    return pipelines.run(CI_PIPELINE_SOURCE="schedule", KILN_SCHEDULE="backup")


def test_a_backup_schedule_runs_only_the_backup(pipelines, backup_run, age_key):
    code, results, output = backup_run
    assert code == 0 and results == {"backup": "PASS"}, output[-4000:]
    assert age_key not in output  # the job has the key (KILN_AGE_KEY, as CI provides it), never prints it
    listing = json.loads(pipelines.kiln.invoke("backups", pipelines.prod, "--json").stdout)
    assert {record["tool"] for record in listing} == {"pgbackrest", "restic"}, listing
    assert all(record["size"] > 0 for record in listing if record["tool"] == "pgbackrest"), listing


def test_a_drill_schedule_runs_only_the_drill_and_leaves_its_report(pipelines, backup_run):
    assert backup_run[0] == 0, "the drill restores the backup schedule's backup"
    earlier = {
        "id": "drill-20261101-040000",
        "env": pipelines.prod,
        "started": "2026-11-01T04:00:00Z",
        "ok": False,
        "rto_seconds": 36.4,
        "rpo_seconds": 4.1,
        "failures": ["files: checksum-mismatch"],
        "dr_env": "dr-drill-20261101-040000",
    }
    history = pipelines.project / ".kiln" / "drills" / pipelines.prod
    history.mkdir(parents=True, exist_ok=True)
    (history / f"{earlier['id']}.json").write_text(json.dumps(earlier))  # as the drill cache keeps it
    code, results, output = pipelines.run(CI_PIPELINE_SOURCE="schedule", KILN_SCHEDULE="drill")
    assert code == 0 and results == {"drill": "PASS"}, output[-4000:]
    drills = json.loads(pipelines.artifact("drill", "drills.json").read_text())
    seeded, newest = drills
    assert (seeded["id"], seeded["ok"]) == (earlier["id"], False)
    assert newest["ok"] and newest["env"] == pipelines.prod and newest["failures"] == [], newest
    chart = pipelines.artifact("drill", ".kiln/drills/chart.svg").read_text()
    assert chart.startswith("<svg") and f'id="failed-rto_seconds-{earlier["id"]}"' in chart  # marked failed
    exposed = pipelines.artifact("drill", "drill-report.html")  # `invoke report <env>`, under a fixed name
    assert exposed.read_text() == (history / f"{newest['id']}.html").read_text()


@pytest.fixture
def failing_pipelines(tmp_path, kiln, baked_all, docker_client):
    """A scratch copy whose web role has a control that fails, with the session's images."""
    prefix = f"{kiln.prefix}pipf"
    scratch = scratch_copy(tmp_path / "failing")
    with (scratch / "images" / "web" / "tests" / "test_web.py").open("a") as suite:
        suite.write(FAILING_WEB_TEST)
    try:
        tag_session_images(docker_client, kiln.prefix, prefix, baked_all)
        # Environments it never reaches: a deploy job that ran would fail on them.
        yield Pipelines(scratch, prefix, staging="unreached", prod="unreached")
    finally:
        remove_prefixed(docker_client, prefix)


def test_a_failing_verify_stops_the_pipeline_before_publish(failing_pipelines, baked_all, docker_client):
    code, results, output = failing_pipelines.run(CI_PIPELINE_SOURCE="push")
    assert code != 0
    assert results["verify: [web]"] == "FAIL", output[-4000:]
    assert not {"publish", "deploy:staging", "deploy:prod"} & set(results), results
    assert "test_a_control_this_pipeline_test_breaks" in output
    assert failing_pipelines.status(docker_client, "web", baked_all["web"]) == "rejected"
    assert failing_pipelines.status(docker_client, "base", baked_all["base"]) == "verified"  # none promoted


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


def test_a_refresh_schedule_opens_a_merge_request_with_the_new_locks(pipelines):
    """Only the refresh's merge-request job runs (named, so gitlab-ci-local runs it alone): the new
    web lock is written by the test, as `lock web --update` would; the merge request goes to a fake
    GitLab on loopback (tests/fake_gitlab.py)."""
    lock = pipelines.project / "images" / "web" / "packages.lock"
    committed = lock.read_text()
    lock.write_text(committed + "libexample1=1.2-3+deb12u1\n")
    try:
        with serve_fake_gitlab("glpat-kilntest") as gitlab:
            code, results, output = pipelines.run(
                "refresh:merge-request",
                CI_PIPELINE_SOURCE="schedule",
                KILN_SCHEDULE="refresh",
                CI_DEFAULT_BRANCH="main",
                **connection(gitlab, "glpat-kilntest"),
            )
    finally:
        lock.write_text(committed)
    assert code == 0 and results == {"refresh:merge-request": "PASS"}, output[-4000:]
    commit, request = gitlab.created
    assert [action["file_path"] for action in commit["actions"]] == ["images/web/packages.lock"]
    assert "+libexample1=1.2-3+deb12u1" in request["description"]
    assert (
        "+libexample1=1.2-3+deb12u1"
        in pipelines.artifact("refresh:merge-request", "lock-refresh.diff").read_text()
    )
    assert "glpat-kilntest" not in output
