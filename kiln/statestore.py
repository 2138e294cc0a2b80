"""Where an environment's state outlives the machine that ran a task: rollout records and state,
drill reports, and the environment lock.

Keys are paths such as `envs/<env>/rollout.json` or `drills/<env>/<id>.json`. An environment
whose backups go to S3 keeps them in that bucket under `kiln-state/`, the lock taken with a
conditional write (PutObject If-None-Match: *), so two runners, or a runner and a laptop, never
hold it at once. Any other environment keeps them in a folder: KILN_STATE_STORE when set (a
folder every checkout on the machine shares), else the checkout's own state folder (.kiln/).
"""

from __future__ import annotations

import abc
import contextlib
import fcntl
import getpass
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from kiln import console
from kiln.errors import KilnError, OperationFailed
from kiln.files import write_atomic
from kiln.settings import Settings
from kiln.stamps import new_id, utc_iso

S3_PREFIX = "kiln-state/"


def holder(what: str, settings: Settings) -> dict:
    """Who takes a lock: the lock's refusal names them and their start time."""
    return {
        "what": what,
        "holder": f"{getpass.getuser()}@{socket.gethostname()} pid {os.getpid()} in {settings.project_root}",
        "started": utc_iso(),
    }


def refusal(env: str, found: bytes | None, where: str, hint: str = "") -> KilnError:
    try:
        record = json.loads(found or b"{}")
    except ValueError:  # a lock left by an older Kiln: its text says who
        record = {"what": (found or b"").decode(errors="replace").strip() or "another process"}
    since = f" since {record['started']}" if record.get("started") else ""
    who = f" ({record['holder']})" if record.get("holder") else ""
    return KilnError(
        f"environment {env} is locked by {record.get('what', 'another process')}{who}{since} "
        f"in {where}: wait for it to finish{hint}"
    )


class StateStore(abc.ABC):
    """An environment's state: small objects by key, append-only logs, one lock."""

    where: str  # for messages: a folder or s3://bucket/prefix/

    @abc.abstractmethod
    def get(self, key: str) -> bytes | None: ...

    @abc.abstractmethod
    def put(self, key: str, data: str | bytes) -> None: ...

    @abc.abstractmethod
    def delete(self, key: str) -> None: ...

    @abc.abstractmethod
    def keys(self, prefix: str) -> list[str]:
        """Keys under `prefix`, sorted."""

    @abc.abstractmethod
    def append(self, key: str, line: str) -> None:
        """Add one line to a log that several writers share; none is ever lost or interleaved."""

    @abc.abstractmethod
    def lines(self, key: str) -> list[str]: ...

    @abc.abstractmethod
    def lock(self, key: str, env: str, record: dict) -> contextlib.AbstractContextManager[None]:
        """Hold the lock at `key`, or KilnError naming who holds it and since when."""


class FolderStore(StateStore):
    def __init__(self, root: Path):
        self.root = root
        self.where = str(root)

    def get(self, key: str) -> bytes | None:
        path = self.root / key
        return path.read_bytes() if path.exists() else None

    def put(self, key: str, data: str | bytes) -> None:
        write_atomic(self.root / key, data)

    def delete(self, key: str) -> None:
        (self.root / key).unlink(missing_ok=True)

    def keys(self, prefix: str) -> list[str]:
        base = self.root / prefix.rpartition("/")[0]
        if not base.is_dir():
            return []
        found = (p.relative_to(self.root).as_posix() for p in base.rglob("*") if p.is_file())
        return sorted(k for k in found if k.startswith(prefix) and not Path(k).name.startswith("."))

    def append(self, key: str, line: str) -> None:
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (line.rstrip("\n") + "\n").encode())  # one write: O_APPEND keeps it whole
        finally:
            os.close(fd)

    def lines(self, key: str) -> list[str]:
        data = self.get(key)
        return [ln for ln in (data or b"").decode().splitlines() if ln.strip()]

    @contextlib.contextmanager
    def lock(self, key: str, env: str, record: dict) -> Iterator[None]:
        """flock: released by the kernel when the holder dies, even by SIGKILL."""
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise refusal(env, path.read_bytes(), self.where) from None
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(record).encode())
            yield
        finally:
            os.close(fd)


class S3Store(StateStore):
    """Objects under s3://<bucket>/kiln-state/; logs are one object per line (S3 cannot append)."""

    def __init__(self, client, bucket: str, prefix: str = S3_PREFIX):
        self.client, self.bucket, self.prefix = client, bucket, prefix
        self.where = f"s3://{bucket}/{prefix}"

    @contextlib.contextmanager
    def failing_clearly(self, key: str) -> Iterator[None]:
        import botocore.exceptions

        try:
            yield
        except botocore.exceptions.ClientError as exc:
            error = exc.response.get("Error", {})
            raise OperationFailed(
                f"state store {self.where}{key}: {error.get('Code', '?')}: {error.get('Message', '')}"
            ) from None
        except botocore.exceptions.BotoCoreError as exc:  # unreachable, TLS: no secret in these
            raise OperationFailed(f"state store {self.where}{key}: {exc}") from None

    def get(self, key: str) -> bytes | None:
        with self.failing_clearly(key):
            try:
                return self.client.get_object(Bucket=self.bucket, Key=self.prefix + key)["Body"].read()
            except self.client.exceptions.NoSuchKey:
                return None

    def put(self, key: str, data: str | bytes) -> None:
        body = data.encode() if isinstance(data, str) else data
        with self.failing_clearly(key):
            self.client.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=body)

    def delete(self, key: str) -> None:
        with self.failing_clearly(key):
            self.client.delete_object(Bucket=self.bucket, Key=self.prefix + key)

    def keys(self, prefix: str) -> list[str]:
        with self.failing_clearly(prefix):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix + prefix
            )
            return sorted(
                item["Key"][len(self.prefix) :] for page in pages for item in page.get("Contents", [])
            )

    def append(self, key: str, line: str) -> None:
        self.put(f"{key}.d/{new_id(8)}", line.rstrip("\n"))  # ids sort by time

    def lines(self, key: str) -> list[str]:
        return [(self.get(k) or b"").decode() for k in self.keys(f"{key}.d/")]

    @contextlib.contextmanager
    def lock(self, key: str, env: str, record: dict) -> Iterator[None]:
        """A conditional write: S3 creates the object only if no one holds it."""
        full = self.prefix + key
        try:
            with self.failing_clearly(key):
                etag = self.client.put_object(
                    Bucket=self.bucket, Key=full, Body=json.dumps(record).encode(), IfNoneMatch="*"
                )["ETag"]
        except OperationFailed as exc:
            if "PreconditionFailed" not in str(exc) and "ConditionalRequestConflict" not in str(exc):
                raise
            hint = f"; if that run died, delete {self.where}{key}"
            raise refusal(env, self.get(key), self.where, hint) from None
        try:
            yield
        except BaseException:
            self.release(key, etag, failing=True)
            raise
        self.release(key, etag)

    def release(self, key: str, etag: str, failing: bool = False) -> None:
        """Only our own lock: If-Match on its ETag never removes a newer holder's. When the
        store stops answering, the lock stays, and the user is told which object to delete;
        unless the locked work failed already, which is then the error worth reading."""
        import botocore.exceptions

        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.prefix + key, IfMatch=etag)
        except botocore.exceptions.ClientError:
            pass  # gone, or a newer holder's
        except botocore.exceptions.BotoCoreError as exc:
            if not failing:
                raise OperationFailed(
                    f"state store {self.where}{key}: the lock was not released ({exc}); "
                    f"delete {self.where}{key} once the store answers"
                ) from None


def s3_client(access, verify: str | bool):
    import boto3
    from botocore.config import Config

    repo = access.repository
    return boto3.client(
        "s3",
        endpoint_url=f"https://{repo.endpoint}",
        region_name=repo.region,
        aws_access_key_id=access.key_id,
        aws_secret_access_key=access.key_secret,
        verify=verify,
        config=Config(
            s3={"addressing_style": "path" if repo.uri_style == "path" else "virtual"},
            connect_timeout=5,
            read_timeout=30,
            retries={"max_attempts": 2},
        ),
    )


def for_environment(settings: Settings, env: str) -> StateStore:
    """The environment's bucket when its backups go to S3, else the state folder."""
    from kiln import environments
    from kiln.backup.operations import backup_settings, s3_access

    if (environments.env_dir(settings) / f"{env}.yml").exists():
        backup = environments.load(settings, env).spec.backup
        if backup is not None and backup.repository == "s3":
            access = s3_access(settings, env, backup_settings(settings, env))
            assert access is not None
            ca = access.repository.ca_file
            verify = str(settings.project_root / ca) if ca else access.repository.verify_tls
            return S3Store(s3_client(access, verify), access.repository.bucket)
    return FolderStore(settings.store_dir)


def every_store(settings: Settings) -> list[StateStore]:
    """The state folders, then the bucket of every environment whose backups go to S3."""
    from kiln import environments

    stores: list[StateStore] = [FolderStore(settings.state_dir)]
    if settings.store_dir != settings.state_dir:
        stores.append(FolderStore(settings.store_dir))
    for env_file in sorted(environments.env_dir(settings).glob("*.yml")):
        try:
            store = for_environment(settings, env_file.stem)
        except KilnError as exc:  # a cloud environment whose keys this machine does not hold
            console.say(f"left out the state store of {env_file.stem}: {exc}")
            continue
        if isinstance(store, S3Store):
            stores.append(store)
    return stores
