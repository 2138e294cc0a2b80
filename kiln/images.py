"""The image catalog on the local Docker engine: labels `kiln.*` carry each image's metadata."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

import docker
import docker.errors

from kiln.containerfiles import tar_file
from kiln.errors import KilnError
from kiln.settings import Settings
from kiln.stamps import utc_iso
from kiln.versions import resolve

STATUSES = ("baked", "verified", "rejected", "promoted")


def docker_client() -> docker.DockerClient:
    """A client that answers, or a KilnError with the one-line fix."""
    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except docker.errors.DockerException as exc:
        raise KilnError(
            "the Docker engine does not answer (unix:///var/run/docker.sock): run ./setup.sh, "
            "which starts dockerd, or `systemctl start docker` where systemd runs"
        ) from exc
    return client


@dataclass(frozen=True)
class ImageRecord:
    role: str
    version: str
    status: str
    image: str  # reference that runs it: <repo>/<role>:<version>
    id: str
    labels: dict[str, str]

    def as_json(self) -> dict:
        fields = {k.removeprefix("kiln."): v for k, v in self.labels.items() if k.startswith("kiln.")}
        return {
            **fields,
            "role": self.role,
            "version": self.version,
            "status": self.status,
            "image": self.image,
            "id": self.id,
        }


class DockerImageStore:
    def __init__(self, client: docker.DockerClient, settings: Settings):
        self.client = client
        self.settings = settings

    def repository(self, role: str) -> str:
        return f"{self.settings.image_repo}/{role}"

    def ref(self, role: str, version: str) -> str:
        return f"{self.repository(role)}:{version}"

    def find(self, role: str, version: str) -> ImageRecord | None:
        try:
            image = self.client.images.get(self.ref(role, version))
        except docker.errors.ImageNotFound:
            return None
        return self._record(image, self.ref(role, version))

    def list(self, role: str | None = None) -> list[ImageRecord]:
        """Every tagged Kiln image of this repository prefix, newest first."""
        filters = {"label": f"kiln.role={role}" if role else "kiln.role"}
        records = []
        for summary in self.client.api.images(filters=filters):
            try:
                image = self.client.images.get(summary["Id"])
            except docker.errors.ImageNotFound:  # removed since the listing: the engine is shared
                continue
            for tag in image.tags:
                repo, _, version = tag.rpartition(":")
                if repo == self.repository(image.labels.get("kiln.role", "")) and version != "latest":
                    records.append(self._record(image, tag))
        return sorted(records, key=lambda r: r.labels.get("kiln.built", ""), reverse=True)

    def update_labels(self, record: ImageRecord, labels: dict[str, str]) -> ImageRecord:
        """Docker labels are immutable: a metadata-only build (no new layer) carries new ones."""
        lines = [f"FROM {record.id}"] + [f'LABEL {k}="{v}"' for k, v in sorted(labels.items())]
        context = io.BytesIO(tar_file("Dockerfile", "\n".join(lines).encode()))
        image, _ = self.client.images.build(
            fileobj=context, custom_context=True, rm=True, pull=False, labels=None
        )
        repo, _, tag = record.image.rpartition(":")
        image.tag(repo, tag)
        if self._is_newest(record):
            image.tag(repo, "latest")
        image.reload()
        return self._record(image, record.image)

    def set_status(self, record: ImageRecord, status: str) -> ImageRecord:
        if status not in STATUSES:
            raise ValueError(status)
        return self.update_labels(record, {"kiln.status": status})

    def in_use(self) -> set[tuple[str, str]]:
        return images_in_use(self.client)

    def remove(self, ref: str) -> None:
        with contextlib.suppress(docker.errors.ImageNotFound):
            self.client.images.remove(ref, noprune=False)

    def _is_newest(self, record: ImageRecord) -> bool:
        try:
            latest = self.client.images.get(f"{self.repository(record.role)}:latest")
        except docker.errors.ImageNotFound:
            return True
        return latest.id == record.id

    @staticmethod
    def _record(image, ref: str) -> ImageRecord:
        labels = image.labels or {}
        if "kiln.role" not in labels:
            raise KilnError(f"image {ref} has no kiln.* labels: it was not baked by Kiln")
        return ImageRecord(
            role=labels["kiln.role"],
            version=labels.get("kiln.version", ""),
            status=labels.get("kiln.status", "baked"),
            image=ref,
            id=image.id,
            labels=labels,
        )


@dataclass(frozen=True)
class PruneDecision:
    record: ImageRecord
    keep: bool
    reason: str

    def as_row(self) -> dict[str, str]:
        record, action = self.record, "keep" if self.keep else "remove"
        return {"image": record.image, "status": record.status, "action": action, "why": self.reason}


def plan_prune(records: list[ImageRecord], in_use: set[tuple[str, str]], keep: int) -> list[PruneDecision]:
    """Which images to keep: per role the `keep` newest, anything promoted, anything a container
    runs (a rollback needs it), and the parents of everything kept, so every kept image can be
    rebuilt and traced. The rest may go."""
    newest_first = sorted(records, key=lambda r: r.labels.get("kiln.built", ""), reverse=True)
    decisions: dict[str, tuple[bool, str]] = {}
    newest: dict[str, int] = {}
    for record in newest_first:
        newest[record.role] = newest.get(record.role, 0) + 1
        if (record.role, record.version) in in_use:
            decisions[record.image] = (True, "used by a container")
        elif record.status == "promoted":
            decisions[record.image] = (True, "promoted")
        elif newest[record.role] <= keep:
            decisions[record.image] = (True, f"among the {keep} newest of {record.role}")
        else:
            decisions[record.image] = (False, f"older than the {keep} newest of {record.role}")
    by_identity = {f"{r.role}@{r.labels.get('kiln.bake-id', '')}": r for r in records}
    # A parent is older than its children: walking newest first reaches every kept chain.
    for record in newest_first:
        parent = by_identity.get(record.labels.get("kiln.parent-id", ""))
        if decisions[record.image][0] and parent and not decisions[parent.image][0]:
            decisions[parent.image] = (True, f"parent of {record.image}")
    return [PruneDecision(r, *decisions[r.image]) for r in records]


def images_in_use(client: docker.DockerClient) -> set[tuple[str, str]]:
    """(role, version) of every container, running or not, that carries Kiln's labels."""
    containers = client.containers.list(all=True, filters={"label": "kiln.version"})
    return {(c.labels.get("kiln.role", ""), c.labels["kiln.version"]) for c in containers}


def prune(store: DockerImageStore, keep: int, remove: bool) -> list[PruneDecision]:
    """Plan (and with `remove`, carry out) the removal of old images of this image prefix."""
    if keep < 1:
        raise KilnError(f"--keep {keep}: keep at least the newest image of each role (--keep 1)")
    decisions = plan_prune(store.list(), store.in_use(), keep)
    if not remove:
        return decisions
    done = []
    for decision in decisions:
        if not decision.keep:
            try:
                store.remove(decision.record.image)
            except docker.errors.APIError as exc:  # e.g. a container without Kiln's labels runs it
                decision = PruneDecision(decision.record, True, f"the engine refused: {exc.explanation}")
        done.append(decision)
    return done


def require_image(store: DockerImageStore, role: str, version: str | None) -> ImageRecord:
    """The newest image of a role (or the given version), or a message saying how to bake it."""
    records = store.list(role)
    version = resolve(role, version, (r.version for r in records))
    record = store.find(role, version) if version else records[0] if records else None
    if record is None:
        which = f"{role} version {version}" if version else f"{role}"
        raise KilnError(f"no baked image of {which}: bake it with `invoke bake {role}`")
    return record


def promote(store: DockerImageStore, role: str, version: str | None) -> ImageRecord:
    """Mark a verified image promoted: fit for environments with `require_promoted` (prod)."""
    record = require_image(store, role, version)
    if record.status == "promoted":
        return record
    if record.status != "verified":
        raise KilnError(
            f"{record.image} is {record.status}: only a verified image may be promoted "
            f"(`invoke verify {role} --version {record.version}`, or bake a fixed one)"
        )
    return store.update_labels(record, {"kiln.status": "promoted", "kiln.promoted": utc_iso()})
