"""`invoke prune` on the real engine: old versions go, the newest, promoted and running ones and
the parents of kept images stay, and without --yes nothing changes."""

from __future__ import annotations

import docker
import pytest

from kiln.images import DockerImageStore
from kiln.settings import Settings
from tests.integration.conftest import KilnRun, relabelled, remove_prefixed

pytestmark = pytest.mark.integration


def tags(client, prefix: str) -> set[str]:
    found = {t for i in client.images.list() for t in i.tags if t.startswith(prefix + "/")}
    return {t for t in found if not t.endswith(":latest")}


def test_prune_keeps_what_matters_and_removes_the_rest(kiln, baked_web, docker_client):
    run = KilnRun(kiln.project, kiln.prefix + "prune")
    base = docker_client.images.get(f"{kiln.prefix}/base:{baked_web['base']}")
    store = DockerImageStore(docker_client, Settings(image_repo=run.prefix))
    try:
        statuses = ["verified", "verified", "promoted", "baked", "verified"]
        made = {
            f"b{day}": relabelled(store, base, "base", f"b{day}", f"2026-01-0{day}", status)
            for day, status in enumerate(statuses, start=1)
        }
        # An old web whose parent is b1: promoted, so b1 must stay as its parent.
        made["w1"] = relabelled(store, base, "web", "w1", "2026-01-02", "promoted", "base@bake-b1")
        made["w2"] = relabelled(store, base, "web", "w2", "2026-01-06", "verified")
        in_use = {"kiln.role": "base", "kiln.version": "b2"}
        docker_client.containers.create(made["b2"], ["true"], name=f"{run.prefix}-user", labels=in_use)

        plan = run.invoke("prune", "--keep", "1")
        assert "would remove 1 of 7 images: add --yes to remove them" in plan.stderr
        assert tags(docker_client, run.prefix) == set(made.values())

        done = run.invoke("prune", "--keep", "1", "--yes")
        assert "removed 1 of 7 images" in done.stderr
        assert tags(docker_client, run.prefix) == set(made.values()) - {made["b4"]}
        rows = {line.split()[0]: line for line in done.stdout.splitlines()[1:]}
        assert "parent of " + made["w1"] in rows[made["b1"]]
        assert "used by a container" in rows[made["b2"]]
        assert "promoted" in rows[made["b3"]]
        assert "remove" in rows[made["b4"]]
        # The session's own images (another prefix) were never candidates.
        assert docker_client.images.get(base.id)
    finally:
        remove_prefixed(docker_client, run.prefix)
        with pytest.raises(docker.errors.NotFound):
            docker_client.containers.get(f"{run.prefix}-user")
