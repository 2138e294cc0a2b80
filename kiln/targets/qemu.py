"""QEMU: a qcow2 disk built by booting the parent role's disk (Packer's bundled qemu builder).

Packer reaches the VM over SSH on a 127.0.0.1 port as a one-time build user whose key comes
from a NoCloud seed (a `cidata` CD made by Packer's `cd_files`); the shutdown command removes
that user and cloud-init's state, so every instance of the disk personalises itself.
"""

from __future__ import annotations

from kiln.targets.base import SUDO_EXECUTE, BakeContext, Target
from kiln.vm import KEY_FILE, make_key, sudoers_dropin, write_seed

BUILD_USER = "kilnbuild"
PACKAGE_LIST = "/tmp/kiln-packages.txt"
PACKAGE_FORMAT = "${Package}\\t${Version}\\n"
# While baking, dpkg skips its fsyncs: the disk is thrown away unless the build ends with a clean
# shutdown, which writes everything anyway. The build seed writes it (an SSH step more would cost
# seconds under TCG); the shutdown command removes it, so no instance keeps it.
UNSAFE_IO = "/etc/dpkg/dpkg.cfg.d/zz-kiln-bake-unsafe-io"
# Last command of a bake, as root: nothing of the build or of this boot ships in the image, and
# the blocks freed by the bake are discarded so the disk Packer compacts stays small.
FORGET_THE_BUILD = (
    f"rm -f /etc/sudoers.d/90-cloud-init-users {sudoers_dropin(BUILD_USER)} {PACKAGE_LIST} {UNSAFE_IO}; "
    "rm -f /etc/ssh/ssh_host_*; "
    f"userdel --force --remove {BUILD_USER}; cloud-init clean --logs; "
    ": > /etc/machine-id; fstrim /; shutdown -P now"
)


def disk_name(role: str, version: str) -> str:
    return f"{role}-{version}.qcow2"


class QemuTarget(Target):
    name = "qemu"
    execute_command = SUDO_EXECUTE

    def prepare(self, ctx: BakeContext) -> None:
        super().prepare(ctx)
        _, public_key = make_key(ctx.build_dir, f"{BUILD_USER}@{ctx.bake_id}")
        instance_id = f"{ctx.name_prefix}-bake-{ctx.bake_id}"
        bake_only = {UNSAFE_IO: "force-unsafe-io\n"}
        write_seed(ctx.build_dir / "seed", BUILD_USER, public_key, instance_id, bake_only)

    def builder(self, ctx: BakeContext) -> dict:
        seed = ctx.build_dir / "seed"
        cpu = [["-cpu", "host"]] if ctx.vm_accelerator == "kvm" else []
        return {
            "type": "qemu",
            "vm_name": disk_name(ctx.role.name, ctx.version),
            "output_directory": str(ctx.build_dir / "output"),
            "iso_url": ctx.parent_ref,  # the parent's disk, copied: each disk stands alone
            "iso_checksum": "none",
            "disk_image": True,
            "use_backing_file": False,
            "skip_resize_disk": True,
            "format": "qcow2",
            "disk_interface": "virtio",
            # A failed bake's disk is discarded, so the host may cache writes and ignore the
            # guest's flushes; QEMU still writes everything out when the build powers off.
            "disk_cache": "unsafe",
            "disk_discard": "unmap",
            "disk_detect_zeroes": "unmap",
            "net_device": "virtio-net",
            "accelerator": ctx.vm_accelerator,
            "memory": ctx.vm_memory,
            "cpus": 2,
            "headless": True,
            "vnc_bind_address": "127.0.0.1",  # Packer 1.6.6 connects to the console even unused
            "cd_files": [str(seed / "user-data"), str(seed / "meta-data")],
            "cd_label": "cidata",
            "communicator": "ssh",
            "ssh_username": BUILD_USER,
            "ssh_private_key_file": str(ctx.build_dir / KEY_FILE),
            "ssh_timeout": "20m",
            # sshd answers before cloud-init has made the build user: keep trying.
            "ssh_handshake_attempts": 200,
            "shutdown_command": f"sudo sh -c '{FORGET_THE_BUILD}'",
            "shutdown_timeout": "5m",
            "qemuargs": [
                # Packer's default forward listens on every address; Kiln's only on loopback.
                ["-netdev", "user,id=user.0,hostfwd=tcp:127.0.0.1:{{ .SSHHostPort }}-:22"],
                ["-serial", f"file:{ctx.build_dir / 'console.log'}"],
                # The process carries Kiln's prefix, so a leftover VM is findable.
                ["-name", f"{ctx.name_prefix}-bake-{ctx.role.name}-{ctx.bake_id}"],
                *cpu,
            ],
        }

    def provisioners(self, ctx: BakeContext) -> list[dict]:
        return [
            *super().provisioners(ctx),
            {"type": "shell", "inline": [f"dpkg-query -W -f='{PACKAGE_FORMAT}' > {PACKAGE_LIST}"]},
            {
                "type": "file",
                "direction": "download",
                "source": PACKAGE_LIST,
                "destination": str(ctx.build_dir / "packages.txt"),
            },
        ]

    def post_processors(self, ctx: BakeContext) -> list:
        return [self.manifest(ctx)]
