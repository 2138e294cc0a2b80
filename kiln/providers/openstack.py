"""The openstack provider: Nova servers on one Neutron network per zone behind an Octavia LB.

Everything carries the environment's name: `kiln-<env>` for the router, security group and
load balancer (and its listener, pool and health monitor), `kiln-<env>-<zone>` for each zone's
network and subnet (tagged `kiln.env=<env>`), `kiln-<env>-<instance>` for servers (metadata
kiln.env, kiln.role, kiln.instance, kiln.version, kiln.zone), `kiln-<env>-instance-ca-<digest>`
for the Barbican secret holding the environment's CA (internal_tls). With `frontend.tls`, the
listener `kiln-<env>-https` terminates HTTPS with the PKCS12 bundle in the Barbican secret
`kiln-<env>-frontend-<digest>` (a certificate from the environment's CA, its key and the CA), and
the L7 policy `kiln-<env>-redirect` answers plain HTTP with a 301 to it. Images are Glance images
found by their kiln.* properties (kiln/targets/openstack.py). The cloud is a clouds.yaml entry.

No OpenStack exists where Kiln is developed: this module is tested only at the SDK boundary,
against an in-memory fake of the Connection proxies it calls (tests/unit/test_openstack_provider.py),
never against a real Nova, Neutron, Octavia, Glance or Barbican.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator

import keystoneauth1.exceptions
import openstack
import openstack.exceptions
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from kiln import cloudinit, tls
from kiln.cloudinit import UserData
from kiln.environments import Environment
from kiln.errors import KilnError, OperationFailed
from kiln.haproxy import HTTPS_PORT  # the web instances' with internal_tls
from kiln.images import ImageRecord
from kiln.providers import cloud
from kiln.providers.base import Instance, LbServer
from kiln.settings import Settings

USER_DATA_LIMIT = 65535  # bytes after base64: Nova's limit
APP_PORT = 80
GONE = ("DELETED", "SOFT_DELETED")


class OpenStackApi:
    """A Connection proxy (compute, network, ...) whose failures are one-line KilnErrors.

    The proxy is fetched per call (fetching it authenticates) and listings are read at once, so
    their errors surface here too. Messages name the cloud entry, never its credentials.
    """

    def __init__(self, conn, service: str, cloud: str):
        self._conn = conn
        self._service = service
        self._cloud = cloud

    def __getattr__(self, operation: str):
        def call(*args, **kwargs):
            try:
                result = getattr(getattr(self._conn, self._service), operation)(*args, **kwargs)
                return list(result) if isinstance(result, Iterator) else result
            except (keystoneauth1.exceptions.ConnectFailure, keystoneauth1.exceptions.ConnectTimeout):
                raise KilnError(
                    f"cannot reach OpenStack cloud '{self._cloud}': check its auth_url in clouds.yaml "
                    "(entry chosen by KILN_OPENSTACK_CLOUD or OS_CLOUD) and the network"
                ) from None
            except keystoneauth1.exceptions.Unauthorized:
                raise KilnError(
                    f"OpenStack cloud '{self._cloud}' refused the credentials: check clouds.yaml/secure.yaml"
                ) from None
            except (
                keystoneauth1.exceptions.MissingRequiredOptions,
                keystoneauth1.exceptions.MissingAuthPlugin,
            ):
                raise KilnError(
                    f"OpenStack cloud '{self._cloud}' has incomplete auth settings in clouds.yaml: "
                    "set auth_url, project and user (KILN_OPENSTACK_CLOUD or OS_CLOUD picks the entry)"
                ) from None
            except openstack.exceptions.ResourceFailure as exc:
                raise OperationFailed(f"OpenStack {operation} failed: {first_line(exc)}") from None
            except openstack.exceptions.ResourceTimeout as exc:
                raise OperationFailed(
                    f"OpenStack {operation}: {first_line(exc)} (KILN_CLOUD_TIMEOUT)"
                ) from None
            except (openstack.exceptions.SDKException, keystoneauth1.exceptions.ClientException) as exc:
                raise OperationFailed(f"OpenStack {operation} failed: {first_line(exc)}") from None

        return call


def first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def connect(settings: Settings):
    cloud = settings.openstack_cloud or None
    try:
        return openstack.connect(cloud=cloud)
    except openstack.exceptions.ConfigException as exc:
        raise KilnError(
            f"no usable OpenStack cloud '{cloud or 'from OS_CLOUD'}' ({first_line(exc)}): set "
            "KILN_OPENSTACK_CLOUD or OS_CLOUD to an entry of clouds.yaml"
        ) from None


class OpenStackProvider(cloud.CloudProvider):
    lb_service = "Octavia"
    terminates_tls = True
    image_target = "openstack"

    def __init__(self, settings: Settings, env: Environment, connection=None):
        super().__init__(settings, env)
        self.health_monitor()  # what Octavia would refuse, refused before anything is created
        self.frontend_port()
        self.tls_port()
        conn = connection if connection is not None else connect(settings)
        cloud = settings.openstack_cloud or getattr(conn.config, "name", None) or "default"
        self.compute = OpenStackApi(conn, "compute", cloud)
        self.network = OpenStackApi(conn, "network", cloud)
        self.lb = OpenStackApi(conn, "load_balancer", cloud)
        self.glance = OpenStackApi(conn, "image", cloud)
        self.barbican = OpenStackApi(conn, "key_manager", cloud)
        self.has_barbican = lambda: conn.has_service("key-manager")
        self.cloud_name = cloud

    # ---- names ------------------------------------------------------------------------------

    @property
    def base_name(self) -> str:
        return f"kiln-{self.env.name}"

    def zone_name(self, zone: int) -> str:
        return f"{self.base_name}-{self.env.zones[zone]}"

    def server_name(self, instance: str) -> str:
        return f"{self.base_name}-{instance}"

    @property
    def https_name(self) -> str:
        return f"{self.base_name}-https"

    @property
    def redirect_name(self) -> str:
        return f"{self.base_name}-redirect"

    @property
    def tag(self) -> str:
        return f"kiln.env={self.env.name}"

    # ---- infrastructure ---------------------------------------------------------------------

    def check_zones(self) -> None:
        """Every zone is a Nova availability zone of the cloud, or one line naming the bad one."""
        known = {z.name for z in self.compute.availability_zones()}
        for i, zone in enumerate(self.env.zones):
            if zone not in known:
                raise KilnError(
                    f"{self.env.file}: field 'zones[{i}]': '{zone}' is not a Nova availability zone of "
                    f"this cloud; known: {', '.join(sorted(known)) or 'none'}"
                )

    def ensure_networks(self) -> None:
        self.check_zones()
        router = self.network.find_router(self.base_name)
        if router is None:
            router = self.network.create_router(name=self.base_name)
            self.network.set_tags(router, [self.tag])
        attached = {
            ip["subnet_id"] for port in self.network.ports(device_id=router.id) for ip in port.fixed_ips or []
        }
        for zone in range(len(self.env.zones)):
            name = self.zone_name(zone)
            network = self.network.find_network(name)
            if network is None:
                network = self.network.create_network(name=name)
                self.network.set_tags(network, [self.tag])
            subnet = self.network.find_subnet(name)
            if subnet is None:
                subnet = self.network.create_subnet(
                    name=name, network_id=network.id, ip_version=4, cidr=cloud.zone_cidr(zone)
                )
                self.network.set_tags(subnet, [self.tag])
            # One router joins the zones: web instances reach the database in another zone.
            if subnet.id not in attached:
                self.network.add_interface_to_router(router, subnet=subnet.id)
        if self.network.find_security_group(self.base_name) is None:
            group = self.network.create_security_group(
                name=self.base_name, description=f"Kiln environment {self.env.name}"
            )
            self.network.set_tags(group, [self.tag])
            # The load balancer's members and the instances (web to db) reach each other.
            self.network.create_security_group_rule(
                security_group_id=group.id,
                direction="ingress",
                ethertype="IPv4",
                remote_ip_prefix=cloud.NETWORK_CIDR,
            )

    def subnet(self, zone: int):
        subnet = self.network.find_subnet(self.zone_name(zone))
        if subnet is None:
            raise KilnError(
                f"the networks of {self.env.name} are incomplete: run `invoke up {self.env.name}`"
            )
        return subnet

    def health_monitor(self) -> dict:
        """The pool's health monitor from the environment, within Octavia's limits."""
        h, within = self.env.spec.health, self.whole_within
        delay = within("health.interval", h.interval, 1, 3600)
        return {
            "type": "HTTPS" if self.env.spec.internal_tls else "HTTP",
            "http_method": "GET",
            "url_path": h.path,
            "expected_codes": "200",
            "delay": delay,
            "timeout": delay,  # Octavia: no longer than the delay
            "max_retries": within("health.rise", h.rise, 1, 10),
            "max_retries_down": within("health.fall", h.fall, 1, 10),
        }

    def ensure_lb(self, image: ImageRecord | None, user_data: str) -> None:
        port, monitor = self.frontend_port(), self.health_monitor()
        name = self.base_name
        # internal_tls: the amphora re-encrypts to the members and checks their certificates
        # against the environment's CA, which Octavia reads from Barbican
        ca_ref = self.instance_ca_ref()
        member_tls = {"tls_enabled": True, "ca_tls_container_ref": ca_ref} if ca_ref else {}
        certificate_ref = self.frontend_certificate_ref()
        lb = self.lb.find_load_balancer(name)
        if lb is None:
            lb = self.lb.create_load_balancer(name=name, vip_subnet_id=self.subnet(0).id)
        self.settle(lb.id)  # Octavia refuses changes (409) while the load balancer is PENDING_*
        listener = self.lb.find_listener(name)
        if listener is None:
            listener = self.lb.create_listener(
                name=name, loadbalancer_id=lb.id, protocol="HTTP", protocol_port=port
            )
            self.settle(lb.id)
        pool = self.lb.find_pool(name)
        if pool is None:
            pool = self.lb.create_pool(
                name=name, listener_id=listener.id, protocol="HTTP", lb_algorithm="ROUND_ROBIN", **member_tls
            )
            self.settle(lb.id)
        elif member_tls and pool.ca_tls_container_ref != member_tls["ca_tls_container_ref"]:
            self.lb.update_pool(pool, **member_tls)  # a rotated CA, or a pool made before it was checked
            self.settle(lb.id)
        existing = self.lb.find_health_monitor(name)
        if existing is None:
            self.lb.create_health_monitor(name=name, pool_id=pool.id, **monitor)
        else:  # the environment's health settings may have changed since
            self.lb.update_health_monitor(existing, **{k: v for k, v in monitor.items() if k != "type"})
        self.settle(lb.id)
        self.ensure_https(lb.id, pool.id, certificate_ref)
        self.ensure_redirect(lb.id, listener.id)
        self.delete_secrets(self.frontend_secret_prefix, keep=certificate_ref)  # renewed: the old one

    def ensure_https(self, lb_id: str, pool_id: str, certificate_ref: str | None) -> None:
        """The TERMINATED_HTTPS listener on frontend.tls.port, serving `certificate_ref` to the same
        pool as plain HTTP; removed (or moved) when frontend.tls is removed (or its port changed)."""
        listener, port = self.lb.find_listener(self.https_name), self.tls_port()
        if listener is not None and listener.protocol_port != port:
            self.lb.delete_listener(listener)
            self.settle(lb_id)
            listener = None
        if certificate_ref is None:
            return
        if listener is None:
            self.lb.create_listener(
                name=self.https_name,
                loadbalancer_id=lb_id,
                protocol="TERMINATED_HTTPS",
                protocol_port=port,
                default_pool_id=pool_id,
                default_tls_container_ref=certificate_ref,
            )
            self.settle(lb_id)
        elif listener.default_tls_container_ref != certificate_ref:
            self.lb.update_listener(listener, default_tls_container_ref=certificate_ref)
            self.settle(lb_id)

    def ensure_redirect(self, lb_id: str, listener_id: str) -> None:
        """With frontend.tls and its redirect, plain HTTP answers 301 to the HTTPS listener under
        the certificate's first name; else the L7 policy is gone and HTTP goes to the pool."""
        tls_spec = self.env.spec.frontend.tls
        policy = self.lb.find_l7_policy(self.redirect_name)
        if tls_spec is None or not tls_spec.redirect:
            if policy is not None:
                self.lb.delete_l7_policy(policy)
                self.settle(lb_id)
            return
        host = f"[{tls_spec.names[0]}]" if ":" in tls_spec.names[0] else tls_spec.names[0]  # IPv6
        prefix = f"https://{host}:{tls_spec.port}"
        if policy is None:
            self.lb.create_l7_policy(
                name=self.redirect_name,
                listener_id=listener_id,
                action="REDIRECT_PREFIX",
                redirect_prefix=prefix,
                redirect_http_code=301,
                position=1,
                # a policy without rules matches nothing: this rule matches every path
                rules=[{"type": "PATH", "compare_type": "STARTS_WITH", "value": "/"}],
            )
            self.settle(lb_id)
        elif policy.redirect_prefix != prefix:
            self.lb.update_l7_policy(policy, redirect_prefix=prefix)
            self.settle(lb_id)

    def frontend_certificate_ref(self) -> str | None:
        """The Barbican secret the HTTPS listener serves: the one it serves now, or a new one when
        that is due (kiln/tls.py: spent, other names, another CA). Asked before the load balancer
        exists, so a cloud without Barbican is refused before anything is made. The key is kept
        in Barbican only."""
        tls_spec = self.env.spec.frontend.tls
        if tls_spec is None:
            return None
        if not self.has_barbican():
            raise KilnError(
                f"{self.env.file}: field 'frontend.tls': Octavia reads the HTTPS certificate from "
                f"Barbican, and cloud '{self.cloud_name}' has no key-manager service: ask for Barbican, "
                "or remove frontend.tls"
            )
        ca = tls.authority(self.settings, self.env.name)
        listener = self.lb.find_listener(self.https_name)
        served = listener.default_tls_container_ref if listener is not None else None
        if served and not tls.leaf_due(self.bundled_certificate(served), ca, tls_spec.names):
            return served
        certificate_pem, key_pem = tls.issue_server(ca, tls_spec.names, tls_spec.days)
        certificate = x509.load_pem_x509_certificate(certificate_pem)
        bundle = pkcs12.serialize_key_and_certificates(
            name=self.https_name.encode(),
            key=serialization.load_pem_private_key(key_pem, None),
            cert=certificate,
            cas=[ca.certificate],
            encryption_algorithm=serialization.NoEncryption(),  # Octavia takes no passphrase
        )
        digest = certificate.fingerprint(hashes.SHA256()).hex()[:12]
        return self.barbican.create_secret(
            name=f"{self.frontend_secret_prefix}{digest}",
            secret_type="opaque",
            payload=base64.b64encode(bundle).decode(),
            payload_content_type="application/octet-stream",
            payload_content_encoding="base64",
        ).secret_ref

    def bundled_certificate(self, secret_ref: str) -> bytes | None:
        """The certificate (PEM) in the PKCS12 bundle of a Barbican secret, None when unreadable."""
        payload = self.barbican.get_secret(secret_ref.rstrip("/").rsplit("/", 1)[-1]).payload
        try:
            certificate = pkcs12.load_key_and_certificates(payload, None)[1]
        except (ValueError, TypeError):
            return None
        return certificate.public_bytes(serialization.Encoding.PEM) if certificate else None

    @property
    def frontend_secret_prefix(self) -> str:
        return f"{self.base_name}-frontend-"

    def delete_secrets(self, prefix: str, keep: str | None = None) -> list[str]:
        """Delete this environment's Barbican secrets named `prefix`..., but `keep`; their names."""
        if not self.has_barbican():
            return []
        removed = []
        for secret in self.barbican.secrets():
            if (secret.name or "").startswith(prefix) and secret.secret_ref != keep:
                self.barbican.delete_secret(secret)
                removed.append(f"secret {secret.name}")
        return removed

    def instance_ca_ref(self) -> str | None:
        """The environment's CA as a Barbican secret, for Octavia to check the members against:
        one per CA certificate, named by its digest (Barbican secrets cannot change). Asked before
        the load balancer exists, so a cloud without Barbican is refused before anything is made."""
        if not self.env.spec.internal_tls:
            return None
        if not self.has_barbican():
            raise KilnError(
                f"{self.env.file}: field 'internal_tls': Octavia checks the instances' certificates "
                f"against the environment's CA kept in Barbican, and cloud '{self.cloud_name}' has no "
                "key-manager service: ask for Barbican, or set internal_tls: false"
            )
        pem = tls.authority(self.settings, self.env.name).pem
        name = f"{self.ca_secret_prefix}{hashlib.sha256(pem).hexdigest()[:12]}"
        found = self.barbican.secrets(name=name)
        if found:
            return found[0].secret_ref
        made = self.barbican.create_secret(
            name=name, secret_type="certificate", payload=pem.decode(), payload_content_type="text/plain"
        )
        return made.secret_ref

    @property
    def ca_secret_prefix(self) -> str:
        return f"{self.base_name}-instance-ca-"

    def settle(self, lb_id: str) -> None:
        self.lb.wait_for_load_balancer(
            lb_id,
            status="ACTIVE",
            failures=["ERROR"],
            interval=self.settings.cloud_poll,
            wait=self.settings.cloud_timeout,
        )

    def frontend(self) -> str | None:
        lb = self.lb.find_load_balancer(self.base_name)
        return f"http://{lb.vip_address}:{self.env.spec.frontend.port}/" if lb else None

    def https_frontend(self) -> str | None:
        tls_port = self.tls_port()
        lb = self.lb.find_load_balancer(self.base_name) if tls_port else None
        return f"https://{lb.vip_address}:{tls_port}/" if lb else None

    def destroy(self) -> list[str]:
        removed = []
        servers = self.servers()
        for server in servers:
            self.compute.delete_server(server)
        for server in servers:
            self.compute.wait_for_delete(
                server, interval=self.settings.cloud_poll, wait=self.settings.cloud_timeout
            )
            removed.append(server.name)
        lb = self.lb.find_load_balancer(self.base_name)
        if lb is not None:
            self.lb.delete_load_balancer(lb, cascade=True)  # with its listener, pool, monitor, members
            cloud.wait_until(
                self.settings,
                f"load balancer {self.base_name} to go away",
                lambda: self.lb.find_load_balancer(self.base_name) is None,
            )
            removed.append(self.base_name)
        removed += self.delete_secrets(self.ca_secret_prefix)
        removed += self.delete_secrets(self.frontend_secret_prefix)
        subnets = self.network.subnets(tags=self.tag)
        for router in self.network.routers(tags=self.tag):
            for subnet in subnets:
                if any(
                    ip["subnet_id"] == subnet.id
                    for p in self.network.ports(device_id=router.id)
                    for ip in p.fixed_ips or []
                ):
                    self.network.remove_interface_from_router(router, subnet=subnet.id)
            self.network.delete_router(router)
            removed.append(f"router {router.name}")
        for subnet in subnets:
            self.network.delete_subnet(subnet)
            removed.append(f"subnet {subnet.name}")
        for network in self.network.networks(tags=self.tag):
            self.network.delete_network(network)
            removed.append(f"network {network.name}")
        for group in self.network.security_groups(tags=self.tag):
            self.network.delete_security_group(group)
            removed.append(f"security group {group.name}")
        return removed

    # ---- images and instances ---------------------------------------------------------------

    def image(self, role: str, version: str | None = None) -> ImageRecord:
        records = []
        for image in self.glance.images():
            props = image.properties or {}
            if props.get("kiln.role") == role and (not version or props.get("kiln.version") == version):
                records.append(image_record(image))
        return cloud.newest_deployable(
            records,
            role,
            version,
            kind="Glance image",
            place="",
            lookup="properties kiln.role, kiln.version",
            target="openstack",
            deployable=self.env.deployable,
        )

    def check_user_data(self, image: ImageRecord, documents: list[UserData]) -> None:
        # The image's own cloud-init cannot run here: YAML, header and Nova's size limit only.
        limit = USER_DATA_LIMIT * 3 // 4  # raw bytes that stay within the limit once base64-encoded
        cloudinit.check_offline(documents, limit, "Nova user-data")

    def peer_address(self, instance: str, zone: int = 0) -> str:
        server = self.server(instance)
        if server is not None:
            return self.instance(server).address
        return cloud.fixed_address(self.env, instance)

    def launch(self, role: str, number: int, image: ImageRecord, user_data: str) -> Instance:
        name = f"{role}{number}"
        zone = self.env.zone_of(number)
        network = self.network.find_network(self.zone_name(zone))
        if network is None:
            raise KilnError(
                f"the networks of {self.env.name} are incomplete: run `invoke up {self.env.name}`"
            )
        flavor = self.compute.find_flavor(self.settings.openstack_flavor)
        if flavor is None:
            known = ", ".join(sorted(f.name for f in self.compute.flavors()))
            raise KilnError(
                f"no Nova flavor '{self.settings.openstack_flavor}' (KILN_OPENSTACK_FLAVOR); known: {known}"
            )
        user_data = self.with_login(user_data)
        server = self.compute.create_server(
            name=self.server_name(name),
            image_id=image.id,
            flavor_id=flavor.id,
            availability_zone=self.env.zones[zone],
            networks=[{"uuid": network.id, "fixed_ip": cloud.fixed_address(self.env, name)}],
            security_groups=[{"name": self.base_name}],
            user_data=base64.b64encode(user_data.encode()).decode(),  # the compute proxy sends it as is
            metadata={
                "kiln.env": self.env.name,
                "kiln.role": role,
                "kiln.instance": name,
                "kiln.version": image.version,
                "kiln.zone": self.env.zones[zone],
            },
        )
        server = self.compute.wait_for_server(
            server,
            status="ACTIVE",
            failures=["ERROR"],
            interval=self.settings.cloud_poll,
            wait=self.settings.cloud_timeout,
        )
        return self.instance(server)

    def servers(self) -> list:
        """This environment's servers that are not deleted; Nova filters names by regex."""
        return [
            s
            for s in self.compute.servers(details=True, name=f"^{self.base_name}-")
            if (s.metadata or {}).get("kiln.env") == self.env.name
            and "kiln.instance" in (s.metadata or {})
            and s.status not in GONE
        ]

    def server(self, instance: str):
        found = [s for s in self.servers() if s.metadata["kiln.instance"] == instance]
        return found[0] if found else None

    def instances(self, role: str | None = None) -> list[Instance]:
        found = [self.instance(s) for s in self.servers() if not role or s.metadata.get("kiln.role") == role]
        return sorted(found, key=lambda i: (i.role, i.number))

    def machine_console(self, instance: Instance) -> tuple[str, str]:
        server = self.server(instance.name)
        if server is None or server.status != "ACTIVE":
            raise OperationFailed(f"{instance.name} of {self.env.name} is not running: no channel into it")
        return server.id, (self.compute.get_server_console_output(server) or {}).get("output") or ""

    def terminate(self, instance: Instance) -> None:
        server = self.server(instance.name)
        if server is None:
            return
        self.compute.delete_server(server)
        self.compute.wait_for_delete(
            server, interval=self.settings.cloud_poll, wait=self.settings.cloud_timeout
        )

    def instance(self, server) -> Instance:
        meta = server.metadata
        zone_name = meta.get("kiln.zone", "")
        if zone_name not in self.env.zones:
            raise KilnError(
                f"{self.env.file}: field 'zones': instance {meta['kiln.instance']} runs in '{zone_name}', "
                "which is not listed: add the zone back or terminate the instance"
            )
        zone = self.env.zones.index(zone_name)
        addresses = (server.addresses or {}).get(self.zone_name(zone)) or [{}]
        return Instance(
            name=meta["kiln.instance"],
            role=meta.get("kiln.role", ""),
            zone=zone,
            version=meta.get("kiln.version", ""),
            address=addresses[0].get("addr", ""),
            running=server.status == "ACTIVE",
        )

    # ---- load balancer ----------------------------------------------------------------------

    def pool(self):
        pool = self.lb.find_pool(self.base_name)
        if pool is None:
            raise KilnError(
                f"environment {self.env.name} has no load balancer: run `invoke up {self.env.name}`"
            )
        return pool

    def lb_id(self) -> str:
        return self.lb.find_load_balancer(self.base_name).id

    def lb_register(self, instance: Instance) -> None:
        pool = self.pool()
        if self.lb.find_member(instance.name, pool) is None:
            self.lb.create_member(
                pool,
                name=instance.name,
                address=instance.address,
                protocol_port=HTTPS_PORT if self.env.spec.internal_tls else APP_PORT,
                subnet_id=self.subnet(instance.zone).id,
                weight=1,
            )
            self.settle(self.lb_id())

    def lb_drain(self, instance: Instance) -> None:
        # Weight 0: Octavia sends no new connections; established ones continue until deleted.
        pool = self.pool()
        member = self.lb.find_member(instance.name, pool)
        if member is not None:
            self.lb.update_member(member, pool, weight=0)
            self.settle(self.lb_id())

    def lb_servers(self) -> dict[str, LbServer]:
        pool = self.lb.find_pool(self.base_name)
        if pool is None:
            return {}
        return {m.name: lb_server(m) for m in self.lb.members(pool)}

    def lb_deregister(self, name: str) -> None:
        pool = self.pool()
        member = self.lb.find_member(name, pool)
        if member is not None:
            self.lb.delete_member(member, pool)
            self.settle(self.lb_id())


def image_record(image) -> ImageRecord:
    props = image.properties or {}
    return ImageRecord(
        role=props["kiln.role"],
        version=props.get("kiln.version", ""),
        status=props.get("kiln.status", "baked"),
        image=image.id,
        id=image.id,
        labels={k: str(v) for k, v in props.items() if k.startswith("kiln.")},
    )


def lb_server(member) -> LbServer:
    """Octavia counts no connections per member: a weight-0 member counts as one session until it
    is deleted, so the engine waits out the environment's drain_timeout before removing it."""
    draining = member.weight == 0
    if draining:
        state = "drain"
    elif member.is_admin_state_up is False:
        state = "maint"
    else:
        state = "ready"
    status = member.operating_status or "UNKNOWN"
    return LbServer(
        name=member.name,
        healthy=status == "ONLINE",
        state=state,
        sessions=1 if draining else 0,
        check=status.lower(),
    )
