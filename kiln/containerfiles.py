"""Files in and out of containers through the engine's API (no shell, nothing on a command
line, so secrets written this way never show up in process lists or logs)."""

from __future__ import annotations

import io
import tarfile
import time

from kiln.errors import OperationFailed


def tar_file(name: str, data: bytes, mode: int = 0o644, owner: tuple[int, int] = (0, 0)) -> bytes:
    """A tar archive holding one file, as `put_archive` and image builds take them."""
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), mode, int(time.time())
        info.uid, info.gid = owner
        tar.addfile(info, io.BytesIO(data))
    return archive.getvalue()


def put_file(container, path: str, data: bytes, mode: int = 0o644, owner: tuple[int, int] = (0, 0)) -> None:
    folder, _, name = path.rpartition("/")
    if not container.put_archive(folder or "/", tar_file(name, data, mode, owner)):
        raise OperationFailed(f"could not write {path} into {container.name}")


def read_file(container, path: str) -> bytes:
    stream, _ = container.get_archive(path)
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
        member = tar.next()
        extracted = tar.extractfile(member) if member else None
        if extracted is None:
            raise OperationFailed(f"{path} in {container.name} is not a regular file")
        return extracted.read()
