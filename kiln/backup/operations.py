"""Backing up and listing an environment's backups: what `invoke backup` and `invoke backups` call."""

from __future__ import annotations

from kiln import console, environments
from kiln import secrets as sealed
from kiln.backup import tool_class
from kiln.backup.base import BackupFault, BackupRecord, BackupSettings, BackupTool, S3Access, S3Repository
from kiln.backup.pgbackrest import TLS_DIR, PgBackRest
from kiln.backup.secrets import S3_NAMES, ensure_secrets, secret
from kiln.environments import Environment, EnvironmentSpec, Frontend
from kiln.errors import KilnError
from kiln.providers import get_provider, provider_class
from kiln.providers.base import Instance, Provider
from kiln.replication import running_standbys
from kiln.settings import Settings

KINDS = ("full", "diff", "incr")
TLS_CERT = f"{TLS_DIR}/instance.pem"
SAID_MAX = 240  # characters of the tool's own words quoted in a one-line failure


def backup_environment(settings: Settings, env: str, kind: str) -> list[BackupRecord]:
    """What `invoke backup` runs: the kind is checked before the provider is asked."""
    require_kind(kind)
    return take_backup(settings, env, kind, backup_settings(settings, env))


def environment_backups(settings: Settings, env: str) -> list[BackupRecord]:
    """What `invoke backups` lists: every tool's backups, database first."""
    return list_backups(settings, env, backup_settings(settings, env))


def source_environment(settings: Settings, env: str) -> Environment:
    """environments/<env>.yml; for an environment without a file (its instances started by other
    means on this machine, as the tests and benchmarks do), local instances in one zone."""
    if (environments.env_dir(settings) / f"{env}.yml").exists():
        return environments.load(settings, env)
    spec = EnvironmentSpec(
        provider="local", zones=["z0"], instances={"db": 1, "web": 1}, frontend=Frontend(port=0)
    )
    return Environment(env, spec, f"environments/{env}.yml")


def first_running(provider: Provider, role: str) -> Instance | None:
    return next((i for i in provider.instances(role) if i.running), None)


def require_db(provider: Provider) -> Instance:
    """The running db instance; of a primary and its standby, the primary (a standby's cluster
    is read-only: restores and checks go to the primary)."""
    running = [i for i in provider.instances("db") if i.running]
    if len(running) > 1:
        standbys = {i.name for i in running_standbys(provider)}
        running = [i for i in running if i.name not in standbys]
    db = running[0] if running else None
    if db is None:
        env = provider.env.name
        raise KilnError(
            f"environment '{env}' has no running db instance: start it with "
            f"`invoke up {env}` (instances.db: 1 in environments/{env}.yml)"
        )
    return db


def tools(settings: Settings, env: str, backup: BackupSettings) -> list[BackupTool]:
    """The environment's tools, each in the instance it runs in: db first, then web (if any)."""
    provider = get_provider(settings, source_environment(settings, env))
    db = require_db(provider)
    key = secret(settings, env, "KILN_BACKUP_KEY")
    s3 = s3_access(settings, env, backup)
    standby = backup_standby(provider)
    database = PgBackRest(provider.channel(standby or db, [key]), backup, key, s3)
    if standby is not None:
        database.primary = provider.peer_address(db.name, standby.zone)
    found: list[BackupTool] = [database]
    web = first_running(provider, "web")
    if web is not None:
        found.append(tool_class("restic")(provider.channel(web, [key]), backup, key, s3))
    return found


def backup_standby(provider: Provider) -> Instance | None:
    """The running standby a backup is taken on, so the primary only starts and stops it: one
    with its instance certificate (pgBackRest's TLS server; cloud-init/db.yml.j2)."""
    if provider.env.count("db") < 2:
        return None
    certified = (
        i for i in running_standbys(provider) if provider.probe(i, ("/usr/bin/test", "-s", TLS_CERT))
    )
    return next(certified, None)


def s3_access(settings: Settings, env: str, backup: BackupSettings) -> S3Access | None:
    """The S3 repository's address, credentials (from the environment's secrets) and CA."""
    if backup.repository != "s3":
        return None
    s3 = backup.s3
    assert s3 is not None  # backup_settings refuses repository 's3' without it
    ca = None
    if s3.ca_file:
        path = settings.project_root / s3.ca_file  # an absolute ca_file stays itself
        try:
            ca = path.read_bytes()
        except OSError as exc:
            raise KilnError(
                f"environments/{env}.yml: field 'backup.s3.ca_file': cannot read {path}: {exc.strerror}"
            ) from None
    return S3Access(s3, secret(settings, env, S3_NAMES[0]), secret(settings, env, S3_NAMES[1]), ca)


def require_kind(kind: str) -> None:
    if kind not in KINDS:
        raise KilnError(f"--type '{kind}': use one of {', '.join(KINDS)}")


def take_backup(settings: Settings, env: str, kind: str, backup: BackupSettings) -> list[BackupRecord]:
    require_kind(kind)
    made_key = sealed.ensure_identity(settings, env)
    if made_key:
        console.say(
            f"made a new age key in {made_key} (0600): keep a copy off this machine; CI reads it "
            f"from {sealed.KEY_VARIABLE}"
        )
    created = ensure_secrets(settings, env)
    if created:
        console.say(f"created {created} with a new backup key: keep a copy off this machine")
    configure_databases(settings, env, backup)
    records = []
    for tool in tools(settings, env, backup):
        tool.configure()
        if isinstance(tool, PgBackRest) and tool.primary:
            console.say(
                f"pgbackrest: backing up on a standby; the primary ({tool.primary}) only starts and stops it"
            )
        try:
            tool.prepare_repository()
            records.append(tool.backup(kind))
        except BackupFault as fault:
            if fault.cause != "repository-unreachable" or backup.s3 is None:
                raise
            raise unreachable(env, tool.name, backup.s3, fault) from None
    return records


def configure_databases(settings: Settings, env: str, backup: BackupSettings) -> None:
    """pgBackRest's settings in every running db instance of a pair: the primary archives its WAL
    with them (also while the backup runs on its standby), and a promoted standby at once."""
    provider = get_provider(settings, source_environment(settings, env))
    running = [i for i in provider.instances("db") if i.running]
    if len(running) < 2:
        return  # a lone db instance is the one the backup runs in, which configures it
    key = secret(settings, env, "KILN_BACKUP_KEY")
    s3 = s3_access(settings, env, backup)
    for instance in running:
        tool_class("pgbackrest")(provider.channel(instance, [key]), backup, key, s3).configure()


def unreachable(env: str, tool: str, s3: S3Repository, fault: BackupFault) -> BackupFault:
    """A dead S3 server as one line: which environment and tool, what it said, what to check."""
    said = fault.detail.removeprefix(f"{tool}: ")
    said = said if len(said) <= SAID_MAX else said[: SAID_MAX - 3] + "..."
    return BackupFault(
        "repository-unreachable",
        f"environment '{env}', {tool} backup: the S3 server {s3.endpoint} (bucket {s3.bucket}) stopped "
        f"answering (timeout_seconds {s3.timeout_seconds:g}; {said}); check that it runs and that the "
        f"instances reach it (backup.s3 in environments/{env}.yml), then back up again: the next backup "
        "starts afresh",
    )


def list_backups(settings: Settings, env: str, backup: BackupSettings) -> list[BackupRecord]:
    records: list[BackupRecord] = []
    for tool in tools(settings, env, backup):
        tool.configure()
        records.extend(tool.list())
    return records


def backup_settings(settings: Settings, env: str) -> BackupSettings:
    """The `backup:` section of environments/<env>.yml; defaults for an environment without a file
    (one whose instances were started by other means, see source_environment)."""
    if not (environments.env_dir(settings) / f"{env}.yml").exists():
        return BackupSettings()
    loaded = environments.load(settings, env)
    backup = loaded.spec.backup
    if backup is None and not provider_class(loaded.spec.provider).keeps_volumes:
        raise KilnError(
            f"{loaded.file}: field 'backup': missing; the {loaded.spec.provider} provider's backups go "
            "to S3: add `backup: {repository: s3, s3: {endpoint: HOST:PORT, bucket: NAME}}`"
        )
    if backup is None:
        raise KilnError(
            f"{loaded.file}: field 'backup': missing, so its instances have no repository "
            "volumes; add `backup: {}` (defaults) and recreate them with `invoke up`"
        )
    if backup.repository == "s3" and backup.s3 is None:
        raise KilnError(
            f"{loaded.file}: field 'backup.s3': required when repository is 's3' (endpoint, bucket)"
        )
    return backup
