"""A PostgreSQL primary and its streaming standby behind the local provider's HAProxy: the primary
killed under a steady writer, `invoke failover`, and the lost writes counted against the window
the report gives; then `invoke up` makes the old primary's replacement a standby of the new one.

Then the db role rolls out through its standby under the same writer, with no failed request.
All of it with `internal_tls`: the application and the standby reach PostgreSQL over TLS only,
and the load balancer reaches the web instance over HTTPS.

The environment `fo<pid>` has web 1 and db 2 over two zones; everything labelled with it is
removed at the end, even on failure. The writer posts records through the frontend (loopback),
bounded in count and time.
"""

from __future__ import annotations

import json
import os
import re
import ssl
import time
import urllib.error
import urllib.request

import pytest

from kiln import haproxy, tls
from kiln.images import DockerImageStore
from kiln.settings import Settings
from tests.integration.conftest import relabelled
from tests.integration.db_writer import Writer, epoch
from tests.integration.test_backup_drill import remove_env
from tests.integration.test_rollout import OLDER, running, status

pytestmark = pytest.mark.integration

ENV = f"fo{os.getpid()}"
ENV_FILE = """
provider: local
zones: [z0, z1]
instances: {web: 1, db: 2}
frontend: {port: 0}
health: {path: /health, interval: 0.5, rise: 2, fall: 2, timeout: 120}
backup: {}
internal_tls: true
"""


def psql(docker_client, instance: str, sql: str) -> str:
    db = docker_client.containers.get(f"kiln-{ENV}-{instance}")
    code, out = db.exec_run(["runuser", "-u", "postgres", "--", "psql", "-XqAt", "-d", "kiln", "-c", sql])
    assert code == 0, out.decode()
    return out.decode().strip()


def pgbackrest(docker_client, instance: str, *args: str) -> str:
    db = docker_client.containers.get(f"kiln-{ENV}-{instance}")
    code, out = db.exec_run(["runuser", "-u", "postgres", "--", "pgbackrest", "--stanza=main", *args])
    assert code == 0, out.decode()
    return out.decode()


def roles(kiln) -> dict[str, str]:
    return {i["name"]: i["lb_role"] for i in status(kiln, ENV)["instances"] if i["role"] == "db"}


@pytest.fixture(scope="module")
def pair(kiln, baked_all, docker_client):
    try:
        with running(kiln, docker_client, ENV, ENV_FILE):
            yield ENV
    finally:
        remove_env(docker_client, kiln.project, ENV)  # the drills' environments, the repositories


def test_with_internal_tls_every_login_from_the_network_is_encrypted(kiln, pair, docker_client):
    """The app's sessions and the standby's replication arrive over TLS (checked against the
    environment's CA by name: verify-full), and a plaintext login is refused."""
    writer = Writer(status(kiln, ENV)["frontend"])
    writer.start()
    try:
        writer.wait_acks(5)  # the app holds a database session
    finally:
        writer.stop.set()
        writer.join(timeout=30)
    sessions = psql(
        docker_client, "db1",
        "SELECT a.application_name || ' ' || s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) "
        "WHERE a.client_addr IS NOT NULL",
    ).splitlines()  # fmt: skip
    assert "db2 true" in sessions and "kiln-web true" in sessions, sessions
    assert all(line.endswith(" true") for line in sessions), sessions
    password = (kiln.project / ".kiln" / "envs" / ENV / "db-password").read_text().strip()
    plaintext = docker_client.containers.get(f"kiln-{ENV}-db2").exec_run(
        ["psql", "-XqAt", f"host=kiln-{ENV}-lb dbname=kiln user=kiln sslmode=disable", "-c", "SELECT 1"],
        environment={"PGPASSWORD": password},
    )
    assert plaintext.exit_code != 0 and "no encryption" in plaintext.output.decode(), plaintext.output


def test_with_internal_tls_the_load_balancer_reaches_web_over_https_it_verifies(kiln, pair, docker_client):
    """HAProxy sends requests and checks to web1 over TLS, its certificate checked against the
    environment's CA and for the instance's name; web1 serves that certificate and answers plain
    HTTP from the network with 403 (its own loopback checks still pass)."""
    api = haproxy.RuntimeAPI(kiln.project / ".kiln" / "envs" / ENV / "lb" / "admin.sock")
    [row] = [line.split() for line in api.command("show servers state web").splitlines()[2:] if line.strip()]
    assert (row[3], row[18], row[20]) == ("web1", "443", "1"), row  # name, port, srv_use_ssl
    assert api.stats()["web1"].check.startswith("L7OK"), api.stats()["web1"]  # over TLS, so verified
    web = docker_client.containers.get(f"kiln-{ENV}-web1")
    address = next(iter(web.attrs["NetworkSettings"]["Networks"].values()))["IPAddress"]
    ca = (kiln.project / "secrets" / f"{ENV}.ca.pem").read_bytes()
    connection = tls.InstanceHTTPS(address, "web1", ca)
    connection.request("GET", "/health")
    assert connection.getresponse().status == 200
    connection.close()
    with pytest.raises(ssl.SSLCertVerificationError):  # another instance's name: refused
        tls.InstanceHTTPS(address, "web2", ca).request("GET", "/health")
    with pytest.raises(urllib.error.HTTPError) as plain:
        urllib.request.urlopen(f"http://{address}/health", timeout=10)
    assert plain.value.code == 403
    inside = web.exec_run(["python3", "-c", LOOPBACK_HEALTH])
    assert inside.output.decode().strip() == "200", inside.output
    env_file = kiln.project / "environments" / f"{ENV}.yml"
    env_file.write_text(ENV_FILE.replace("internal_tls: true", "internal_tls: false"))
    try:  # the running HAProxy's servers cannot change protocol under it
        refused = kiln.invoke("up", ENV, check=False)
    finally:
        env_file.write_text(ENV_FILE)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert f"field 'internal_tls': kiln-{ENV}-lb was started with it on" in refused.stderr
    assert f"run `invoke down {ENV}`, then `invoke up {ENV}`" in refused.stderr


LOOPBACK_HEALTH = "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1/health').status)"


def test_a_drill_reads_its_reference_on_the_standby_and_restores_to_that_point(kiln, pair, docker_client):
    """With a standby, the drill's reference is read there, its replay paused, while the primary
    keeps taking writes with no lock; the restore stops exactly where replay paused, so every
    table matches the reference."""
    writer = Writer(status(kiln, ENV)["frontend"])
    writer.start()
    try:
        writer.wait_acks(50)
        backup = kiln.invoke("backup", ENV, timeout=600)
        writer.wait_acks(20)
        drill = kiln.invoke("dr-drill", ENV, timeout=900)
        writer.wait_acks(20)
    finally:
        writer.stop.set()
        writer.join(timeout=30)
    [path] = sorted((kiln.project / ".kiln" / "drills" / ENV).glob("*.json"))[-1:]
    report = json.loads(path.read_text())
    checks = {check["name"]: check for check in report["checks"]}
    print(f"drill with a standby: {checks['source reference']['detail']}; RTO {report['rto_seconds']} s")
    assert report["ok"], drill.stdout
    # The backup it restored was taken on the standby: the primary only started and stopped it.
    assert "backing up on a standby" in backup.stdout + backup.stderr
    manifest = pgbackrest(docker_client, "db2", "repo-get", "backup/main/latest/backup.manifest")
    assert "option-backup-standby=true" in manifest.splitlines()
    assert "on standby db2, replay paused at LSN" in checks["source reference"]["detail"]
    assert "match the reference" in checks["tables"]["detail"], checks["tables"]
    # every instance's certificate (pgBackRest's TLS server, internal_tls) outlives the next drill
    assert re.search(
        r"db1's certificate: \d+ days left, db2's certificate: \d+ days left, web1's certificate: \d+ days",
        checks["certificates"]["detail"],
    )
    assert not writer.failed, "the primary kept taking writes while the reference was read"


def saved_numbers(docker_client, instance: str) -> set[int]:
    notes = psql(docker_client, instance, "SELECT note FROM records WHERE customer = 'failover'")
    return {int(note) for note in notes.split()}


def test_failover_under_a_steady_writer_loses_only_what_its_window_says(kiln, pair, docker_client):
    assert roles(kiln) == {"db1": "primary", "db2": "standby"}
    assert psql(docker_client, "db2", "SELECT pg_is_in_recovery()") == "t"
    # status reads from the primary how far the standby is behind (it streams under its own name)
    rows = {i["name"]: i for i in status(kiln, ENV)["instances"]}
    assert rows["db1"]["replication"] == "primary"
    assert "behind, replay lag" in rows["db2"]["replication"] and rows["db2"]["behind_bytes"] >= 0
    writer = Writer(status(kiln, ENV)["frontend"])
    writer.start()
    try:
        writer.wait_acks(100)
        killed = time.time()
        docker_client.containers.get(f"kiln-{ENV}-db1").kill()
        time.sleep(2)  # the writer meets a dead database; HAProxy marks db1 down
        proc = kiln.invoke("failover", ENV, "--json", timeout=300)
        report = json.loads(proc.stdout)
        failed_over = time.time()
        writer.wait_acks(100)
    finally:
        writer.stop.set()
        writer.join(timeout=30)
    saved = saved_numbers(docker_client, "db2")
    lost = {n: at for n, at in writer.acked.items() if n not in saved}
    outage = [sent for sent, _ in writer.failed]
    print(
        f"failover: {len(writer.acked)} writes acknowledged, {len(lost)} lost, {len(writer.failed)} "
        f"failed; report {report}"
    )
    outcome = (report["old_primary"], report["new_primary"], report["old_primary_state"])
    assert outcome == ("db1", "db2", "dead")
    assert report["lost_window_seconds"] is not None and report["lost_window_seconds"] >= 0
    # What was lost was acknowledged inside the window the report gives (HAProxy counts whole seconds).
    start, end = epoch(report["newest_saved_commit"]), epoch(report["primary_down_since"]) + 1
    assert all(start <= at <= end for at in lost.values()), (lost, report)
    since_kill = [(round(sent - killed, 2), round(answered - killed, 2)) for sent, answered in writer.failed]
    assert all(killed - 1 <= sent <= failed_over for sent in outage), (
        f"writes failed only in the outage: (sent, answered) {since_kill} seconds after the kill, "
        f"failover done at {failed_over - killed:.2f} s"
    )
    assert roles(kiln) == {"db2": "primary"}
    assert not docker_client.containers.list(all=True, filters={"name": f"kiln-{ENV}-db1"})

    # The removed primary's replacement copies the new primary and streams from it.
    kiln.invoke("up", ENV, timeout=600)
    assert roles(kiln) == {"db1": "standby", "db2": "primary"}
    newest = max(saved)
    deadline = time.monotonic() + 30
    while psql(docker_client, "db1", f"SELECT count(*) FROM records WHERE note = '{newest}'") != "1":
        assert time.monotonic() < deadline, "the new standby did not replay the newest write in 30 s"
        time.sleep(0.5)
    assert psql(docker_client, "db1", "SELECT pg_is_in_recovery()") == "t"


def test_a_db_rollout_goes_through_the_standby_and_fails_no_request(kiln, pair, baked_all, docker_client):
    """Standby replaced first, a switchover to it (the old primary stopped cleanly: nothing lost),
    then the old primary replaced as the new standby; the web app waits out the switchover."""
    store = DockerImageStore(docker_client, Settings(project_root=kiln.project, image_repo=kiln.prefix))
    v1, v2 = baked_all["db"], f"{baked_all['db']}-v2"
    relabelled(store, store.find("db", v1), "db", v2, OLDER, "verified")
    kiln.invoke("up", ENV, timeout=600)  # a pair, whatever the test before left
    before = roles(kiln)
    writer = Writer(status(kiln, ENV)["frontend"])
    writer.start()
    try:
        writer.wait_acks(50)
        proc = kiln.invoke("rollout", ENV, "--role", "db", "--image", v2, timeout=600)
        writer.wait_acks(50)
    finally:
        writer.stop.set()
        writer.join(timeout=30)
    dbs = [i for i in status(kiln, ENV)["instances"] if i["role"] == "db"]
    view = {i["name"]: (i["version"], i["lb_role"]) for i in dbs}
    primary = next(name for name, (_, role) in view.items() if role == "primary")
    missing = set(writer.acked) - saved_numbers(docker_client, primary)
    print(f"db rollout: {len(writer.acked)} writes acknowledged, {len(writer.failed)} failed; {view}")
    assert f"db {v1} -> {v2}" in proc.stdout and "succeeded" in proc.stdout, proc.stdout
    assert sorted(v for v, _ in view.values()) == [v2, v2]
    assert sorted(r for _, r in view.values()) == ["primary", "standby"]
    assert view[primary][1] == "primary" and before[primary] == "standby", "the standby became the primary"
    assert not writer.failed, "no write failed at the web tier"
    assert not missing, f"acknowledged writes missing on the new primary: {sorted(missing)[:10]}"


def test_a_db_version_that_dies_is_rolled_back_and_the_primary_never_changes(
    kiln, pair, baked_all, docker_client
):
    """The standby, replaced first, dies at start: the rollout stops there and walks back, the
    standby copying the primary again at the running version; the web tier sees no failure."""
    store = DockerImageStore(docker_client, Settings(project_root=kiln.project, image_repo=kiln.prefix))
    before = {
        i["name"]: (i["version"], i["lb_role"]) for i in status(kiln, ENV)["instances"] if i["role"] == "db"
    }
    running_version = next(iter({v for v, _ in before.values()}))
    baked = store.find("db", baked_all["db"])
    shell = docker_client.containers.create(
        baked.image, entrypoint=["/bin/false"], name=f"{kiln.prefix}-dies"
    )
    try:
        dying = shell.commit(changes=['ENTRYPOINT ["/bin/false"]', "CMD []"])
    finally:
        shell.remove()
    bad = f"{baked_all['db']}-dies"
    relabelled(store, dying, "db", bad, OLDER, "verified")
    writer = Writer(status(kiln, ENV)["frontend"])
    writer.start()
    try:
        writer.wait_acks(30)
        proc = kiln.invoke("rollout", ENV, "--role", "db", "--image", bad, timeout=600, check=False)
        writer.wait_acks(30)
    finally:
        writer.stop.set()
        writer.join(timeout=30)
    after = {
        i["name"]: (i["version"], i["lb_role"]) for i in status(kiln, ENV)["instances"] if i["role"] == "db"
    }
    print(
        f"db rollout of a dying version: {len(writer.acked)} writes acknowledged, "
        f"{len(writer.failed)} failed; {after}"
    )
    assert proc.returncode != 0 and "rolled back" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    assert "stopped before passing its health check" in proc.stdout + proc.stderr
    assert after == before, f"db instances changed: {before} -> {after}"
    assert all(version == running_version for version, _ in after.values())
    assert not writer.failed, "no write failed at the web tier"


BOOTING_STANDBY = """
import socket
listener = socket.create_server(("0.0.0.0", 5432))
while True:
    listener.accept()[0].close()
"""


def test_a_db_server_whose_agent_is_silent_takes_no_connection(kiln, baked_all, docker_client, tmp_path):
    """A standby whose PostgreSQL listens before its role agent answers (its first boot) must not
    count as UP: HAProxy ignores an agent it cannot reach, so the port check alone let it take
    the application's writes. The database section's own check needs the agent's "up"."""
    store = DockerImageStore(docker_client, Settings(project_root=kiln.project, image_repo=kiln.prefix))
    name = f"{kiln.prefix}-silent-agent"
    config = haproxy.render_config(
        [], port=80, health_path="/health", checks=haproxy.Checks(0.5, 2, 3), database={"db1": f"{name}-db1"}
    )
    # the check under test, not the HTTP side's files the provider would mount
    lines = [line for line in config.splitlines() if "errorfile" not in line and "server-state" not in line]
    (tmp_path / "haproxy.cfg").write_text("\n".join(lines) + "\n")
    (tmp_path / "run").mkdir()
    network = docker_client.networks.create(name)
    try:
        web_image = store.find("web", baked_all["web"]).image
        docker_client.containers.run(
            web_image, ["python3", "-c", BOOTING_STANDBY], entrypoint=[], user="root",
            name=f"{name}-db1", network=name, detach=True,
        )  # fmt: skip
        docker_client.containers.run(
            store.find("lb", baked_all["lb"]).image, ["haproxy", "-f", "/etc/kiln-test/haproxy.cfg"],
            entrypoint=[], user="root", name=f"{name}-lb", network=name, detach=True,
            volumes={
                str(tmp_path / "haproxy.cfg"): {"bind": "/etc/kiln-test/haproxy.cfg", "mode": "ro"},
                str(tmp_path / "run"): {"bind": "/run/haproxy", "mode": "rw"},
            },
        )  # fmt: skip
        api = haproxy.RuntimeAPI(tmp_path / "run" / "admin.sock")
        deadline = time.monotonic() + 30
        while not (api.ready() and (seen := api.stats(haproxy.DATABASE).get("db1")) and seen.check):
            assert time.monotonic() < deadline, "HAProxy never checked db1"
            time.sleep(0.2)
        states = []
        for _ in range(8):  # four check intervals
            seen = api.stats(haproxy.DATABASE)["db1"]
            states.append((seen.healthy, seen.check))
            time.sleep(0.25)
    finally:
        for container in docker_client.containers.list(all=True, filters={"name": name}):
            container.remove(force=True)
        network.remove()
    assert not any(healthy for healthy, _ in states), states
