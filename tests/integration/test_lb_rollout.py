"""The lb role rolls out: a new HAProxy takes the frontend over from the old one under load.

One environment `lb<pid>` (2 zones, 2 web instances) from the session's verified images. lb
"v2" is the baked lb image under another version (a stand-in: the handover is what is tested,
not HAProxy's own changes); "bad" is the web image labelled as an lb image, which never holds
the frontend. Everything labelled with the environment is removed at the end, even on failure.
"""

from __future__ import annotations

import json
import os

import pytest

from benchmarks.load import Load
from kiln.images import DockerImageStore
from kiln.settings import Settings
from tests.integration.conftest import relabelled
from tests.integration.test_rollout import OLDER, bake, running

pytestmark = pytest.mark.integration

ENV = f"lb{os.getpid()}"
ENV_FILE = """
provider: local
zones: [z0, z1]
instances: {web: 2}
frontend: {port: 0}
health: {path: /health, interval: 0.5, rise: 2, fall: 2, timeout: 30}
rollout: {drain_timeout: 5}
"""
V2, BAD = "1b2b3b4b5b6b", "badbadbadbad"
REQUESTS = 3000  # a bound on the load: two workers send about 100 a second here


@pytest.fixture(scope="module")
def lb_versions(kiln, docker_client) -> dict[str, str]:
    v1 = bake(kiln, "lb")
    web = bake(kiln, "web")
    store = DockerImageStore(docker_client, Settings(project_root=kiln.project, image_repo=kiln.prefix))
    relabelled(store, store.find("lb", v1), "lb", V2, OLDER, "verified")
    relabelled(store, store.find("web", web), "lb", BAD, OLDER, "verified")
    return {"v1": v1, "v2": V2, "bad": BAD}


@pytest.fixture(scope="module")
def env(kiln, lb_versions, docker_client):
    with running(kiln, docker_client, ENV, ENV_FILE):
        yield ENV


def view(kiln) -> dict:
    return json.loads(kiln.invoke("status", ENV, "--json").stdout)


def lb_containers(docker_client) -> dict[str, str]:
    """The environment's lb containers: name -> what they are (holder, or the HAProxy's version)."""
    found = docker_client.containers.list(all=True, filters={"label": [f"kiln.env={ENV}", "kiln.role=lb"]})
    return {c.name: ("holder" if "kiln.lb-network" in c.labels else c.labels["kiln.version"]) for c in found}


def frontend_socket(docker_client) -> str:
    """The inode of the socket listening on :80 in the load balancer's network namespace."""
    holder = docker_client.containers.get(f"kiln-{ENV}-lb")
    (haproxy,) = docker_client.containers.list(filters={"label": [f"kiln.env={ENV}", "kiln.lb-haproxy"]})
    assert haproxy.attrs["HostConfig"]["NetworkMode"] == f"container:{holder.id}"
    table = haproxy.exec_run(["cat", "/proc/net/tcp"]).output.decode().splitlines()[1:]
    (inode,) = [
        row.split()[9] for row in table if row.split()[3] == "0A" and row.split()[1].endswith(":0050")
    ]
    return inode


def roll_out_lb(kiln, *args: str, check: bool = True):
    frontend = view(kiln)["frontend"]
    with Load(frontend, workers=2, max_requests=REQUESTS, max_seconds=300) as load:
        proc = kiln.invoke(*args, check=check)
    assert load.requests > 50, load.summary()  # the handover happened under traffic
    assert load.failed == 0, load.summary()
    assert view(kiln)["frontend"] == frontend  # the same published port throughout
    return proc


def test_a_new_haproxy_takes_the_frontend_over_with_no_failed_request(kiln, env, lb_versions, docker_client):
    v1 = lb_versions["v1"]
    holder = docker_client.containers.get(f"kiln-{env}-lb")
    assert lb_containers(docker_client) == {f"kiln-{env}-lb": "holder", f"kiln-{env}-lb-{v1}": v1}

    plan = kiln.invoke("rollout", env, "--role", "lb", "--image", V2, "--plan").stdout
    assert f"lb {v1} -> {V2}, 3 steps" in plan and f"stop HAProxy {v1} softly" in plan

    listening = frontend_socket(docker_client)
    proc = roll_out_lb(kiln, "rollout", env, "--role", "lb", "--image", V2)
    assert frontend_socket(docker_client) == listening  # handed over (-x), never closed and bound anew
    assert f"lb {v1} -> {V2}" in proc.stdout and "succeeded" in proc.stdout
    assert lb_containers(docker_client) == {f"kiln-{env}-lb": "holder", f"kiln-{env}-lb-{V2}": V2}
    holder.reload()
    assert holder.status == "running" and holder.id == docker_client.containers.get(f"kiln-{env}-lb").id
    # The servers kept their place: both web instances are in service behind the new HAProxy.
    web = [i for i in view(kiln)["instances"] if i["role"] == "web"]
    assert {(i["health"], i["lb_state"]) for i in web} == {("healthy", "ready")}
    audit = (kiln.project / ".kiln" / "envs" / env / "audit.jsonl").read_text().splitlines()
    last = json.loads(audit[-1])
    assert (last["role"], last["from"], last["to"], last["status"]) == ("lb", v1, V2, "succeeded")

    again = kiln.invoke("rollout", env, "--role", "lb", "--image", V2)
    assert f"nothing to do: {env} runs lb {V2}" in again.stdout

    back = roll_out_lb(kiln, "rollback", env)
    assert "rolled-back" in back.stdout
    assert lb_containers(docker_client) == {f"kiln-{env}-lb": "holder", f"kiln-{env}-lb-{v1}": v1}


def test_an_lb_image_that_never_takes_the_frontend_is_rolled_back_by_itself(
    kiln, env, lb_versions, docker_client
):
    before = lb_containers(docker_client)
    proc = roll_out_lb(kiln, "rollout", env, "--role", "lb", "--image", BAD, check=False)
    assert proc.returncode == 1, proc.stderr
    assert f"rollout of lb to {BAD} failed" in proc.stderr
    assert "is not an lb image" in proc.stderr
    assert lb_containers(docker_client) == before  # the bad one removed, the old one never stopped
    last = json.loads((kiln.project / ".kiln" / "envs" / env / "audit.jsonl").read_text().splitlines()[-1])
    assert (last["role"], last["to"], last["status"]) == ("lb", BAD, "rolled-back")
