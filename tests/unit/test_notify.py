"""Notifications through apprise to receivers this test starts on 127.0.0.1: a Mattermost/Slack
style webhook (HTTP POST with a JSON body) and an SMTP server. Nothing leaves the machine."""

from __future__ import annotations

import socket
import socketserver
import threading

import pytest

from kiln import environments
from kiln.errors import KilnError
from kiln.notify import NotifySettings, notify
from tests.conftest import TOKEN


@pytest.fixture
def smtp_server():
    """The few SMTP verbs apprise uses, answered on loopback; every message's DATA collected."""
    messages: list[str] = []

    class Session(socketserver.StreamRequestHandler):
        def handle(self):
            self.wfile.write(b"220 kiln-test ESMTP\r\n")
            while line := self.rfile.readline():
                verb = line[:4].upper()
                if verb == b"DATA":
                    self.wfile.write(b"354 go ahead\r\n")
                    data = []
                    while (chunk := self.rfile.readline()) not in (b".\r\n", b""):
                        data.append(chunk.decode())
                    messages.append("".join(data))
                    self.wfile.write(b"250 queued\r\n")
                elif verb == b"QUIT":
                    self.wfile.write(b"221 bye\r\n")
                    return
                else:
                    self.wfile.write(b"250 ok\r\n")

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Session)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], messages
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_a_rolled_back_rollout_is_one_message_naming_the_environment_and_the_cause(webhook):
    url, received = webhook
    sent = notify("staging", NotifySettings(webhooks=[url]), "rollout-rolled-back",
                  cause="z1: web4 never became healthy", role="web", version="abc123 -> def456")
    assert sent == 1
    assert len(received) == 1
    assert received[0]["path"] == f"/hooks/{TOKEN}"
    text = received[0]["text"]
    assert "staging" in text and "ROLLED BACK" in text
    assert "cause: z1: web4 never became healthy" in text


def test_a_failed_drill_is_one_message_with_cause_rto_and_rpo(webhook):
    url, received = webhook
    notify("prod", NotifySettings(webhooks=[url]), "drill-failed",
           cause="checksum-mismatch", rto_seconds=36.4, rpo_seconds=4.1)
    assert len(received) == 1
    text = received[0]["text"]
    assert "kiln prod: DR drill FAILED" in text
    assert "cause: checksum-mismatch" in text and "rto seconds: 36.4" in text and "rpo seconds: 4.1" in text


def test_a_webhook_that_is_down_is_one_line_without_its_secret_and_does_not_fail(webhook, capsys):
    live, received = webhook
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        dead = f"mmost://127.0.0.1:{probe.getsockname()[1]}/{TOKEN}"
    sent = notify("staging", NotifySettings(webhooks=[dead, live]), "rollout-finished", version="abc123")
    assert sent == 1 and len(received) == 1  # the live one still got it
    out = capsys.readouterr()
    lines = [line for line in (out.out + out.err).splitlines() if line.strip()]
    assert len(lines) == 1 and "did not take the 'rollout-finished' message of staging" in lines[0]
    assert TOKEN not in out.out + out.err


def test_email_goes_through_the_smtp_server_of_the_environment_variable(smtp_server, monkeypatch):
    port, messages = smtp_server
    monkeypatch.setenv("KILN_NOTIFY_SMTP", f"mailto://127.0.0.1:{port}?from=kiln@example.com")
    sent = notify("prod", NotifySettings(email=["ops@example.com"]), "drill-passed",
                  rto_seconds=30.0, rpo_seconds=2.0)
    assert sent == 1 and len(messages) == 1
    assert "To: ops@example.com" in messages[0] and "kiln prod: DR drill passed" in messages[0]


def test_email_without_an_smtp_server_is_said_and_skipped(monkeypatch, capsys):
    monkeypatch.delenv("KILN_NOTIFY_SMTP", raising=False)
    assert notify("prod", NotifySettings(email=["ops@example.com"]), "rollout-started") == 0
    assert "KILN_NOTIFY_SMTP is not set" in capsys.readouterr().err


def test_no_notify_section_sends_nothing():
    assert notify("local", None, "rollout-started") == 0


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("notify: {webhooks: [not-a-url]}", "field 'notify.webhooks[0]': not a notification URL"),
        ("notify: {webhook: []}", "field 'notify.webhook': unknown field; did you mean 'webhooks'?"),
        ("notify: {email: ops@example.com}", "field 'notify.email': expected a list"),
    ],
)
def test_a_bad_notify_section_names_the_field(project, section, message):
    (project / "environments").mkdir()
    (project / "environments" / "demo.yml").write_text(
        f"provider: local\nzones: [z0]\ninstances: {{web: 1}}\nfrontend: {{port: 0}}\n{section}\n")
    from kiln.settings import Settings

    with pytest.raises(KilnError) as error:
        environments.load(Settings(project_root=project), "demo")
    assert str(error.value).startswith("environments/demo.yml: ") and message in str(error.value)
