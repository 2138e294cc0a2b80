"""Rollout benchmark: instances replaced zone by zone under load, against the policy's floor.

    KILN_IMAGE_REPO=kilnh4 .venv/bin/python benchmarks/rollout.py [--from V1] [--to V2]
    .venv/bin/python benchmarks/rollout.py --provider qemu [--role base]

local: 6 web containers in 3 zones. qemu: 2 VMs in 2 zones (one each), booted under TCG when
KVM does not work. Needs two verified images of the role (docker images, or VM disks for qemu)
and a verified lb image of that prefix (default: the two newest verified, rolling from the
older to the newer). Creates environment `bench<pid>`, removes it at the end. The floor is
what the policy cannot beat, measured in the same run:
zones x (instance start + rise x interval + warm-up + drain), where instance start is a zone's
batch (max_surge instances) launched together until each answers /health, under the same load,
before and after the rollout (the mean), and drain is the mean drain the rollout saw. One
instance's start alone is printed too.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.load import Load
from kiln.config import parse
from kiln.environments import Environment, EnvironmentSpec
from kiln.providers import provider_class
from kiln.rollout import lifecycle
from kiln.rollout.engine import Engine
from kiln.settings import Settings

POLICIES = {
    "local": {
        "provider": "local",
        "zones": ["z0", "z1", "z2"],
        "instances": {"web": 6},
        "frontend": {"port": 0},
        "health": {"path": "/health", "interval": 0.5, "rise": 2, "fall": 2, "timeout": 120},
        # A zone's two instances are replaced together; no canary, so one batch per zone.
        "rollout": {"max_surge": 2, "max_unavailable": 0, "warmup": 0, "drain_timeout": 5, "canary": 0},
    },
    "qemu": {
        "provider": "qemu",
        "zones": ["z0", "z1"],
        "instances": {"web": 2},
        "frontend": {"port": 0},
        "health": {"path": "/health", "interval": 1, "rise": 2, "fall": 2, "timeout": 900},
        "rollout": {"max_surge": 1, "max_unavailable": 0, "warmup": 0, "drain_timeout": 5, "canary": 0},
    },
}
START_TIMEOUT = {"local": 120, "qemu": 900}  # seconds for a probe batch to answer: a VM boots


def batch_start(engine: Engine, image, count: int, timeout: float) -> float:
    """Seconds from launching `count` instances together to all answering /health (asked directly).

    A zone's batch boots together, so on a small machine this is what a zone waits for.
    """
    began = time.monotonic()
    zones = len(engine.env.zones)
    numbers = [zones * (33 + k) for k in range(count)]  # zone 0, away from the environment's own
    role, port = engine.role, engine.provider.backend_port
    launch = engine.provider.launch
    probes = [launch(role, n, image, engine.user_data(role, f"{role}{n}", 0, image)) for n in numbers]
    try:
        for inst in probes:
            while True:
                if time.monotonic() - began > timeout:
                    raise RuntimeError(f"the probe instance {inst.name} never answered /health")
                try:
                    with urllib.request.urlopen(f"http://{inst.address}:{port}/health", timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    time.sleep(0.05)
        return time.monotonic() - began
    finally:
        for inst in probes:
            engine.provider.terminate(inst)


def mean_drain(events: list[dict]) -> float:
    started = {e["instance"]: e["t"] for e in events if e["action"] == "draining"}
    ended = [
        e["t"] - started[e["instance"]]
        for e in events
        if e["action"] == "deregistered" and e["instance"] in started
    ]
    return sum(ended) / len(ended) if ended else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="source", help="version the environment starts with")
    parser.add_argument("--to", dest="target", help="version rolled out")
    parser.add_argument("--provider", choices=sorted(POLICIES), default="local", help="where instances run")
    parser.add_argument("--role", default="web", help="balanced role (qemu: the VM fixture's base)")
    args = parser.parse_args()
    base = Settings.from_env()
    # Its own state folder, kept afterwards (under .kiln/) so the timeline can be looked at;
    # VM disks stay in the catalog they were baked into.
    settings = dataclasses.replace(base, state_store=str(base.state_dir / "bench"))
    policy = POLICIES[args.provider]
    policy = {**policy, "instances": {args.role: policy["instances"]["web"]}, "balanced_role": args.role}
    env = Environment(f"bench{os.getpid()}", parse(EnvironmentSpec, policy, "benchmark"), "benchmark")
    provider = provider_class(args.provider)(settings, env)
    role, count = args.role, env.spec.instances[args.role]
    verified = [version for version in provider.versions(role)
                if provider.image(role, version).status in ("verified", "promoted")]  # fmt: skip
    if not args.target and len(verified) < 2:
        print(f"needs two verified {role} images (or --from and --to)", file=sys.stderr)
        return 2
    target = provider.image(role, args.target or verified[0])
    source = provider.image(role, args.source or verified[1])
    engine = Engine(settings, env, provider, say=lambda line: print(line, file=sys.stderr))
    timeout, workers = START_TIMEOUT[args.provider], 4 if args.provider == "local" else 2
    try:
        # `up` starts from the newest verified image: pin the old one by launching it first.
        provider.ensure_networks()
        for n in range(1, count + 1):
            provider.launch(role, n, source, engine.user_data(role, f"{role}{n}", env.zone_of(n), source))
        lifecycle.up(engine)
        # Measured under the same load as the rollout (the load generator shares the CPU), once
        # before and once after it: a shared machine's load drifts, the mean follows it.
        surge = env.spec.rollout.max_surge
        with Load(provider.frontend(), workers=workers, max_seconds=2 * timeout):
            single = batch_start(engine, source, 1, timeout)
            starts = [batch_start(engine, source, surge, timeout)]
        engine.started, engine.samples = time.monotonic(), []
        with Load(provider.frontend(), workers=workers, max_seconds=4 * timeout) as load:
            began = time.monotonic()  # the wall time includes the user-data check, as users see it
            result = lifecycle.deploy(engine, approve=lambda env, what: None, image=target.version).state
            wall = time.monotonic() - began
        with Load(provider.frontend(), workers=workers, max_seconds=2 * timeout):
            starts.append(batch_start(engine, target, surge, timeout))
        start = sum(starts) / len(starts)
    finally:
        provider.destroy()
    h = env.spec.health
    drain = mean_drain(result.events)
    per_zone = h.rise * h.interval + env.spec.rollout.warmup + drain
    floor = len(env.zones) * (start + per_zone)
    floor_single = len(env.zones) * (single + per_zone)  # as if a batch booted as fast as one
    figures = {
        "provider": args.provider, "role": role, "instances": count, "zones": len(env.zones),
        "from": source.version, "to": target.version,
        "requests": load.requests, "failed": load.failed, "errors": dict(load.errors),
        "wall_s": round(wall, 1), "one_instance_start_s": round(single, 2),
        "batch_start_s": round(start, 2),
        "batch_starts_s": [round(t, 2) for t in starts],
        "rise_x_interval_s": h.rise * h.interval,
        "drain_s": round(drain, 2), "floor_s": round(floor, 1), "ratio": round(wall / floor, 2),
        "floor_one_instance_s": round(floor_single, 1), "ratio_one_instance": round(wall / floor_single, 2),
        "timeline": result.timeline,
    }  # fmt: skip
    print(json.dumps(figures, indent=2))
    return 0 if load.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
