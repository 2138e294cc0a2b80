"""The root of every VM image: a bootable Debian disk from mmdebstrap, GRUB on an MBR table.

The VM counterpart of `bootstrap.py`: the same mirror lines, so the disk is named after them
and another mirror yields another disk (and new versions for every role). mmdebstrap rather
than diskimage-builder: it is the tool the docker bootstrap already uses, it is one Debian
package that fetches only from the configured mirror, and it needs no elements cache or
network beyond that mirror. The disk carries what Packer needs to reach it (cloud-init for
the build user, sshd, sudo) and what a cloud needs to boot it (kernel, GRUB for BIOS boot,
one partition growpart can grow).
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

from kiln.bootstrap import apt_sources, one_builder
from kiln.errors import OperationFailed, require_tools
from kiln.settings import Settings

# What a bootable, reachable cloud VM needs beyond minbase.
DISK_PACKAGES = (
    "systemd-sysv",
    "udev",
    "linux-image-cloud-amd64",
    "initramfs-tools",
    "e2fsprogs",
    "cloud-init",
    "cloud-guest-utils",  # growpart
    "openssh-server",
    "sudo",
    "ifupdown",
    "isc-dhcp-client",
    "netbase",
)
DISK_SIZE = "3G"
# minbase has no `locales`: cloud-init's default locale step would fail on every bake boot.
CLOUD_CFG = "locale: C.UTF-8\n"
PARTITION_START = 2048  # sectors: room for GRUB's core image between the MBR and the partition
HOST_TOOLS = ("mmdebstrap", "sfdisk", "losetup", "mkfs.ext4", "grub-install", "qemu-img", "blkid")

GRUB_CFG = """\
set timeout=1
insmod part_msdos
insmod ext2
search --no-floppy --fs-uuid --set=root {uuid}
# /vmlinuz and /initrd.img follow the installed kernel, so kernel updates need no new grub.cfg.
linux /vmlinuz root=UUID={uuid} ro console=tty0 console=ttyS0,115200n8
initrd /initrd.img
boot
"""


def recipe(settings: Settings) -> str:
    """Everything the disk is made of: its name and so its identity in every VM version."""
    return "\n".join([*apt_sources(settings), *DISK_PACKAGES, DISK_SIZE, GRUB_CFG, CLOUD_CFG])


def bootstrap_disk_path(settings: Settings) -> Path:
    digest = hashlib.sha256(recipe(settings).encode()).hexdigest()[:10]
    return settings.vm_cache_dir / f"kiln-bootstrap-debian-{settings.suite}-{digest}.qcow2"


def bootstrap_kernel_path(settings: Settings) -> Path:
    """A copy of the disk's kernel, kept beside it for the KVM probe (kiln.vm.accelerator)."""
    return bootstrap_disk_path(settings).with_suffix(".vmlinuz")


def ensure_bootstrap_disk(settings: Settings, say) -> Path:
    """The bootstrap disk, built once per mirror (about 2 minutes) and cached."""
    disk = bootstrap_disk_path(settings)
    with one_builder(disk.with_suffix(".lock")):
        if not disk.exists():
            build_bootstrap_disk(settings, disk, say)
    return disk


def build_bootstrap_disk(settings: Settings, disk: Path, say) -> None:
    require_tools("building the VM bootstrap disk", *HOST_TOOLS)
    disk.parent.mkdir(parents=True, exist_ok=True)
    say(f"bootstrapping {disk.name} with mmdebstrap from {settings.resolved_mirror()} (once)")
    with tempfile.TemporaryDirectory(prefix=f"{settings.name_prefix}-vmdisk-", dir=disk.parent) as scratch:
        work = Path(scratch)
        rootfs = work / "rootfs.tar"
        run(
            "mmdebstrap",
            "--quiet",
            "--variant=minbase",
            '--aptopt=Acquire::Languages "none"',
            "--include=" + ",".join(DISK_PACKAGES),
            settings.suite,
            str(rootfs),
            *apt_sources(settings),
        )
        raw = work / "disk.raw"
        run("truncate", "-s", DISK_SIZE, str(raw))
        run("sfdisk", "--quiet", str(raw), stdin=f"label: dos\nstart={PARTITION_START}, type=83, bootable\n")
        with loop_devices(raw) as (whole, partition), mounted(partition, work / "mnt") as root:
            run("tar", "-xpf", str(rootfs), "-C", str(root), "--numeric-owner", "--xattrs")
            uuid = run("blkid", "-s", "UUID", "-o", "value", partition).strip()
            (root / "etc/fstab").write_text(f"UUID={uuid} / ext4 defaults,errors=remount-ro 0 1\n")
            (root / "etc/hostname").write_text("localhost\n")
            (root / "etc/cloud/cloud.cfg.d/01-kiln-bootstrap.cfg").write_text(CLOUD_CFG)
            # linux-image keeps these links current on upgrades; grub.cfg boots through them.
            for link, pattern in (("vmlinuz", "boot/vmlinuz-*"), ("initrd.img", "boot/initrd.img-*")):
                if not (root / link).is_symlink():
                    (root / link).symlink_to(newest(root, pattern).relative_to(root))
            run(
                "grub-install",
                "--target=i386-pc",
                f"--boot-directory={root / 'boot'}",
                "--modules=part_msdos ext2 search_fs_uuid",
                whole,
            )
            (root / "boot/grub/grub.cfg").write_text(GRUB_CFG.format(uuid=uuid))
            shutil.copyfile(newest(root, "boot/vmlinuz-*"), bootstrap_kernel_path(settings))
        partial = work / "disk.qcow2"
        run("qemu-img", "convert", "-O", "qcow2", str(raw), str(partial))
        partial.replace(disk)  # atomically: a half-made disk never carries the cached name


def newest(root: Path, pattern: str) -> Path:
    found = sorted(root.glob(pattern))
    if not found:
        raise OperationFailed(f"building the VM bootstrap disk: no {pattern} in the root filesystem")
    return found[-1]


def run(*command: str, stdin: str | None = None) -> str:
    proc = subprocess.run(command, input=stdin, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = " ".join(proc.stderr.strip().splitlines()[-3:])
        raise OperationFailed(f"building the VM bootstrap disk: {command[0]} failed: {tail}")
    return proc.stdout


@contextlib.contextmanager
def loop_devices(raw: Path):
    """(whole disk, partition) loop devices; the partition by offset, as no udev makes nodes."""
    whole = run("losetup", "-f", "--show", str(raw)).strip()
    try:
        partition = run("losetup", "-f", "--show", "-o", str(PARTITION_START * 512), str(raw)).strip()
        try:
            run("mkfs.ext4", "-q", "-L", "root", partition)
            yield whole, partition
        finally:
            run("losetup", "-d", partition)
    finally:
        run("losetup", "-d", whole)


@contextlib.contextmanager
def mounted(device: str, where: Path):
    where.mkdir()
    run("mount", device, str(where))
    try:
        yield where
    finally:
        run("umount", str(where))
