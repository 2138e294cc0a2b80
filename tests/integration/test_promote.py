"""`invoke promote` on the real engine, and an environment that deploys only promoted images."""

from __future__ import annotations

import pytest

from kiln.images import DockerImageStore
from kiln.settings import Settings
from tests.integration.conftest import KilnRun, relabelled, remove_prefixed

pytestmark = pytest.mark.integration


def test_only_a_verified_image_is_promoted(kiln, baked_web, docker_client):
    run = KilnRun(kiln.project, kiln.prefix + "promote")
    base = docker_client.images.get(f"{kiln.prefix}/base:{baked_web['base']}")
    store = DockerImageStore(docker_client, Settings(image_repo=run.prefix))
    try:
        relabelled(store, base, "web", "good", "2026-01-01", "verified")
        relabelled(store, base, "web", "bad", "2026-01-02", "rejected")

        refused = run.invoke("promote", "web", "--version", "bad", check=False)
        assert refused.returncode == 2
        assert refused.stderr.strip() == (
            f"kiln: {run.prefix}/web:bad is rejected: only a verified image may be promoted "
            "(`invoke verify web --version bad`, or bake a fixed one)"
        )
        assert store.find("web", "bad").status == "rejected"

        done = run.invoke("promote", "web", "--version", "good")
        assert done.stdout.strip() == f"web\tgood\t{run.prefix}/web:good"
        promoted = store.find("web", "good")
        assert promoted.status == "promoted" and promoted.labels["kiln.promoted"].endswith("Z")
        # Promoting again changes nothing.
        again = run.invoke("promote", "web", "--version", "good")
        assert store.find("web", "good").id == promoted.id and again.returncode == 0
    finally:
        remove_prefixed(docker_client, run.prefix)
