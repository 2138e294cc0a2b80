"""Errors Kiln reports as one line and an exit code instead of a traceback."""

import shutil


class KilnError(Exception):
    """Bad input or a missing prerequisite: the message says what and how to fix it (exit 2)."""

    exit_code = 2


class OperationFailed(KilnError):
    """The operation ran and failed: a build, a check, a rollout (exit 1)."""

    exit_code = 1


class Interrupted(KilnError):
    """Ctrl-C or SIGTERM; what was started has been cleaned up (exit 130)."""

    exit_code = 130


def require_tools(purpose: str, *tools: str) -> None:
    """Host programs a step runs, checked before it starts: one line naming them, not a traceback."""
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        raise KilnError(f"{purpose} needs {', '.join(missing)}, not installed here: run ./setup.sh")
