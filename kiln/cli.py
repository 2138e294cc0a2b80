"""The glue between Invoke tasks and the library: one-line errors, exit codes, tables, JSON, prompts."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable

from invoke import Exit

from kiln.environments import Environment
from kiln.errors import KilnError
from kiln.settings import Settings


def kiln_task(body):
    """Run a task body, turning KilnError into one line on stderr and its exit code.

    KILN_DEBUG=1 lets the traceback through instead.
    """

    @functools.wraps(body)
    def wrapper(c, *args, **kwargs):
        try:
            return body(c, *args, **kwargs)
        except KilnError as exc:
            if os.environ.get("KILN_DEBUG"):
                raise
            raise Exit(message=f"kiln: {exc}", code=exc.exit_code) from None
        except KeyboardInterrupt:
            raise Exit(message="kiln: interrupted", code=130) from None

    return wrapper


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
