"""Shared fixtures: a scratch copy of the project so tests can change roles and provisioners."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from kiln.settings import Settings

REPO = Path(__file__).resolve().parent.parent
PROJECT_PARTS = ("images", "provisioners", "cloud-init", "tasks.py")
TOKEN = "s3cr3thooktoken"  # a webhook token the tests assert is never printed


def copy_project(dest: Path, source: Path = REPO) -> Path:
    for part in PROJECT_PARTS:
        src = source / part
        if src.is_dir():
            shutil.copytree(src, dest / part, symlinks=True)
        else:
            shutil.copy2(src, dest / part)
    return dest


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return copy_project(tmp_path / "project")


@pytest.fixture
def settings(project: Path) -> Settings:
    return Settings(project_root=project, state_dir=project / ".kiln", image_repo="kilnunit")


@pytest.fixture
def webhook():
    """A chat webhook receiver: every POST body, parsed, in arrival order."""
    received: list[dict] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append({"path": self.path, **json.loads(body)})
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"mmost://127.0.0.1:{server.server_port}/{TOKEN}", received
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture(scope="session", autouse=True)
def age_key() -> str:
    """A real age identity for the run, in KILN_AGE_KEY as CI provides it (subprocesses inherit it)."""
    generated = subprocess.run(["age-keygen"], capture_output=True, text=True, check=True).stdout
    key = next(line for line in generated.splitlines() if line.startswith("AGE-SECRET-KEY-"))
    os.environ["KILN_AGE_KEY"] = key
    return key


def pytest_collection_modifyitems(config, items):
    """The `vm` tests bake and boot the hardened chain as VM disks (30-40 min under TCG on two
    cores) or wait out a VM's whole health timeout: more than CI's budget beside the rest, so
    they run only when asked for
    (KILN_TEST_VMS=1, `invoke test --vm`); test_vm_fixture.py's small chain runs every time.
    They are deselected, not skipped: the summary never counts them as passing."""
    if os.environ.get("KILN_TEST_VMS") == "1":
        return
    vm = [item for item in items if item.get_closest_marker("vm")]
    if vm:
        config.hook.pytest_deselected(items=vm)
        items[:] = [item for item in items if not item.get_closest_marker("vm")]
