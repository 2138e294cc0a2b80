"""Machine-level settings: typed, described, and overridable through KILN_* variables."""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from kiln.errors import KilnError

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _setting(default, help: str):
    return field(default=default, metadata={"help": help})


def host_debian_mirror() -> str:
    """The Debian mirror this machine's apt uses, so bakes fetch from where the host does."""
    candidates = [Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list")]
    for path in candidates:
        if not path.exists():
            continue
        for uri in re.findall(r"(?:URIs:\s*|^deb\s+(?:\[[^]]*\]\s+)?)(\S+)", path.read_text(), re.M):
            if uri.rstrip("/").endswith("/debian"):
                return uri.rstrip("/")
    return "http://deb.debian.org/debian"


@dataclass(frozen=True)
class Settings:
    project_root: Path = _setting(PROJECT_ROOT, "Folder holding images/, provisioners/ and the rest")
    state_dir: Path = _setting(
        PROJECT_ROOT / ".kiln", "Where build logs, manifests and package lists are kept"
    )
    image_repo: str = _setting("kiln", "Docker repository prefix: role images are <prefix>/<role>")
    suite: str = _setting("bookworm", "Debian suite of the bootstrap root filesystem")
    mirror: str = _setting(
        "", "Debian mirror URL for the bootstrap (default: the one this machine's apt uses)"
    )
    security_mirror: str = _setting(
        "", "Debian security mirror URL (default: <mirror>-security on the same host)"
    )
    bake_network: str = _setting(
        "host", "Docker network of the build container (host works without a bridge)"
    )
    vm_cache_dir: Path = _setting(
        Path("/var/cache/kiln"), "Where the VM bootstrap disk is kept, shared by every checkout"
    )
    vm_accel: str = _setting(
        "auto", "QEMU accelerator: auto (KVM when a probe kernel boots under it, else TCG), kvm or tcg"
    )
    vm_memory: int = _setting(1024, "MiB of memory of each VM Kiln boots (bake, verify, audit)")
    packer: str = _setting("packer", "Packer executable")
    packer_timeout: int = _setting(1800, "Seconds one Packer build may take before it is stopped")
    audit_min_lynis: int = _setting(85, "`invoke audit` fails below this Lynis hardening index")
    audit_min_scap: float = _setting(
        95.0, "`invoke audit` fails below this ANSSI BP-028 intermediary (OpenSCAP) score"
    )
    aws_endpoint_url: str = _setting(
        "", "AWS API endpoint for EC2 and ELBv2, e.g. a moto server; empty: AWS itself"
    )
    aws_region: str = _setting(
        "", "AWS region (default: the environment's first zone less its letter, eu-west-1a -> eu-west-1)"
    )
    aws_instance_type: str = _setting(
        "t3.small", "EC2 instance type of every instance the aws provider starts"
    )
    openstack_cloud: str = _setting("", "clouds.yaml entry the openstack provider uses (default: OS_CLOUD)")
    openstack_flavor: str = _setting(
        "m1.small", "Nova flavor of every instance the openstack provider starts"
    )
    cloud_timeout: int = _setting(
        600, "Seconds a cloud instance or load balancer may take to start, drain or go away"
    )
    cloud_poll: float = _setting(2.0, "Seconds between two looks at a cloud resource being changed")
    state_store: str = _setting(
        "", "Folder of environment state every checkout shares (locks, rollouts, drills); default: state_dir"
    )

    @property
    def name_prefix(self) -> str:
        """Prefix of every Docker object Kiln creates (containers, volumes): leftovers are findable."""
        return re.sub(r"[^a-z0-9-]", "-", self.image_repo.lower())

    def resolved_mirror(self) -> str:
        return self.mirror or host_debian_mirror()

    def resolved_security_mirror(self) -> str:
        return self.security_mirror or self.resolved_mirror() + "-security"

    @property
    def store_dir(self) -> Path:
        """The state folder of environments without a bucket (kiln.statestore)."""
        return Path(self.state_store) if self.state_store else self.state_dir

    @property
    def images_dir(self) -> Path:
        return self.project_root / "images"

    @property
    def provisioners_dir(self) -> Path:
        return self.project_root / "provisioners"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        """Defaults overridden by KILN_<NAME> variables, each converted to the field's type."""
        environ = os.environ if environ is None else environ
        values = {}
        for f in dataclasses.fields(cls):
            raw = environ.get("KILN_" + f.name.upper())
            if raw is None:
                continue
            try:
                values[f.name] = Path(raw) if f.type == "Path" else f.default.__class__(raw)
            except ValueError as exc:
                raise KilnError(f"KILN_{f.name.upper()}={raw!r} is not a valid {f.type}: {exc}") from exc
        if "project_root" in values and "state_dir" not in values:
            values["state_dir"] = values["project_root"] / ".kiln"
        return cls(**values)

    @classmethod
    def describe(cls) -> list[tuple[str, str, str]]:
        """(variable, default, description) for every setting: the README table and `--help`."""
        return [
            (f"KILN_{f.name.upper()}", str(f.default), f.metadata["help"]) for f in dataclasses.fields(cls)
        ]
