"""A DR drill that fails tells the environment's people once, naming the environment and the
cause, and leaves its reports (JSON with the goals of the environment file, HTML) behind.

The cheapest real failing drill: an environment with a backup section and no running database
(the Docker engine is asked, nothing is created). The webhook receiver runs on loopback."""

from __future__ import annotations

import json
import os
from html.parser import HTMLParser

import pytest

from kiln import secrets
from kiln.drill import run_drill
from kiln.errors import KilnError
from kiln.settings import Settings

pytestmark = pytest.mark.integration


class Texts(HTMLParser):
    def __init__(self):
        super().__init__()
        self.texts: list[str] = []

    def handle_data(self, data):
        if data.strip():
            self.texts.append(data.strip())


def test_a_failed_drill_sends_one_message_and_writes_its_reports(project, webhook):
    url, received = webhook
    env = f"kilntest{os.getpid()}"
    (project / "environments").mkdir()
    (project / "environments" / f"{env}.yml").write_text(
        "provider: local\nzones: [z0]\ninstances: {web: 1, db: 1}\nfrontend: {port: 0}\n"
        "backup: {rto_goal_seconds: 90, rpo_goal_seconds: 60}\n"
        f"notify: {{webhooks: ['{url}']}}\n"
    )
    settings = Settings(project_root=project, state_dir=project / ".kiln", image_repo=env)
    secrets.write(settings, env, {"KILN_BACKUP_KEY": "k" * 32, "KILN_DB_PASSWORD": "p" * 32})
    with pytest.raises(KilnError, match=f"environment '{env}' has no running db instance"):
        run_drill(settings, env)

    [message] = received
    assert f"kiln {env}: DR drill FAILED" in message["text"]
    assert f"cause: environment '{env}' has no running db instance" in message["text"]
    [written] = (settings.state_dir / "drills" / env).glob("*.json")
    report = json.loads(written.read_text())
    assert report["ok"] is False and report["goals"] == {"rto_seconds": 90.0, "rpo_seconds": 60.0}
    page = Texts()
    page.feed((settings.state_dir / "drills" / env / f"{report['id']}.html").read_text())
    assert "RTO (s), goal 90" in page.texts and "RPO (s), goal 60" in page.texts
    assert report["html"].endswith(f"{report['id']}.html")
