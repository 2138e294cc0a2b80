"""Running the Packer CLI: validate, build with live progress, a full log, clean cancellation.

packer-py (the wrapper on the design card) returns output only after the process ends, so it
can neither show progress nor enforce a timeout; this module wraps the CLI directly instead.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kiln.errors import Interrupted, KilnError, OperationFailed
from kiln.settings import Settings
from kiln.targets import hcl2

# Provisioners report back to Kiln by printing `kiln-fact: key=value`,
# `kiln-missing-package: name=version` and `kiln-unlocked-package: name`; Packer prefixes
# each output line with the builder name.
REPORT_LINE = re.compile(
    r"^\s*(?:[\w.-]+: )?kiln-(?P<kind>fact|missing-package|unlocked-package): (?P<body>.*)$"
)
SCRIPT_STEP = re.compile(r"Provisioning with shell script: (?P<script>.+)$")
BUILDER_PREFIX = re.compile(r"^\s*(?:==> )?[\w.-]+: ")
# How much of a failed provisioner's own output a bake error quotes (the log has all of it).
QUOTED_LINES = 3
# From this Packer on, templates name their plugins (HCL2 `required_plugins`, `packer init`).
PLUGINS_FROM = (1, 7)
VERSION_LINE = re.compile(r"Packer v(\d+)\.(\d+)\.(\d+)")


@dataclass
class BuildResult:
    facts: dict[str, str] = field(default_factory=dict)
    missing_packages: list[str] = field(default_factory=list)
    unlocked_packages: list[str] = field(default_factory=list)
    artifact_ids: list[str] = field(default_factory=list)
    error_lines: list[str] = field(default_factory=list)
    returncode: int = 0
    script: str = ""  # the provisioner script running last
    script_output: list[str] = field(default_factory=list)  # its latest output lines
    failed_script: str = ""  # set when Packer reports that provisioning step failed

    def failure(self) -> str:
        """One line on why the build failed: the provisioner and its last words when one failed."""
        if self.failed_script:
            said = " / ".join(self.script_output[-QUOTED_LINES:]) or "no output"
            return f"provisioner {Path(self.failed_script).name} failed: {said}"
        return "; ".join(self.error_lines[-3:]) or f"packer exited {self.returncode}"


def require_packer(settings: Settings) -> str:
    path = shutil.which(settings.packer)
    if path is None:
        raise KilnError(
            f"Packer is not installed ('{settings.packer}' is not on PATH): run ./setup.sh, "
            "or apt-get install packer"
        )
    return path


@functools.cache
def packer_version(executable: str) -> tuple[int, int, int]:
    proc = subprocess.run([executable, "version"], capture_output=True, text=True, check=False)
    found = VERSION_LINE.search(proc.stdout)
    if found is None:
        said = (proc.stdout + proc.stderr).strip().replace("\n", " ")[:200] or f"exit {proc.returncode}"
        raise KilnError(f"`{executable} version` does not say a Packer version ({said}): check KILN_PACKER")
    major, minor, patch = (int(part) for part in found.groups())
    return major, minor, patch


def write_template(template: dict, path: Path, settings: Settings | None = None) -> Path:
    """Write the template Packer will run and return its path: the legacy JSON as rendered, or,
    given the settings of a Packer 1.7 or later, its HCL2-JSON translation (`*.pkr.json`) once
    `packer init` has installed the plugins it requires."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if settings is None or packer_version(require_packer(settings)) < PLUGINS_FROM:
        path.write_text(json.dumps(template, indent=2) + "\n")
        return path
    path = path.with_name(path.stem + ".pkr.json")
    path.write_text(json.dumps(hcl2.translate(template), indent=2) + "\n")
    install_plugins(path, settings)
    return path


def install_plugins(template_path: Path, settings: Settings) -> None:
    """`packer init`: installs the plugins the template requires (a no-op once they are there)."""
    _run_on(template_path, settings, "init", " could not install the plugins")


def validate(template_path: Path, settings: Settings) -> None:
    _run_on(template_path, settings, "validate")


def _run_on(template_path: Path, settings: Settings, command: str, failed: str = "") -> None:
    """`packer <command> <template>` in the template's folder; its output becomes the error."""
    proc = subprocess.run(
        [require_packer(settings), command, template_path.name],
        cwd=template_path.parent,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        detail = (proc.stdout + proc.stderr).strip().replace("\n", " ")
        raise OperationFailed(f"packer {command} {template_path}{failed}: {detail}")


def decode(data: str) -> str:
    """Undo Packer's machine-readable escaping of commas and newlines."""
    return data.replace("%!(PACKER_COMMA)", ",").replace("\\n", "\n").replace("\\r", "")


def build(
    template_path: Path,
    log_path: Path,
    settings: Settings,
    on_step: Callable[[str], None],
) -> BuildResult:
    """Run `packer build`, reporting each step to `on_step` and every line to `log_path`.

    Packer runs in its own session so a terminal's Ctrl-C reaches Kiln only; Kiln then sends
    SIGTERM, which lets Packer remove its build container (SIGKILL would skip that).
    """
    packer = require_packer(settings)
    result = BuildResult()
    proc = subprocess.Popen(
        [packer, "build", "-machine-readable", "-color=false", template_path.name],
        cwd=template_path.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    timed_out = threading.Event()

    def stop_on_timeout() -> None:
        timed_out.set()
        proc.send_signal(signal.SIGTERM)

    timer = threading.Timer(settings.packer_timeout, stop_on_timeout)
    timer.start()
    try:
        with log_path.open("w") as log:
            assert proc.stdout is not None
            for raw in proc.stdout:
                for line in _handle_line(raw.rstrip("\n"), result, on_step):
                    log.write(f"{time.strftime('%H:%M:%S')} {line}\n")
                log.flush()
        proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise Interrupted(f"interrupted; Packer was stopped (log: {log_path})") from None
    finally:
        timer.cancel()
    if timed_out.is_set():
        raise OperationFailed(
            f"packer build took longer than {settings.packer_timeout} s and was stopped "
            f"(KILN_PACKER_TIMEOUT); log: {log_path}"
        )
    result.returncode = proc.returncode
    return result


def _handle_line(raw: str, result: BuildResult, on_step: Callable[[str], None]) -> list[str]:
    """Parse one machine-readable line; return the human lines it contributes to the log."""
    parts = raw.split(",", 3)
    if len(parts) < 4:
        return [raw] if raw.strip() else []
    _, _, kind, data = parts
    if kind == "ui":
        level, _, text = data.partition(",")
        text = decode(text)
        lines = text.splitlines() or [""]
        for line in lines:
            marker = REPORT_LINE.match(line)
            if marker and marker["kind"] == "fact":
                key, _, value = marker["body"].partition("=")
                result.facts[key.strip()] = value.strip()
            elif marker and marker["kind"] == "missing-package":
                result.missing_packages.append(marker["body"].strip())
            elif marker:
                result.unlocked_packages.append(marker["body"].strip())
        if level == "say":
            step = lines[-1].lstrip("=> ").strip()
            on_step(step)
            _track_script(step, result)
        else:
            if level == "error":
                result.error_lines.extend(line for line in lines if line.strip())
            if result.script and not result.failed_script:
                said = (BUILDER_PREFIX.sub("", line).strip() for line in lines)
                result.script_output = (result.script_output + [s for s in said if s])[-QUOTED_LINES:]
        return lines
    if kind == "artifact":
        fields = data.split(",", 2)
        if len(fields) == 3 and fields[1] == "id":
            result.artifact_ids.append(decode(fields[2]))
    return []


def _track_script(step: str, result: BuildResult) -> None:
    started = SCRIPT_STEP.search(step)
    if started:
        result.script, result.script_output = started["script"], []
    elif "Provisioning step had errors" in step and result.script:
        result.failed_script = result.script
