"""The whole VM scenario of the qemu provider, on the hardened images: too long for CI.

    .venv/bin/python benchmarks/vm_scenario.py [--mb 16]

CI runs the smaller scenario (tests/integration/test_qemu_provider.py: `up`, a rollout under
load and `down`, on the small VM fixture chain). This runs all of it through `invoke`, as a
user would, on the newest verified web and db VM disks of this checkout (`invoke bake web
--target qemu` and `invoke bake db --target qemu`: about 45 minutes together under TCG):
1. `up` of environments/vm.yml's topology as `vms<pid>`: two zones, a web VM in each, a db VM;
2. an S3 server (tests/s3server.py, TLS from a CA made for the run) on the gateway of a network
   of its own, which the VMs reach through their zone's gateway (this machine); `load-data`,
   then `backup` (pgBackRest and restic) to its bucket;
3. `dr-drill`: a DR environment of VMs restores the bucket's backups and passes; RTO, RPO;
4. a rollout under bounded loopback load that fails no request, with both versions answering
   (tests/integration/provider_contract.py), to a second web version: the web disk with the
   version in its /etc/kiln/image.json (what the page reports) changed, as a rebake that
   changed nothing else would make it, without 30 minutes of baking;
5. a bad image rolled back by the rollout itself, never serving a request: the db disk under
   a web version (it boots, and nothing answers /health);
6. `down`: no QEMU process, tap device, container, network or VM folder left, the DR
   environment's included.
Prints the figures as JSON (seconds per step, load, RTO, RPO, what was left). Everything it
made (environment, stand-in disks, bucket, secrets) is removed at the end, even when a step
fails; exit 1 when one did.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import docker
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kiln import secrets as sealed
from kiln import vmdisk
from kiln.diskimages import DiskImageStore
from kiln.errors import KilnError
from kiln.images import ImageRecord
from kiln.settings import Settings
from kiln.vmdisk import PARTITION_START
from tests.integration import provider_contract as contract
from tests.integration import vm_chain
from tests.integration.conftest import KilnRun
from tests.s3server import S3Server

ENV = f"vms{os.getpid()}"
HEALTH_TIMEOUT = 300  # what the bad image waits out; a hardened VM boots in 2-3 min under TCG
LOAD_SECONDS = 1200  # bound of each load: the rollout boots two VMs


def newest_verified(store: DiskImageStore, role: str) -> ImageRecord | None:
    return next((r for r in store.list(role) if r.status in ("verified", "promoted")), None)


def copy_as_web(store: DiskImageStore, source: ImageRecord, name: str, status: str, restamp: bool) -> str:
    """A copy of a disk in the catalog as a web version of its own; the version. Restamped: the
    version also written into the copy's /etc/kiln/image.json."""
    version = hashlib.sha256(f"{ENV}:{name}:{source.version}".encode()).hexdigest()[:12]
    copy = store.root / f"{ENV}-{name}.qcow2"
    if restamp:
        with tempfile.TemporaryDirectory(prefix=f"kiln-{ENV}-", dir=store.root) as scratch:
            raw = Path(scratch) / "disk.raw"
            on_host("qemu-img", "convert", "-O", "raw", source.image, str(raw))
            loop = on_host("losetup", "-f", "--show", "-o", str(PARTITION_START * 512), str(raw)).strip()
            try:
                with vmdisk.mounted(loop, Path(scratch) / "root") as root:
                    stamp = root / "etc/kiln/image.json"
                    stamp.write_text(json.dumps({**json.loads(stamp.read_text()), "version": version}) + "\n")
            finally:
                on_host("losetup", "-d", loop)
            on_host("qemu-img", "convert", "-O", "qcow2", str(raw), str(copy))
    else:
        shutil.copyfile(source.image, copy)
    store.add(copy, {**source.labels, "kiln.role": "web", "kiln.version": version, "kiln.status": status})
    return version


def on_host(*argv: str) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv[:2])} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def dr_footprint(client: docker.DockerClient) -> set[str]:
    """QEMU processes and networks of DR environments (`dr-<id>`), whoever made them."""
    networks = {f"network {n.name}" for n in client.networks.list() if n.name.startswith("kiln-dr-")}
    return networks | {f"QEMU process {pid}" for pid in vm_chain.vm_processes("kiln-dr")}


class Scenario:
    def __init__(self, settings: Settings, mb: int):
        self.settings, self.mb = settings, mb
        self.run = KilnRun(settings.project_root, settings.image_repo)
        self.store = DiskImageStore(settings)
        self.client = docker.from_env()
        self.env_file = settings.project_root / "environments" / f"{ENV}.yml"
        self.spec = yaml.safe_load((settings.project_root / "environments" / "vm.yml").read_text())
        self.spec["frontend"]["port"] = 0
        self.spec["health"]["timeout"] = HEALTH_TIMEOUT
        self.figures: dict = {"env": ENV}
        self.stand_ins: list[str] = []
        self.server: S3Server | None = None
        self.s3_folder = Path(tempfile.mkdtemp(prefix=f"kiln-{ENV}-s3-"))  # its CA and certificate

    def timed(self, name: str, body: Callable[[], object]) -> object:
        print(f"== {name}", file=sys.stderr, flush=True)
        started = time.monotonic()
        result = body()
        self.figures[f"{name}_s"] = round(time.monotonic() - started, 1)
        return result

    def mark(self, version: str, status: str) -> None:
        record = self.store.find("web", version)
        assert record is not None, f"web {version} left the catalog"
        self.store.set_status(record, status)

    def write_environment(self) -> None:
        self.env_file.write_text(yaml.safe_dump(self.spec))

    def offsite(self) -> None:
        """The bucket, named in the environment file, on a network of its own (another place
        than the environment's, which `down` removes); the S3 keys sealed."""
        network = self.client.networks.create(f"kiln-{ENV}-s3", driver="bridge", labels={"kiln.bench": ENV})
        network.reload()
        gateway = network.attrs["IPAM"]["Config"][0]["Gateway"]
        self.server = S3Server(gateway, self.s3_folder, f"kilnbench{os.getpid()}")
        self.spec["backup"] = {
            "repository": "s3",
            "s3": {"endpoint": self.server.endpoint, "bucket": self.server.bucket, "uri_style": "path",
                   "ca_file": str(self.server.ca), "timeout_seconds": 30},
        }  # fmt: skip
        self.write_environment()
        keys = {"KILN_S3_KEY": f"kilnbench-key-{os.getpid():08d}", "KILN_S3_KEY_SECRET": os.urandom(16).hex()}
        sealed.ensure_identity(self.settings, ENV)  # the key a first secret makes, on a new machine
        sealed.write(self.settings, ENV, {**sealed.read(self.settings, ENV), **keys})

    def steps(self, web: ImageRecord, db: ImageRecord) -> None:
        run = self.run
        target = copy_as_web(self.store, web, "v2", "baked", restamp=True)  # verified after `up`
        bad = copy_as_web(self.store, db, "bad", "rejected", restamp=False)
        self.stand_ins += [target, bad]
        self.write_environment()
        self.timed("up", lambda: run.invoke("up", ENV, timeout=1800))
        self.offsite()
        self.timed("load_data", lambda: run.invoke("load-data", ENV, "--mb", str(self.mb), timeout=1800))
        backup = self.timed("backup", lambda: run.invoke("backup", ENV, timeout=1800))
        self.figures["backups"] = [line.split("\t")[:2] for line in backup.stdout.splitlines()]
        drill = self.timed("dr_drill", lambda: run.invoke("dr-drill", ENV, timeout=3600))
        fields = dict(f.split("=", 1) for f in drill.stdout.split()[2:4])
        self.figures.update(drill=drill.stdout.split()[1], rto_s=float(fields["rto"]), rpo_s=fields["rpo"])
        self.mark(target, "verified")
        _, load = self.timed(
            "rollout", lambda: contract.roll_out_under_load(run, ENV, "web", target, LOAD_SECONDS)
        )
        self.figures["rollout_load"] = {k: load[k] for k in ("requests", "failed", "errors")}
        load = self.timed(
            "rollback",
            lambda: contract.bad_image_rolls_back(
                run, ENV, "web", bad, lambda status: self.mark(bad, status), LOAD_SECONDS
            ),
        )
        self.figures["rollback_load"] = {k: load[k] for k in ("requests", "failed", "errors")}

    def clean_up(self, taps_before: set[str], dr_before: set[str]) -> list[str]:
        down, left = self.timed("down", lambda: vm_chain.tear_down(self.run, ENV, self.client, taps_before))
        if down.returncode != 0:
            left.append(f"`invoke down` exited {down.returncode}: {down.stderr.strip()[-300:]}")
        left += sorted(dr_footprint(self.client) - dr_before)
        if self.server is not None:
            self.server.close()
        for network in self.client.networks.list(filters={"label": f"kiln.bench={ENV}"}):
            network.remove()
        shutil.rmtree(self.s3_folder, ignore_errors=True)
        for version in self.stand_ins:
            record = self.store.find("web", version)
            if record is not None:
                self.store.remove(record.image)
        self.env_file.unlink(missing_ok=True)
        shutil.rmtree(self.settings.store_dir / "envs" / ENV, ignore_errors=True)  # keys, audit log
        found = sealed.files(self.settings, ENV)
        for path in (found.encrypted, found.recipients):
            path.unlink(missing_ok=True)
        return left


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--mb", type=int, default=16, help="MiB of data loaded before the backup (default 16)"
    )
    args = parser.parse_args()
    settings = Settings.from_env()
    scenario = Scenario(settings, args.mb)
    web, db = newest_verified(scenario.store, "web"), newest_verified(scenario.store, "db")
    if web is None or db is None:
        bake = "invoke bake web --target qemu; invoke bake db --target qemu"
        print(f"needs verified web and db VM disks: {bake}", file=sys.stderr)
        return 2
    scenario.figures.update(web=web.version, db=db.version)
    taps_before, dr_before = vm_chain.taps(), dr_footprint(scenario.client)
    failed = None
    try:
        scenario.steps(web, db)
    except (AssertionError, subprocess.SubprocessError, KilnError) as exc:
        failed = str(exc)[-3000:]
    finally:
        scenario.figures["left"] = scenario.clean_up(taps_before, dr_before)
    scenario.figures["failed"] = failed
    print(json.dumps(scenario.figures, indent=2))
    return 1 if failed or scenario.figures["left"] else 0


if __name__ == "__main__":
    sys.exit(main())
