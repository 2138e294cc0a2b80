"""The small VM role chain of vm_fixture/ (see its README): making its project, reading bakes,
finding a run's VMs, tearing a qemu environment down and saying what `down` left. Its session
fixtures (`vm_run`, `baked`) are in conftest.py, shared by test_vm_fixture.py (the image) and
test_qemu_provider.py (instances booted from it); benchmarks/vm_scenario.py tears down with it."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

from tests.conftest import REPO, copy_project

FIXTURE = Path(__file__).parent / "vm_fixture"
# What the fixture's services need in the image: Kiln's renderer of `services:`, as base ships it.
SERVICE_FILES = ("usr/local/sbin/kiln-services", "usr/local/lib/kiln/kiln_services.py")
# A bake and its verification took 18 and 10 min here under TCG with the load at 20-30.
BAKE_TIMEOUT = 3600
SLOW_PACKER = {"KILN_PACKER_TIMEOUT": "2400"}


# What BackgroundBakes runs, in order: the lock first (its packages against the mirror).
BACKGROUND_STEPS = {
    "lock": ("lock", "base", "--update"),
    "base": ("bake", "base", "--target", "qemu"),
    "broken": ("bake", "broken", "--target", "qemu"),
}


class BackgroundBakes:
    """The fixture chain's bakes, one after another in a thread started with the session: about
    ten minutes of TCG (the VM root disk, base baked and verified in VMs, then `broken` baked and
    rejected) overlap the container tests instead of following them. A test reads a step's
    finished process with `result`, which waits for it; `stop` ends a step still running (SIGTERM:
    the bake powers its VM off) when the session ends first."""

    def __init__(self, run):
        self.run = run
        self.results: dict[str, subprocess.CompletedProcess] = {}
        self.done = {step: threading.Event() for step in BACKGROUND_STEPS}
        self.current: subprocess.Popen | None = None
        self.stopping = False
        self.thread = threading.Thread(target=self.bake_all, name="vm-chain", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def bake_all(self) -> None:
        for step, args in BACKGROUND_STEPS.items():
            if not self.stopping:
                self.current = subprocess.Popen(
                    [sys.executable, "-m", "invoke", *args],
                    cwd=self.run.project,
                    env={**self.run.env, **SLOW_PACKER},
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                out, err = self.current.communicate()
                self.results[step] = subprocess.CompletedProcess(args, self.current.returncode, out, err)
            self.done[step].set()

    def result(self, step: str) -> subprocess.CompletedProcess:
        assert self.done[step].wait(BAKE_TIMEOUT), f"{step} did not finish in {BAKE_TIMEOUT} s"
        assert step in self.results, f"{step} never ran: the session was ending"
        return self.results[step]

    def stop(self) -> None:
        self.stopping = True
        if self.current is not None and self.current.poll() is None:
            self.current.send_signal(signal.SIGTERM)
            try:
                self.current.wait(120)
            except subprocess.TimeoutExpired:
                self.current.kill()
        self.thread.join(150)


def versions(proc) -> dict[str, str]:
    return dict(line.split("\t")[:2] for line in proc.stdout.splitlines() if "\t" in line)


def vm_processes(prefix: str) -> dict[int, str]:
    """QEMU processes of VMs named with the prefix (bake, verify): pid -> command line."""
    found = subprocess.run(["pgrep", "-af", "--", f"-name {prefix}-"], capture_output=True, text=True)
    return {int(pid): line for pid, _, line in (row.partition(" ") for row in found.stdout.splitlines())}


def taps() -> set[str]:
    links = json.loads(subprocess.check_output(["ip", "-j", "link", "show", "type", "tun"]))
    return {link["ifname"] for link in links}


def tear_down(
    run, env: str, docker_client, taps_before: set[str]
) -> tuple[subprocess.CompletedProcess, list[str]]:
    """`invoke down` a qemu environment, then remove by force what it left: (down, what was left)."""
    down = run.invoke("down", env, check=False)
    left = []
    for pid in vm_processes(f"kiln-{env}"):
        left.append(f"QEMU process {pid}")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for tap in sorted(taps() - taps_before):
        left.append(f"tap device {tap}")
        subprocess.run(["ip", "link", "del", tap], check=False)
    for container in docker_client.containers.list(all=True, filters={"label": f"kiln.env={env}"}):
        left.append(f"container {container.name}")
        container.remove(force=True)
    for network in docker_client.networks.list(filters={"label": f"kiln.env={env}"}):
        left.append(f"network {network.name}")
        network.remove()
    vms = run.project / ".kiln" / "envs" / env / "vms"
    if vms.exists():
        left.append(f"folder {vms}")
        shutil.rmtree(vms)
    return down, left


def overlays(state_dir: Path, prefix: str) -> list[Path]:
    """Scratch folders of throwaway VMs (overlay, seed, key): kiln.vm.booted makes them here."""
    return sorted(state_dir.glob(f"{prefix}-*"))


def make_project(dest: Path) -> Path:
    project = copy_project(dest)
    shutil.rmtree(project / "images")
    shutil.copytree(FIXTURE / "images", project / "images")
    for script in (FIXTURE / "provisioners").iterdir():
        shutil.copy2(script, project / "provisioners" / script.name)
    shutil.copytree(FIXTURE / "cloud-init", project / "cloud-init", dirs_exist_ok=True)
    for path in SERVICE_FILES:
        target = project / "images" / "base" / "files" / path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / "images" / "base" / "files" / path, target)
    return project
