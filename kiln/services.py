"""Services a role runs, declared once in role.yml (`services:`) for both runtimes.

systemd runs them on a VM (units rendered at bake time) and kiln-init in a container, both
from the same declaration, which reaches the image through `provisioners/services.sh`
(`kiln-services install`). So a declaration is refused when only one of the two runtimes
could honour it: a packaged systemd unit with no command for kiln-init, a restart policy or a
stop signal only systemd knows, a command only a shell or only systemd would read the same.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass

from kiln.config import spec

SERVICE_NAME = re.compile(r"^[a-z][a-z0-9-]*$")
USER_NAME = re.compile(r"^[a-z_][a-z0-9_-]*$")
UNIT_NAME = re.compile(r"^[A-Za-z0-9:_.@-]+\.service$")
ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
RESTART_POLICIES = ("no", "on-failure", "always")
SYSTEMD_ONLY_RESTART = ("on-success", "on-abnormal", "on-watchdog", "on-abort")
STOP_SIGNALS = ("TERM", "INT", "QUIT", "HUP", "USR1", "USR2")
# systemd reads a backslash as a C escape where a POSIX shell splitter (kiln-init) does not.
AMBIGUOUS = "\\"


@dataclass(frozen=True)
class Readiness:
    port: int | None = spec(None, help="loopback TCP port that accepts connections once ready")
    path: str | None = spec(None, help="HTTP path on that port that answers 2xx once ready")
    command: str | None = spec(None, help="command that exits 0 once the service is ready")
    timeout: int = spec(30, help="seconds the service may take to become ready")


@dataclass(frozen=True)
class Service:
    name: str = spec(help="service name; its systemd unit is kiln-<name>.service unless `unit` is set")
    command: str | None = spec(
        None, help="absolute path and arguments of the program, run in the foreground (both runtimes)"
    )
    unit: str | None = spec(None, help="packaged systemd unit run on VMs instead of a rendered one")
    description: str = spec("", help="one line saying what the service does")
    oneshot: bool = spec(False, help="a step that runs to completion at start (e.g. first boot)")
    user: str = spec("root", help="account the command runs as")
    restart: str | None = spec(None, help="no, on-failure or always (default: on-failure, oneshot: no)")
    stop_signal: str = spec("TERM", help="signal that stops it cleanly: TERM, INT, QUIT, HUP, USR1, USR2")
    stop_timeout: int = spec(10, help="seconds it may take to stop before it is killed")
    readiness: Readiness | None = spec(None, help="how to tell it is ready before the next one starts")
    condition: str | None = spec(None, help="command that must exit 0 for the service to start at all")
    environment: dict[str, str] = spec({}, help="extra environment variables")
    environment_file: str | None = spec(None, help="KEY=VALUE file read at start when it exists")
    working_dir: str | None = spec(None, help="absolute folder it runs in (default /)")

    @property
    def restart_policy(self) -> str:
        return self.restart or ("no" if self.oneshot else "on-failure")


def validate(services: list[Service], fail: Callable[[str, str], None]) -> None:
    """Call `fail(field, message)` on the first declaration one of the runtimes could not run."""
    seen: set[str] = set()
    for i, service in enumerate(services):
        where = f"services[{i}]"
        if not SERVICE_NAME.match(service.name):
            fail(f"{where}.name", "use lower-case letters, digits and '-', starting with a letter")
        if service.name in seen:
            fail(f"{where}.name", f"'{service.name}' is declared twice")
        seen.add(service.name)
        _check_runtimes(service, where, fail)
        for field in ("command", "condition"):
            check_command(getattr(service, field), f"{where}.{field}", fail)
        if service.readiness:
            _check_readiness(service.readiness, f"{where}.readiness", fail)
        if not USER_NAME.match(service.user):
            fail(f"{where}.user", f"'{service.user}' is not an account name")
        if service.restart is not None and service.restart not in RESTART_POLICIES:
            why = "only systemd knows it" if service.restart in SYSTEMD_ONLY_RESTART else "unknown policy"
            fail(f"{where}.restart", f"'{service.restart}': {why}; use {', '.join(RESTART_POLICIES)}")
        if service.stop_signal not in STOP_SIGNALS:
            fail(f"{where}.stop_signal", f"'{service.stop_signal}': use one of {', '.join(STOP_SIGNALS)}")
        if not 1 <= service.stop_timeout <= 3600:
            fail(f"{where}.stop_timeout", f"{service.stop_timeout}: give 1 to 3600 seconds")
        for key in service.environment:
            if not ENV_KEY.match(key):
                fail(f"{where}.environment.{key}", "use letters, digits and '_', not starting with a digit")
        for field in ("environment_file", "working_dir"):
            path = getattr(service, field)
            if path is not None and not path.startswith("/"):
                fail(f"{where}.{field}", f"'{path}' must be an absolute path")


def _check_runtimes(service: Service, where: str, fail: Callable[[str, str], None]) -> None:
    if service.command is None and service.unit is not None:
        fail(
            f"{where}.command",
            f"unit {service.unit} alone runs only under systemd; add the same program as `command:` "
            "(in the foreground) so kiln-init can run it in a container",
        )
    if service.command is None:
        fail(f"{where}.command", "required: the program and its arguments, run in the foreground")
    if service.unit is not None and not UNIT_NAME.match(service.unit):
        fail(f"{where}.unit", f"'{service.unit}' is not a systemd service name like nginx.service")
    if service.oneshot and service.unit is not None:
        fail(f"{where}.unit", "a oneshot step is Kiln's own: drop `unit` (or `oneshot`)")
    if service.oneshot and service.restart_policy != "no":
        fail(f"{where}.restart", "a oneshot step runs once: drop `restart`")
    if service.oneshot and service.readiness is not None:
        fail(f"{where}.readiness", "a oneshot step is ready when it exits: drop `readiness`")


def check_command(command: str | None, where: str, fail: Callable[[str, str], None]) -> None:
    if command is None:
        return
    if AMBIGUOUS in command:
        fail(where, "no backslashes: systemd and kiln-init would read them differently")
    try:
        words = shlex.split(command)
    except ValueError as exc:
        fail(where, f"cannot split into words: {exc}")
        return
    if not words or not words[0].startswith("/"):
        fail(where, "start with the program's absolute path, e.g. /usr/sbin/nginx (systemd needs it)")


def _check_readiness(ready: Readiness, where: str, fail: Callable[[str, str], None]) -> None:
    if (ready.port is None) == (ready.command is None):
        fail(where, "give either `port` (with an optional HTTP `path`) or `command`")
    if ready.path is not None and ready.port is None:
        fail(f"{where}.port", "an HTTP `path` needs the `port` it is served on")
    if ready.port is not None and not 0 < ready.port < 65536:
        fail(f"{where}.port", f"{ready.port} is not a TCP port (1-65535)")
    if ready.path is not None and not ready.path.startswith("/"):
        fail(f"{where}.path", f"'{ready.path}' must start with /")
    check_command(ready.command, f"{where}.command", fail)
    if not 1 <= ready.timeout <= 600:
        fail(f"{where}.timeout", f"{ready.timeout}: give 1 to 600 seconds")


def payload(services: list[Service]) -> str:
    """The declarations as `kiln-services install` reads them (KILN_SERVICES): base64 JSON, so
    no quoting of Packer's, sudo's or a shell's can change them on the way into the image."""
    declared = [{**dataclasses.asdict(s), "restart": s.restart_policy} for s in services]
    return base64.b64encode(json.dumps(declared, sort_keys=True).encode()).decode()
