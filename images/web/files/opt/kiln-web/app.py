"""Kiln's demo web application: a WSGI app that reports the image version it was baked into."""

import json
import os
import threading
import time

IMAGE_FILE = os.environ.get("KILN_IMAGE_FILE", "/etc/kiln/image.json")
STARTED = time.time()

with open(IMAGE_FILE) as f:
    IMAGE = json.load(f)

_counts: dict[str, int] = {}
_lock = threading.Lock()


def _count(path):
    with _lock:
        _counts[path] = _counts.get(path, 0) + 1


def health():
    body = {"status": "ok", "role": IMAGE["role"], "version": IMAGE["version"]}
    return "200 OK", "application/json", json.dumps(body)


def metrics():
    lines = [
        "# HELP kiln_app_info Image the app runs from.",
        "# TYPE kiln_app_info gauge",
        f'kiln_app_info{{role="{IMAGE["role"]}",version="{IMAGE["version"]}"}} 1',
        "# HELP kiln_app_uptime_seconds Seconds since this worker started.",
        "# TYPE kiln_app_uptime_seconds gauge",
        f"kiln_app_uptime_seconds {time.time() - STARTED:.1f}",
        "# HELP kiln_http_requests_total Requests served by this worker, by path.",
        "# TYPE kiln_http_requests_total counter",
    ]
    with _lock:
        lines += [f'kiln_http_requests_total{{path="{p}"}} {n}' for p, n in sorted(_counts.items())]
    return "200 OK", "text/plain; version=0.0.4", "\n".join(lines) + "\n"


def index():
    return "200 OK", "text/plain", f"Kiln web {IMAGE['version']}\n"


ROUTES = {"/health": health, "/metrics": metrics, "/": index}


def application(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    handler = ROUTES.get(path)
    if handler is None:
        status, ctype, body = "404 Not Found", "text/plain", "not found\n"
    else:
        _count(path)
        status, ctype, body = handler()
    data = body.encode()
    start_response(status, [("Content-Type", ctype), ("Content-Length", str(len(data)))])
    return [data]
