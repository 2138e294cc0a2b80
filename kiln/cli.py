"""The glue between Invoke tasks and the library: one-line errors, exit codes, tables."""

from __future__ import annotations

import functools
import os
import sys

from invoke import Exit

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
