"""The whole VM scenario of the qemu provider, on the hardened images: too long for CI.

    .venv/bin/python benchmarks/vm_scenario.py [--mb 16] [--pair]

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
With --pair it runs a PostgreSQL primary and its streaming standby instead (web 1, db 2 over the
two zones, as tests/integration/test_failover.py does with containers):
1. `up`; 2. under a steady writer through the frontend, the primary's QEMU killed (SIGKILL: a
power loss), `invoke failover`, and the acknowledged writes the new primary lacks counted
against the window its report gives; 3. `up` again: a new VM in the old primary's place copies
the new primary and streams from it; 4. `down`, nothing left.
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
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import docker
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kiln import environments, tls, vmdisk
from kiln import secrets as sealed
from kiln.diskimages import DiskImageStore
from kiln.errors import KilnError
from kiln.images import ImageRecord
from kiln.providers import get_provider
from kiln.settings import Settings
from kiln.vmdisk import PARTITION_START
from tests.integration import provider_contract as contract
from tests.integration import vm_chain
from tests.integration.conftest import KilnRun
from tests.integration.db_writer import Writer, epoch
from tests.s3server import S3Server

ENV = f"vms{os.getpid()}"
HEALTH_TIMEOUT = 300  # what the bad image waits out; a hardened VM boots in 2-3 min under TCG
PAIR_HEALTH_TIMEOUT = 600  # web's health needs the primary: its first boot took 4.5 min beside two VMs
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

    def pair_steps(self) -> None:
        run = self.run
        self.spec["instances"] = {"web": 1, "db": 2}
        self.spec["health"]["timeout"] = PAIR_HEALTH_TIMEOUT
        self.write_environment()
        self.timed("up", lambda: run.invoke("up", ENV, timeout=1800))
        assert self.db_roles() == {"db1": "primary", "db2": "standby"}, self.db_roles()
        writer = Writer(self.status()["frontend"])
        writer.start()
        try:
            writer.wait_acks(50, timeout=300)
            killed = time.time()
            pid = int((self.settings.store_dir / "envs" / ENV / "vms" / "db1" / "qemu.pid").read_text())
            os.kill(pid, signal.SIGKILL)
            time.sleep(3)  # the writer meets a dead database; HAProxy marks db1 down
            proc = self.timed("failover", lambda: run.invoke("failover", ENV, "--json", timeout=900))
            report = json.loads(proc.stdout)
            failed_over = time.time()
            writer.wait_acks(50, timeout=300)
        finally:
            writer.stop.set()
            writer.join(timeout=30)
        notes = self.sql("db2", "SELECT note FROM records WHERE customer = 'failover'")
        saved = {int(note) for note in notes.split()}
        lost = {n: at for n, at in writer.acked.items() if n not in saved}
        start, end = epoch(report["newest_saved_commit"]), epoch(report["primary_down_since"]) + 1
        self.figures["failover"] = {
            "report": report, "acknowledged": len(writer.acked), "lost": len(lost),
            "failed": len(writer.failed), "outage_s": round(failed_over - killed, 1),
            "lost_inside_window": all(start <= at <= end for at in lost.values()),
        }  # fmt: skip
        assert (report["old_primary"], report["new_primary"]) == ("db1", "db2"), report
        assert self.figures["failover"]["lost_inside_window"], (lost, report)
        self.timed("replacement_standby", lambda: run.invoke("up", ENV, timeout=1800))
        assert self.db_roles() == {"db1": "standby", "db2": "primary"}, self.db_roles()
        assert self.sql("db1", "SELECT pg_is_in_recovery()") == "t"

    def status(self) -> dict:
        return json.loads(self.run.invoke("status", ENV, "--json").stdout)

    def db_roles(self) -> dict[str, str]:
        return {i["name"]: i["lb_role"] for i in self.status()["instances"] if i["role"] == "db"}

    def sql(self, name: str, query: str) -> str:
        """`query` on the kiln database of db instance `name`, over its SSH channel."""
        provider = get_provider(self.settings, environments.load(self.settings, ENV))
        [instance] = [i for i in provider.instances("db") if i.name == name]
        result = provider.channel(instance).run(
            ["/usr/bin/psql", "-XqAt", "-d", "kiln", "-c", query], user="postgres", timeout=120
        )
        assert result.ok, f"{name}: {query}: {result.tail()}"
        return result.out.strip()

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
        for path in (found.encrypted, found.recipients, tls.ca_file(self.settings, ENV)):  # a pair's CA
            path.unlink(missing_ok=True)
        return left


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--mb", type=int, default=16, help="MiB of data loaded before the backup (default 16)"
    )
    parser.add_argument("--pair", action="store_true", help="a db primary and standby: failover instead")
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
        if args.pair:
            scenario.pair_steps()
        else:
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
