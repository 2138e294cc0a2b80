"""Output: a spinner with the current step on a terminal, plain lines in CI logs."""

from __future__ import annotations

import sys
from contextlib import contextmanager

from rich.console import Console

_err = Console(stderr=True, highlight=False)


def say(message: str) -> None:
    _err.print(message, markup=False, soft_wrap=True)


@contextmanager
def progress(title: str):
    """Yield a callback taking the current step; a spinner on a terminal, lines otherwise."""
    if _err.is_terminal:
        with _err.status(title) as status:
            yield lambda step: status.update(f"{title}: {step}"[: _err.width - 4])
    else:
        say(title)
        yield lambda step: print(f"  {step}", file=sys.stderr, flush=True)
