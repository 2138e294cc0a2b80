#!/usr/bin/env python3
"""Bake benchmark: what Kiln's layering and content addressing save over a plain Packer build.

Measured in one run, in a scratch copy of the project with its own image prefix and an empty
.deb cache (so the cold bake downloads for real):
  1. cold bake of base + web
  2. no-op rebake (`invoke bake web` with nothing changed), wall time of the whole command
  3. rebake after a web-only change
  4. baseline: plain `packer build` of the same rendered web template
Goals (issue 2): no-op at least 10x faster than the plain build; web-only rebake at most 0.35x
the cold bake. Usage: .venv/bin/python benchmarks/bake.py [--target qemu [--warm]]
(qemu: qcow2 disks booted under QEMU, KVM or TCG as the machine allows; the VM bootstrap disk in
KILN_VM_CACHE_DIR is reused when present, as the docker bootstrap image is. `--warm` starts from
this checkout's newest base disk of the current version instead of a cold bake: step 1 then bakes
web alone, for machines where a cold TCG bake does not fit.)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import docker

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.conftest import copy_project  # noqa: E402
from tests.integration.conftest import remove_prefixed  # noqa: E402


def timed(label: str, argv: list[str], cwd: Path, env: dict[str, str]) -> float:
    started = time.monotonic()
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        sys.exit(f"{label} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    print(f"  {label}: {seconds:.2f} s", flush=True)
    return seconds


def load() -> str:
    return "load average " + " ".join(Path("/proc/loadavg").read_text().split()[:3])


def copy_base_disk(project: Path) -> None:
    """This checkout's base disks (the bench's copy finds the current version among them)."""
    state = Path(os.environ.get("KILN_STATE_DIR", REPO / ".kiln"))
    found = sorted((state / "vm" / "base").glob("base-*.qcow2"))
    if not found:
        sys.exit(f"--warm: no base disk in {state / 'vm' / 'base'}: bake base --target qemu first")
    shutil.copytree(state / "vm" / "base", project / ".kiln" / "vm" / "base")


def main() -> None:
    target = sys.argv[sys.argv.index("--target") + 1] if "--target" in sys.argv else "docker"
    warm = "--warm" in sys.argv
    if warm and target != "qemu":
        sys.exit("--warm: only with --target qemu (a docker base lives in the engine, not in files)")
    prefix = f"kilnbench{os.getpid()}"
    client = docker.from_env()
    scratch = Path(tempfile.mkdtemp(prefix="kiln-bench-"))
    project = copy_project(scratch / "project")
    env = {**os.environ, "KILN_PROJECT_ROOT": str(project), "KILN_IMAGE_REPO": prefix}
    invoke = [sys.executable, "-m", "invoke"]
    no_verify = (
        ["--no-verify"]
        if "--no-verify"
        in subprocess.run(
            [*invoke, "--help", "bake"], cwd=project, env=env, capture_output=True, text=True
        ).stdout
        else []
    )
    bake_web = [*invoke, "bake", "web", "--target", target, *no_verify]
    try:
        print(f"bake benchmark, target {target} ({prefix}, project copy {project}), {load()}")
        if warm:
            copy_base_disk(project)
        first = "web alone on this checkout's base disk" if warm else "cold bake base+web (empty .deb cache)"
        cold = timed(first, bake_web, project, env)
        noop = timed("no-op rebake, whole command", bake_web, project, env)
        with (project / "provisioners" / "web-app.sh").open("a") as f:
            f.write("# benchmark: a web-only change\n")
        web_only = timed("rebake after a web-only change", bake_web, project, env)
        template = sorted((project / ".kiln" / "builds" / "web").iterdir())[-1] / "template.json"
        # -force: the bake leaves its (emptied) output folder, which Packer refuses to reuse.
        plain = timed(
            "plain `packer build` of the same web template",
            ["packer", "build", "-force", "-color=false", template.name],
            template.parent,
            env,
        )
        print()
        print(f"{'measure':44} {'seconds':>8} {'ratio':>8}  goal")
        first_row = "bake web on an existing base" if warm else "cold bake base+web"
        print(f"{first_row:44} {cold:8.2f} {1:8.2f}")
        print(
            f"{'web-only rebake / ' + first_row.split(' on ')[0]:44} {web_only:8.2f} {web_only / cold:8.2f}"
            + ("" if warm else "  <= 0.35")
        )
        print(f"{'plain packer build of web (baseline)':44} {plain:8.2f} {1:8.2f}")
        print(f"{'no-op rebake: plain build / no-op':44} {noop:8.2f} {plain / noop:8.1f}x  >= 10x")
        print(f"{'web-only rebake / plain build':44} {web_only:8.2f} {web_only / plain:8.2f}")
        print(f"finished at {load()}")
    finally:
        remove_prefixed(client, prefix)
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
