"""The services every role of an image declared (role.yml `services:`), for both runtimes.

At bake, `kiln-services install` stores a role's declarations in /etc/kiln/services/ (kiln-init
reads them in a container) and renders the same declarations as systemd units, enabled, for a
VM. Readiness checks are one function both runtimes call: kiln-init directly, systemd through
ExecStartPost=kiln-services ready NAME.
"""

from __future__ import annotations

import json
import os
import pwd
import shlex
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

MANIFESTS = Path("/etc/kiln/services")
UNIT_DIR = Path("/etc/systemd/system")
PACKAGED_UNIT_DIRS = (Path("/lib/systemd/system"), Path("/usr/lib/systemd/system"))
WANTED_BY = "multi-user.target"
# The restart pace and give-up point of both runtimes (systemd's RestartSec, StartLimit*).
RESTART_SEC = 2
START_LIMIT_BURST = 5
START_LIMIT_INTERVAL = 60
POLL = 0.2


def unit_name(service: dict) -> str:
    return service["unit"] or f"kiln-{service['name']}.service"


def load_all(root: Path = Path("/")) -> list[dict]:
    """Every declared service of the image, in start order (parent roles first)."""
    folder = root / MANIFESTS.relative_to("/")
    found: list[dict] = []
    for manifest in sorted(folder.glob("*.json")):
        found.extend(json.loads(manifest.read_text())["services"])
    return found


def manifest_path(role: str, root: Path = Path("/")) -> Path:
    """<NN>-<role>.json: the role's rank in its chain is the number of roles installed before it."""
    folder = root / MANIFESTS.relative_to("/")
    folder.mkdir(parents=True, exist_ok=True)
    existing = sorted(p for p in folder.glob("*.json") if not p.name.endswith(f"-{role}.json"))
    return folder / f"{len(existing) * 10 + 10:02d}-{role}.json"


def systemd_words(command: str) -> str:
    """The command as systemd must read it to mean what shlex (kiln-init) reads: no $ or %
    expansion. Backslashes, which the two read differently, are refused in role.yml."""
    return command.replace("%", "%%").replace("$", "$$")


def unit_lines(service: dict, after: list[str]) -> list[str]:
    """[Unit] and [Service] settings Kiln sets, for a rendered unit and a packaged unit's drop-in."""
    unit = [
        "[Unit]",
        f"After={' '.join(['network.target', *after])}",
        f"StartLimitIntervalSec={START_LIMIT_INTERVAL}",
        f"StartLimitBurst={START_LIMIT_BURST}",
        "",
        "[Service]",
    ]
    body = []
    if service["user"] != "root":
        body.append(f"User={service['user']}")
    if service["working_dir"]:
        body.append(f"WorkingDirectory={service['working_dir']}")
    for key, value in sorted(service["environment"].items()):
        body.append(f'Environment="{key}={systemd_words(value)}"')
    if service["environment_file"]:
        body.append(f"EnvironmentFile=-{service['environment_file']}")
    if service["condition"]:
        body.append(f"ExecCondition={systemd_words(service['condition'])}")
    if service["readiness"]:
        body.append(f"ExecStartPost=/usr/local/sbin/kiln-services ready {service['name']}")
        # The start includes the readiness wait: give systemd's start timeout room beyond it.
        body.append(f"TimeoutStartSec={service['readiness']['timeout'] + 30}")
    if not service["oneshot"]:
        body += [
            f"Restart={service['restart']}",
            f"RestartSec={RESTART_SEC}",
            f"TimeoutStopSec={service['stop_timeout']}",
            # Read-only /usr, /boot and /etc: long-running services write under /var and /run.
            "ProtectSystem=full",
            "ProtectHome=read-only",
        ]
    body.append("NoNewPrivileges=yes")
    return unit + body


def render_unit(service: dict, role: str, after: list[str]) -> str:
    lines = unit_lines(service, after)
    lines.insert(1, f"Description={service['description'] or service['name']} (Kiln role {role})")
    start = lines.index("[Service]") + 1
    kind = ["Type=oneshot", "RemainAfterExit=yes"] if service["oneshot"] else ["Type=exec"]
    lines[start:start] = [*kind, f"ExecStart={systemd_words(service['command'])}"]
    if not service["oneshot"]:
        lines.append(f"KillSignal=SIG{service['stop_signal']}")
    return "\n".join([header(role), *lines, "", "[Install]", f"WantedBy={WANTED_BY}", ""])


def render_dropin(service: dict, role: str, after: list[str]) -> str:
    return "\n".join([header(role), *unit_lines(service, after), ""])


def header(role: str) -> str:
    return f"# Rendered at bake from images/{role}/role.yml (services:) by kiln-services; do not edit."


def packaged_unit_file(unit: str, root: Path) -> Path | None:
    """The file systemd loads for `unit` (foo@bar.service comes from foo@.service)."""
    template = unit.split("@", 1)[0] + "@.service" if "@" in unit else unit
    for folder in PACKAGED_UNIT_DIRS:
        path = root / folder.relative_to("/") / template
        if path.is_file():
            return path
    return None


def install(role: str, services: list[dict], root: Path = Path("/")) -> list[str]:
    """Store the role's declarations and render, enable and order its units; return their names."""
    earlier = [unit_name(s) for s in load_all(root) if s["name"] not in {x["name"] for x in services}]
    manifest = manifest_path(role, root)
    manifest.write_text(json.dumps({"role": role, "services": services}, indent=2, sort_keys=True) + "\n")
    manifest.chmod(0o644)
    units = root / UNIT_DIR.relative_to("/")
    wants = units / f"{WANTED_BY}.wants"
    wants.mkdir(parents=True, exist_ok=True)
    after = earlier[-1:]
    names = []
    for service in services:
        name = unit_name(service)
        if service["unit"]:
            packaged = packaged_unit_file(name, root)
            if packaged is None:
                raise SystemExit(
                    f"kiln-services: {role}: service {service['name']}: no packaged unit {name} in "
                    "the image; is its package in `packages:`?"
                )
            dropin = units / f"{name}.d" / "kiln.conf"
            dropin.parent.mkdir(parents=True, exist_ok=True)
            dropin.write_text(render_dropin(service, role, after))
            target = Path("/") / packaged.relative_to(root)
        else:
            (units / name).write_text(render_unit(service, role, after))
            target = UNIT_DIR / name
        link = wants / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target)  # what `systemctl enable` does; a bake container has no systemd
        after, names = [name], [*names, name]
    return names


# ---- running (kiln-init) and readiness (both runtimes) -----------------------------------------


def read_environment_file(path: str) -> dict[str, str]:
    """KEY=VALUE lines as systemd's EnvironmentFile= reads them (comments, optional quotes)."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return {}
    values = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key and not key.startswith(("#", ";")):
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            values[key.strip()] = value
    return values


def environment(service: dict) -> dict[str, str]:
    env = dict(os.environ)
    if service["user"] != "root":
        account = pwd.getpwnam(service["user"])
        env.update(HOME=account.pw_dir, USER=account.pw_name, LOGNAME=account.pw_name)
    if service["environment_file"]:
        env.update(read_environment_file(service["environment_file"]))
    env.update(service["environment"])
    return env


def popen_options(service: dict) -> dict:
    """How to start one of the service's commands as its user, in its folder, with its environment."""
    options: dict = {"env": environment(service), "cwd": service["working_dir"] or "/"}
    if service["user"] != "root":
        account = pwd.getpwnam(service["user"])
        options.update(
            user=account.pw_uid,
            group=account.pw_gid,
            extra_groups=os.getgrouplist(account.pw_name, account.pw_gid),
        )
    return options


def allowed_to_start(service: dict) -> bool:
    """systemd's ExecCondition=: an exit status other than 0 skips the service."""
    if not service["condition"]:
        return True
    return subprocess.run(shlex.split(service["condition"]), **popen_options(service)).returncode == 0


def is_ready(service: dict) -> bool:
    ready = service["readiness"]
    try:
        if ready["command"]:
            command = shlex.split(ready["command"])
            return subprocess.run(command, **popen_options(service), timeout=10).returncode == 0
        if ready["path"]:
            url = f"http://127.0.0.1:{ready['port']}{ready['path']}"
            with urllib.request.urlopen(url, timeout=2) as answer:
                return 200 <= answer.status < 300
        with socket.create_connection(("127.0.0.1", ready["port"]), timeout=2):
            return True
    except (OSError, subprocess.TimeoutExpired):
        return False


def wait_ready(service: dict, still_starting=lambda: True) -> bool:
    """Poll the readiness check until it passes, its timeout ends or `still_starting()` is False."""
    if not service["readiness"]:
        return True
    deadline = time.monotonic() + service["readiness"]["timeout"]
    while still_starting() and time.monotonic() < deadline:
        if is_ready(service):
            return True
        time.sleep(POLL)
    return False


def find(name: str, root: Path = Path("/")) -> dict:
    for service in load_all(root):
        if service["name"] == name:
            return service
    raise SystemExit(f"kiln-services: no service named {name!r} in {MANIFESTS}")
