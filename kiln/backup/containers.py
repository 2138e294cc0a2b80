"""Backups on the local Docker engine: the repositories' volumes, and sites started directly.

The backup repositories are the docker volumes `kiln-<env>-pgbackrest` and `kiln-<env>-restic`
(standing for off-site storage: they outlive every instance), which the local provider mounts
when the environment has a `backup:` section (`instance_mounts`). `create_site` starts a db and
a web instance with the docker SDK directly, for tests and benchmarks that need a source
quickly; it names and labels them as the local provider does, which then finds them (zone z0
of an environment without a file, kiln.backup.operations.source_environment).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import docker
import docker.errors

from kiln.backup import pgbackrest, restic
from kiln.backup.app import DB_NAME, db_env, web_env
from kiln.containerfiles import put_file, read_file
from kiln.errors import OperationFailed


def repo_volumes(env: str) -> dict[str, str]:
    return {"pgbackrest": f"kiln-{env}-pgbackrest", "restic": f"kiln-{env}-restic"}


def backup_mounts(env: str, role: str, read_only: bool = False) -> dict[str, dict]:
    """The volumes an instance of `role` mounts so its backup tool reaches the repository."""
    mode = "ro" if read_only else "rw"
    volumes = repo_volumes(env)
    if role == "db":
        return {volumes["pgbackrest"]: {"bind": pgbackrest.REPO_PATH, "mode": mode}}
    if role == "web":
        return {volumes["restic"]: {"bind": restic.REPO_PATH, "mode": mode}}
    return {}


def instance_mounts(env, role: str) -> dict[str, dict]:
    """What a provider mounts into an instance of `env` (an Environment): its own repositories,
    or, for a DR environment, the source's read-only; nothing when backups are off or on S3."""
    backup = env.spec.backup
    if backup is None or backup.repository == "s3":  # S3: the tools reach the bucket instead
        return {}
    return backup_mounts(backup.restore_from or env.name, role, read_only=bool(backup.restore_from))


def owner_ids(container, owner: str) -> tuple[int, int]:
    """uid and gid of "user:group" from the image's files: works before the container starts."""
    user, _, group = owner.partition(":")

    def lookup(path: str, name: str) -> int:
        for line in read_file(container, path).decode().splitlines():
            parts = line.split(":")
            if parts[0] == name:
                return int(parts[2])
        raise OperationFailed(f"{container.name} has no {name} in {path}")

    return lookup("/etc/passwd", user), lookup("/etc/group", group or user)


def address(container, network: str | None = None) -> str:
    container.reload()
    networks = container.attrs["NetworkSettings"]["Networks"]
    chosen = networks[network] if network else next(iter(networks.values()))
    return chosen["IPAddress"]


@dataclass
class Site:
    """The containers create_site started."""

    env: str
    db: object
    web: list = field(default_factory=list)


def launch(
    client: docker.DockerClient,
    *,
    name: str,
    image: str,
    network: str,
    labels: dict[str, str],
    files: dict[str, tuple[bytes, int, str]],
    volumes: dict[str, dict],
) -> object:
    """Create a container, write `files` (path → data, mode, "user:group") into it, start it.

    Files go in through the engine's archive API before the first boot, so secrets never appear
    in a command line, an environment listing or a seed folder on the host.
    """
    container = client.containers.create(
        image,
        name=name,
        hostname=name.rsplit("-", 1)[-1],
        labels=labels,
        network=network,
        volumes=volumes,
        init=True,
        detach=True,
    )
    try:
        for path, (data, mode, owner) in files.items():
            put_file(container, path, data, mode, owner_ids(container, owner))
        container.start()
    except BaseException:
        with contextlib.suppress(docker.errors.APIError):
            container.remove(force=True)
        raise
    return container


def db_ready(container) -> bool:
    code, _ = container.exec_run(["psql", "-X", "-qAt", "-d", DB_NAME, "-c", "SELECT 1"], user="postgres")
    return code == 0


def remove_site(client: docker.DockerClient, label: str) -> list[str]:
    """Remove the containers and networks labelled `label` (key=value); their names."""
    removed = []
    for container in client.containers.list(all=True, filters={"label": label}):
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True)
            removed.append(container.name)
    for network in client.networks.list(filters={"label": label}):
        with contextlib.suppress(docker.errors.NotFound):
            network.remove()
            removed.append(network.name)
    return removed


def create_site(
    client: docker.DockerClient,
    env: str,
    *,
    db_image: str,
    web_image: str,
    password: str,
    repo_env: str | None = None,
    hold_db: bool = False,
    labels: dict[str, str] | None = None,
) -> Site:
    """Network `kiln-<env>-z0` with `kiln-<env>-db1` and `-web1` whose backup tools reach the
    repositories of `repo_env` (default: its own); a restore site holds PostgreSQL and mounts
    them read-only. Half-created sites are removed before the error propagates."""
    network = f"kiln-{env}-z0"
    labels = {"kiln.env": env, **(labels or {})}
    repo_env = repo_env or env
    read_only = repo_env != env
    files = {
        "db": {"/etc/kiln/db.env": (db_env(password, hold=hold_db), 0o600, "root")},
        "web": {"/etc/kiln/web.env": (web_env(f"kiln-{env}-db1", password), 0o640, "root:kiln-web")},
    }
    images = {"db": db_image, "web": web_image}
    try:
        client.networks.create(network, driver="bridge", labels=labels)
        db, web = (
            launch(
                client,
                name=f"kiln-{env}-{role}1",
                image=images[role],
                network=network,
                labels={
                    **labels,
                    "kiln.role": role,
                    "kiln.instance": f"{role}1",
                    "kiln.zone": "0",
                    "kiln.version": client.images.get(images[role]).labels.get("kiln.version", ""),
                },
                files=files[role],
                volumes=backup_mounts(repo_env, role, read_only),
            )
            for role in ("db", "web")  # db first: web's settings name it
        )
    except BaseException:
        remove_site(client, f"kiln.env={env}")
        raise
    return Site(env, db, [web])
