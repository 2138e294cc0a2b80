"""Rollouts with the real HAProxy and containers, under bounded loopback load.

One environment `it<pid>` (3 zones, 3 web instances) serves the rollout tests; each starts from
whatever version runs and names its target image, so the order does not matter. The zone
affinity test has an environment `za<pid>` of its own. Every container and network labelled
with an environment is removed at the end, even on failure.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import docker
import pytest
from cryptography import x509

from benchmarks.load import Load
from kiln import haproxy, tls
from kiln.images import DockerImageStore
from kiln.settings import Settings
from tests.integration import provider_contract as contract
from tests.integration.conftest import relabelled

pytestmark = pytest.mark.integration

ENV = f"it{os.getpid()}"
ENV_FILE = """
provider: local
zones: [z0, z1, z2]
instances: {web: 3}
frontend: {port: 0}
health: {path: /health, interval: 0.5, rise: 2, fall: 2, timeout: 60}
rollout: {max_surge: 1, max_unavailable: 0, warmup: 0.5, drain_timeout: 5, canary: 1}
"""
TLS_ENV = f"tl{os.getpid()}"
TLS_FILE = """
provider: local
zones: [z0]
instances: {web: 1}
frontend: {port: 0, tls: {port: 0, names: [127.0.0.1], days: 30}}
health: {path: /health, interval: 0.5, rise: 2, fall: 2, timeout: 60}
"""
BAD_HEALTH = "    location = /health { return 503; }\n"
ZONE_AFFINITY_ENV = f"za{os.getpid()}"
ZONE_AFFINITY_FILE = """
provider: local
zones: [z0, z1]
instances: {web: 2}
frontend: {port: 0, home_zone: z0, maintenance_page: pages/down.html}
health: {path: /health, interval: 0.5, rise: 2, fall: 2, timeout: 60, slowstart: 2}
"""
WORKER_ENV = f"wk{os.getpid()}"
WORKER_FILE = """
provider: local
zones: [z0, z1]
instances: {web: 1, db: 1, worker: 2}
frontend: {port: 0}
health: {path: /health, interval: 0.5, rise: 2, fall: 2, timeout: 45}
rollout: {max_surge: 1, max_unavailable: 0, warmup: 1, drain_timeout: 5, canary: 1}
"""
OLDER = "2000-01-01T00:00:00Z"  # a stand-in's build time: never the newest
JOBS, JOB_SECONDS = 300, 0.2  # about 30 s of work for two workers: the rollout runs through it


def bake(kiln, role: str, status: str = "verified") -> str:
    """Bake a role; give it `status` whatever `bake`'s own verification said; its version.

    Verification belongs to its own tests: here it must not decide whether rollouts are tested,
    nor cost this module's time (`--no-verify`).
    """
    proc = kiln.invoke("bake", role, "--no-verify", check=False)
    baked = dict(line.split("\t")[:2] for line in proc.stdout.splitlines() if "\t" in line)
    assert role in baked, f"bake {role} failed:\n{proc.stdout}\n{proc.stderr}"
    set_status(kiln, role, baked[role], status)
    return baked[role]


def bake_variant(kiln, project, edit, status: str = "verified") -> str:
    """Bake web from a project copy changed by `edit`."""
    edit(project.project)
    return bake(project, "web", status)


def set_status(kiln, role: str, version: str, status: str) -> None:
    store = DockerImageStore(docker.from_env(), Settings(project_root=kiln.project, image_repo=kiln.prefix))
    record = store.find(role, version)
    assert record is not None, f"{role} {version} was not baked"
    if record.status != status:
        store.set_status(record, status)


@pytest.fixture(scope="module")
def v1(kiln) -> str:
    """The project's lb and web, verified: what `up` deploys."""
    bake(kiln, "lb")
    return bake(kiln, "web")


@pytest.fixture(scope="module")
def versions(kiln, v1, tmp_path_factory) -> dict[str, str]:
    """v1 (the project's web), v2 (a changed app), both verified, and bad (/health answers 503),
    rejected as verification would: `up` takes the newest verified web, never the bad one."""

    def changed_app(root: Path) -> None:
        with (root / "images/web/files/opt/kiln-web/app.py").open("a") as f:
            f.write("# rollout test: a second version\n")

    def failing_health(root: Path) -> None:
        site = root / "images/web/files/etc/nginx/sites-available/kiln-web"
        text = site.read_text()
        assert "server_tokens off;\n" in text, "the web site config changed: update this test's edit"
        site.write_text(text.replace("server_tokens off;\n", "server_tokens off;\n" + BAD_HEALTH))

    v2 = bake_variant(kiln, kiln.copy(tmp_path_factory.mktemp("v2")), changed_app)
    bad = bake_variant(kiln, kiln.copy(tmp_path_factory.mktemp("bad")), failing_health, "rejected")
    return {"v1": v1, "v2": v2, "bad": bad}


@contextlib.contextmanager
def running(kiln, docker_client, name: str, text: str, said: list[str] | None = None):
    """`environments/<name>.yml` from `text`, up (what it said appended to `said`); down and every
    labelled object gone after."""
    (kiln.project / "environments").mkdir(exist_ok=True)
    (kiln.project / "environments" / f"{name}.yml").write_text(text)
    try:
        up = kiln.invoke("up", name)
        if said is not None:
            said.append(up.stdout + up.stderr)
        yield name
    finally:
        kiln.invoke("down", name, check=False)
        for container in docker_client.containers.list(all=True, filters={"label": f"kiln.env={name}"}):
            container.remove(force=True)
        for network in docker_client.networks.list(filters={"label": f"kiln.env={name}"}):
            network.remove()


@pytest.fixture(scope="module")
def env(kiln, versions, docker_client):
    with running(kiln, docker_client, ENV, ENV_FILE):
        yield ENV


def status(kiln, name: str = ENV) -> dict:
    return json.loads(kiln.invoke("status", name, "--json").stdout)


def other_good(kiln, versions) -> str:
    running = {i["version"] for i in status(kiln)["instances"]}
    return versions["v1"] if running == {versions["v2"]} else versions["v2"]


def assert_consistent(kiln, version: str) -> None:
    """3 healthy web instances of `version`, one per zone, all ready; nothing else left."""
    view = status(kiln)
    web = [i for i in view["instances"] if i["role"] == "web"]
    assert sorted(i["zone"] for i in web) == ["z0", "z1", "z2"], web
    assert {(i["version"], i["health"], i["lb_state"]) for i in web} == {(version, "healthy", "ready")}
    config = (kiln.project / ".kiln" / "envs" / ENV / "lb" / "haproxy.cfg").read_text()
    listed = sorted(line.split()[1] for line in config.splitlines() if line.strip().startswith("server "))
    assert listed == sorted(i["name"] for i in web), "haproxy.cfg must list exactly the servers in service"


def test_rollout_across_three_zones_under_load_fails_no_request(kiln, env, versions):
    target = other_good(kiln, versions)
    plan = kiln.invoke("rollout", env, "--image", target, "--plan").stdout
    assert "(canary)" in plan and plan.count("zone ") == 3
    proc, _ = contract.roll_out_under_load(kiln, env, "web", target, seconds=400)
    timeline = Path(proc.stdout.split("timeline: ")[1].splitlines()[0])
    assert timeline.read_text().startswith("<svg")
    report = Path(proc.stdout.split("report: ")[1].splitlines()[0])
    assert report.name.startswith("rollout-") and "<svg" in report.read_text()
    assert_consistent(kiln, target)
    audit = (kiln.project / ".kiln" / "envs" / env / "audit.jsonl").read_text().splitlines()
    last = json.loads(audit[-1])
    assert (last["to"], last["status"], sorted(last["zone_timings"])) == (
        target,
        "succeeded",
        ["z0", "z1", "z2"],
    )


def test_bad_image_is_rolled_back_by_itself_with_capacity_intact(kiln, env, versions):
    (running,) = {i["version"] for i in status(kiln)["instances"]}

    def mark(status: str) -> None:
        set_status(kiln, "web", versions["bad"], status)

    contract.bad_image_rolls_back(kiln, env, "web", versions["bad"], mark, seconds=400)
    assert_consistent(kiln, running)


def test_concurrent_rollout_is_refused_and_a_killed_rollout_resumes(kiln, env, versions, docker_client):
    target = other_good(kiln, versions)
    state_file = kiln.project / ".kiln" / "envs" / env / "rollout.json"
    previous = json.loads(state_file.read_text())["id"] if state_file.exists() else None
    first = subprocess.Popen(
        [sys.executable, "-m", "invoke", "rollout", env, "--image", target],
        cwd=kiln.project,
        env=kiln.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300
        refused_once = False
        # Kill it mid-way: the first zone done and a new instance registered in the next one.
        while time.monotonic() < deadline and first.poll() is None:
            state = json.loads(state_file.read_text()) if state_file.exists() else {}
            actions = [e["action"] for e in state.get("events", [])] if state.get("id") != previous else []
            if "zone done" in actions and actions[actions.index("zone done") :].count("registered"):
                break
            if "registered" in actions and not refused_once:
                second = kiln.invoke("rollout", env, "--image", target, check=False)
                assert second.returncode == 2 and "is locked by rollout" in second.stderr, second.stderr
                refused_once = True
            time.sleep(0.05)
        assert refused_once and first.poll() is None, "the rollout ended before it was killed mid-way"
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    assert json.loads(state_file.read_text())["status"] == "running"
    refused = kiln.invoke("rollout", env, "--image", target, check=False)
    assert refused.returncode == 2 and "--resume" in refused.stderr, refused.stderr
    with Load(status(kiln)["frontend"], workers=2, max_seconds=400) as load:
        kiln.invoke("rollout", env, "--resume")
    assert load.failed == 0, load.summary()
    assert_consistent(kiln, target)
    containers = docker_client.containers.list(all=True, filters={"label": f"kiln.env={env}"})
    (haproxy_version,) = {c.labels["kiln.version"] for c in containers if "kiln.lb-haproxy" in c.labels}
    assert sorted(c.name for c in containers) == sorted(
        [f"kiln-{env}-lb", f"kiln-{env}-lb-{haproxy_version}"]
        + [f"kiln-{env}-{i['name']}" for i in status(kiln)["instances"]]
    ), "no orphan container may remain"


def test_user_data_failing_the_schema_stops_the_rollout_before_any_change(kiln, env, versions):
    template = kiln.project / "cloud-init" / "web.yml.j2"
    good = template.read_text()
    before = status(kiln)["instances"]
    template.write_text(good.replace("users: {}", "users: []"))
    try:
        proc = kiln.invoke("rollout", env, "--image", other_good(kiln, versions), check=False)
    finally:
        template.write_text(good)
    assert proc.returncode == 2, proc.stderr
    assert (
        "user-data fails the cloud-init schema: web" in proc.stderr
        and "users: [] is too short" in proc.stderr
    )
    assert status(kiln)["instances"] == before


def lb_stats(kiln, name: str) -> dict[str, haproxy.ServerStat]:
    return haproxy.RuntimeAPI(kiln.project / ".kiln" / "envs" / name / "lb" / "admin.sock").stats()


def sessions_served(kiln, name: str) -> dict[str, int]:
    """Connections HAProxy has sent to each server."""
    return {server.name: server.served for server in lb_stats(kiln, name).values()}


def wait_until_down(kiln, name: str, instance: str) -> None:
    """DOWN for HAProxy: `fall` checks failed (while "UP 1/2" it still sends requests there)."""
    deadline = time.monotonic() + 30
    while lb_stats(kiln, name)[instance].status != "DOWN":
        assert time.monotonic() < deadline, f"HAProxy never marked {instance} down"
        time.sleep(0.2)


def test_zone_affinity_serves_the_home_zone_and_falls_back_to_the_other(kiln, v1, docker_client):
    """Then, with no zone left, the environment's maintenance page."""
    (kiln.project / "pages").mkdir(exist_ok=True)
    (kiln.project / "pages" / "down.html").write_text("<p>za: back at six</p>\n")
    with running(kiln, docker_client, ZONE_AFFINITY_ENV, ZONE_AFFINITY_FILE) as name:
        web = {i["zone"]: i for i in status(kiln, name)["instances"] if i["role"] == "web"}
        assert {zone: i["lb_role"] for zone, i in web.items()} == {"z0": "active", "z1": "backup"}
        home, other = web["z0"]["name"], web["z1"]["name"]
        config = (kiln.project / ".kiln" / "envs" / name / "lb" / "haproxy.cfg").read_text()
        servers = {
            line.split()[1]: line for line in config.splitlines() if line.strip().startswith("server ")
        }
        assert servers[other].endswith(" backup") and not servers[home].endswith(" backup"), servers
        assert "slowstart 2000" in config

        frontend = status(kiln, name)["frontend"]
        with Load(frontend, workers=2, max_requests=60, max_seconds=60) as load:
            load.finish()
        assert (load.requests, load.failed) == (60, 0), load.summary()
        before = sessions_served(kiln, name)
        assert before[home] > 0 and before[other] == 0, before  # the other zone stands by

        docker_client.containers.get(f"kiln-{name}-{home}").kill()  # the home zone is lost
        wait_until_down(kiln, name, home)
        with Load(frontend, workers=2, max_requests=60, max_seconds=60) as load:
            load.finish()
        assert (load.requests, load.failed) == (60, 0), load.summary()
        after = sessions_served(kiln, name)
        assert after[other] > 0 and after[home] == before[home], (before, after)

        docker_client.containers.get(f"kiln-{name}-{other}").kill()  # and then the other
        wait_until_down(kiln, name, other)
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(frontend, timeout=5)
        assert answer.value.code == 503 and answer.value.headers["Retry-After"] == "30"
        assert answer.value.read() == b"<p>za: back at six</p>\n"


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # the 301 itself is what is checked


def test_https_from_the_environments_ca_http_redirected_and_renewed_without_a_restart(
    kiln, v1, docker_client
):
    said: list[str] = []
    with running(kiln, docker_client, TLS_ENV, TLS_FILE, said) as name:
        assert f"made the certificate authority of {name}: commit secrets/{name}.ca.pem" in said[0]
        view = status(kiln, name)
        https = view["https"]
        port = int(https.rstrip("/").rsplit(":", 1)[1])
        assert view["certificate"]["issuer"] == f"CN=Kiln CA {name},O=Kiln"
        assert view["certificate"]["days_left"] in (29, 30), view["certificate"]
        assert f"https: {https} (certificate CN=127.0.0.1" in kiln.invoke("status", name).stdout

        ca_file = kiln.project / "secrets" / f"{name}.ca.pem"
        trusted = ssl.create_default_context(cafile=str(ca_file))  # hostname checked: 127.0.0.1
        with urllib.request.urlopen(f"{https}health", context=trusted, timeout=10) as answer:
            assert answer.status == 200
        with pytest.raises(urllib.error.URLError) as untrusted:  # the system's CAs do not know it
            urllib.request.urlopen(f"{https}health", context=ssl.create_default_context(), timeout=10)
        assert isinstance(untrusted.value.reason, ssl.SSLCertVerificationError)

        opener = urllib.request.build_opener(NoRedirect)
        with pytest.raises(urllib.error.HTTPError) as plain:
            opener.open(f"{view['frontend']}health?from=http", timeout=10)
        assert plain.value.code == 301
        assert plain.value.headers["Location"] == f"https://127.0.0.1:{port}/health?from=http"

        # A leaf the CA did not sign is due: `up` issues a new one and HAProxy takes it live.
        (lb,) = docker_client.containers.list(filters={"label": [f"kiln.env={name}", "kiln.lb-haproxy"]})
        started = lb.attrs["State"]["StartedAt"]
        before = tls.served("127.0.0.1", port).serial
        bundle = kiln.project / ".kiln" / "envs" / name / "lb" / "frontend.pem"
        assert bundle.stat().st_mode & 0o777 == 0o600
        bundle.write_bytes(tls.issue(tls.new_authority(name), ["127.0.0.1"], days=30))  # same name
        renewed = kiln.invoke("up", name)
        assert "made the certificate authority" not in renewed.stdout + renewed.stderr  # only once
        now_served = tls.served("127.0.0.1", port).serial
        assert now_served != before
        assert now_served == f"{x509.load_pem_x509_certificate(bundle.read_bytes()).serial_number:X}"
        lb.reload()
        assert lb.attrs["State"]["StartedAt"] == started  # no restart
        with urllib.request.urlopen(f"{https}health", context=trusted, timeout=10) as answer:
            assert answer.status == 200


def psql(docker_client, env: str, sql: str) -> str:
    db = docker_client.containers.get(f"kiln-{env}-db1")
    code, out = db.exec_run(["runuser", "-u", "postgres", "--", "psql", "-XqAt", "-d", "kiln", "-c", sql])
    assert code == 0, out.decode()
    return out.decode().strip()


@pytest.fixture(scope="module")
def worker_env(kiln, baked_all, docker_client):
    """web 1, db 1 and two workers over two zones, from the session's verified images; worker
    v2 is the same image under another version (built earlier, so `up` takes v1): a rollout
    replaces every instance all the same."""
    store = DockerImageStore(docker_client, Settings(project_root=kiln.project, image_repo=kiln.prefix))
    v2 = f"{baked_all['worker']}-v2"
    relabelled(store, store.find("worker", baked_all["worker"]), "worker", v2, OLDER, "verified")
    with running(kiln, docker_client, WORKER_ENV, WORKER_FILE):
        yield {"v1": baked_all["worker"], "v2": v2, "sql": functools.partial(psql, docker_client, WORKER_ENV)}


def roles_at(kiln, role: str) -> dict[str, str]:
    return {i["name"]: i["version"] for i in status(kiln, WORKER_ENV)["instances"] if i["role"] == role}


def test_a_worker_rollout_loses_no_job_of_the_queue_it_drains(kiln, worker_env):
    """Workers take no traffic: the rollout judges them by their health_command and stops the old
    ones with their stop signal, which lets the job in hand finish. A queue filled before the
    rollout is drained during and after it; every job is done once, old and new workers did some,
    and every old worker recorded a clean stop (SIGTERM, not the SIGKILL after the grace)."""
    sql, v1, v2 = worker_env["sql"], worker_env["v1"], worker_env["v2"]
    view = status(kiln, WORKER_ENV)["instances"]
    assert {(i["ready"], i["lb_state"]) for i in view if i["role"] == "worker"} == {("ready", "absent")}
    old = set(roles_at(kiln, "worker"))
    sql(f"INSERT INTO kiln_jobs (seconds) SELECT {JOB_SECONDS} FROM generate_series(1, {JOBS})")
    proc = kiln.invoke("rollout", WORKER_ENV, "--role", "worker", "--image", v2, timeout=600)
    assert f"worker {v1} -> {v2}" in proc.stdout and "succeeded" in proc.stdout, proc.stdout
    left_during = int(sql("SELECT count(*) FROM kiln_jobs WHERE done_at IS NULL"))
    deadline = time.monotonic() + 120
    while int(sql("SELECT count(*) FROM kiln_jobs WHERE done_at IS NULL")):
        assert time.monotonic() < deadline, "the new workers did not drain the queue in 120 s"
        time.sleep(1)
    done = dict(
        line.split("|")
        for line in sql("SELECT done_by, count(*) FROM kiln_jobs GROUP BY done_by").splitlines()
    )
    stops = sql("SELECT instance FROM kiln_worker_stops").splitlines()
    new = roles_at(kiln, "worker")
    assert set(new.values()) == {v2} and len(new) == 2 and not set(new) & old
    print(f"worker rollout: {JOBS} jobs by instance {done}; {left_during} were left when it ended")
    assert sum(int(n) for n in done.values()) == JOBS  # none lost, none done twice (one row each)
    assert old <= set(done) and set(new) & set(done), "old and new workers both took jobs"
    assert sorted(stops) == sorted(old), "every replaced worker stops cleanly on SIGTERM within its grace"


def write_release(kiln, name: str, versions: dict[str, str]) -> None:
    """releases/<name>.yml listing `versions` (role -> version) in order (JSON is YAML)."""
    (kiln.project / "releases").mkdir(exist_ok=True)
    roles = [{"role": role, "version": version} for role, version in versions.items()]
    (kiln.project / "releases" / f"{name}.yml").write_text(json.dumps({"roles": roles}))


def other(current: dict[str, str], a: str, b: str) -> str:
    """Whichever of two versions the instances do not all run."""
    return b if set(current.values()) == {a} else a


def test_a_two_role_release_rolls_out_and_a_failing_one_stops_rolled_back(kiln, worker_env, versions):
    """releases/<name>.yml: a release of worker and web rolls both out in its order; a release whose
    web never turns healthy is stopped there and that role rolled back, the worker after it untouched."""
    web = roles_at(kiln, "web")
    worker = other(roles_at(kiln, "worker"), worker_env["v1"], worker_env["v2"])
    new_web = other(web, versions["v2"], versions["v1"])
    write_release(kiln, "r1", {"worker": worker, "web": new_web})
    write_release(
        kiln,
        "r2",
        {"web": versions["bad"], "worker": other({"w": worker}, worker_env["v1"], worker_env["v2"])},
    )
    plan = kiln.invoke("rollout", WORKER_ENV, "--release", "r1", "--plan").stdout
    assert f"-> {worker}" in plan and f"web: {next(iter(web.values()))} -> {new_web}" in plan, plan
    proc = kiln.invoke("rollout", WORKER_ENV, "--release", "r1", timeout=600)
    assert "release r1 succeeded: worker succeeded, web succeeded" in proc.stdout, proc.stdout
    assert (set(roles_at(kiln, "worker").values()), set(roles_at(kiln, "web").values())) == (
        {worker},
        {new_web},
    )
    diff = [line.split()[:2] for line in kiln.invoke("release", "diff", "r1", "r2").stdout.splitlines()]
    assert diff == [["web", "changed"], ["worker", "changed"]]

    set_status(kiln, "web", versions["bad"], "verified")
    try:
        failed = kiln.invoke("rollout", WORKER_ENV, "--release", "r2", check=False, timeout=600)
    finally:
        set_status(kiln, "web", versions["bad"], "rejected")
    assert failed.returncode == 1 and "release r2 stopped at web" in failed.stderr, failed.stderr
    assert f"rolled back to {new_web}" in failed.stderr and "not started: worker" in failed.stderr
    assert (set(roles_at(kiln, "worker").values()), set(roles_at(kiln, "web").values())) == (
        {worker},
        {new_web},
    )
    audit = (kiln.project / ".kiln" / "envs" / WORKER_ENV / "audit.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in audit]
    assert [(r["release"], r["status"]) for r in records if r["action"] == "release"] == [
        ("r1", "succeeded"),
        ("r2", "stopped"),
    ]
