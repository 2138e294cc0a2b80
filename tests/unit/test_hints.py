"""The README's tour and the `next:` line each of its steps prints lead the same way."""

from __future__ import annotations

import itertools
import re

from kiln import hints
from tests.conftest import REPO

STEPS = ["bake", "up", "status", "rollout", "backup", "dr-drill", "down"]


def tour() -> list[str]:
    section = (REPO / "README.md").read_text().split("## A first hour: the tour", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)[1]
    return [line.split()[1] for line in block.splitlines() if line.startswith("invoke ")]


def test_the_tour_runs_in_the_order_a_newcomer_goes():
    assert [task for task in dict.fromkeys(tour()) if task in STEPS] == STEPS


def test_each_step_names_the_next_one():
    for task, following in itertools.pairwise(STEPS[1:]):
        assert f"`invoke {following} local" in hints.after(task, "local"), task
    assert "`invoke up local`" in hints.after("down", "local")
    assert "`invoke backup local`" in hints.after("rollout-unchanged", "local")


def test_after_a_bake_without_the_tour_environment_the_hint_stays_general(settings):
    assert hints.after_bake(settings) == "next: `invoke up ENV` for an environment in environments/"


def test_after_a_vm_bake_the_hint_is_its_audit_not_a_local_environment(settings):
    assert hints.after_bake(settings, target="qemu", role="web") == (
        "next: `invoke audit web --target qemu` scores the disk with Lynis and OpenSCAP in a VM"
    )
