"""The image catalog of VM disks: `<role>-<version>.qcow2` with its labels in a sidecar JSON.

The same interface as `DockerImageStore` (find, list, update_labels, set_status, remove), and
the same `kiln.*` keys as the docker labels, so bake, verify, images, prune and promote treat
both alike. A record's `id` is the disk's path: what a child role's bake boots from.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from kiln.errors import KilnError
from kiln.images import STATUSES, ImageRecord
from kiln.settings import Settings


class DiskImageStore:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.root = settings.state_dir / "vm"

    def repository(self, role: str) -> str:
        return str(self.root / role)

    def ref(self, role: str, version: str) -> str:
        return str(self.root / role / f"{role}-{version}.qcow2")

    def find(self, role: str, version: str) -> ImageRecord | None:
        disk = Path(self.ref(role, version))
        return self._record(disk) if disk.exists() and sidecar(disk).exists() else None

    def list(self, role: str | None = None) -> list[ImageRecord]:
        """Every disk with its sidecar, newest first."""
        pattern = f"{role}/{role}-*.qcow2" if role else "*/*.qcow2"
        records = [self._record(disk) for disk in self.root.glob(pattern) if sidecar(disk).exists()]
        return sorted(records, key=lambda r: r.labels.get("kiln.built", ""), reverse=True)

    def add(self, built_disk: Path, labels: dict[str, str]) -> ImageRecord:
        """Move a freshly built disk into the catalog, its sidecar written first: a disk without
        one is never listed, so a crash leaves no half-recorded image."""
        disk = Path(self.ref(labels["kiln.role"], labels["kiln.version"]))
        disk.parent.mkdir(parents=True, exist_ok=True)
        write_json(sidecar(disk), labels)
        os.replace(built_disk, disk)
        return self._record(disk)

    def update_labels(self, record: ImageRecord, labels: dict[str, str]) -> ImageRecord:
        disk = Path(record.image)
        write_json(sidecar(disk), {**record.labels, **labels})
        return self._record(disk)

    def set_status(self, record: ImageRecord, status: str) -> ImageRecord:
        if status not in STATUSES:
            raise ValueError(status)
        return self.update_labels(record, {"kiln.status": status})

    def remove(self, ref: str) -> None:
        disk = Path(ref)
        for path in (sidecar(disk), disk):  # the sidecar first: no listed image without its disk
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def in_use(self) -> set[tuple[str, str]]:
        """(role, version) of the disks qemu instances boot from: their overlays need them.
        Read from the instances' records (kiln/providers/qemu.py), in every environment."""
        found = set()
        for record in (self.settings.store_dir / "envs").glob("*/vms/*/instance.json"):
            with contextlib.suppress(OSError, ValueError, KeyError):
                data = json.loads(record.read_text())
                found.add((data["role"], data["version"]))
        return found

    @staticmethod
    def _record(disk: Path) -> ImageRecord:
        try:
            labels = json.loads(sidecar(disk).read_text())
        except (OSError, ValueError) as exc:
            raise KilnError(
                f"{sidecar(disk)}: unreadable image labels ({exc}); remove the disk and rebake"
            ) from exc
        return ImageRecord(
            role=labels["kiln.role"],
            version=labels.get("kiln.version", ""),
            status=labels.get("kiln.status", "baked"),
            image=str(disk),
            id=str(disk),
            labels=labels,
        )


def sidecar(disk: Path) -> Path:
    return disk.with_suffix(".json")


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
