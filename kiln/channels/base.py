"""The instance channel: commands and files inside one instance, whatever runs it.

Backups, the DR drill and every other in-instance step speak only this; a provider hands out
the channel that reaches its instances (`Provider.channel`): `docker exec` for containers, SSH
for VMs and clouds. Files travel as tar streams, so mode and owner arrive with the bytes and
nothing written (a secret, say) appears on a command line. Environment values do go on a
command line over SSH: secrets belong in files written with `put`.
"""

from __future__ import annotations

import abc
import contextlib
import io
import queue
import secrets
import tarfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from kiln.containerfiles import tar_file
from kiln.errors import OperationFailed

COMMAND_TIMEOUT = 3600.0  # seconds: a backup or a restore of a large database fits, a hang does not
TRANSFER_TIMEOUT = 300.0  # seconds for one file or tar stream
TIMED_OUT = 124  # coreutils `timeout`'s exit code, kept by both channels
STOP_GRACE = 10.0  # seconds from SIGINT to SIGKILL when a streamed command is stopped
TICK = 1.0  # seconds: a streamed command's watch is asked at least this often, output or not
MARKER = "KILN_STREAM"  # environment variable naming a streamed command inside the instance

# The process groups of the processes carrying a marker (in their environment, which survives
# exec), signalled. Run as the command's user (root in a container may not read another user's
# environ: no CAP_SYS_PTRACE): $0 is the marker's value, $1 the signal. Nothing else carries it:
# the marker is this script's argument, not in its environment. The group, because `timeout` puts
# the command and everything it starts in one (pgBackRest's workers, holding the output open,
# outlived a signal to the marked processes alone); the shell's own kill: an image may lack procps.
SIGNAL_MARKED = (
    'signal=$1; for found in $(grep -lzx "$MARKER=$0" /proc/[0-9]*/environ 2>/dev/null); do '
    'pid=${found#/proc/}; stat=$(cat "/proc/${pid%/environ}/stat" 2>/dev/null) || continue; '
    'set -- ${stat##*) }; kill -s "$signal" -- "-$3"; done'
).replace("$MARKER", MARKER)

# A watch sees each line a streamed command prints (None when a tick passes without one) and
# answers why the command must stop, or None to let it run.
Watch = Callable[[str | None], str | None]
Deliver = Callable[[int, bytes], None]  # a chunk of a command's output: fd (1 or 2), bytes


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str
    stopped: str | None = None  # a streamed command stopped by its watch: the watch's reason

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
    def execute_stream(
        self, argv: list[str], user: str, env: dict[str, str], timeout: float, deliver: Deliver
    ) -> int:
        """Run argv (already bounded) as user, handing its output to deliver(fd, chunk) as it comes
        (fd 1 standard output, 2 error, unscrubbed); the exit code. ChannelError when the instance
        cannot be reached."""

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

    def stream(
        self,
        argv: list[str],
        watch: Watch,
        user: str = "root",
        env: dict[str, str] | None = None,
        timeout: float = COMMAND_TIMEOUT,
        grace: float = STOP_GRACE,
    ) -> Result:
        """Run argv while `watch` reads its output, line by line, scrubbed. When the watch answers a
        reason, the command is stopped inside the instance (SIGINT, SIGKILL `grace` seconds later)
        and the result carries the reason in `stopped`."""
        token = secrets.token_hex(8)
        # Stopping the local end (the docker exec client, the ssh process) would leave the command
        # running: the engine keeps an exec's process when its client goes, and sshd does not
        # signal a command without a terminal. So the command carries a marker in its environment
        # and the stop is a second command in the instance that finds it there.
        marked = bounded(["env", f"{MARKER}={token}", *argv], timeout)
        chunks: queue.Queue[tuple[int, bytes] | None] = queue.Queue()
        outcome: dict = {}

        def work() -> None:
            try:
                outcome["code"] = self.execute_stream(
                    marked, user, env or {}, timeout, lambda fd, data: chunks.put((fd, data))
                )
            except Exception as exc:  # raised again in the caller's thread
                outcome["error"] = exc
            finally:
                chunks.put(None)

        worker = threading.Thread(target=work, name=f"kiln-stream-{self.name}", daemon=True)
        worker.start()
        lines = _Lines()
        stopped = None
        deadline = time.monotonic() + timeout + grace + 60  # the command is bounded inside too
        try:
            while stopped is None:
                try:
                    item = chunks.get(timeout=TICK)
                except queue.Empty:
                    item = (0, b"")
                if item is None:  # the command ended
                    break
                seen = [self.scrub(line) for line in lines.feed(*item)]
                stopped = next(filter(None, map(watch, seen or [None])), None)
                if stopped is None and time.monotonic() > deadline:
                    raise ChannelError(f"{self.name}: `{argv[0]}` did not finish within {timeout:g} s")
        except BaseException:  # Ctrl-C or a channel failure: nothing is left running inside
            with contextlib.suppress(Exception):
                self.stop_marked(token, worker, grace, user)
            raise
        if stopped is not None:
            self.stop_marked(token, worker, grace, user)
            while (item := chunks.get(timeout=TICK)) is not None:  # the worker ended: all is queued
                lines.feed(*item)
        if "error" in outcome:
            raise outcome["error"]
        if outcome["code"] == TIMED_OUT and stopped is None:
            raise ChannelError(f"{self.name}: `{argv[0]}` did not finish within {timeout:g} s")
        out, err = (self.scrub(lines.text(fd)) for fd in (1, 2))
        return Result(outcome["code"], out, err, stopped)

    def stop_marked(self, token: str, worker: threading.Thread, grace: float, user: str) -> None:
        """SIGINT to the marked command (a tool's chance to clean up), SIGKILL if it outlives grace."""
        self.run(["sh", "-c", SIGNAL_MARKED, token, "INT"], user=user, timeout=30)
        worker.join(grace)
        if worker.is_alive():
            self.run(["sh", "-c", SIGNAL_MARKED, token, "KILL"], user=user, timeout=30)
            worker.join(30)
        if worker.is_alive():
            raise ChannelError(f"{self.name}: a stopped command did not end within {grace + 30:g} s")

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


class _Lines:
    """A streamed command's output per descriptor: whole and as complete lines."""

    def __init__(self):
        self.data = {1: bytearray(), 2: bytearray()}
        self.partial = {1: b"", 2: b""}

    def feed(self, fd: int, chunk: bytes) -> list[str]:
        """The lines this chunk completes (a tick's empty chunk completes none)."""
        if not chunk:
            return []
        self.data[fd] += chunk
        *complete, self.partial[fd] = (self.partial[fd] + chunk).split(b"\n")
        return [line.decode(errors="replace") for line in complete]

    def text(self, fd: int) -> str:
        return self.data[fd].decode(errors="replace")
