"""A throwaway VM on this machine: QEMU on a copy-on-write overlay of a disk, a one-time SSH key
given through a NoCloud seed, guest ports forwarded to 127.0.0.1 only, and everything (the
QEMU process, the overlay, the seed, the key) gone when the `with` block ends, whatever happened.

Used by VM verification and audit; a qemu provider can boot its instances the same way.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from kiln.channels.ssh import make_key_pair
from kiln.errors import KilnError, OperationFailed, require_tools
from kiln.settings import Settings
from kiln.vmdisk import bootstrap_kernel_path

QEMU = "qemu-system-x86_64"
PROBE_SECONDS = 10
KEY_FILE = "id_ed25519"
POWEROFF_SECONDS = 60


def accelerator(settings: Settings) -> str:
    """`kvm` when a Linux kernel really runs under KVM here, else `tcg`. /dev/kvm existing
    proves little: on some hosts the firmware runs under KVM but the kernel aborts (`failed to
    set MSR`) or hangs. So boot `kernel` once with no root, under KVM and a short deadline: a
    working KVM reaches the kernel's panic in a second or two. The answer is kept until the
    host reboots."""
    if settings.vm_accel in ("kvm", "tcg"):
        return settings.vm_accel
    if settings.vm_accel != "auto":
        raise KilnError(f"KILN_VM_ACCEL={settings.vm_accel!r}: expected auto, kvm or tcg")
    kernel = bootstrap_kernel_path(settings)
    if not Path("/dev/kvm").exists() or not kernel.exists():
        return "tcg"
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    remembered = settings.vm_cache_dir / f"accelerator-{boot_id}"
    if not remembered.exists():
        settings.vm_cache_dir.mkdir(parents=True, exist_ok=True)
        remembered.write_text("kvm" if kernel_panics_under_kvm(kernel) else "tcg")
    return remembered.read_text()


def kernel_panics_under_kvm(kernel: Path) -> bool:
    command = [QEMU, "-accel", "kvm", "-cpu", "host", "-m", "256", "-nodefaults", "-display", "none",
               "-no-reboot", "-serial", "stdio", "-kernel", str(kernel),
               "-append", "console=ttyS0 panic=-1 quiet"]  # fmt: skip
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=PROBE_SECONDS, check=False)
    except subprocess.TimeoutExpired:
        return False
    return "Kernel panic" in proc.stdout


def machine_args(settings: Settings) -> list[str]:
    accel = accelerator(settings)
    # Under KVM the host CPU model is the fast one; TCG emulates QEMU's default model.
    return ["-machine", f"type=pc,accel={accel}", *(["-cpu", "host"] if accel == "kvm" else [])]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_key(folder: Path, comment: str) -> tuple[Path, str]:
    """A one-time ed25519 key pair: (private key file, public key line)."""
    key = folder / KEY_FILE
    return key, make_key_pair(key, comment)


def sudoers_dropin(user: str) -> str:
    return f"/etc/sudoers.d/91-{user}"


def seed_user_data(user: str, public_key: str, files: dict[str, str] | None = None) -> str:
    """cloud-config for a one-time admin: the key, passwordless sudo, and `files` (path ->
    content), written before the admin can log in. The image's sudo wants a terminal and lets no
    command start another (harden-accounts: requiretty, noexec); this user alone is exempt, as
    scripts run without a terminal and start programs."""
    extra = "".join(
        f"  - path: {path}\n    permissions: '0644'\n    content: {json.dumps(content)}\n"
        for path, content in (files or {}).items()
    )
    return (
        "#cloud-config\n"
        "write_files:\n"
        f"  - path: {sudoers_dropin(user)}\n"
        "    permissions: '0440'\n"
        f"    content: 'Defaults:{user} !requiretty, !noexec'\n"
        f"{extra}"
        "users:\n"
        f"  - name: {user}\n"
        "    shell: /bin/bash\n"
        "    lock_passwd: true\n"
        '    sudo: "ALL=(ALL) NOPASSWD:ALL"\n'
        f"    ssh_authorized_keys: [{public_key!r}]\n"
    )


def write_seed(
    folder: Path, user: str, public_key: str, instance_id: str, files: dict[str, str] | None = None
) -> list[Path]:
    """The NoCloud seed files (user-data, meta-data) for a volume labelled `cidata`."""
    folder.mkdir(parents=True, exist_ok=True)
    user_data, meta_data = folder / "user-data", folder / "meta-data"
    user_data.write_text(seed_user_data(user, public_key, files))
    # A name the image resolves (sudo looks its host up on every call).
    meta_data.write_text(f"instance-id: {instance_id}\nlocal-hostname: localhost\n")
    return [user_data, meta_data]


@dataclass
class VirtualMachine:
    name: str
    folder: Path
    key: Path
    user: str
    ports: dict[int, int]  # guest port -> 127.0.0.1 port
    process: subprocess.Popen
    ssh_config: Path = field(init=False)

    def __post_init__(self) -> None:
        self.ssh_config = self.folder / "ssh_config"
        self.ssh_config.write_text(
            "Host vm\n  HostName 127.0.0.1\n"
            f"  Port {self.ports[22]}\n  User {self.user}\n  IdentityFile {self.key}\n"
            "  IdentitiesOnly yes\n  BatchMode yes\n  StrictHostKeyChecking no\n"
            "  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n"
            # Short: a socket path has 108 bytes, and ssh adds a suffix while making it; %C hashes
            # host, port and user, so each VM gets its own.
            "  ControlPath /tmp/kiln-ssh-%C\n"
        )

    @property
    def console_log(self) -> Path:
        return self.folder / "console.log"

    def ssh(self, command: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["ssh", "-F", str(self.ssh_config), "-o", "ConnectTimeout=10", "vm", command],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def copy_in(self, local: Path, remote: str) -> None:
        proc = subprocess.run(
            ["scp", "-F", str(self.ssh_config), str(local), f"vm:{remote}"],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if proc.returncode != 0:
            raise OperationFailed(f"could not copy {local.name} into VM {self.name}: {proc.stderr.strip()}")

    def wait_for_ssh(self, seconds: float) -> None:
        """Until the user's key logs in; a dead QEMU or the deadline stops the wait."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise OperationFailed(f"VM {self.name} stopped while booting: {self.console_tail()}")
            with contextlib.suppress(subprocess.TimeoutExpired):
                if self.ssh("true", timeout=30).returncode == 0:
                    return
            time.sleep(3)
        raise OperationFailed(f"VM {self.name}: no SSH login within {seconds:.0f} s: {self.console_tail()}")

    def wait_for_cloud_init(self, seconds: float) -> str:
        """cloud-init's final status (`done`, or `error` with what failed)."""
        try:
            proc = self.ssh("cloud-init status --wait >/dev/null; cloud-init status --long", timeout=seconds)
        except subprocess.TimeoutExpired:
            raise OperationFailed(
                f"{self.name}: cloud-init did not finish within {seconds:g} s; {self.console_tail()}"
            ) from None
        return proc.stdout.strip()

    def console_tail(self, lines: int = 3) -> str:
        """The console's last lines, and where its whole log is kept (the VM's folder goes)."""
        text = self.console_log.read_text(errors="replace") if self.console_log.exists() else ""
        kept = self.folder.parent / "vm-consoles" / f"{self.name}.log"
        kept.parent.mkdir(exist_ok=True)
        kept.write_text(text)
        tail = " / ".join(line.strip() for line in text.strip().splitlines()[-lines:]) or "no console output"
        return f"{tail} (console: {kept})"

    def power_off(self) -> None:
        """A clean shutdown when the guest obeys, else the QEMU process is stopped."""
        if self.process.poll() is None:
            try:  # sudo's 1: the audit took its admin's rights away; 255: the guest went down
                obeyed = self.ssh("sudo -n systemctl poweroff", timeout=20).returncode != 1
            except subprocess.TimeoutExpired:
                obeyed = True  # the connection may drop as the guest goes down
            if obeyed:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.process.wait(timeout=POWEROFF_SECONDS)
        self.stop()

    def stop(self) -> None:
        """QEMU stopped now, and the multiplexing master testinfra's ssh backend may have left."""
        stop_process(self.process)
        exit_master = ["ssh", "-F", str(self.ssh_config), "-O", "exit", "vm"]
        subprocess.run(exit_master, capture_output=True, check=False)


def stop_process(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def booted(
    settings: Settings,
    disk: Path,
    name: str,
    *,
    guest_ports: tuple[int, ...] = (),
    disk_size: str | None = None,
    user: str = "kilnadmin",
) -> Iterator[VirtualMachine]:
    """Boot `disk` (left untouched: writes go to an overlay) and yield it once SSH answers."""
    require_tools("booting a VM", QEMU, "qemu-img", "ssh")
    with tempfile.TemporaryDirectory(prefix=f"{name}-", dir=settings.state_dir) as scratch:
        folder = Path(scratch)
        overlay = folder / "overlay.qcow2"
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(disk.resolve()),
             str(overlay), *([disk_size] if disk_size else [])],
            check=True,
        )  # fmt: skip
        key, public_key = make_key(folder, name)
        seed_files = write_seed(folder / "seed", user, public_key, name)
        seed = folder / "seed.iso"
        subprocess.run(
            ["genisoimage", "-quiet", "-output", str(seed), "-volid", "cidata", "-joliet", "-rock",
             *map(str, seed_files)],
            check=True,
        )  # fmt: skip
        ports = {port: free_port() for port in (22, *guest_ports)}
        forwards = ",".join(f"hostfwd=tcp:127.0.0.1:{host}-:{guest}" for guest, host in ports.items())
        command = [
            QEMU, "-name", name, *machine_args(settings), "-m", str(settings.vm_memory), "-smp", "2",
            "-nodefaults", "-display", "none", "-serial", f"file:{folder / 'console.log'}",
            "-drive", f"file={overlay},if=virtio,format=qcow2,discard=unmap",
            "-drive", f"file={seed},if=ide,media=cdrom,readonly=on",
            "-netdev", f"user,id=net0,{forwards}", "-device", "virtio-net-pci,netdev=net0",
        ]  # fmt: skip
        with (folder / "qemu.log").open("w") as qemu_log:
            process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=qemu_log)
        try:
            vm = VirtualMachine(name, folder, key, user, ports, process)
        except BaseException:
            stop_process(process)
            raise
        try:
            yield vm
        except BaseException:
            # Interrupted or failed: the overlay is thrown away, so no clean shutdown to wait for.
            vm.stop()
            raise
        vm.power_off()
