"""Environments as data: `environments/<env>.yml`, validated on load with file:field errors.

An environment says where instances run (provider, zones), how many of each role, how the
load balancer checks them and how a rollout may replace them. Other features extend it with a
section of their own: add an optional dataclass field to `EnvironmentSpec` (like `backup`).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

from kiln.backup.base import BackupSettings
from kiln.channels.ssh import SshSettings
from kiln.config import load_yaml, parse, spec
from kiln.errors import KilnError
from kiln.haproxy import DEFAULT_MAINTENANCE_PAGE, MAINTENANCE_PAGE_LIMIT
from kiln.notify import NotifySettings
from kiln.notify import check as check_notify
from kiln.providers import PROVIDERS, provider_class
from kiln.settings import Settings

ENV_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
ZONE_NAME = "[a-z0-9][a-z0-9-]*"


@dataclass(frozen=True)
class FrontendTls:
    port: int = spec(
        help="port HTTPS is served on (local: on 127.0.0.1, where 0 picks a free one)",
        minimum=0,
        maximum=65535,
    )
    names: list[str] = spec(
        ["localhost", "127.0.0.1"],
        help="host names and addresses the certificate is issued for, as clients reach the frontend",
        pattern=r"[A-Za-z0-9*][A-Za-z0-9.:*-]*", pattern_help="a host name or an IP address",
    )  # fmt: skip
    days: int = spec(
        90, help="lifetime of the certificates issued from the environment's CA (renewed at a third left)",
        minimum=1, maximum=825,
    )  # fmt: skip
    redirect: bool = spec(True, help="answer plain HTTP with a redirect (301) to HTTPS")


@dataclass(frozen=True)
class Frontend:
    port: int = spec(
        help="port the load balancer listens on (local: on 127.0.0.1; 0 picks a free one)",
        minimum=0,
        maximum=65535,
    )
    maintenance_page: str | None = spec(
        None,
        help="HTML file in the project answered (503, Retry-After) while no instance is up; "
        "default: a short page of Kiln's",
    )
    home_zone: str | None = spec(
        None,
        help="zone affinity: the zone whose instances take the traffic; the other zones' instances "
        "are backup servers, used only while none in this zone is up (default: all zones share it)",
    )
    tls: FrontendTls | None = spec(
        None, help="HTTPS with a certificate from the environment's own CA (secrets/<env>.ca.pem)"
    )


@dataclass(frozen=True)
class HealthCheck:
    path: str = spec(
        "/health", help="HTTP path the load balancer checks; 200 means healthy", pattern="/.*",
        pattern_help="an absolute path, starting with '/'",
    )  # fmt: skip
    interval: float = spec(0.5, help="seconds between two checks of one instance", above=0)
    rise: int = spec(2, help="passing checks in a row before an instance takes traffic", minimum=1)
    fall: int = spec(2, help="failing checks in a row before an instance stops taking traffic", minimum=1)
    timeout: float = spec(30.0, help="seconds a new instance may take to become healthy", above=0)
    slowstart: float = spec(
        0.0, help="seconds an instance that came up takes to reach its full share of traffic", minimum=0
    )


@dataclass(frozen=True)
class RolloutPolicy:
    max_surge: int = spec(1, help="extra instances per zone started before old ones are drained", minimum=0)
    max_unavailable: int = spec(0, help="instances per zone that may be out of service at once", minimum=0)
    warmup: float = spec(0.0, help="seconds a healthy new instance serves before old ones drain", minimum=0)
    drain_timeout: float = spec(30.0, help="seconds to let sessions on a drained instance end", minimum=0)
    canary: int = spec(1, help="instances replaced first, alone, in the first zone (0: no canary)", minimum=0)
    stop_after_first_zone: bool = spec(
        False, help="pause after the first zone; continue with `invoke rollout <env> --resume`"
    )


@dataclass(frozen=True)
class SyslogDestination:
    host: str = spec(
        help="the log host's name or address, as the instances reach it",
        pattern=r"[A-Za-z0-9][A-Za-z0-9.:-]*", pattern_help="a host name or an IP address",
    )  # fmt: skip
    port: int = spec(514, help="the log host's syslog port", minimum=1, maximum=65535)
    protocol: str = spec(
        "tcp",
        help="tcp (messages wait in a queue while the host is away), tls (tcp, encrypted, the host's "
        "certificate checked against ca_file and its name) or udp",
        choices=("tcp", "tls", "udp"),
    )
    ca_file: str | None = spec(
        None, help="with tls: project path of the PEM CA certificate that signed the log host's certificate"
    )


@dataclass(frozen=True)
class EnvironmentSpec:
    provider: str = spec(
        help="where instances run: local (containers here), qemu (VMs here), aws or openstack",
        choices=tuple(PROVIDERS),
    )
    zones: list[str] = spec(
        help="zone names; instance N runs in zone N modulo the zone count", pattern=ZONE_NAME,
        pattern_help="lower-case letters, digits and '-'",
    )  # fmt: skip
    instances: dict[str, int] = spec(help="instances per role, e.g. {web: 3, db: 1}", minimum=0)
    frontend: Frontend = spec(help="the load balancer's listening side")
    balanced_role: str = spec("web", help="the role the load balancer sends traffic to")
    health: HealthCheck = spec(HealthCheck(), help="the load balancer's health check")
    rollout: RolloutPolicy = spec(RolloutPolicy(), help="how a rollout replaces instances")
    protected: bool = spec(False, help="ask for confirmation before changing it (prod)")
    require_promoted: bool = spec(
        False, help="deploy only promoted images (`invoke promote`), not merely verified ones (prod)"
    )
    app: dict[str, str] = spec({}, help="application settings passed to instances in user-data")
    backup: BackupSettings | None = spec(None, help="backup repositories, retention; `backup: {}` turns on")
    ssh: SshSettings = spec(
        SshSettings(), help="how Kiln logs in to VM and cloud instances (key pair made per environment)"
    )
    syslog: SyslogDestination | None = spec(
        None, help="a log host every instance's rsyslog forwards all its messages to"
    )
    internal_tls: bool = spec(
        False,
        help="encrypt traffic between instances (PCI: all service traffic): PostgreSQL takes TCP "
        "logins over TLS only, and the application and the standbys verify its certificate; the "
        "load balancer reaches web over HTTPS (443), which refuses plain HTTP from the network; "
        "certificates are issued from the environment's CA at launch",
    )
    # where rollout and drill events are sent (kiln/notify.py)
    notify: NotifySettings | None = spec(None, help="where rollout and drill events go: webhooks, email")


@dataclass(frozen=True)
class Environment:
    name: str
    spec: EnvironmentSpec
    file: str  # display path, for messages

    @property
    def zones(self) -> list[str]:
        return self.spec.zones

    @property
    def deployable(self) -> tuple[str, ...]:
        """Image statuses this environment deploys."""
        return ("promoted",) if self.spec.require_promoted else ("verified", "promoted")

    def zone_of(self, number: int) -> int:
        return number % len(self.spec.zones)

    def count(self, role: str) -> int:
        return self.spec.instances.get(role, 0)

    def zone_count(self, role: str, zone: int) -> int:
        """Instances of a role in one zone: numbers 1..count spread by number modulo zones."""
        return sum(1 for n in range(1, self.count(role) + 1) if self.zone_of(n) == zone)


def env_dir(settings: Settings) -> Path:
    return settings.project_root / "environments"


def names(settings: Settings) -> list[str]:
    return sorted(p.stem for p in env_dir(settings).glob("*.yml"))


def load(settings: Settings, name: str) -> Environment:
    known = names(settings)
    if name not in known:
        listing = ", ".join(known) if known else "none"
        raise KilnError(
            f"unknown environment '{name}'; known environments: {listing}. "
            f"To add one, create environments/{name}.yml (copy environments/local.yml)"
        )
    path = env_dir(settings) / f"{name}.yml"
    display = f"environments/{name}.yml"
    env_spec = parse(EnvironmentSpec, load_yaml(path, display), display)
    validate(name, env_spec, display)
    if env_spec.frontend.maintenance_page:
        check_maintenance_page(settings, env_spec.frontend.maintenance_page, display)
    if env_spec.syslog is not None and env_spec.syslog.ca_file:
        syslog_ca(settings, env_spec.syslog, display)
    if env_spec.notify:
        check_notify(env_spec.notify, display)
    return Environment(name, env_spec, display)


def maintenance_page(settings: Settings, spec: EnvironmentSpec) -> str:
    page = spec.frontend.maintenance_page
    return (settings.project_root / page).read_text() if page else DEFAULT_MAINTENANCE_PAGE


def check_maintenance_page(settings: Settings, page: str, display: str) -> None:
    where = f"{display}: field 'frontend.maintenance_page'"
    path = settings.project_root / page
    if not path.is_file():
        raise KilnError(f"{where}: no file {page} in the project; give a path like pages/maintenance.html")
    size = len(path.read_bytes())
    if size > MAINTENANCE_PAGE_LIMIT:
        raise KilnError(f"{where}: {page} is {size} bytes; HAProxy serves at most {MAINTENANCE_PAGE_LIMIT}")


def syslog_ca(settings: Settings, syslog: SyslogDestination, display: str) -> str:
    """The PEM text of the log host's CA (`syslog.ca_file`), which instances receive in user-data."""
    path = settings.project_root / (syslog.ca_file or "")
    where = f"{display}: field 'syslog.ca_file'"
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise KilnError(
            f"{where}: cannot read {syslog.ca_file}: {getattr(exc, 'strerror', None) or exc}"
        ) from None
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise KilnError(f"{where}: {syslog.ca_file} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
    return text


def syslog_variables(settings: Settings, env: Environment) -> dict | None:
    """The `syslog` variable of the user-data templates: the destination, and its CA's PEM text."""
    syslog = env.spec.syslog
    if syslog is None:
        return None
    ca = syslog_ca(settings, syslog, env.file) if syslog.ca_file else None
    return {**dataclasses.asdict(syslog), "ca": ca}


def validate(name: str, s: EnvironmentSpec, display: str) -> None:
    """What the field declarations cannot say: rules across fields."""

    def fail(field: str, message: str) -> None:
        raise KilnError(f"{display}: field '{field}': {message}")

    if not ENV_NAME.match(name):
        raise KilnError(f"{display}: the name '{name}' must be lower-case letters, digits and '-'")
    if not s.zones:
        fail("zones", "list at least one zone")
    if len(set(s.zones)) != len(s.zones):
        fail("zones", "zone names must be unique")
    if s.balanced_role not in s.instances:
        fail("balanced_role", f"'{s.balanced_role}' has no entry in 'instances'")
    home = s.frontend.home_zone
    if home is not None and home not in s.zones:
        fail("frontend.home_zone", f"'{home}' is not one of the zones: {', '.join(s.zones)}")
    if home is not None and not provider_class(s.provider).routes_by_zone:
        fail(
            "frontend.home_zone",
            f"the {s.provider} provider's load balancer does not route by zone; remove it",
        )
    if s.frontend.tls is not None and not provider_class(s.provider).terminates_tls:
        fail("frontend.tls", f"the {s.provider} provider's load balancer does not serve HTTPS; remove it")
    if s.frontend.tls is not None and s.frontend.tls.port and s.frontend.tls.port == s.frontend.port:
        fail("frontend.tls.port", f"{s.frontend.port} is frontend.port too: give HTTPS a port of its own")
    if s.instances.get("db", 0) > 1 and not provider_class(s.provider).routes_database:
        fail(
            "instances.db",
            f"a standby needs a load balancer that follows the primary, which the {s.provider} "
            "provider does not build yet; use 1",
        )
    if s.syslog is not None and (s.syslog.protocol == "tls") != (s.syslog.ca_file is not None):
        wanted = (
            "name the PEM file of the log host's CA" if s.syslog.ca_file is None else "remove it, or use tls"
        )
        fail("syslog.ca_file", f"{wanted} (protocol {s.syslog.protocol})")
    if s.frontend.tls is not None and not s.frontend.tls.names:
        fail("frontend.tls.names", "list at least one host name or address for the certificate")
    backup = s.backup
    if backup is not None and backup.repository == "volume" and not provider_class(s.provider).keeps_volumes:
        fail("backup.repository", f"the {s.provider} provider keeps no volume beside its instances; use 's3'")
    if s.provider in ("local", "qemu") and s.ssh.bastion is not None:
        fail("ssh.bastion", f"the {s.provider} provider's instances run on this machine; remove the bastion")
    p = s.rollout
    if p.max_surge + p.max_unavailable < 1:
        fail("rollout.max_surge", "max_surge + max_unavailable must be 1 or more, or nothing can change")
