"""The glue between Invoke tasks and the library: one-line errors, exit codes, tables, JSON, prompts."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import sys
import threading
from collections.abc import Callable

from invoke import Argument, Exit, Task

from kiln.environments import Environment
from kiln.errors import KilnError
from kiln.settings import Settings


def kiln_task(body):
    """Run a task body, turning KilnError into one line on stderr and its exit code.

    KILN_DEBUG=1 lets the traceback through instead. SIGTERM (a CI runner cancelling, `kill`)
    interrupts the task as Ctrl-C does, so what it started (VMs, build containers) is cleaned up.
    """

    @functools.wraps(body)
    def wrapper(c, *args, **kwargs):
        try:
            with terminate_as_interrupt():
                return body(c, *args, **kwargs)
        except KilnError as exc:
            if os.environ.get("KILN_DEBUG"):
                raise
            raise Exit(message=f"kiln: {exc}", code=exc.exit_code) from None
        except KeyboardInterrupt:
            raise Exit(message="kiln: interrupted", code=130) from None

    return wrapper


def _interrupt(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one interruption: let the clean-up finish
    raise KeyboardInterrupt


@contextlib.contextmanager
def terminate_as_interrupt():
    """SIGTERM raises KeyboardInterrupt while the block runs (signals reach the main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class ArgumentUnlessFlag(Argument):
    """A positional argument that may be left out when a flag is given (`invoke bake --all`):
    Invoke itself has no optional positional arguments, it requires each one it is told of."""

    flag: Argument | None = None

    @property
    def value(self):
        if self._value is None and self.flag is not None and self.flag.value:
            return ""  # given up for the flag: no longer missing
        return super().value

    @value.setter
    def value(self, arg) -> None:
        self.set_value(arg, cast=True)


class PositionalUnlessFlagTask(Task):
    """@task(klass=PositionalUnlessFlagTask, positional=[NAME], unless_flag=FLAG)."""

    def __init__(self, *args, unless_flag: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.unless_flag = unless_flag

    def get_arguments(self, ignore_unknown_help=None) -> list[Argument]:
        arguments = super().get_arguments(ignore_unknown_help)
        flag = next(a for a in arguments if a.name == self.unless_flag)
        for argument in arguments:
            if argument.positional:
                argument.__class__, argument.flag = ArgumentUnlessFlag, flag
        return arguments


def settings() -> Settings:
    return Settings.from_env()


def print_table(rows: list[dict], columns: list[str]) -> None:
    if not rows:
        print("(none)")
        return
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    print("  ".join(c.upper().ljust(widths[c]) for c in columns).rstrip())
    for row in rows:
        print("  ".join(str(row.get(c, "")).ljust(widths[c]) for c in columns).rstrip())
    sys.stdout.flush()


def dump_json(data) -> str:
    return json.dumps(data, indent=2, sort_keys=True)


def confirm(yes: bool, ask: Callable[[str], str] = input) -> Callable[[Environment, str], None]:
    """How the CLI approves a change to a protected environment: `--yes`, or its name typed on a
    terminal; without a terminal, one line saying to pass --yes."""

    def approve(env: Environment, what: str) -> None:
        if yes:
            return
        if not os.isatty(0):
            raise KilnError(f"{env.file} is protected: pass --yes to {what} it")
        if ask(f"{env.name} is protected; type its name to {what} it: ").strip() != env.name:
            raise KilnError(f"not confirmed: {env.name} is unchanged")

    return approve
