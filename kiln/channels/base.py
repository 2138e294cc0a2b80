"""The instance channel: commands and files inside one instance, whatever runs it.

Backups, the DR drill and every other in-instance step speak only this; a provider hands out
the channel that reaches its instances (`Provider.channel`): `docker exec` for containers, SSH
for VMs and clouds. Files travel as tar streams, so mode and owner arrive with the bytes and
nothing written (a secret, say) appears on a command line. Environment values do go on a
command line over SSH: secrets belong in files written with `put`.
"""

from __future__ import annotations

import abc
import io
import tarfile
from dataclasses import dataclass

from kiln.containerfiles import tar_file
from kiln.errors import OperationFailed

COMMAND_TIMEOUT = 3600.0  # seconds: a backup or a restore of a large database fits, a hang does not
TRANSFER_TIMEOUT = 300.0  # seconds for one file or tar stream
TIMED_OUT = 124  # coreutils `timeout`'s exit code, kept by both channels


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str

    @property
    def ok(self) -> bool:
        return self.code == 0

    def tail(self, lines: int = 3) -> str:
        text = (self.err.strip() or self.out.strip()).splitlines()
        return " | ".join(line.strip() for line in text[-lines:]) or f"exit {self.code}"


class ChannelError(OperationFailed):
    """The channel itself failed (unreachable, refused, timed out), not the command it carried."""


def bounded(argv: list[str], timeout: float) -> list[str]:
    """argv stopped inside the instance after `timeout` seconds (KILL 5 s later), so no command
    outlives a channel that gave up on it."""
    return ["timeout", "-k", "5", f"{timeout:g}", *argv]


class Channel(abc.ABC):
    """Commands and files inside one instance; `secrets` are scrubbed from everything returned."""

    def __init__(self, name: str, secrets: list[str] | None = None):
        self.name = name  # the instance, for messages
        self.secrets = [s for s in (secrets or []) if s]

    def scrub(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "********")
        return text

    @abc.abstractmethod
    def execute(
        self, argv: list[str], user: str, env: dict[str, str], stdin: bytes | None, timeout: float
    ) -> tuple[int, bytes, bytes]:
        """Run argv (already bounded) as user; exit code, standard output and error, unscrubbed.
        ChannelError when the instance cannot be reached."""

    @abc.abstractmethod
    def put_tar(self, folder: str, archive: bytes, timeout: float = TRANSFER_TIMEOUT) -> None:
        """Unpack a tar stream into folder, keeping the modes and numeric owners it carries."""

    @abc.abstractmethod
    def get_tar(self, path: str, timeout: float = TRANSFER_TIMEOUT) -> bytes:
        """A tar stream of path (a file or a folder), named by its last component."""

    def run(
        self,
        argv: list[str],
        user: str = "root",
        env: dict[str, str] | None = None,
        stdin: bytes | None = None,
        timeout: float = COMMAND_TIMEOUT,
    ) -> Result:
        code, out, err = self.execute(bounded(argv, timeout), user, env or {}, stdin, timeout)
        if code == TIMED_OUT:
            raise ChannelError(f"{self.name}: `{argv[0]}` did not finish within {timeout:g} s")
        return Result(
            code, self.scrub(out.decode(errors="replace")), self.scrub(err.decode(errors="replace"))
        )

    def put(
        self,
        path: str,
        data: bytes,
        mode: int = 0o600,
        owner: tuple[int, int] = (0, 0),
        timeout: float = TRANSFER_TIMEOUT,
    ) -> None:
        folder, _, name = path.rpartition("/")
        self.put_tar(folder or "/", tar_file(name, data, mode, owner), timeout)

    def get(self, path: str, timeout: float = TRANSFER_TIMEOUT) -> bytes:
        with tarfile.open(fileobj=io.BytesIO(self.get_tar(path, timeout))) as tar:
            member = tar.next()
            extracted = tar.extractfile(member) if member else None
            if extracted is None:
                raise ChannelError(f"{path} in {self.name} is not a regular file")
            return extracted.read()

    def ids(self, user: str) -> tuple[int, int]:
        result = self.run(["sh", "-c", f'echo "$(id -u {user}) $(id -g {user})"'])
        uid, gid = result.out.split()
        return int(uid), int(gid)
