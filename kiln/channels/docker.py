"""The channel into a container: `docker exec` and the engine's archive API.

Only this module and the local provider (kiln/providers/local.py) know that an instance is a
container; everything else holds a `Channel`.
"""

from __future__ import annotations

import socket

import docker.errors
from docker.utils.socket import consume_socket_output, demux_adaptor, frames_iter

from kiln.channels.base import TRANSFER_TIMEOUT, Channel, ChannelError, Deliver


class DockerChannel(Channel):
    def __init__(self, container, secrets: list[str] | None = None):
        super().__init__(container.name, secrets)
        self.container = container
        self.api = container.client.api

    def execute(
        self, argv: list[str], user: str, env: dict[str, str], stdin: bytes | None, timeout: float
    ) -> tuple[int, bytes, bytes]:
        try:
            exec_id = self.api.exec_create(
                self.container.id, argv, stdin=stdin is not None, user=user, environment=env
            )["Id"]
            if stdin is None:
                out, err = self.api.exec_start(exec_id, demux=True)
            else:
                out, err = self.feed(exec_id, stdin, timeout)
            code = self.api.exec_inspect(exec_id)["ExitCode"]
        except docker.errors.APIError as exc:
            raise ChannelError(self.scrub(f"{self.name}: {exc.explanation or exc}")) from exc
        return code, out or b"", err or b""

    def execute_stream(
        self, argv: list[str], user: str, env: dict[str, str], timeout: float, deliver: Deliver
    ) -> int:
        try:
            exec_id = self.api.exec_create(self.container.id, argv, user=user, environment=env)["Id"]
            stream = self.api.exec_start(exec_id, socket=True)
        except docker.errors.APIError as exc:
            raise ChannelError(self.scrub(f"{self.name}: {exc.explanation or exc}")) from exc
        raw = getattr(stream, "_sock", stream)
        try:
            raw.settimeout(timeout + 10)  # the command is bounded inside; this bounds the engine
            for fd, data in frames_iter(stream, tty=False):
                deliver(fd, data)
        except OSError as exc:
            raise ChannelError(f"{self.name}: exec stream failed: {exc}") from exc
        finally:
            stream.close()
        try:
            return self.api.exec_inspect(exec_id)["ExitCode"]
        except docker.errors.APIError as exc:
            raise ChannelError(self.scrub(f"{self.name}: {exc.explanation or exc}")) from exc

    def feed(self, exec_id: str, stdin: bytes, timeout: float) -> tuple[bytes | None, bytes | None]:
        """Start the exec on a raw connection: write stdin, close our half (the command sees end
        of file), then read its multiplexed output to the end."""
        stream = self.api.exec_start(exec_id, socket=True)
        raw = getattr(stream, "_sock", stream)
        try:
            raw.settimeout(timeout + 10)  # the command is bounded inside; this bounds the engine
            raw.sendall(stdin)
            raw.shutdown(socket.SHUT_WR)
            frames = (demux_adaptor(*frame) for frame in frames_iter(stream, tty=False))
            return consume_socket_output(frames, demux=True)
        except OSError as exc:
            raise ChannelError(f"{self.name}: exec stream failed: {exc}") from exc
        finally:
            stream.close()

    def put_tar(self, folder: str, archive: bytes, timeout: float = TRANSFER_TIMEOUT) -> None:
        try:
            written = self.container.put_archive(folder, archive)
        except docker.errors.APIError as exc:
            raise ChannelError(f"{self.name}: cannot write into {folder}: {exc.explanation or exc}") from exc
        if not written:
            raise ChannelError(f"could not write into {folder} of {self.name}")

    def get_tar(self, path: str, timeout: float = TRANSFER_TIMEOUT) -> bytes:
        try:
            stream, _ = self.container.get_archive(path)
            return b"".join(stream)
        except docker.errors.APIError as exc:
            raise ChannelError(f"{self.name}: cannot read {path}: {exc.explanation or exc}") from exc
