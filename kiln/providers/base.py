"""The provider contract: instances in zones, and the load balancer in front of them.

The rollout engine and `up`/`status`/`down` speak only this; a provider maps it onto Docker,
EC2 + ELBv2 or Nova + Octavia. A separate environment (a DR drill's, say) is just another
Environment given to the same provider class.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Callable
from dataclasses import dataclass

from kiln.channels.base import Channel
from kiln.cloudinit import UserData
from kiln.environments import Environment
from kiln.errors import KilnError
from kiln.images import ImageRecord
from kiln.settings import Settings

INSTANCE_NAME = re.compile(r"^(?P<role>[a-z][a-z-]*?)(?P<number>\d+)$")


@dataclass(frozen=True)
class Instance:
    name: str  # role + number, e.g. web3
    role: str
    zone: int  # index into the environment's zones
    version: str
    address: str  # where the load balancer reaches it
    running: bool

    @property
    def number(self) -> int:
        match = INSTANCE_NAME.match(self.name)
        assert match, self.name
        return int(match["number"])


@dataclass(frozen=True)
class LbServer:
    name: str
    healthy: bool  # the load balancer's own checks pass
    state: str  # ready, drain or maint
    sessions: int  # connections still attached
    check: str  # the last check's status, for people
    backup: bool = False  # serves only while no server of the home zone is up (frontend.home_zone)
    changed_ago: int = 0  # seconds since the load balancer last changed its mind about it


class Provider(abc.ABC):
    # Whether the load balancer is an instance of Kiln's `lb` image (local) rather than the
    # cloud's managed service (ELBv2, Octavia), which needs no image and no user-data.
    lb_from_image = True
    # Whether the load balancer can keep other zones' instances as backup servers
    # (`frontend.home_zone`): HAProxy can; ELBv2 has no such member state.
    routes_by_zone = False
    # its load balancer serves HTTPS with a certificate from the environment's CA (kiln/tls.py)
    terminates_tls = False
    # backup repositories can live beside the instances, off them (`backup.repository: volume`:
    # local's docker volumes); elsewhere backups go to S3
    keeps_volumes = False
    # `probe` runs a command inside its instances (local: docker exec, qemu: SSH); the clouds'
    # instances are judged by their load balancer and API states instead
    probes_instances = False
    # its load balancer sends database connections to whichever db instance is the primary, so a
    # standby can be promoted (`instances.db` of 2 or more, kiln/failover.py)
    routes_database = False
    image_target = "docker"  # the bake target (kiln/targets) whose images its instances run

    @classmethod
    def target_of(cls, role: str) -> str:
        """The bake target of `role`'s images here: a load balancer from an image is a container."""
        return "docker" if role == "lb" and cls.lb_from_image else cls.image_target

    def __init__(self, settings: Settings, env: Environment):
        self.settings = settings
        self.env = env

    @property
    def poll_interval(self) -> float:
        """Seconds between two looks at the load balancer while a rollout waits. A local
        runtime-API call costs nothing; cloud APIs throttle, so clouds use KILN_CLOUD_POLL."""
        return 0.2

    # ---- infrastructure ---------------------------------------------------------------------

    @abc.abstractmethod
    def ensure_networks(self) -> None:
        """One network (subnet) per zone, created once."""

    @abc.abstractmethod
    def ensure_lb(self, image: ImageRecord | None, user_data: str) -> None:
        """The load balancer, listening on the frontend, created once (image: see lb_from_image)."""

    @abc.abstractmethod
    def frontend(self) -> str | None:
        """The URL clients use, or None when there is no load balancer."""

    def https_frontend(self) -> str | None:
        """The HTTPS URL (`frontend.tls`), or None when the frontend serves none."""
        return None

    def lb_versions(self) -> list[str]:
        """The lb image versions the load balancer runs (lb_from_image), oldest first: one, or
        two while a handover runs (or was interrupted); none when it is down."""
        return []

    def replace_lb(self, image: ImageRecord, user_data: str, say: Callable[[str], None]) -> None:
        """Hand the running load balancer over to `image` with no connection refused (lb_from_image)."""
        raise KilnError(f"the {self.env.spec.provider} provider cannot replace its load balancer in place")

    @abc.abstractmethod
    def destroy(self) -> list[str]:
        """Remove everything of this environment; the names of what was removed."""

    # ---- images and instances ---------------------------------------------------------------

    @abc.abstractmethod
    def image(self, role: str, version: str | None = None) -> ImageRecord:
        """The image to launch (newest when no version); KilnError if missing."""

    def versions(self, role: str) -> list[str]:
        """The role's image versions this provider can list cheaply, for `kiln.versions.resolve`
        (short prefixes); none by default: exact versions and image references still work."""
        return []

    @abc.abstractmethod
    def check_user_data(self, image: ImageRecord, documents: list[UserData]) -> None:
        """`cloud-init schema` every document as the image would; KilnError naming the bad one."""

    @abc.abstractmethod
    def peer_address(self, instance: str, zone: int = 0) -> str:
        """How the environment's instances in `zone` reach this one (a name or an address)."""

    def database_address(self, zone: int = 0) -> str:
        """Where instances in `zone` reach the primary database: through the load balancer when a
        standby exists (it follows the primary across a failover), else db1 itself."""
        if self.env.count("db") > 1:
            return self.peer_address("lb", zone)
        return self.peer_address("db1", zone)

    def database_servers(self) -> dict[str, LbServer]:
        """The load balancer's view of the db instances (UP: the primary), where it routes them."""
        return {}

    def database_hold(self, name: str) -> None:
        """Route no database connection to db instance `name` (before it is stopped); a launch
        of the same name routes to it again once its checks pass."""
        return None  # providers without routes_database route no database connection

    @abc.abstractmethod
    def launch(self, role: str, number: int, image: ImageRecord, user_data: str) -> Instance:
        """Start instance <role><number> in zone number % zones, applying user_data at first boot."""

    @abc.abstractmethod
    def instances(self, role: str | None = None) -> list[Instance]:
        """This environment's instances (of one role), by name."""

    @abc.abstractmethod
    def channel(self, instance: Instance, secrets: list[str] | None = None) -> Channel:
        """The way into a running instance for commands and files (kiln.channels); `secrets` are
        scrubbed from whatever it returns."""

    def missing_repositories(self, source: str) -> list[str]:
        """Backup repositories of environment `source` this provider would mount into instances
        but cannot find (local: its docker volumes); none where the tools reach storage themselves."""
        return []

    def probe(self, instance: Instance, command: tuple[str, ...]) -> bool | None:
        """Whether `command` exits 0 inside the instance; None when this provider does not probe
        while it waits (the clouds: their load balancer's checks and API states answer)."""
        return None

    @abc.abstractmethod
    def terminate(self, instance: Instance) -> None:
        """Stop (letting services end cleanly) and remove; absent is fine."""

    # ---- load balancer ----------------------------------------------------------------------

    @abc.abstractmethod
    def lb_register(self, instance: Instance) -> None:
        """Add it, out of service until the load balancer's checks pass `rise` times."""

    @abc.abstractmethod
    def lb_drain(self, instance: Instance) -> None:
        """No new connections; existing ones continue."""

    @abc.abstractmethod
    def lb_servers(self) -> dict[str, LbServer]:
        """Every registered server by instance name."""

    @abc.abstractmethod
    def lb_deregister(self, name: str) -> None:
        """Remove it (after a drain), ending connections that outlived the drain."""
