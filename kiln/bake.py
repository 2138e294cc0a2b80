"""Baking: walk a role's parent chain, lock its packages, hash its inputs, and build with
Packer only what is missing or stale.

Each role image is built FROM its parent's baked image, so `web` never repeats `base`; a role's
version is the hash of its inputs and its parent's bake id, so a changed provisioner changes the
version of every role that uses it and of their children.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors

from kiln import __version__, console, locks, packer
from kiln.bootstrap import bootstrap_ref, ensure_bootstrap_image
from kiln.catalogs import image_store
from kiln.diskimages import DiskImageStore
from kiln.errors import KilnError, OperationFailed
from kiln.images import DockerImageStore, ImageRecord, docker_client
from kiln.roles import Role, RoleCatalog, version_of
from kiln.settings import Settings
from kiln.stamps import new_id, utc_iso
from kiln.targets import BakeContext, Target, get_target
from kiln.targets.docker import bake_container_name
from kiln.targets.qemu import disk_name
from kiln.vm import accelerator
from kiln.vmdisk import ensure_bootstrap_disk

# Cloud bases start from Debian's published image: its identity is the target's filter.
CLOUD_ROOT_IDENTITY = "debian-12 official image"


@dataclass(frozen=True)
class BakeOutcome:
    role: str
    version: str
    image: str
    baked: bool  # False when the image was already there (a no-op)
    seconds: float
    build_dir: Path | None = None


class Teardown:
    """Undo steps registered as things are created, run in reverse when a step fails."""

    def __init__(self) -> None:
        self._steps: list[Callable[[], None]] = []

    def add(self, step: Callable[[], None]) -> None:
        self._steps.append(step)

    def run(self) -> None:
        for step in reversed(self._steps):
            try:
                step()
            except Exception as exc:  # keep undoing the rest; report what could not be undone
                console.say(f"cleanup step failed: {exc}")
        self._steps.clear()


def git_commit(root: Path) -> str:
    def git(*args: str) -> str:
        proc = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)
        return proc.stdout.strip() if proc.returncode == 0 else ""

    commit = git("rev-parse", "--short=12", "HEAD") or "unknown"
    return commit + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def new_bake_id() -> str:
    return new_id(random_digits=6)


class Baker:
    def __init__(self, settings: Settings, target: str = "docker"):
        self.settings = settings
        self.catalog = RoleCatalog(settings)
        self.target: Target = get_target(target)
        self._client: docker.DockerClient | None = None

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            self._client = docker_client()
        return self._client

    @property
    def store(self) -> DockerImageStore | DiskImageStore:
        return image_store(self.settings, self.target.name, lambda: self.client)

    @property
    def local(self) -> bool:
        """Targets whose images live on this machine (the engine, disks); clouds keep theirs."""
        return self.target.name in ("docker", "qemu")

    # ---- local docker target: the whole chain, only what is stale -------------------------

    def bake(self, role_name: str, force: bool = False, locked: bool = False) -> list[BakeOutcome]:
        """Bake the role and any missing or stale ancestor; `force` rebakes the role itself."""
        chain = self.catalog.chain(role_name)  # validates every role before anything starts
        if not self.local:
            return [self._bake_cloud(chain)]  # clouds always need a committed, current lock
        packer.require_packer(self.settings)
        parent_ref, parent_identity = self._bootstrap()
        outcomes = []
        for role in chain:
            outcome, record = self._ensure(
                role, parent_ref, parent_identity, force=force and role is chain[-1], locked=locked
            )
            outcomes.append(outcome)
            parent_ref, parent_identity = record.id, self._identity(record)
        return outcomes

    def parent_of(self, role: Role, locked: bool = True) -> tuple[str, str]:
        """(image id, identity) of the role's parent, baking stale ancestors first."""
        if role.parent is None:
            return self._bootstrap()
        *_, parent = self.bake(role.parent, locked=locked)
        record = self.store.find(parent.role, parent.version)
        assert record is not None
        return record.id, self._identity(record)

    def refresh_lock(self, role_name: str, update: bool) -> tuple[locks.LockDiff, Role]:
        """Re-resolve a role's packages against the mirror: the diff to its lock, written if `update`."""
        role = self.catalog.get(role_name)
        parent_image, _ = self.parent_of(role)
        resolution = locks.resolve(self.client, parent_image, role, self.settings)
        changes = locks.diff(locks.read_lock(role), resolution)
        if update:
            locks.write_lock(role, resolution.lock)
        return changes, role

    def _bootstrap(self) -> tuple[str, str]:
        if self.target.name == "qemu":
            disk = ensure_bootstrap_disk(self.settings, console.say)
            # The name says which mirror and recipe; the build time, which build of them.
            return str(disk), f"{disk.name}@{disk.stat().st_mtime_ns}"
        image_id = ensure_bootstrap_image(self.client, self.settings, console.say)
        return image_id, f"{bootstrap_ref(self.settings)}@{image_id}"

    @staticmethod
    def _identity(record: ImageRecord) -> str:
        # Status changes relabel an image and so change its docker id; the bake id does not.
        return f"{record.role}@{record.labels['kiln.bake-id']}"

    def _ensure(
        self, role: Role, parent_ref: str, parent_identity: str, *, force: bool, locked: bool
    ) -> tuple[BakeOutcome, ImageRecord]:
        started = time.monotonic()
        lock = self.ensure_lock(role, parent_ref, locked)
        version = version_of(role.inputs_digest(self.target.template_source(), parent_identity))
        existing = self.store.find(role.name, version)
        if existing and not force:
            console.say(
                f"{role.name} {version} is up to date ({existing.image}, "
                f"{existing.status}): nothing to bake; --force rebakes it"
            )
            return BakeOutcome(
                role.name, version, existing.image, False, time.monotonic() - started
            ), existing
        record, build_dir = self._build(role, version, parent_ref, parent_identity, lock)
        seconds = time.monotonic() - started
        console.say(f"baked {record.image} in {seconds:.1f} s (build files: {build_dir})")
        return BakeOutcome(role.name, version, record.image, True, seconds, build_dir), record

    def ensure_lock(self, role: Role, parent_ref: str, locked: bool) -> locks.Lock:
        lock = locks.read_lock(role)
        if locks.lock_is_current(role, lock):
            assert lock is not None
            return lock
        display = role.display(role.lock_file)
        why = "is missing" if lock is None else "does not match the role's packages"
        if self.target.name == "qemu":
            raise KilnError(
                f"{display} {why}: a VM bake installs the lock its role resolves on the docker "
                f"chain; run `invoke lock {role.name} --update` and commit the lock"
            )
        if locked:
            raise KilnError(
                f"{display} {why} and --locked forbids resolving: "
                f"run `invoke lock {role.name} --update` and commit the lock"
            )
        resolution = locks.resolve(self.client, parent_ref, role, self.settings)
        locks.write_lock(role, resolution.lock)
        console.say(
            f"{display} {why}: resolved {len(resolution.lock.packages)} packages and "
            f"wrote it; commit it so later bakes install the same versions"
        )
        return resolution.lock

    def _build(
        self, role: Role, version: str, parent_ref: str, parent_identity: str, lock: locks.Lock
    ) -> tuple[ImageRecord, Path]:
        bake_id = new_bake_id()
        build_dir = self.settings.state_dir / "builds" / role.name / bake_id
        build_dir.mkdir(parents=True)
        ref = self.store.ref(role.name, version)
        ctx = self._context(role, version, parent_ref, parent_identity, lock, build_dir, bake_id)
        self.target.prepare(ctx)
        template = self.target.render(ctx)
        template_path = packer.write_template(template, build_dir / "template.json", self.settings)
        log_path = build_dir / "build.log"
        teardown = Teardown()
        if self.target.name == "docker":
            container = bake_container_name(self.settings.name_prefix, role.name, bake_id)
            teardown.add(lambda: self._remove_container(container))
        teardown.add(lambda: shutil.rmtree(build_dir / "output", ignore_errors=True))
        try:
            with console.progress(f"baking {role.name} {version} (log: {log_path})") as step:
                result = packer.build(template_path, log_path, self.settings, step)
            if result.missing_packages:
                raise KilnError(
                    f"{role.display(role.lock_file)} locks versions the mirror no longer has: "
                    f"{', '.join(result.missing_packages)}; run `invoke lock {role.name} --update` "
                    "to re-resolve (or set KILN_MIRROR to a snapshot mirror that has them)"
                )
            if result.unlocked_packages:
                raise KilnError(
                    f"{role.display(role.lock_file)} does not cover packages apt needs on this parent: "
                    f"{', '.join(result.unlocked_packages)}; run `invoke lock {role.name} --update`"
                )
            if result.returncode != 0:
                raise OperationFailed(f"baking {role.name} failed: {result.failure()} (full log: {log_path})")
            teardown.add(lambda: self.store.remove(ref))
            record = self._record_build(ctx, result.facts)
        except BaseException:
            teardown.run()
            raise
        return record, build_dir

    def _context(
        self,
        role: Role,
        version: str,
        parent_ref: str,
        parent_identity: str,
        lock: locks.Lock,
        build_dir: Path,
        bake_id: str,
    ) -> BakeContext:
        labels = self._labels(role, version, parent_identity, lock, bake_id)
        vm_target = self.target.name == "qemu"
        return BakeContext(
            role,
            version,
            parent_ref,
            labels,
            lock.specs(),
            build_dir,
            bake_id,
            self.settings.bake_network,
            self.settings.name_prefix,
            accelerator(self.settings) if vm_target else "tcg",
            self.settings.vm_memory,
        )

    def _labels(
        self, role: Role, version: str, parent_identity: str, lock: locks.Lock, bake_id: str
    ) -> dict[str, str]:
        return {
            "kiln.role": role.name,
            "kiln.version": version,
            # clouds name their images after the same prefix (AMI tags, Glance properties)
            "kiln.repository": (
                self.store.repository(role.name) if self.local else f"{self.settings.image_repo}/{role.name}"
            ),
            "kiln.parent": role.parent or "bootstrap",
            "kiln.parent-id": parent_identity,
            "kiln.inputs-hash": role.inputs_digest(self.target.template_source(), parent_identity),
            "kiln.lock-hash": lock.digest(),
            "kiln.git-commit": git_commit(self.settings.project_root),
            "kiln.built": utc_iso(),
            "kiln.bake-id": bake_id,
            "kiln.kiln-version": __version__,
            "kiln.status": "baked",
        }

    def _record_build(self, ctx: BakeContext, facts: dict[str, str]) -> ImageRecord:
        role, version, build_dir = ctx.role, ctx.version, ctx.build_dir
        fact_labels = {f"kiln.{k}": v for k, v in facts.items()}
        if self.target.name == "qemu":  # the package list came down with the disk
            built = build_dir / "output" / disk_name(role.name, version)
            record = self.store.add(built, {**ctx.labels, **fact_labels})
            shutil.rmtree(build_dir / "output", ignore_errors=True)
            return record
        record = self.store.find(role.name, version)
        if record is None:
            raise OperationFailed(f"Packer finished but {self.store.ref(role.name, version)} is missing")
        packages = self.client.containers.run(
            record.id,
            ["dpkg-query", "-W", "-f=${Package}\t${Version}\n"],
            entrypoint=[],
            remove=True,
            network_mode="none",
            name=f"{self.settings.name_prefix}-pkglist-{role.name}-{uuid.uuid4().hex[:6]}",
        )
        (build_dir / "packages.txt").write_bytes(packages)
        record = self.store.update_labels(record, fact_labels)
        self.client.images.get(record.id).tag(self.store.repository(role.name), "latest")
        return record

    def _remove_container(self, name: str) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            self.client.containers.get(name).remove(force=True)

    # ---- cloud targets: render, validate, build; the cloud keeps the catalog ----------------

    def render(self, role_name: str) -> tuple[Path, str]:
        """Write the role's template for this target and `packer validate` it."""
        chain = self.catalog.chain(role_name)
        if self.local:
            parent_ref, parent_identity = self.parent_of(chain[-1])
        else:
            parent_ref, parent_identity = self._cloud_parent(chain)
        role = chain[-1]
        lock = locks.read_lock(role)
        if not locks.lock_is_current(role, lock):
            raise KilnError(
                f"{role.display(role.lock_file)} is missing or stale: "
                f"run `invoke lock {role.name} --update` first"
            )
        assert lock is not None
        version = version_of(role.inputs_digest(self.target.template_source(), parent_identity))
        bake_id = new_bake_id()
        build_dir = self.settings.state_dir / "templates" / self.target.name / role.name
        ctx = self._context(role, version, parent_ref, parent_identity, lock, build_dir, bake_id)
        build_dir.mkdir(parents=True, exist_ok=True)
        self.target.prepare(ctx)
        path = packer.write_template(self.target.render(ctx), build_dir / f"{version}.json", self.settings)
        packer.validate(path, self.settings)
        return path, version

    def _cloud_parent(self, chain: list[Role]) -> tuple[str, str]:
        """Cloud images are found by their kiln tags: the parent's content version names it."""
        identity, version = CLOUD_ROOT_IDENTITY, ""
        for role in chain[:-1]:
            version = version_of(role.inputs_digest(self.target.template_source(), identity))
            identity = f"{role.name}@{version}"
        return version, identity

    def _bake_cloud(self, chain: list[Role]) -> BakeOutcome:
        started = time.monotonic()
        role = chain[-1]
        path, version = self.render(role.name)
        log_path = path.with_suffix(".log")
        with console.progress(f"baking {role.name} {version} on {self.target.name}") as step:
            result = packer.build(path, log_path, self.settings, step)
        if result.returncode != 0:
            raise OperationFailed(
                f"baking {role.name} on {self.target.name} failed: {result.failure()} (full log: {log_path})"
            )
        image = result.artifact_ids[-1] if result.artifact_ids else ""
        return BakeOutcome(role.name, version, image, True, time.monotonic() - started, path.parent)


def images_table(records: list[ImageRecord]) -> list[dict]:
    return [record.as_json() for record in records]
