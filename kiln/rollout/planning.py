"""Rollout planning: pure functions over instances, shared by the engine and `--plan`.

Each step is computed from what exists now (instances, their health), so a resumed rollout
simply continues from what it finds, and a plan is the same function run over a simulation.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

from kiln.environments import Environment
from kiln.errors import KilnError
from kiln.images import ImageRecord
from kiln.providers.base import Instance


@dataclass(frozen=True)
class Step:
    zone: int
    drain_first: list[str]  # taken out before launching (only when max_unavailable allows)
    launch: list[int]  # instance numbers to start at the target version
    retire: list[str]  # drained and removed once the new ones are healthy (+ warm-up)
    canary: bool = False


def free_numbers(zones: int, zone: int, used: set[int], count: int) -> list[int]:
    numbers, n = [], 1
    while len(numbers) < count:
        if n % zones == zone and n not in used:
            numbers.append(n)
        n += 1
    return numbers


def missing_numbers(env: Environment, role: str, instances: list[Instance]) -> list[int]:
    """Instance numbers `up` launches so every zone has its count of `role`."""
    numbers = []
    used = {i.number for i in instances}
    for zone in range(len(env.zones)):
        have = sum(1 for i in instances if i.zone == zone)
        numbers += free_numbers(len(env.zones), zone, used, max(0, env.zone_count(role, zone) - have))
    return sorted(numbers)


def next_step(
    env: Environment,
    role: str,
    zone: int,
    instances: list[Instance],
    version: str,
    healthy: set[str],
    *,
    canary: int = 0,
    max_batch: int | None = None,
) -> Step | None:
    """The next step towards `desired` instances of `version` in `zone`, or None when there."""
    policy = env.spec.rollout
    desired = env.zone_count(role, zone)
    in_zone = [i for i in instances if i.role == role and i.zone == zone]
    have = [i for i in in_zone if i.version == version]
    # Unhealthy ones go first: a rollback removes the failed new instances before anything else.
    others = sorted((i for i in in_zone if i.version != version), key=lambda i: (i.name in healthy, i.number))
    missing = desired - len(have)
    if missing <= 0:
        surplus = others + sorted(have, key=lambda i: (i.name in healthy, -i.number))[: len(have) - desired]
        return Step(zone, [], [], [i.name for i in surplus]) if surplus else None
    batch = min(missing, max_batch or policy.max_surge + policy.max_unavailable)
    if canary:
        batch = min(batch, canary)
    serving = len(have) + len(others)
    first = others[: max(0, serving + batch - (desired + policy.max_surge))]
    remaining = others[len(first) :]
    after = remaining[: max(0, len(have) + batch + len(remaining) - desired)]
    used = {i.number for i in instances if i.role == role}
    numbers = free_numbers(len(env.zones), zone, used, batch)
    return Step(zone, [i.name for i in first], numbers, [i.name for i in after], canary=bool(canary))


def simulate(step: Step, instances: list[Instance], role: str, version: str) -> list[Instance]:
    gone = set(step.drain_first) | set(step.retire)
    kept = [i for i in instances if i.name not in gone]
    return kept + [Instance(f"{role}{n}", role, step.zone, version, "", True) for n in step.launch]


def plan(
    env: Environment, role: str, instances: list[Instance], version: str, zones: list[int]
) -> list[Step]:
    """Every step of a rollout, assuming each one succeeds: what `--plan` prints."""
    steps: list[Step] = []
    current = list(instances)
    for zone in zones:
        while True:
            canary = env.spec.rollout.canary if not steps else 0
            step = next_step(env, role, zone, current, version, {i.name for i in current}, canary=canary)
            if step is None:
                break
            steps.append(step)
            current = simulate(step, current, role, version)
    return steps


def describe(env: Environment, role: str, step: Step) -> str:
    zone = env.zones[step.zone]
    parts = []
    if step.drain_first:
        parts.append(f"drain and remove {', '.join(step.drain_first)}")
    if step.launch:
        parts.append(f"launch {', '.join(f'{role}{n}' for n in step.launch)} and wait until healthy")
    if step.retire:
        parts.append(f"drain and remove {', '.join(step.retire)}")
    label = f"zone {zone} (canary)" if step.canary else f"zone {zone}"
    return f"{label}: " + "; then ".join(parts)


def majority_version(instances: list[Instance]) -> str | None:
    counts = collections.Counter(i.version for i in instances)
    return counts.most_common(1)[0][0] if counts else None


def require_deployable(record: ImageRecord, env: Environment) -> None:
    if record.status == "rejected":
        raise KilnError(f"{record.image} was rejected by verification: it may not be deployed")
    if record.status == "verified" and env.spec.require_promoted:
        raise KilnError(
            f"{record.image} is verified but not promoted, and {env.file} deploys only promoted images "
            f"(require_promoted): once it has proved itself elsewhere, run "
            f"`invoke promote {record.role} --version {record.version}`"
        )
    if record.status not in env.deployable:
        raise KilnError(f"{record.image} is {record.status}, not verified: verify it before deploying it")
