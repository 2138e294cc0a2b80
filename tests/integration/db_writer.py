"""A steady writer through an environment's frontend, and the ISO times failover reports give:
shared by tests/integration/test_failover.py and benchmarks/vm_scenario.py --pair."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime

WRITE_EVERY = 0.05  # seconds between two writes
MAX_WRITES = 6000  # the writer's bound in count; MAX_SECONDS in time
MAX_SECONDS = 180.0


class Writer(threading.Thread):
    """Posts records numbered 0, 1, 2... one at a time; each answer's time and outcome."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url = url + "records"
        self.acked: dict[int, float] = {}  # number -> when its 201 came back
        self.failed: list[tuple[float, float]] = []  # (sent, answered) of each failed write
        self.stop = threading.Event()

    def run(self) -> None:
        deadline = time.time() + MAX_SECONDS
        for number in range(MAX_WRITES):
            if self.stop.is_set() or time.time() > deadline:
                return
            body = json.dumps({"customer": "failover", "amount": number, "note": str(number)}).encode()
            request = urllib.request.Request(self.url, body, {"Content-Type": "application/json"})
            sent = time.time()
            try:
                with urllib.request.urlopen(request, timeout=10) as answer:
                    ok = answer.status == 201
            except (urllib.error.URLError, OSError):
                ok = False
            if ok:
                self.acked[number] = time.time()
            else:
                self.failed.append((sent, time.time()))
            time.sleep(WRITE_EVERY)

    def wait_acks(self, count: int, timeout: float = 30.0) -> None:
        first = len(self.acked)
        deadline = time.monotonic() + timeout
        while len(self.acked) < first + count:
            assert time.monotonic() < deadline, f"fewer than {count} writes acknowledged in {timeout:g} s"
            time.sleep(0.05)


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()
