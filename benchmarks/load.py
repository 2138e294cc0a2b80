"""Bounded HTTP load on a loopback frontend: counts requests, failures and versions served.

Bounded in count and in time, and it stops by itself: the rollout tests and benchmark use it.
Half the workers keep one connection alive (the load balancer must re-route it between
requests), half open a new connection per request.
"""

from __future__ import annotations

import collections
import http.client
import re
import threading
import time
from urllib.parse import urlparse

VERSION = re.compile(r"\b[0-9a-f]{12}\b")


class Load:
    def __init__(self, url: str, *, workers: int = 4, max_requests: int = 100_000, max_seconds: float = 240):
        parsed = urlparse(url)
        if parsed.hostname != "127.0.0.1":
            raise ValueError(f"load goes to loopback only, not {url}")
        self.host, self.port = parsed.hostname, parsed.port
        self.workers = workers
        self.max_requests = max_requests
        self.max_seconds = max_seconds
        self.requests = 0
        self.failed = 0
        self.errors: collections.Counter[str] = collections.Counter()
        self.versions: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> Load:
        self.deadline = time.monotonic() + self.max_seconds
        for i in range(self.workers):
            thread = threading.Thread(target=self._work, args=(i % 2 == 0,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def finish(self) -> None:
        """Wait until the workers have sent max_requests (or max_seconds ran out)."""
        for thread in self._threads:
            thread.join(timeout=max(0.0, self.deadline - time.monotonic()) + 10)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)

    def _more(self) -> bool:
        with self._lock:
            if self._stop.is_set() or self.requests >= self.max_requests or time.monotonic() > self.deadline:
                return False
            self.requests += 1
            return True

    def _work(self, keep_alive: bool) -> None:
        conn = None
        while self._more():
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(self.host, self.port, timeout=5)
                conn.request("GET", "/")
                response = conn.getresponse()
                body = response.read().decode(errors="replace")
                if response.status != 200:
                    raise RuntimeError(f"HTTP {response.status}")
                if response.getheader("Connection", "").lower() == "close" or not keep_alive:
                    conn.close()
                    conn = None
                match = VERSION.search(body)
                with self._lock:
                    self.versions[match[0] if match else "?"] += 1
            except (OSError, http.client.HTTPException, RuntimeError) as exc:
                with self._lock:
                    self.failed += 1
                    self.errors[f"{type(exc).__name__}: {exc}"[:80]] += 1
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()

    def summary(self) -> dict:
        return {
            "requests": self.requests,
            "failed": self.failed,
            "errors": dict(self.errors),
            "versions": dict(self.versions),
        }
