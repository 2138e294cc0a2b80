"""Tell people what happened to an environment: rollouts and DR drills, through apprise.

An environment file lists where its messages go:

    notify:
      webhooks: [mmosts://chat.example.com/TOKEN, https://hooks.slack.com/services/T/B/X]
      email: [ops@example.com]

Webhooks are apprise URLs (Slack's incoming-webhook https URL as it is; Mattermost as
`mmost[s]://host[:port]/TOKEN`). E-mail goes through the SMTP server in `KILN_NOTIFY_SMTP`, an
apprise `mailto[s]://user:password@host:port` URL kept out of the file because it holds a password.

A message that cannot be delivered never fails the rollout or drill it reports on: it is logged
as one line naming the destination with its secrets masked.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from urllib.parse import quote

from kiln.config import spec
from kiln.console import say
from kiln.errors import KilnError

SMTP_VARIABLE = "KILN_NOTIFY_SMTP"

# Event kind -> the headline after the environment's name.
EVENTS = {
    "rollout-started": "rollout started",
    "rollout-finished": "rollout finished",
    "rollout-rolled-back": "rollout ROLLED BACK",
    "drill-passed": "DR drill passed",
    "drill-failed": "DR drill FAILED",
}


@dataclass(frozen=True)
class NotifySettings:
    webhooks: list[str] = spec([], help="chat webhooks as apprise URLs (Slack, Mattermost, ...)")
    email: list[str] = spec([], help=f"addresses to e-mail, through the SMTP server in {SMTP_VARIABLE}")


def destinations(settings: NotifySettings, env: str, environ: dict[str, str] | None = None) -> list[str]:
    """Apprise URLs for the settings. E-mail without an SMTP server is said, not raised: the
    environment stays usable on a machine that has no SMTP credentials."""
    environ = os.environ if environ is None else environ
    urls = list(settings.webhooks)
    smtp = environ.get(SMTP_VARIABLE, "")
    if settings.email and not smtp:
        say(f"notify: {env} lists e-mail addresses but {SMTP_VARIABLE} is not set; no e-mail sent")
    elif settings.email:
        joiner = "&" if "?" in smtp else "?"
        urls.append(f"{smtp}{joiner}to={quote(','.join(settings.email), safe=',@')}")
    return urls


def check(settings: NotifySettings, display: str) -> None:
    """Refuse, naming the field, a webhook that apprise does not understand (at environment load)."""
    import apprise  # imported here: most commands never notify

    for i, url in enumerate(settings.webhooks):
        if apprise.Apprise.instantiate(url) is None:
            raise KilnError(f"{display}: field 'notify.webhooks[{i}]': not a notification URL apprise "
                            "knows (Slack: https://hooks.slack.com/services/...; Mattermost: "
                            "mmosts://host/TOKEN)")


def message(env: str, kind: str, cause: str = "", **facts: object) -> tuple[str, str]:
    """(title, body) of one event."""
    if kind not in EVENTS:
        raise ValueError(kind)
    lines = [f"cause: {cause}"] if cause else []
    lines += [f"{name.replace('_', ' ')}: {value}" for name, value in facts.items() if value is not None]
    return f"kiln {env}: {EVENTS[kind]}", "\n".join(lines) or EVENTS[kind]


def notify(env: str, settings: NotifySettings | None, kind: str, cause: str = "", **facts: object) -> int:
    """Send one event to every destination of an environment; how many accepted it.

    `kind` is a key of EVENTS; `cause` says why a rollout rolled back or a drill failed; `facts`
    are shown as `name: value` lines (e.g. rto_seconds=36.4, rpo_seconds=4.1, version="..").
    Never raises on delivery: a destination that is down is logged in one line.
    """
    if settings is None:
        return 0
    import apprise

    title, body = message(env, kind, cause, **facts)
    delivered = 0
    for url in destinations(settings, env):
        sender = apprise.Apprise()
        sender.add(url)
        plugin = next(iter(sender), None)
        shown = plugin.url(privacy=True).split("?")[0] if plugin else "an unusable URL"
        with _quiet_apprise():
            ok = plugin is not None and bool(sender.notify(title=title, body=body))
        if ok:
            delivered += 1
        else:
            say(f"notify: {shown} did not take the '{kind}' message of {env}; carrying on")
    return delivered


@contextlib.contextmanager
def _quiet_apprise():
    """Apprise logs each failure with details of its own; Kiln prints its one line instead."""
    logger = logging.getLogger("apprise")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)
