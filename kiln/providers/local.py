"""The local provider: Docker containers on per-zone networks behind an HAProxy container.

Everything carries the environment's name: containers `kiln-<env>-<instance>`, the load
balancer's network holder `kiln-<env>-lb` and its HAProxy `kiln-<env>-lb-<version>`
(kiln/providers/lbcontainers.py), networks `kiln-<env>-z<N>`, label `kiln.env=<env>`. The load balancer's
folder (config, stats socket) and each instance's NoCloud seed live under
<state store folder>/envs/<env>/ (KILN_STATE_STORE, shared by checkouts; default .kiln/) and
are bind-mounted.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import socket
import time
from pathlib import Path

import docker
import docker.errors

from kiln import cloudinit, container_options, haproxy, tls
from kiln.backup.containers import instance_mounts, repo_volumes
from kiln.channels import channel_class
from kiln.channels.base import Channel
from kiln.cloudinit import UserData
from kiln.environments import Environment, maintenance_page
from kiln.errors import KilnError, OperationFailed
from kiln.files import write_atomic
from kiln.images import DockerImageStore, ImageRecord, docker_client
from kiln.providers import lbcontainers
from kiln.providers.base import Instance, LbServer, Provider
from kiln.roles import RoleCatalog
from kiln.settings import Settings

# Seconds kiln-init gets to stop its services before SIGKILL, beyond their own stop timeouts.
STOP_MARGIN = 5
LB_START_TIMEOUT = 120  # first boot runs cloud-init, slow on a busy machine


def docker_errors_fail(method):
    """Docker's API errors become OperationFailed: the engine above knows only Kiln's errors."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except docker.errors.APIError as exc:
            raise OperationFailed(f"docker: {exc.explanation or exc}") from exc

    return wrapper


def stop(container) -> None:
    """SIGTERM to kiln-init, which stops the services within their own timeouts (a worker finishes
    its job); SIGKILL only after all of them. The LB and containers made before this label: 10 s."""
    with contextlib.suppress(docker.errors.APIError):
        container.stop(timeout=int(container.labels.get("kiln.stop-timeout", 10)))


class LocalProvider(Provider):
    routes_by_zone = True
    terminates_tls = True
    keeps_volumes = True
    probes_instances = True
    routes_database = True

    def __init__(self, settings: Settings, env: Environment):
        super().__init__(settings, env)
        self.client = docker_client()
        self.store = DockerImageStore(self.client, settings)
        self.folder = settings.store_dir / "envs" / env.name
        self.lb_folder = self.folder / "lb"
        self.api = haproxy.RuntimeAPI(self.lb_folder / "admin.sock")
        self._https_port: int | None = None  # see https_port()
        self.refuse_another_state_folder()

    @docker_errors_fail
    def refuse_another_state_folder(self) -> None:
        """The running load balancer's folder is another checkout's: its lock and state are there."""
        running = [c for c in self.haproxies() if c.status == "running"]
        lb = running[-1] if running else lbcontainers.find(self.client, self.container_name("lb"))
        if lb is None:
            return
        mounted = next(
            (m["Source"] for m in lb.attrs.get("Mounts", []) if m["Destination"] == "/run/haproxy"), None
        )
        if mounted and Path(mounted) != self.lb_folder.resolve():
            store = Path(mounted).parent.parent.parent
            raise KilnError(
                f"environment {self.env.name} was brought up with the state in {store}, not "
                f"{self.settings.store_dir}: set KILN_STATE_STORE={store} so every checkout shares "
                "its lock and state"
            )

    # ---- names ------------------------------------------------------------------------------

    def network_name(self, zone: int) -> str:
        return f"kiln-{self.env.name}-z{zone}"

    def container_name(self, instance: str) -> str:
        return f"kiln-{self.env.name}-{instance}"

    @property
    def labels(self) -> dict[str, str]:
        return {"kiln.env": self.env.name}

    # ---- infrastructure ---------------------------------------------------------------------

    @docker_errors_fail
    def ensure_networks(self) -> None:
        existing = {n.name for n in self.client.networks.list(filters={"label": f"kiln.env={self.env.name}"})}
        for zone, zone_name in enumerate(self.env.zones):
            name = self.network_name(zone)
            if name not in existing:
                self.client.networks.create(
                    name, driver="bridge", labels={**self.labels, "kiln.zone": zone_name}
                )

    def haproxies(self) -> list:
        return lbcontainers.haproxies(self.client, self.env.name)

    @docker_errors_fail
    def ensure_lb(self, image: ImageRecord | None, user_data: str) -> None:
        assert image is not None, "the local load balancer runs the lb image"
        name = self.container_name("lb")
        holder = lbcontainers.find(self.client, name)
        running = [c for c in self.haproxies() if c.status == "running"]
        if lbcontainers.is_holder(holder) and holder.status == "running" and running:
            self.renew_certificate()
            started_with = (self.lb_folder / haproxy.INSTANCE_CA_FILE).exists()
            if started_with != self.env.spec.internal_tls:
                env = self.env.name
                raise KilnError(
                    f"{self.env.file}: field 'internal_tls': {name} was started with it "
                    f"{'on' if started_with else 'off'} and cannot switch while it runs: "
                    f"run `invoke down {env}`, then `invoke up {env}`"
                )
            return
        # None yet, a stopped one, or one from before holders: the load balancer starts afresh.
        for stale in [*self.haproxies(), *([holder] if holder else [])]:
            stale.remove(force=True)
        (self.lb_folder / haproxy.SERVER_STATE_FILE).unlink(missing_ok=True)  # an earlier one's
        self.lb_folder.mkdir(parents=True, exist_ok=True)
        tls_spec = self.env.spec.frontend.tls
        ports = {"80/tcp": ("127.0.0.1", self.env.spec.frontend.port or None)}
        if tls_spec:
            # chosen before HAProxy starts: its HTTP->HTTPS redirect names the published port
            self._https_port = tls_spec.port or free_loopback_port()
            ports[f"{haproxy.HTTPS_PORT}/tcp"] = ("127.0.0.1", self._https_port)
            self.renew_certificate(force=True)
        if self.env.spec.internal_tls:
            ca = tls.authority(self.settings, self.env.name).pem
            write_atomic(self.lb_folder / haproxy.INSTANCE_CA_FILE, ca)
        self.sync_lb_config()
        options = container_options.run_options(self.client, image.id, self.settings.name_prefix)
        holder = lbcontainers.create_holder(
            self.client,
            name,
            image.image,
            {**self.labels, "kiln.role": "lb", "kiln.version": image.version},
            ports,
            self.network_name(0),
            options["sysctls"],
            self.lb_address(0),
        )
        for zone in range(1, len(self.env.zones)):
            network = self.client.networks.get(self.network_name(zone))
            network.connect(holder, ipv4_address=self.lb_address(zone))
        holder.start()
        container = self.start_haproxy(image, user_data, options)
        deadline = time.monotonic() + LB_START_TIMEOUT
        while not self.api.ready():
            container.reload()
            if container.status != "running" or time.monotonic() > deadline:
                tail = container.logs(tail=5).decode(errors="replace").strip() or "no output"
                late = f"no answer in {LB_START_TIMEOUT} s"
                why = container.status if container.status != "running" else late
                raise OperationFailed(f"the load balancer {container.name} did not start ({why}): {tail}")
            time.sleep(0.2)

    def start_haproxy(self, image: ImageRecord, user_data: str, options: dict):
        """HAProxy of `image` in the holder's network namespace, started (options: the image's
        container_options.run_options); an earlier container of the same name (a handover that
        failed) goes first."""
        name = self.container_name(f"lb-{image.version}")
        leftover = lbcontainers.find(self.client, name)
        if leftover is not None:
            leftover.remove(force=True)
        seed = self._seed(f"lb-{image.version}", image, user_data)
        drain = int(self.env.spec.rollout.drain_timeout)
        container = lbcontainers.create_haproxy(
            self.client,
            name,
            image.image,
            self.container_name("lb"),
            {
                **self.labels,
                "kiln.role": "lb",
                "kiln.version": image.version,
                "kiln.stop-timeout": str(drain + STOP_MARGIN),  # soft-stop: in-flight requests finish
            },
            {
                str(self.lb_folder): {"bind": "/run/haproxy", "mode": "rw"},
                str(seed): {"bind": "/var/lib/cloud/seed/nocloud", "mode": "ro"},
            },
            options,
        )
        container.start()
        return container

    @docker_errors_fail
    def lb_versions(self) -> list[str]:
        return [c.labels["kiln.version"] for c in self.haproxies() if c.status == "running"]

    @docker_errors_fail
    def replace_lb(self, image: ImageRecord, user_data: str, say) -> None:
        """Hand the frontend over to HAProxy of `image`: it starts in the holder's namespace, takes
        the listening sockets over, then the old HAProxy stops softly. If it never takes over, it
        is removed and the old one never stopped serving."""
        holder = lbcontainers.find(self.client, self.container_name("lb"))
        old = [c for c in self.haproxies() if c.status == "running"]
        if not old or holder is None or holder.status != "running":
            raise KilnError(
                f"environment {self.env.name} has no load balancer running: run `invoke up {self.env.name}`"
            )
        if not lbcontainers.is_holder(holder):
            raise KilnError(
                f"the load balancer {holder.name} was started before lb rollouts existed: run "
                f"`invoke down {self.env.name}`, then `invoke up {self.env.name}`, once"
            )
        # One of `image` already running: a handover that was interrupted before the old stopped.
        new = next((c for c in old if c.labels["kiln.version"] == image.version), None)
        old = [c for c in old if c is not new]
        if new is None:
            # What the new HAProxy starts from: the servers in service now, in their states.
            self.sync_lb_config()
            write_atomic(self.lb_folder / haproxy.SERVER_STATE_FILE, self.api.command("show servers state"))
            options = container_options.run_options(self.client, image.id, self.settings.name_prefix)
            new = self.start_haproxy(image, user_data, options)
        say(
            f"{new.name} started beside {', '.join(c.name for c in old)}; waiting for it to take the frontend"
        )
        try:
            lbcontainers.wait_listening(new, self.env.spec.health.timeout)
        except OperationFailed:
            new.remove(force=True)
            # Its firewall replaced the shared namespace's ruleset at start: the old one's again.
            old[-1].exec_run(lbcontainers.FIREWALL)
            raise
        for container in old:
            stop(container)  # SIGUSR1 to HAProxy through kiln-init: in-flight requests finish
            container.remove(force=True)
        say(f"{new.name} holds the frontend; {', '.join(c.name for c in old)} stopped softly")

    @docker_errors_fail
    def frontend(self) -> str | None:
        try:
            container = self.client.containers.get(self.container_name("lb"))
        except docker.errors.NotFound:
            return None
        bindings = (container.attrs["NetworkSettings"]["Ports"] or {}).get("80/tcp") or []
        return f"http://127.0.0.1:{bindings[0]['HostPort']}/" if bindings else None

    @docker_errors_fail
    def https_frontend(self) -> str | None:
        port = self.https_port()
        return f"https://127.0.0.1:{port}/" if port else None

    def https_port(self) -> int | None:
        """Where HTTPS is published: chosen by ensure_lb, else read from the running LB."""
        if self.env.spec.frontend.tls is None:
            return None
        if self._https_port is None:
            try:
                container = self.client.containers.get(self.container_name("lb"))
            except docker.errors.NotFound:
                return None
            bindings = (container.attrs["NetworkSettings"]["Ports"] or {}).get(f"{haproxy.HTTPS_PORT}/tcp")
            self._https_port = int(bindings[0]["HostPort"]) if bindings else None
        return self._https_port

    def renew_certificate(self, force: bool = False) -> None:
        """Issue the frontend a certificate from the environment's CA when it has none or it is due;
        a running HAProxy takes it through the runtime API, with no reload."""
        tls_spec = self.env.spec.frontend.tls
        if tls_spec is None:
            return
        ca = tls.authority(self.settings, self.env.name)
        bundle = self.lb_folder / haproxy.CERTIFICATE_FILE
        if not force and not tls.due(bundle, ca, tls_spec.names):
            return
        issued = tls.issue(ca, tls_spec.names, tls_spec.days)
        if not force and self.api.ready():
            self.api.replace_certificate(f"/run/haproxy/{haproxy.CERTIFICATE_FILE}", issued)
        tls.write_bundle(bundle, issued)

    @docker_errors_fail
    def destroy(self) -> list[str]:
        removed = []
        for container in self.client.containers.list(
            all=True, filters={"label": f"kiln.env={self.env.name}"}
        ):
            stop(container)
            container.remove(force=True)
            removed.append(container.name)
        for network in self.client.networks.list(filters={"label": f"kiln.env={self.env.name}"}):
            network.remove()
            removed.append(network.name)
        shutil.rmtree(self.lb_folder, ignore_errors=True)
        shutil.rmtree(self.folder / "seeds", ignore_errors=True)
        return removed

    # ---- images and instances ---------------------------------------------------------------

    @docker_errors_fail
    def image(self, role: str, version: str | None = None) -> ImageRecord:
        if version:
            record = self.store.find(role, version)
            if record is None:
                raise KilnError(
                    f"no image {self.store.ref(role, version)}: bake it with `invoke bake {role}`"
                )
            return record
        records = self.store.list(role)
        usable = [r for r in records if r.status in self.env.deployable]
        if not usable:
            wanted = " or ".join(self.env.deployable)
            why = f"none of its {len(records)} images is {wanted}" if records else "no image is baked"
            promoted_only = self.env.spec.require_promoted
            fix = "promote one (`invoke promote`)" if promoted_only else "bake it and verify it"
            raise KilnError(f"no {wanted} {role} image for {self.env.file} ({why}): {fix}")
        return usable[0]

    @docker_errors_fail
    def versions(self, role: str) -> list[str]:
        return [record.version for record in self.store.list(role)]

    @docker_errors_fail
    def launch(self, role: str, number: int, image: ImageRecord, user_data: str) -> Instance:
        name = f"{role}{number}"
        zone = self.env.zone_of(number)
        seed = self._seed(name, image, user_data)
        labels = {
            **self.labels,
            "kiln.role": role,
            "kiln.instance": name,
            "kiln.zone": str(zone),
            "kiln.version": image.version,
            "kiln.stop-timeout": str(RoleCatalog(self.settings).stop_grace(role) + STOP_MARGIN),
        }
        # Shared roles (no load-balanced traffic of their own, e.g. db) join every zone.
        container = self.client.containers.create(
            image.image,
            name=self.container_name(name),
            hostname=name,
            labels=labels,
            network=self.network_name(zone),
            # With backups on, db and web reach their repository on a volume outliving the instance.
            volumes={
                str(seed): {"bind": "/var/lib/cloud/seed/nocloud", "mode": "ro"},
                **instance_mounts(self.env, role),
            },
            # As verify ran the image: its sysctls, its firewall loaded (CAP_NET_ADMIN), an init.
            **container_options.run_options(self.client, image.id, self.settings.name_prefix),
        )
        if role != self.env.spec.balanced_role:
            for other in range(len(self.env.zones)):
                if other != zone:
                    self.client.networks.get(self.network_name(other)).connect(container)
        container.start()
        container.reload()
        if role == "db" and self.routing_database():
            self.api.release(name, haproxy.DATABASE)  # held if an instance of this name was fenced
        return self._instance(container)

    def _seed(self, name: str, image: ImageRecord, user_data: str) -> Path:
        """A NoCloud seed folder; user-data may hold secrets, so only root reads it."""
        seed = self.folder / "seeds" / name
        seed.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(seed / "user-data", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(user_data)
        (seed / "meta-data").write_text(
            f"instance-id: {self.container_name(name)}-{image.version}\nlocal-hostname: {name}\n"
        )
        return seed

    @docker_errors_fail
    def check_user_data(self, image: ImageRecord, documents: list[UserData]) -> None:
        cloudinit.check(self.client, image.image, documents, f"kiln-{self.env.name}-schema")

    def peer_address(self, instance: str, zone: int = 0) -> str:
        return self.container_name(instance)  # Docker's DNS on every zone network it joins

    def lb_address(self, zone: int) -> str | None:
        """The load balancer's fixed address on zone's network, for instances that do not use
        Docker's DNS; None: Docker picks one, and containers reach it by name."""
        return None

    @docker_errors_fail
    def instances(self, role: str | None = None) -> list[Instance]:
        filters = {"label": [f"kiln.env={self.env.name}", "kiln.instance"]}
        if role:
            filters["label"].append(f"kiln.role={role}")
        # A container may be removed between listing and inspecting it (a rollout stops some).
        containers = self.client.containers.list(all=True, filters=filters, ignore_removed=True)
        found = [self._instance(c) for c in containers]
        return sorted(found, key=lambda i: (i.role, i.number))

    @docker_errors_fail
    def probe(self, instance: Instance, command: tuple[str, ...]) -> bool | None:
        try:
            container = self.client.containers.get(self.container_name(instance.name))
        except docker.errors.NotFound:
            return False
        return container.exec_run(list(command)).exit_code == 0

    @docker_errors_fail
    def channel(self, instance: Instance, secrets: list[str] | None = None) -> Channel:
        return channel_class("docker")(
            self.client.containers.get(self.container_name(instance.name)), secrets
        )

    @docker_errors_fail
    def missing_repositories(self, source: str) -> list[str]:
        """The volumes standing for off-site storage; a missing one would be created empty."""
        names = {volume.name for volume in self.client.volumes.list()}
        return [f"docker volume {name}" for name in repo_volumes(source).values() if name not in names]

    @docker_errors_fail
    def terminate(self, instance: Instance) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            container = self.client.containers.get(self.container_name(instance.name))
            stop(container)
            container.remove(force=True)
        shutil.rmtree(self.folder / "seeds" / instance.name, ignore_errors=True)

    def _instance(self, container) -> Instance:
        labels = container.labels
        zone = int(labels["kiln.zone"])
        networks = container.attrs["NetworkSettings"]["Networks"] or {}
        address = (networks.get(self.network_name(zone)) or {}).get("IPAddress", "")
        return Instance(
            name=labels["kiln.instance"],
            role=labels["kiln.role"],
            zone=zone,
            version=labels["kiln.version"],
            address=address,
            running=container.status == "running",
        )

    # ---- load balancer ----------------------------------------------------------------------

    @property
    def checks(self) -> haproxy.Checks:
        h = self.env.spec.health
        return haproxy.Checks(h.interval, h.rise, h.fall, h.slowstart)

    @functools.cached_property
    def backend_port(self) -> int:
        """Where the balanced role serves: the port of its `health` (role.yml), 80 without one."""
        health = RoleCatalog(self.settings).get(self.env.spec.balanced_role).spec.health
        return health.port if health else 80

    def lb_server(self, instance: Instance) -> haproxy.Server:
        """Outside the home zone (zone affinity) an instance is a backup server; with internal_tls
        it is reached over HTTPS (its certificate from first boot, see cloud-init/web.yml.j2)."""
        home = self.env.spec.frontend.home_zone
        backup = home is not None and self.env.zones[instance.zone] != home
        if self.env.spec.internal_tls:
            return haproxy.Server(instance.name, instance.address, haproxy.HTTPS_PORT, backup, tls=True)
        return haproxy.Server(instance.name, instance.address, self.backend_port, backup)

    @docker_errors_fail
    def lb_register(self, instance: Instance) -> None:
        self.api.add_server(self.lb_server(instance), self.checks)
        self.sync_lb_config()

    @docker_errors_fail
    def lb_drain(self, instance: Instance) -> None:
        self.api.drain(instance.name)
        self.sync_lb_config()

    @docker_errors_fail
    def lb_servers(self) -> dict[str, LbServer]:
        return {
            name: LbServer(name, s.healthy, s.lb_state, s.sessions, s.check, s.backup)
            for name, s in self.api.stats().items()
        }

    def routing_database(self) -> bool:
        """A standby exists, so the running LB routes the database connections."""
        return self.env.count("db") > 1 and self.api.ready()

    @docker_errors_fail
    def database_servers(self) -> dict[str, LbServer]:
        if not self.routing_database():
            return {}
        return {
            name: LbServer(name, s.healthy, s.lb_state, s.sessions, s.check, changed_ago=s.changed_ago)
            for name, s in self.api.stats(haproxy.DATABASE).items()
        }

    def database_hold(self, name: str) -> None:
        if self.routing_database():
            self.api.hold(name, haproxy.DATABASE)

    @docker_errors_fail
    def lb_deregister(self, name: str) -> None:
        self.api.delete_server(name)
        self.sync_lb_config()

    def sync_lb_config(self) -> None:
        """Rewrite haproxy.cfg with the servers in service now (none before the LB runs)."""
        stats = self.api.stats() if (self.lb_folder / "admin.sock").exists() and self.api.ready() else {}
        balanced = {i.name: i for i in self.instances(self.env.spec.balanced_role)}
        servers = [
            self.lb_server(balanced[name])
            for name, s in sorted(stats.items())
            if s.lb_state == "ready" and name in balanced
        ]
        page = maintenance_page(self.settings, self.env.spec)
        write_atomic(self.lb_folder / haproxy.MAINTENANCE_FILE, haproxy.maintenance_response(page))
        tls_spec = self.env.spec.frontend.tls
        https = (
            haproxy.Https(self.https_port() or haproxy.HTTPS_PORT, tls_spec.redirect) if tls_spec else None
        )
        dbs = self.env.count("db")
        # by name where Docker's DNS knows the instances (containers), by address where not (VMs)
        database = {f"db{n}": self.peer_address(f"db{n}") for n in range(1, dbs + 1)} if dbs > 1 else None
        text = haproxy.render_config(
            servers,
            port=80,
            health_path=self.env.spec.health.path,
            checks=self.checks,
            https=https,
            database=database,
            tls_to_servers=self.env.spec.internal_tls,
        )
        write_atomic(self.lb_folder / "haproxy.cfg", text)


def free_loopback_port() -> int:
    """A port free on 127.0.0.1 now (Docker publishes it a moment later)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
