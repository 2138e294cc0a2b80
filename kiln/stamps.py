"""Timestamps and ids: UTC everywhere, ids that sort by time and never collide in one second."""

from __future__ import annotations

import time
import uuid


def utc_iso(epoch: float | None = None) -> str:
    """2026-01-31T12:00:00Z for `epoch` (default: now)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def new_id(random_digits: int = 4) -> str:
    """20260131-120000-1a2b: the UTC time, then random hex digits."""
    return time.strftime("%Y%m%d-%H%M%S-", time.gmtime()) + uuid.uuid4().hex[:random_digits]
