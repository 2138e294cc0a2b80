"""A fake GitLab for tests at the python-gitlab (SDK) boundary: no GitLab exists here.

A small HTTP server on 127.0.0.1 answers the few REST endpoints python-gitlab calls for Kiln
(pipeline schedules and their variables, resource groups, commits, merge requests) from an
in-memory project and records every request. It proves the requests Kiln makes, not GitLab's
behaviour behind them.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PROJECT = "/api/v4/projects/group%2Fkiln"


class FakeGitLab:
    """In-memory project state behind the endpoints python-gitlab calls."""

    def __init__(self):
        self.schedules: dict[int, dict] = {}
        self.resource_groups: dict[str, dict] = {}
        self.requests: list[tuple[str, str, dict]] = []
        self.created: list[dict] = []  # commits and merge requests

    def add_schedule(self, description: str, cron: str, variables: dict[str, str]) -> None:
        sid = len(self.schedules) + 1
        self.schedules[sid] = {
            "id": sid,
            "description": description,
            "ref": "main",
            "cron": cron,
            "cron_timezone": "UTC",
            "active": True,
            "variables": [{"key": k, "value": v} for k, v in variables.items()],
        }

    def answer(self, method: str, path: str, body: dict) -> tuple[int, object]:
        self.requests.append((method, path, body))
        path = path.split("?")[0].removeprefix(PROJECT)
        routes = [
            ("GET", r"/pipeline_schedules", lambda: list(self.schedules.values())),
            ("POST", r"/pipeline_schedules", lambda: self._create_schedule(body)),
            ("GET", r"/pipeline_schedules/(\d+)", lambda sid: self.schedules[int(sid)]),
            ("PUT", r"/pipeline_schedules/(\d+)", lambda sid: self._update(self.schedules[int(sid)], body)),
            ("POST", r"/pipeline_schedules/(\d+)/variables", lambda sid: self._set_variable(sid, body)),
            (
                "PUT",
                r"/pipeline_schedules/(\d+)/variables/(\w+)",
                lambda sid, key: self._set_variable(sid, {**body, "key": key}),
            ),
            ("DELETE", r"/pipeline_schedules/(\d+)/variables/(\w+)", lambda sid, key: self._drop(sid, key)),
            ("GET", r"/resource_groups/([\w-]+)", lambda key: self.resource_groups[key]),
            ("PUT", r"/resource_groups/([\w-]+)", lambda key: self._update(self.resource_groups[key], body)),
            ("POST", r"/repository/commits", lambda: self._record({"kind": "commit", **body})),
            (
                "POST",
                r"/merge_requests",
                lambda: self._record(
                    {"kind": "merge request", "iid": 7, "web_url": "http://gitlab/mr/7", **body}
                ),
            ),
        ]
        for verb, pattern, handler in routes:
            match = re.fullmatch(pattern, path)
            if verb == method and match:
                try:
                    return (201 if method == "POST" else 200), handler(*match.groups())
                except KeyError:
                    return 404, {"message": "404 Not found"}
        return 404, {"message": f"no route {method} {path}"}

    def _create_schedule(self, body: dict) -> dict:
        self.add_schedule(body["description"], body["cron"], {})
        schedule = self.schedules[len(self.schedules)]
        return self._update(schedule, body)

    @staticmethod
    def _update(item: dict, body: dict) -> dict:
        item.update(body)
        return item

    def _set_variable(self, sid: str, body: dict) -> dict:
        variables = self.schedules[int(sid)]["variables"]
        variables[:] = [v for v in variables if v["key"] != body["key"]] + [body]
        return body

    def _drop(self, sid: str, key: str) -> None:
        variables = self.schedules[int(sid)]["variables"]
        variables[:] = [v for v in variables if v["key"] != key]

    def _record(self, item: dict) -> dict:
        self.created.append(item)
        return item


@contextlib.contextmanager
def serve_fake_gitlab(token: str):
    """A FakeGitLab answering on 127.0.0.1 (its `url`) to requests carrying `token`."""
    fake = FakeGitLab()

    class Api(BaseHTTPRequestHandler):
        def _reply(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}") if length else {}
            if self.headers.get("PRIVATE-TOKEN") != token:
                status, payload = 401, {"message": "401 Unauthorized"}
            else:
                status, payload = fake.answer(method, self.path, body)
            data = b"" if payload is None else json.dumps(payload).encode()
            self.send_response(204 if payload is None else status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self._reply("GET")

        def do_POST(self):
            self._reply("POST")

        def do_PUT(self):
            self._reply("PUT")

        def do_DELETE(self):
            self._reply("DELETE")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Api)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{server.server_port}"
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def connection(fake: FakeGitLab, token: str) -> dict[str, str]:
    return {"KILN_GITLAB_TOKEN": token, "CI_SERVER_URL": fake.url, "CI_PROJECT_PATH": "group/kiln"}
