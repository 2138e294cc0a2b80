"""Timestamps and ids: UTC everywhere, ids that sort by time and never collide in one second."""

from __future__ import annotations

import datetime
import time
import uuid


def utc_iso(epoch: float | None = None) -> str:
    """2026-01-31T12:00:00Z for `epoch` (default: now)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def epoch_of(stamp: str) -> float:
    """The epoch seconds of a `utc_iso` stamp (or any ISO 8601 time with a zone)."""
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def new_id(random_digits: int = 4) -> str:
    """20260131-120000-1a2b: the UTC time, then random hex digits."""
    return time.strftime("%Y%m%d-%H%M%S-", time.gmtime()) + uuid.uuid4().hex[:random_digits]
