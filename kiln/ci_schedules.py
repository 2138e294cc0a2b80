"""GitLab as code: the pipeline schedules of pipelines/schedules.yml, the process mode of the
deploy resource groups, and the weekly lock refresh's merge request, through python-gitlab.

The connection comes from the environment: `KILN_GITLAB_TOKEN` (a token with the api scope;
never printed), `CI_SERVER_URL` and `CI_PROJECT_PATH` (set in every GitLab job; outside one, set
them, e.g. https://gitlab.example.com and group/kiln).
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from kiln import environments
from kiln.config import load_yaml, parse, spec
from kiln.console import say
from kiln.errors import KilnError
from kiln.settings import Settings

TOKEN_VARIABLE = "KILN_GITLAB_TOKEN"
SCHEDULES_FILE = "pipelines/schedules.yml"
# KILN_SCHEDULE values the pipelines select jobs by (pipelines/operations.gitlab-ci.yml), and
# whether the schedule needs KILN_ENV.
SCHEDULE_KINDS = {"backup": True, "drill": True, "refresh": False}
PROCESS_MODES = ("unordered", "oldest_first", "newest_first")
SCHEDULE_FIELDS = ("cron", "ref", "cron_timezone", "active")
CRON = re.compile(r"^\S+( \S+){4}$")


@dataclass(frozen=True)
class ScheduleSpec:
    cron: str = spec(help="when, as five cron fields, e.g. '0 2 * * *'")
    variables: dict[str, str] = spec(help="pipeline variables: KILN_SCHEDULE; KILN_ENV for backup, drill")
    ref: str = spec("main", help="branch the scheduled pipeline runs on")
    cron_timezone: str = spec("UTC", help="time zone of cron")
    active: bool = spec(True, help="false keeps the schedule but stops it running")


@dataclass(frozen=True)
class SchedulesFile:
    schedules: dict[str, ScheduleSpec] = spec(help="schedule description -> schedule")
    resource_groups: dict[str, str] = spec({}, help="resource group -> process_mode (oldest_first)")


@dataclass
class Change:
    kind: str  # schedule or resource group
    name: str
    action: str  # create, update, unchanged, declared, missing
    details: list[str] = field(default_factory=list)

    def line(self) -> str:
        more = f": {'; '.join(self.details)}" if self.details else ""
        return f"{self.action:9} {self.kind} {self.name}{more}"


def load(settings: Settings) -> SchedulesFile:
    path = settings.project_root / SCHEDULES_FILE
    declared = parse(SchedulesFile, load_yaml(path, SCHEDULES_FILE), SCHEDULES_FILE)
    known_envs = environments.names(settings)
    for name, schedule in declared.schedules.items():
        where = f"{SCHEDULES_FILE}: field 'schedules.{name}"
        if not CRON.match(schedule.cron):
            raise KilnError(f"{where}.cron': '{schedule.cron}' is not five cron fields, e.g. '0 2 * * *'")
        kind = schedule.variables.get("KILN_SCHEDULE")
        if kind not in SCHEDULE_KINDS:
            raise KilnError(f"{where}.variables.KILN_SCHEDULE': '{kind}' selects no job; "
                            f"use one of {', '.join(SCHEDULE_KINDS)}")
        env = schedule.variables.get("KILN_ENV")
        if SCHEDULE_KINDS[kind] and env not in known_envs:
            raise KilnError(f"{where}.variables.KILN_ENV': '{env}' is not an environment; "
                            f"known: {', '.join(known_envs)}")
    for group, mode in declared.resource_groups.items():
        if mode not in PROCESS_MODES:
            raise KilnError(f"{SCHEDULES_FILE}: field 'resource_groups.{group}': '{mode}' is not a "
                            f"process mode; use one of {', '.join(PROCESS_MODES)}")
    return declared


def project(environ: dict[str, str] | None = None):
    """The GitLab project of the environment's connection, or KilnError naming what is missing."""
    import gitlab

    environ = os.environ if environ is None else environ
    missing = [name for name in (TOKEN_VARIABLE, "CI_SERVER_URL", "CI_PROJECT_PATH") if not environ.get(name)]
    if missing:
        raise KilnError(f"set {' and '.join(missing)} to reach GitLab ({TOKEN_VARIABLE}: a token with "
                        "the api scope, e.g. a masked CI/CD variable)")
    client = gitlab.Gitlab(environ["CI_SERVER_URL"], private_token=environ[TOKEN_VARIABLE], timeout=30)
    return client.projects.get(environ["CI_PROJECT_PATH"], lazy=True)


def _schedule_details(want: ScheduleSpec, have) -> list[str]:
    def current(attr: str):
        value = getattr(have, attr)
        # Newer GitLab answers a branch schedule's ref in full (refs/heads/main).
        return value.removeprefix("refs/heads/") if attr == "ref" else value

    details = [f"{attr} {current(attr)!r} -> {getattr(want, attr)!r}"
               for attr in SCHEDULE_FIELDS if current(attr) != getattr(want, attr)]
    current = _variables(have)
    details += [f"variable {k}={v}" for k, v in want.variables.items() if current.get(k) != v]
    details += [f"remove variable {k}" for k in current if k not in want.variables]
    return details


def _variables(schedule) -> dict[str, str]:
    # `schedule.variables` is python-gitlab's manager; the listed values are in the attributes.
    return {v["key"]: v["value"] for v in schedule.attributes.get("variables", [])}


def plan_and_apply(declared: SchedulesFile, gitlab_project, apply: bool) -> list[Change]:
    """Compare the declared schedules and resource groups with GitLab; with `apply`, make them so.

    Schedules are matched by description; ones GitLab has that the file does not name are left alone.
    """
    changes = []
    with gitlab_errors():
        existing = {s.description: s for s in gitlab_project.pipelineschedules.list(get_all=True)}
        for name, want in declared.schedules.items():
            if name not in existing:
                changes.append(Change("schedule", name, "create", [f"{want.cron} on {want.ref}"] +
                                      [f"variable {k}={v}" for k, v in want.variables.items()]))
                if apply:
                    _create_schedule(gitlab_project, name, want)
                continue
            have = gitlab_project.pipelineschedules.get(existing[name].id)
            details = _schedule_details(want, have)
            changes.append(Change("schedule", name, "update" if details else "unchanged", details))
            if apply and details:
                _update_schedule(have, want)
        for group, mode in declared.resource_groups.items():
            changes.append(_resource_group(gitlab_project, group, mode, apply))
    return changes


def plan(settings: Settings, apply: bool, environ: dict[str, str] | None = None) -> list[Change]:
    """The schedules file against GitLab (applied with `apply`); without a token and without
    `apply`, only what the file declares."""
    environ = os.environ if environ is None else environ
    declared = load(settings)
    if apply or environ.get(TOKEN_VARIABLE):
        return plan_and_apply(declared, project(environ), apply)
    say(f"set {TOKEN_VARIABLE}, CI_SERVER_URL and CI_PROJECT_PATH to compare with GitLab")
    return declared_only(declared)


def declared_only(declared: SchedulesFile) -> list[Change]:
    """The plan without a GitLab connection: what the file declares."""
    changes = [Change("schedule", name, "declared", [f"{s.cron} on {s.ref}"] +
                      [f"{k}={v}" for k, v in s.variables.items()]) for name, s in declared.schedules.items()]
    changes += [Change("resource group", g, "declared", [f"process_mode {m}"])
                for g, m in declared.resource_groups.items()]
    return changes


def _create_schedule(gitlab_project, name: str, want: ScheduleSpec) -> None:
    schedule = gitlab_project.pipelineschedules.create(
        {"description": name, "ref": want.ref, "cron": want.cron, "cron_timezone": want.cron_timezone,
         "active": want.active})
    for key, value in want.variables.items():
        schedule.variables.create({"key": key, "value": value})


def _update_schedule(have, want: ScheduleSpec) -> None:
    for attr in SCHEDULE_FIELDS:
        setattr(have, attr, getattr(want, attr))
    have.save()
    current = _variables(have)
    for key, value in want.variables.items():
        if key not in current:
            have.variables.create({"key": key, "value": value})
        elif current[key] != value:
            have.variables.update(key, {"value": value})
    for key in current.keys() - want.variables.keys():
        have.variables.delete(key)


def _resource_group(gitlab_project, group: str, mode: str, apply: bool) -> Change:
    import gitlab

    try:
        have = gitlab_project.resource_groups.get(group)
    except gitlab.exceptions.GitlabGetError as exc:
        if exc.response_code != 404:
            raise
        # GitLab creates a resource group when a job first uses it.
        return Change("resource group", group, "missing", ["GitLab makes it at its first job; apply then"])
    if have.process_mode == mode:
        return Change("resource group", group, "unchanged")
    if apply:
        have.process_mode = mode
        have.save()
    return Change("resource group", group, "update", [f"process_mode {have.process_mode!r} -> {mode!r}"])


@contextlib.contextmanager
def gitlab_errors():
    """python-gitlab's errors as one line (the token is never in them)."""
    import gitlab
    import requests

    try:
        yield
    except gitlab.exceptions.GitlabAuthenticationError as exc:
        raise KilnError(f"GitLab refused the token in {TOKEN_VARIABLE} ({exc.response_code}): "
                        "give it the api scope and the Maintainer role") from None
    except gitlab.exceptions.GitlabError as exc:
        raise KilnError(f"GitLab answered {exc.response_code}: {exc.error_message}") from None
    except requests.RequestException as exc:
        raise KilnError(f"GitLab at {os.environ.get('CI_SERVER_URL', '')} does not answer: "
                        f"{type(exc).__name__}") from None


# ---- weekly security refresh: the new locks as a merge request --------------------------------

LOCK_GLOB = "images/*/packages.lock"


def lock_changes(root: Path) -> tuple[str, list[str]]:
    """(diff, changed lock paths) of the working tree's lock files against the commit."""
    def git(*args: str) -> str:
        proc = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise KilnError(f"git {args[0]} failed in {root}: {proc.stderr.strip()}")
        return proc.stdout

    return git("diff", "--", LOCK_GLOB), git("diff", "--name-only", "--", LOCK_GLOB).split()


def propose_locks(settings: Settings, diff_file: Path, environ: dict[str, str] | None = None) -> str:
    """Write the lock diff to `diff_file`; with a token, open a merge request carrying the new
    locks. Returns what happened, in one line."""
    environ = os.environ if environ is None else environ
    diff, paths = lock_changes(settings.project_root)
    diff_file.write_text(diff)
    if not paths:
        return "the locks are current: nothing to propose"
    if not environ.get(TOKEN_VARIABLE):
        return f"{len(paths)} lock(s) changed, diff in {diff_file} (no {TOKEN_VARIABLE}: no merge request)"
    gitlab_project = project(environ)
    branch = time.strftime("kiln/lock-refresh-%Y%m%d-%H%M%S", time.gmtime())
    target = environ.get("CI_DEFAULT_BRANCH", "main")
    actions = [{"action": "update", "file_path": p, "content": (settings.project_root / p).read_text()}
               for p in paths]
    with gitlab_errors():
        gitlab_project.commits.create({"branch": branch, "start_branch": target, "actions": actions,
                                       "commit_message": "Refresh package locks"})
        request = gitlab_project.mergerequests.create(
            {"source_branch": branch, "target_branch": target, "remove_source_branch": True,
             "title": f"Refresh package locks ({len(paths)} roles)", "description": f"```diff\n{diff}```"})
    return f"merge request {request.web_url} proposes {len(paths)} lock(s)"
