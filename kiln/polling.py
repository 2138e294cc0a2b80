"""Bounded waiting: every poll loop in Kiln stops after a timeout and after a number of looks."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TypeVar

from kiln.errors import OperationFailed

T = TypeVar("T")


def poll(
    check: Callable[[], T],
    *,
    timeout: float,
    interval: float,
    what: str,
    tolerate: tuple[type[BaseException], ...] = (),
    hint: str = "",
) -> T:
    """Call `check` until it returns something truthy, then return that.

    Bounded twice, by the clock and by a count of looks (so a stalled clock cannot spin it);
    exceptions in `tolerate` mean "not ready yet" and the last one is named in the failure.
    """
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    for _ in range(max_looks(timeout, interval)):
        try:
            value = check()
        except tolerate as exc:
            value, last = None, exc
        if value:
            return value
        if time.monotonic() > deadline:
            break
        time.sleep(interval)
    reason = f": {last}" if last else ""
    raise OperationFailed(f"timed out after {timeout:g} s waiting for {what}{hint}{reason}")


def max_looks(timeout: float, interval: float) -> int:
    """How many looks fit in the timeout, plus a first and a last one."""
    return math.ceil(timeout / max(interval, 0.01)) + 2


def wait_for_service(check: Callable[[], T], what: str, timeout: float, interval: float = 0.2) -> T:
    """`poll` a service that is still starting: until it answers, any error means "not yet"."""
    return poll(check, timeout=timeout, interval=interval, what=what, tolerate=(Exception,))
