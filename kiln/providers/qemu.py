"""The qemu provider: instances are VMs on this machine, booted from the qemu target's disks.

QEMU directly, not libvirt: libvirtd is one more daemon to install and keep alive on a CI
runner, and every part Kiln needs (a copy-on-write overlay, a NoCloud seed, a tap device on a
bridge, a pid file) is one QEMU option; an on-prem team's KVM host runs the same command line.

What is the local provider's stays the local provider's: one Docker network per zone
(`kiln-<env>-z<N>`, a Linux bridge) and the load balancer, an HAProxy container of the `lb`
image driven through its runtime API. The VMs join those bridges through tap devices
(`kiln<hash><zone>`), so HAProxy reaches a VM as it reaches a container. Addresses follow the
clouds' plan (kiln/providers/cloud.py) in a /16 of its own per environment; Docker hands out
only the top /24 of each zone's /20 (the load balancer's). A shared role (db) has a NIC on
every zone's network, so an instance reaches it on its own zone's (`peer_address`). A VM's
default route is its own zone's gateway, this machine, as a container's on the same bridge is:
so it reaches a backup repository served here whichever environment (or DR drill) it is in.

Each VM keeps its folder under <state store>/envs/<env>/vms/<instance>/: the overlay, the
seed, the console log, QEMU's pid file and `instance.json`, which is what `instances()` reads.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import docker.types
import yaml

from kiln import cloudinit
from kiln.channels import channel_class
from kiln.channels.base import Channel, ChannelError
from kiln.channels.ssh import Endpoint, SshIdentity, authorize, console_host_keys
from kiln.cloudinit import UserData
from kiln.diskimages import DiskImageStore
from kiln.environments import Environment
from kiln.errors import KilnError, OperationFailed, require_tools
from kiln.files import write_atomic
from kiln.images import ImageRecord
from kiln.providers.base import Instance
from kiln.providers.cloud import check_zone_count, fixed_address, newest_deployable
from kiln.providers.local import LocalProvider, docker_errors_fail
from kiln.settings import Settings
from kiln.vm import QEMU, machine_args

# Second octets tried for an environment's /16 (10.<N>.0.0/16), clear of Docker's defaults.
NETWORK_OCTETS = range(64, 128)
LB_RANGE = 15  # the /24 of each zone's /20 that Docker gives its containers (the LB)
POWEROFF_SECONDS = 60  # a clean shutdown: services stopped by systemd
TUN = Path("/dev/net/tun")
PROBE_TIMEOUT = 20.0  # seconds for one readiness probe over SSH (a booting VM refuses at once)


@dataclass(frozen=True)
class Nic:
    zone: int
    tap: str
    mac: str
    address: str  # with its prefix length, as network-config takes it


@dataclass(frozen=True)
class VmRecord:
    """instance.json: what instances() knows of a VM without asking it."""

    name: str
    role: str
    zone: int
    version: str
    machine: str  # unique per launch: the instance-id, the host key alias, the QEMU name
    nics: list[Nic]

    @classmethod
    def read(cls, path: Path) -> VmRecord:
        data = json.loads(path.read_text())
        return cls(**{**data, "nics": [Nic(**nic) for nic in data["nics"]]})


class QemuProvider(LocalProvider):
    image_target = "qemu"
    keeps_volumes = False  # a VM's disk goes with it: backups go to S3

    def __init__(self, settings: Settings, env: Environment):
        super().__init__(settings, env)
        check_zone_count(env)  # the address plan's 16 zones
        self.disks = DiskImageStore(settings)
        self.vms = self.folder / "vms"
        self.identity = SshIdentity(self.folder / "ssh", f"kiln-{env.name}")
        self._octet: int | None = None  # see network_octet()

    @property
    def poll_interval(self) -> float:
        return 1.0  # readiness probes go over SSH

    # ---- networks ---------------------------------------------------------------------------

    @docker_errors_fail
    def ensure_networks(self) -> None:
        """Each zone's bridge with a fixed subnet: VMs take addresses Docker does not hand out."""
        require_vm_tools()  # before anything is made
        existing = {n.name for n in self.client.networks.list(filters={"label": f"kiln.env={self.env.name}"})}
        if len(existing) == len(self.env.zones):
            return
        octet = self.network_octet() or self.free_network_octet()
        for zone, zone_name in enumerate(self.env.zones):
            name = self.network_name(zone)
            if name in existing:
                continue
            subnet = ipaddress.ip_network(f"10.{octet}.{zone * 16}.0/20")
            pool = docker.types.IPAMPool(
                subnet=str(subnet),
                iprange=f"10.{octet}.{zone * 16 + LB_RANGE}.0/24",
                gateway=str(subnet.network_address + 1),
            )
            self.client.networks.create(
                name,
                driver="bridge",
                ipam=docker.types.IPAMConfig(pool_configs=[pool]),
                labels={**self.labels, "kiln.zone": zone_name, "kiln.octet": str(octet)},
            )

    def network_octet(self) -> int | None:
        """The second octet of this environment's /16, from its networks (kept once found)."""
        if self._octet is None:
            for network in self.client.networks.list(filters={"label": f"kiln.env={self.env.name}"}):
                self._octet = int(network.attrs["Labels"]["kiln.octet"])
                break
        return self._octet

    def free_network_octet(self) -> int:
        used = [
            ipaddress.ip_network(config["Subnet"])
            for network in self.client.networks.list()
            for config in (network.attrs.get("IPAM") or {}).get("Config") or []
            if "Subnet" in config and ":" not in config["Subnet"]
        ]
        for octet in NETWORK_OCTETS:
            block = ipaddress.ip_network(f"10.{octet}.0.0/16")
            if not any(block.overlaps(subnet) for subnet in used):
                return octet
        raise OperationFailed(
            f"no free 10.N.0.0/16 for environment {self.env.name} (N {NETWORK_OCTETS.start}-"
            f"{NETWORK_OCTETS.stop - 1} all taken by Docker networks): `invoke down` one"
        )

    def bridge(self, zone: int) -> str:
        network = self.client.networks.get(self.network_name(zone))
        return network.attrs["Options"].get("com.docker.network.bridge.name") or f"br-{network.id[:12]}"

    def address(self, instance: str, zone: int) -> str:
        """The instance's address on zone's network: the clouds' plan in this environment's /16."""
        # Before the networks exist (user-data is checked first), the /16 they will get.
        octet = self.network_octet() or self.free_network_octet()
        return fixed_address(self.env, instance, zone, network=f"10.{octet}")

    def zones_of(self, role: str, number: int) -> list[int]:
        """The balanced role lives in its own zone; shared roles (db) join every zone."""
        if role == self.env.spec.balanced_role:
            return [self.env.zone_of(number)]
        return list(range(len(self.env.zones)))

    def lb_address(self, zone: int) -> str:
        """The top of Docker's /24 in the zone: Docker hands out that /24 from its bottom, and a
        VM has no Docker DNS to find the load balancer by name."""
        octet = self.network_octet() or self.free_network_octet()
        return f"10.{octet}.{zone * 16 + LB_RANGE}.254"

    def peer_address(self, instance: str, zone: int = 0) -> str:
        if instance == "lb":  # a db pair's primary, through the load balancer
            return self.lb_address(zone)
        for vm in self.records():
            if vm.name == instance:
                return next(nic.address.split("/")[0] for nic in vm.nics if nic.zone == zone)
        return self.address(instance, zone)

    # ---- images -----------------------------------------------------------------------------

    def image(self, role: str, version: str | None = None) -> ImageRecord:
        if self.target_of(role) == "docker":  # the load balancer stays a container
            return super().image(role, version)
        records = [r for r in self.disks.list(role) if version is None or r.version == version]
        return newest_deployable(
            records, role, version, kind="VM disk", place="", lookup=self.disks.repository(role),
            target="qemu", deployable=self.env.deployable,
        )  # fmt: skip

    def versions(self, role: str) -> list[str]:
        if self.target_of(role) == "docker":
            return super().versions(role)
        return [record.version for record in self.disks.list(role)]

    @docker_errors_fail
    def check_user_data(self, image: ImageRecord, documents: list[UserData]) -> None:
        """`cloud-init schema` in a container of the lb image: the same Debian, so the same
        cloud-init as the VM disks (which no container runs)."""
        lb = super().image("lb")
        cloudinit.check(self.client, lb.image, documents, f"kiln-{self.env.name}-schema")

    # ---- instances --------------------------------------------------------------------------

    def records(self) -> list[VmRecord]:
        found = []
        for path in self.vms.glob("*/instance.json"):
            with contextlib.suppress(FileNotFoundError):  # terminated meanwhile
                found.append(VmRecord.read(path))
        return found

    def instances(self, role: str | None = None) -> list[Instance]:
        found = [self._vm_instance(vm) for vm in self.records() if role in (None, vm.role)]
        return sorted(found, key=lambda i: (i.role, i.number))

    def _vm_instance(self, vm: VmRecord) -> Instance:
        address = next(nic.address.split("/")[0] for nic in vm.nics if nic.zone == vm.zone)
        return Instance(vm.name, vm.role, vm.zone, vm.version, address, self.qemu_pid(vm) is not None)

    def qemu_pid(self, vm: VmRecord) -> int | None:
        """The VM's QEMU process, if it still runs (a pid file outlives a crash)."""
        try:
            pid = int((self.vms / vm.name / "qemu.pid").read_text())
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        return pid if vm.machine.encode() in command else None

    def launch(self, role: str, number: int, image: ImageRecord, user_data: str) -> Instance:
        require_vm_tools()
        name = f"{role}{number}"
        folder = self.vms / name
        if folder.exists():
            self.terminate_folder(name)  # what a failed launch left
        machine = f"{self.container_name(name)}-{secrets.token_hex(4)}"
        nics = [
            Nic(zone, tap_name(machine, zone), mac_address(machine, zone), f"{address}/20")
            for zone in self.zones_of(role, number)
            if (address := self.address(name, zone))
        ]
        vm = VmRecord(name, role, self.env.zone_of(number), image.version, machine, nics)
        folder.mkdir(parents=True, mode=0o700)
        try:
            login = authorize(user_data, self.env.spec.ssh.user, self.identity.public_key())
            self.write_seed(folder, vm, with_own_hostname(login))
            run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                 str(Path(image.image).resolve()), str(folder / "disk.qcow2")])  # fmt: skip
            for nic in nics:
                run(["ip", "tuntap", "add", "dev", nic.tap, "mode", "tap"])
                run(["ip", "link", "set", "dev", nic.tap, "master", self.bridge(nic.zone), "up"])
            self.start_qemu(folder, vm)
            write_atomic(folder / "instance.json", json.dumps(asdict(vm), indent=1))
        except BaseException:
            self.terminate_folder(name, vm)
            raise
        return self._vm_instance(vm)

    def write_seed(self, folder: Path, vm: VmRecord, user_data: str) -> None:
        """The NoCloud seed (a `cidata` ISO): user-data (secrets: only root reads the folder),
        meta-data, static addresses matched by MAC and the home zone's default route."""
        seed = folder / "seed"
        seed.mkdir(mode=0o700)
        fd = os.open(seed / "user-data", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(user_data)
        (seed / "meta-data").write_text(f"instance-id: {vm.machine}\nlocal-hostname: {vm.name}\n")
        (seed / "network-config").write_text(yaml.safe_dump(network_config(vm)))
        files = [str(seed / name) for name in ("user-data", "meta-data", "network-config")]
        run(["genisoimage", "-quiet", "-output", str(folder / "seed.iso"), "-volid", "cidata",
             "-joliet", "-rock", *files])  # fmt: skip
        shutil.rmtree(seed)  # the ISO holds it; one copy of the secrets is enough

    def start_qemu(self, folder: Path, vm: VmRecord) -> None:
        """QEMU in the background (it outlives this process, as a container outlives `docker
        run`). One vCPU each: under TCG, VMs booting side by side share two cores."""
        command = [
            QEMU, "-name", vm.machine, *machine_args(self.settings), "-m", str(self.settings.vm_memory),
            "-smp", "1", "-nodefaults", "-display", "none", "-daemonize",
            "-pidfile", str(folder / "qemu.pid"), "-serial", f"file:{folder / 'console.log'}",
            "-drive", f"file={folder / 'disk.qcow2'},if=virtio,format=qcow2,discard=unmap",
            "-drive", f"file={folder / 'seed.iso'},if=ide,media=cdrom,readonly=on",
        ]  # fmt: skip
        for nic in vm.nics:
            command += ["-netdev", f"tap,id=z{nic.zone},ifname={nic.tap},script=no,downscript=no",
                        "-device", f"virtio-net-pci,netdev=z{nic.zone},mac={nic.mac}"]  # fmt: skip
        run(command)

    def probe(self, instance: Instance, command: tuple[str, ...]) -> bool | None:
        if not instance.running:
            return False
        try:
            return self.channel(instance).run(list(command), timeout=PROBE_TIMEOUT).ok
        except ChannelError:
            return False  # still booting: sshd not up yet

    def channel(self, instance: Instance, secrets: list[str] | None = None) -> Channel:
        """SSH to the VM's address on its zone's bridge, its host key pinned from the console."""
        vm = next((vm for vm in self.records() if vm.name == instance.name), None)
        if vm is None:
            raise OperationFailed(f"{instance.name} of {self.env.name} is not running")
        console = self.vms / vm.name / "console.log"
        self.identity.pin(vm.machine, console_host_keys(console.read_text(errors="replace")))
        ssh = self.env.spec.ssh
        return channel_class("ssh")(
            instance.name,
            Endpoint(instance.address, ssh.port, ssh.user),
            self.identity,
            host_key_alias=vm.machine,
            secrets=secrets,
        )

    def missing_repositories(self, source: str) -> list[str]:
        return []  # VMs reach their backup repositories themselves (S3)

    def terminate(self, instance: Instance) -> None:
        self.terminate_folder(instance.name)

    def terminate_folder(self, name: str, vm: VmRecord | None = None) -> None:
        """Power the VM off (services stop cleanly), then remove its taps and folder."""
        folder = self.vms / name
        record = folder / "instance.json"
        if vm is None and record.exists():
            vm = VmRecord.read(record)
        if vm is not None:
            pid = self.qemu_pid(vm)
            if pid is not None:
                self.power_off(vm, pid)
            for nic in vm.nics:
                subprocess.run(["ip", "link", "del", nic.tap], capture_output=True, check=False)
        shutil.rmtree(folder, ignore_errors=True)

    def power_off(self, vm: VmRecord, pid: int) -> None:
        instance = self._vm_instance(vm)
        with contextlib.suppress(OperationFailed):  # the connection drops as the guest goes down
            self.channel(instance).run(["systemctl", "poweroff"], timeout=PROBE_TIMEOUT)
        deadline = time.monotonic() + POWEROFF_SECONDS
        while self.qemu_pid(vm) is not None and time.monotonic() < deadline:
            time.sleep(0.5)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if self.qemu_pid(vm) is None:
                return
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            time.sleep(2)

    def destroy(self) -> list[str]:
        """Every VM powered off side by side (each may take POWEROFF_SECONDS), then the rest."""
        vms = self.records()
        with concurrent.futures.ThreadPoolExecutor(max(1, len(vms))) as pool:
            list(pool.map(self.terminate_folder, [vm.name for vm in vms]))
        removed = [vm.machine for vm in vms] + super().destroy()
        shutil.rmtree(self.vms, ignore_errors=True)
        return removed


def require_vm_tools() -> None:
    require_tools("booting a VM", QEMU, "qemu-img", "genisoimage", "ip", "ssh")
    if not TUN.exists():
        raise KilnError(f"no {TUN}: the qemu provider's tap devices need it; run ./setup.sh (it makes it)")


def with_own_hostname(user_data: str) -> str:
    """No DNS serves the bridges: the VM's /etc/hosts names it (sudo looks it up on every call)."""
    document = yaml.safe_load(user_data)
    document.setdefault("manage_etc_hosts", "localhost")
    return "#cloud-config\n" + yaml.safe_dump(document, sort_keys=False)


def network_config(vm: VmRecord) -> dict:
    """cloud-init network-config v2: each NIC's static address, matched by MAC; the default route
    through the home zone's gateway (the first address of its /20: this machine's bridge). As
    `gateway4`: the disks' ifupdown gets it as its own `gateway`, where `routes` would become
    net-tools `route` commands, which the disks do not have (and `|| true` would hide)."""
    ethernets = {
        f"z{nic.zone}": {"match": {"macaddress": nic.mac}, "set-name": f"z{nic.zone}",
                         "addresses": [nic.address]}
        for nic in vm.nics
    }  # fmt: skip
    home = next(nic for nic in vm.nics if nic.zone == vm.zone)
    gateway = ipaddress.ip_interface(home.address).network.network_address + 1
    ethernets[f"z{home.zone}"]["gateway4"] = str(gateway)
    return {"version": 2, "ethernets": ethernets}


def tap_name(machine: str, zone: int) -> str:
    """kiln + 10 hex digits + the zone: 15 characters, the longest name a Linux device takes."""
    return f"kiln{hashlib.sha256(machine.encode()).hexdigest()[:10]}{zone:x}"


def mac_address(machine: str, zone: int) -> str:
    """A locally administered MAC under QEMU's 52:54:00, fixed by the launch and the zone."""
    digest = hashlib.sha256(f"{machine}/{zone}".encode()).digest()
    return "52:54:00:" + ":".join(f"{byte:02x}" for byte in digest[:3])


def run(argv: list[str]) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        detail = proc.stderr.strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        raise OperationFailed(f"`{argv[0]} {argv[1]}` failed: {detail[0]}")
