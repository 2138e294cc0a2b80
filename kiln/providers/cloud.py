"""The cloud providers' base class (CloudProvider) and what they share: the address plan (one /20
per zone, a fixed address per instance name), bounded waits and the deployable-image rule.

A fixed address lets user-data name a peer (the database) before that peer is launched, as
Docker's DNS does for the local provider: instance <role><number> in zone z gets
10.42.<16 z + role index>.<number + 10>, the role index being its place in the environment's
sorted roles. A running instance keeps the address it got, so the providers look it up first.
"""

from __future__ import annotations

import abc
from collections.abc import Callable

from kiln.channels import channel_class
from kiln.channels.base import Channel
from kiln.channels.ssh import Endpoint, SshIdentity, authorize, console_host_keys
from kiln.environments import Environment
from kiln.errors import KilnError
from kiln.images import ImageRecord
from kiln.polling import max_looks, poll
from kiln.providers.base import INSTANCE_NAME, Instance, Provider
from kiln.settings import Settings

NETWORK_CIDR = "10.42.0.0/16"
MAX_ZONES = 16
MAX_ROLES = 16
MAX_NUMBER = 244  # + 10 stays below the subnet's broadcast address


def zone_cidr(zone: int) -> str:
    return f"10.42.{zone * 16}.0/20"


class CloudProvider(Provider):
    """What the cloud providers share: the cloud's managed load balancer (no lb image), waits at
    the pace cloud APIs allow, the zone limit of the address plan, and the LB service's limits."""

    lb_from_image = False
    lb_service = ""  # the managed load balancer, named in messages: ELBv2, Octavia

    def __init__(self, settings: Settings, env: Environment):
        super().__init__(settings, env)
        check_zone_count(env)
        self.identity = SshIdentity(settings.store_dir / "envs" / env.name / "ssh", f"kiln-{env.name}")

    def frontend_port(self) -> int:
        return self.fixed_port("frontend.port", self.env.spec.frontend.port)

    def tls_port(self) -> int | None:
        """The HTTPS listener's port, or None without frontend.tls."""
        tls_spec = self.env.spec.frontend.tls
        return None if tls_spec is None else self.fixed_port("frontend.tls.port", tls_spec.port)

    def fixed_port(self, field: str, port: int) -> int:
        """A listener's port: a managed load balancer has no free port to pick (0 is local's)."""
        if port == 0:
            raise KilnError(
                f"{self.env.file}: field '{field}': an {self.lb_service} listener needs a fixed port"
            )
        return port

    def with_login(self, user_data: str) -> str:
        """The user-data, creating the account Kiln logs in as with the environment's key."""
        return authorize(user_data, self.env.spec.ssh.user, self.identity.public_key())

    def channel(self, instance: Instance, secrets: list[str] | None = None) -> Channel:
        """SSH to the instance's private address, through the bastion when the environment names
        one; host keys pinned under the machine's id, from its console when cloud-init printed them."""
        ssh = self.env.spec.ssh
        machine, console = self.machine_console(instance)
        self.identity.pin(machine, console_host_keys(console))
        bastion = Endpoint(ssh.bastion.host, ssh.bastion.port, ssh.bastion.user) if ssh.bastion else None
        return channel_class("ssh")(
            instance.name,
            Endpoint(instance.address, ssh.port, ssh.user),
            self.identity,
            bastion,
            host_key_alias=machine,
            secrets=secrets,
        )

    @abc.abstractmethod
    def machine_console(self, instance: Instance) -> tuple[str, str]:
        """The cloud's id of the machine (a rebuilt instance gets a new one, so its new host
        key is not taken for an attack) and its console output so far."""

    @property
    def poll_interval(self) -> float:
        return self.settings.cloud_poll

    def whole_within(self, field: str, value: float, low: int, high: int, unit: str = "") -> int:
        """An environment setting as the whole number the LB service takes, or one line on why not."""
        if not (low <= value <= high and value == int(value)):
            raise KilnError(
                f"{self.env.file}: field '{field}': {value:g}{unit} is outside {self.lb_service}'s "
                f"whole {low}-{high}{unit}"
            )
        return int(value)


def check_zone_count(env: Environment) -> None:
    if len(env.zones) > MAX_ZONES:
        raise KilnError(
            f"{env.file}: field 'zones': {len(env.zones)} zones; a cloud environment takes 16 at most"
        )


def fixed_address(env: Environment, instance: str, zone: int | None = None, network: str = "10.42") -> str:
    """The plan's address of `instance` in `network` (a /16's first two octets), on its own
    zone's subnet or on `zone`'s (a shared role with a NIC in every zone, qemu)."""
    match = INSTANCE_NAME.match(instance)
    roles = sorted(env.spec.instances)
    if not match or match["role"] not in roles:
        raise KilnError(f"{env.file}: field 'instances': no role for an instance named '{instance}'")
    number, role_index = int(match["number"]), roles.index(match["role"])
    if role_index >= MAX_ROLES or number > MAX_NUMBER:
        raise KilnError(
            f"{env.file}: field 'instances': {instance} is past the address plan "
            f"({MAX_ROLES} roles, numbers up to {MAX_NUMBER})"
        )
    zone = env.zone_of(number) if zone is None else zone
    return f"{network}.{zone * 16 + role_index}.{number + 10}"


def wait_until(settings: Settings, what: str, done: Callable[[], bool]) -> None:
    """Poll until done(), at most KILN_CLOUD_TIMEOUT seconds, or OperationFailed naming what."""
    poll(
        done,
        timeout=settings.cloud_timeout,
        interval=settings.cloud_poll,
        what=what,
        hint=" (KILN_CLOUD_TIMEOUT)",
    )


def polls(settings: Settings) -> int:
    """How many looks fit in the timeout: a second bound on every wait besides the clock."""
    return max_looks(settings.cloud_timeout, settings.cloud_poll)


def newest_deployable(
    records: list[ImageRecord],
    role: str,
    version: str | None,
    *,
    kind: str,
    place: str,
    lookup: str,
    target: str,
    deployable: tuple[str, ...] = ("verified", "promoted"),
) -> ImageRecord:
    """The newest verified or promoted image found; one line on why none may be deployed."""
    records = sorted(records, key=lambda r: r.labels.get("kiln.built", ""), reverse=True)
    which = f"{role} version {version}" if version else role
    bake = f"bake it with `invoke bake {role} --target {target}`"
    if not records:
        raise KilnError(f"no {kind} of {which}{place} ({lookup}): {bake}")
    usable = [r for r in records if r.status in deployable]
    if version and not usable and {r.status for r in records} == {"rejected"}:
        raise KilnError(f"{which}{place} was rejected by verification: it may not be deployed")
    if not usable:
        statuses = ", ".join(sorted({r.status for r in records}))
        wanted = " or ".join(deployable)
        raise KilnError(f"no {wanted} {kind} of {which}{place} (found: {statuses}): {bake} and verify it")
    return usable[0]
