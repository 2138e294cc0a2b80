"""Which of the project's files each linter reads: scripts are chosen by their #! line, so a
helper rewritten from shell to Python (kiln-init) moves from shellcheck to ruff by itself."""

from __future__ import annotations

from pathlib import Path

# Where executables without a file extension live: provisioners and the images' own helpers.
SCRIPT_GLOBS = (
    "setup.sh", ".ci/run", "provisioners/*.sh", "images/*/files/**/sbin/*", "images/*/files/**/bin/*",
)
SHELLS = ("sh", "bash", "dash")


def _interpreter(path: Path) -> str:
    with path.open("rb") as f:
        first = f.readline(200).decode(errors="replace")
    if not first.startswith("#!"):
        return ""
    words = first[2:].split()
    # "#!/usr/bin/env bash" names the interpreter second
    name = words[1] if words and words[0].endswith("/env") and len(words) > 1 else (words[0] if words else "")
    return Path(name).name


def scripts(root: Path, interpreters: tuple[str, ...]) -> list[str]:
    """Project scripts whose #! line names one of `interpreters` (python matches python3), sorted."""
    found = {
        str(p.relative_to(root))
        for pattern in SCRIPT_GLOBS
        for p in root.glob(pattern)
        if p.is_file() and _interpreter(p).rstrip("0123456789.") in interpreters
    }
    return sorted(found)


def shell_scripts(root: Path) -> list[str]:
    return scripts(root, SHELLS)


def python_scripts(root: Path) -> list[str]:
    """Python executables without a .py name, which `ruff check .` would not find by itself."""
    return scripts(root, ("python",))
