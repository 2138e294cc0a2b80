"""Load balancer handover benchmark: an lb rollout under load against restarting HAProxy in place.

    KILN_IMAGE_REPO=kilnh4 .venv/bin/python benchmarks/lb_handover.py [--rounds 4]

Needs a verified lb and web image of that prefix. Creates environment `benchlb<pid>` (2 web
instances in 2 zones) and a stand-in lb version (the newest verified lb image under another
version label, `<repo>/lb:<stand-in>`), and removes both at the end. Each round hands the load
balancer over (`rollout --role lb`) from one version to the other under 4 load workers (half of
them keep-alive), then, as the baseline measured in the same run, restarts the running
HAProxy's container in place (`docker restart`: what a configuration or package change does
without a handover). Per round: seconds, requests, failed requests. Goal: 0 failed in every
handover; the restarts show what the handover saves.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.load import Load
from kiln.config import parse
from kiln.environments import Environment, EnvironmentSpec
from kiln.images import DockerImageStore, docker_client
from kiln.providers.local import LocalProvider
from kiln.rollout import lifecycle
from kiln.rollout.engine import Engine
from kiln.settings import Settings

POLICY = {
    "provider": "local",
    "zones": ["z0", "z1"],
    "instances": {"web": 2},
    "frontend": {"port": 0},
    "health": {"path": "/health", "interval": 0.5, "rise": 2, "fall": 2, "timeout": 60},
    "rollout": {"drain_timeout": 5},
}
STAND_IN = "benchlb0000"
WORKERS, MAX_REQUESTS, MAX_SECONDS = 4, 20_000, 120  # bounds of each round's load
SETTLE = 1.0  # seconds of load before and after each change, so both ends are under traffic


def measured(frontend: str, change) -> dict:
    with Load(frontend, workers=WORKERS, max_requests=MAX_REQUESTS, max_seconds=MAX_SECONDS) as load:
        time.sleep(SETTLE)
        began = time.monotonic()
        change()
        seconds = time.monotonic() - began
        time.sleep(SETTLE)
    return {
        "seconds": round(seconds, 2),
        "requests": load.requests,
        "failed": load.failed,
        "errors": dict(load.errors),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4, help="handovers (and restarts) to measure")
    args = parser.parse_args()
    base = Settings.from_env()
    settings = dataclasses.replace(base, state_store=str(base.state_dir / "bench"))
    env = Environment(f"benchlb{os.getpid()}", parse(EnvironmentSpec, POLICY, "benchmark"), "benchmark")
    client = docker_client()
    store = DockerImageStore(client, settings)
    verified = [r for r in store.list("lb") if r.status in ("verified", "promoted")]
    if not verified or not any(r.status in ("verified", "promoted") for r in store.list("web")):
        print(f"needs a verified lb and web image in {settings.image_repo}: bake them first", file=sys.stderr)
        return 2
    v1 = verified[0]
    stand_in = store.update_labels(
        dataclasses.replace(v1, version=STAND_IN, image=store.ref("lb", STAND_IN)),
        {**v1.labels, "kiln.version": STAND_IN, "kiln.built": "2000-01-01T00:00:00Z"},
    )
    provider = LocalProvider(settings, env)
    engine = Engine(settings, env, provider, say=lambda line: print(line, file=sys.stderr))
    handovers, restarts = [], []
    try:
        lifecycle.up(engine)
        frontend = provider.frontend()
        for round_ in range(args.rounds):
            target = STAND_IN if round_ % 2 == 0 else v1.version

            def hand_over(version=target) -> None:
                lifecycle.deploy(engine, approve=lambda env, what: None, role="lb", image=version)

            handovers.append({"to": target, **measured(frontend, hand_over)})

            def restart() -> None:
                (running,) = [c for c in provider.haproxies() if c.status == "running"]
                running.restart(timeout=int(env.spec.rollout.drain_timeout))
                while not provider.api.ready():
                    time.sleep(0.05)

            restarts.append(measured(frontend, restart))
    finally:
        provider.destroy()
        client.images.remove(stand_in.image)
    figures = {
        "handovers": handovers,
        "restarts_in_place": restarts,
        "handover_failed_total": sum(h["failed"] for h in handovers),
        "restart_failed_total": sum(r["failed"] for r in restarts),
        "handover_seconds_mean": round(sum(h["seconds"] for h in handovers) / len(handovers), 2),
    }
    print(json.dumps(figures, indent=2))
    return 0 if figures["handover_failed_total"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
