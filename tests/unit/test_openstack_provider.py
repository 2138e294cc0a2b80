"""The openstack provider at the SDK boundary: an in-memory fake of the Connection proxies it uses.

No OpenStack exists here. The fake keeps objects in dicts and records every change in order; it
does not reproduce Nova, Neutron or Octavia behaviour (members are ONLINE as soon as created,
nothing is ever PENDING_*). These tests check which calls the provider makes, with what.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import itertools
import re

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs12

from kiln import tls
from kiln.environments import Environment, EnvironmentSpec, Frontend, FrontendTls, HealthCheck, RolloutPolicy
from kiln.errors import KilnError, OperationFailed
from kiln.providers.openstack import OpenStackProvider
from kiln.settings import Settings
from tests.conftest import REPO

ZONES = ["nova-a", "nova-b"]
SECRET = "kilntest-os-secret-never-printed"


class Res:
    """A resource: attributes, like openstacksdk's, with the fields the provider reads."""

    def __init__(self, **attrs):
        self.__dict__.update(attrs)

    def __repr__(self):
        return f"Res({self.__dict__.get('name')})"


class FakeCloud:
    """Listings iterate over snapshots: the rollout engine launches and terminates in threads."""

    def __init__(self):
        self.ids = itertools.count(1)
        self.calls: list[tuple[str, str]] = []  # (operation, name) of every change, in order
        kinds = (
            "network subnet router port sg rule server image lb listener l7policy pool monitor member secret"
        )
        self.objects: dict[str, dict[str, Res]] = {kind: {} for kind in kinds.split()}

    def add(self, kind: str, operation: str, **attrs) -> Res:
        res = Res(id=f"{kind}-{next(self.ids)}", **attrs)
        self.objects[kind][res.id] = res
        self.calls.append((operation, attrs.get("name", res.id)))
        return res

    def remove(self, kind: str, res: Res, operation: str) -> None:
        self.objects[kind].pop(res.id)
        self.calls.append((operation, res.name))

    def find(self, kind: str, name: str) -> Res | None:
        found = [r for r in list(self.objects[kind].values()) if name in (r.name, r.id)]
        return found[0] if found else None

    def tagged(self, kind: str, tags: str) -> list[Res]:
        return [r for r in list(self.objects[kind].values()) if tags in getattr(r, "tags", [])]


class FakeNetwork:
    def __init__(self, cloud: FakeCloud):
        self.c = cloud

    def find_router(self, name):
        return self.c.find("router", name)

    def create_router(self, name):
        return self.c.add("router", "create_router", name=name, tags=[])

    def set_tags(self, res, tags):
        res.tags = list(tags)
        return res

    def ports(self, device_id):
        return (p for p in list(self.c.objects["port"].values()) if p.device_id == device_id)

    def find_network(self, name):
        return self.c.find("network", name)

    def create_network(self, name):
        return self.c.add("network", "create_network", name=name, tags=[])

    def find_subnet(self, name):
        return self.c.find("subnet", name)

    def create_subnet(self, name, network_id, ip_version, cidr):
        return self.c.add("subnet", "create_subnet", name=name, network_id=network_id, cidr=cidr, tags=[])

    def add_interface_to_router(self, router, subnet):
        self.c.add(
            "port",
            "add_interface_to_router",
            name=f"{router.name}:{subnet}",
            device_id=router.id,
            fixed_ips=[{"subnet_id": subnet}],
        )

    def remove_interface_from_router(self, router, subnet):
        [port] = [p for p in self.ports(router.id) if p.fixed_ips[0]["subnet_id"] == subnet]
        self.c.remove("port", port, "remove_interface_from_router")

    def find_security_group(self, name):
        return self.c.find("sg", name)

    def create_security_group(self, name, description):
        return self.c.add("sg", "create_security_group", name=name, tags=[])

    def create_security_group_rule(self, **attrs):
        return self.c.add("rule", "create_security_group_rule", **attrs)

    def subnets(self, tags):
        return iter(self.c.tagged("subnet", tags))

    def routers(self, tags):
        return iter(self.c.tagged("router", tags))

    def networks(self, tags):
        return iter(self.c.tagged("network", tags))

    def security_groups(self, tags):
        return iter(self.c.tagged("sg", tags))

    def delete_router(self, router):
        assert not list(self.ports(router.id)), "Neutron refuses a router with interfaces"
        self.c.remove("router", router, "delete_router")

    def delete_subnet(self, subnet):
        assert not any(
            p.fixed_ips[0]["subnet_id"] == subnet.id for p in list(self.c.objects["port"].values())
        )
        self.c.remove("subnet", subnet, "delete_subnet")

    def delete_network(self, network):
        assert not any(s.network_id == network.id for s in self.c.objects["subnet"].values())
        self.c.remove("network", network, "delete_network")

    def delete_security_group(self, group):
        self.c.remove("sg", group, "delete_security_group")


HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKilnFakeHostKeyForTheOpenStackTestsOnly0000"
CONSOLE_KEYS = f"-----BEGIN SSH HOST KEY KEYS-----\n{HOST_KEY} root@web1\n-----END SSH HOST KEY KEYS-----"


class FakeCompute:
    def __init__(self, cloud: FakeCloud):
        self.c = cloud

    def availability_zones(self):
        return iter([Res(name=zone) for zone in ZONES])

    def find_flavor(self, name):
        return Res(id="flavor-1", name=name) if name == "m1.small" else None

    def flavors(self):
        return iter([Res(id="flavor-1", name="m1.small")])

    def create_server(self, name, networks, **attrs):
        network = self.c.objects["network"][networks[0]["uuid"]]
        addresses = {network.name: [{"addr": networks[0]["fixed_ip"]}]}
        return self.c.add(
            "server",
            "create_server",
            name=name,
            networks=networks,
            addresses=addresses,
            status="BUILD",
            **attrs,
        )

    def wait_for_server(self, server, status, failures, interval, wait):
        server.status = status
        return server

    def servers(self, details, name):
        return (s for s in list(self.c.objects["server"].values()) if re.match(name, s.name))

    def get_server_console_output(self, server):
        """What cloud-init's keys_to_console prints at first boot, among other lines."""
        return {"output": f"[  OK  ] Started ssh.service\n{CONSOLE_KEYS}\n{server.name} login:"}

    def delete_server(self, server):
        self.c.remove("server", server, "delete_server")

    def wait_for_delete(self, server, interval, wait):
        return server


class FakeImage:
    def __init__(self, cloud: FakeCloud):
        self.c = cloud

    def images(self):
        return iter(list(self.c.objects["image"].values()))


class FakeLoadBalancer:
    def __init__(self, cloud: FakeCloud):
        self.c = cloud

    def find_load_balancer(self, name):
        return self.c.find("lb", name)

    def create_load_balancer(self, name, vip_subnet_id):
        return self.c.add(
            "lb", "create_load_balancer", name=name, vip_subnet_id=vip_subnet_id, vip_address="10.42.0.5"
        )

    def wait_for_load_balancer(self, lb_id, status, failures, interval, wait):
        self.c.calls.append(("wait_for_load_balancer", self.c.objects["lb"][lb_id].name))

    def find_listener(self, name):
        return self.c.find("listener", name)

    def create_listener(self, **attrs):
        return self.c.add("listener", "create_listener", **attrs)

    def update_listener(self, listener, **attrs):
        listener.__dict__.update(attrs)
        self.c.calls.append(("update_listener", listener.name))

    def delete_listener(self, listener):
        self.c.remove("listener", listener, "delete_listener")

    def find_l7_policy(self, name):
        return self.c.find("l7policy", name)

    def create_l7_policy(self, **attrs):
        return self.c.add("l7policy", "create_l7_policy", **attrs)

    def update_l7_policy(self, policy, **attrs):
        policy.__dict__.update(attrs)
        self.c.calls.append(("update_l7_policy", policy.name))

    def delete_l7_policy(self, policy):
        self.c.remove("l7policy", policy, "delete_l7_policy")

    def find_pool(self, name):
        return self.c.find("pool", name)

    def create_pool(self, **attrs):
        return self.c.add("pool", "create_pool", **{"ca_tls_container_ref": None, **attrs})

    def update_pool(self, pool, **attrs):
        pool.__dict__.update(attrs)
        self.c.calls.append(("update_pool", pool.name))

    def find_health_monitor(self, name):
        return self.c.find("monitor", name)

    def create_health_monitor(self, **attrs):
        return self.c.add("monitor", "create_health_monitor", **attrs)

    def update_health_monitor(self, monitor, **attrs):
        monitor.__dict__.update(attrs)
        self.c.calls.append(("update_health_monitor", monitor.name))

    def find_member(self, name, pool):
        found = [m for m in self.members(pool) if m.name == name]
        return found[0] if found else None

    def members(self, pool):
        return (m for m in list(self.c.objects["member"].values()) if m.pool_id == pool.id)

    def create_member(self, pool, **attrs):
        return self.c.add(
            "member",
            "create_member",
            pool_id=pool.id,
            operating_status="ONLINE",
            is_admin_state_up=True,
            **attrs,
        )

    def update_member(self, member, pool, **attrs):
        member.__dict__.update(attrs)
        self.c.calls.append(("update_member", member.name))

    def delete_member(self, member, pool):
        self.c.remove("member", member, "delete_member")

    def delete_load_balancer(self, lb, cascade):
        assert cascade
        for kind in ("member", "monitor", "pool", "l7policy", "listener"):
            self.c.objects[kind].clear()
        self.c.remove("lb", lb, "delete_load_balancer")


class FakeKeyManager:
    def __init__(self, cloud: FakeCloud):
        self.c = cloud

    def secrets(self, **query):
        return (s for s in list(self.c.objects["secret"].values()) if query.get("name", s.name) == s.name)

    def create_secret(self, **attrs):
        made = self.c.add("secret", "create_secret", **attrs)
        made.secret_ref = f"https://barbican.example/v1/secrets/{made.id}"
        return made

    def get_secret(self, secret_id):
        """As the SDK's: the payload as Barbican returns it, raw bytes for a non-text type (a
        base64-encoded upload is stored decoded)."""
        secret = self.c.objects["secret"][secret_id]
        payload = secret.payload
        if getattr(secret, "payload_content_encoding", None) == "base64":
            payload = base64.b64decode(payload)
        return Res(**{**secret.__dict__, "payload": payload})

    def delete_secret(self, secret):
        self.c.remove("secret", secret, "delete_secret")


class FakeConnection:
    def __init__(self, services=("compute", "network", "image", "load-balancer", "key-manager")):
        self.services = services
        self.cloud = FakeCloud()
        self.config = Res(name="fake")
        self.network = FakeNetwork(self.cloud)
        self.compute = FakeCompute(self.cloud)
        self.image = FakeImage(self.cloud)
        self.load_balancer = FakeLoadBalancer(self.cloud)
        self.key_manager = FakeKeyManager(self.cloud)

    def has_service(self, service_type):
        return service_type in self.services


def make_env(drain_timeout: float = 30, zones: list[str] = ZONES, **health) -> Environment:
    spec = EnvironmentSpec(
        provider="openstack",
        zones=list(zones),
        instances={"web": 2, "db": 1},
        frontend=Frontend(8080),
        health=HealthCheck(
            **{"path": "/healthz", "interval": 5, "rise": 3, "fall": 2, "timeout": 60, **health}
        ),
        rollout=RolloutPolicy(drain_timeout=drain_timeout),
    )
    return Environment("ostest", spec, "environments/ostest.yml")


@pytest.fixture
def conn():
    return FakeConnection()


@pytest.fixture
def provider(conn, tmp_path):
    return OpenStackProvider(Settings(state_dir=tmp_path, cloud_poll=0.01, cloud_timeout=5), make_env(), conn)


def glance(conn, role, version, status, built):
    props = {"kiln.role": role, "kiln.version": version, "kiln.status": status, "kiln.built": built}
    return conn.cloud.add("image", "upload", name=f"kiln-{role}-{version}", properties=props, status="active")


def changes(conn, *operations):
    return [c for c in conn.cloud.calls if c[0] in operations]


def test_networks_are_created_once(conn, provider):
    provider.ensure_networks()
    first = list(conn.cloud.calls)
    provider.ensure_networks()
    assert conn.cloud.calls == first
    subnets = {s.name: s.cidr for s in conn.cloud.objects["subnet"].values()}
    assert subnets == {"kiln-ostest-nova-a": "10.42.0.0/20", "kiln-ostest-nova-b": "10.42.16.0/20"}
    assert [c[0] for c in first].count("add_interface_to_router") == 2
    [rule] = conn.cloud.objects["rule"].values()
    assert (rule.direction, rule.remote_ip_prefix) == ("ingress", "10.42.0.0/16")
    assert all("kiln.env=ostest" in n.tags for n in conn.cloud.objects["network"].values())


def test_load_balancer_and_health_monitor_follow_the_environment(conn, provider):
    provider.ensure_networks()
    provider.ensure_lb(None, "")
    provider.ensure_lb(None, "")
    [lb] = conn.cloud.objects["lb"].values()
    assert lb.vip_subnet_id == conn.cloud.find("subnet", "kiln-ostest-nova-a").id
    [listener] = conn.cloud.objects["listener"].values()
    assert (listener.protocol, listener.protocol_port, listener.loadbalancer_id) == ("HTTP", 8080, lb.id)
    [pool] = conn.cloud.objects["pool"].values()
    assert pool.listener_id == listener.id
    [monitor] = conn.cloud.objects["monitor"].values()
    assert monitor.pool_id == pool.id
    assert (monitor.type, monitor.url_path, monitor.delay, monitor.max_retries, monitor.max_retries_down) == (
        "HTTP",
        "/healthz",
        5,
        3,
        2,
    )
    assert monitor.timeout <= monitor.delay
    created = ("create_load_balancer", "create_listener", "create_pool", "create_health_monitor")
    creates = [c for c in conn.cloud.calls if c[0] in created]
    assert [c[0] for c in creates] == [
        "create_load_balancer",
        "create_listener",
        "create_pool",
        "create_health_monitor",
    ]
    # Octavia refuses the next change until the load balancer is ACTIVE again: wait after each.
    sequence = [
        c[0] for c in conn.cloud.calls if c[0] in ("create_listener", "create_pool", "wait_for_load_balancer")
    ]
    assert sequence[:4] == [
        "wait_for_load_balancer",
        "create_listener",
        "wait_for_load_balancer",
        "create_pool",
    ]
    assert provider.frontend() == "http://10.42.0.5:8080/"


def tls_provider(conn, project) -> OpenStackProvider:
    plain = make_env()
    env = Environment(plain.name, dataclasses.replace(plain.spec, internal_tls=True), plain.file)
    settings = Settings(project_root=project, state_dir=project / ".kiln", cloud_poll=0.01, cloud_timeout=5)
    return OpenStackProvider(settings, env, conn)


def test_with_internal_tls_the_pool_checks_the_members_against_the_environment_ca(conn, tmp_path):
    """The amphora re-encrypts to the web instances' HTTPS (443), checks them over HTTPS, and
    verifies their certificates against the environment's CA, which Octavia reads from Barbican."""
    provider = tls_provider(conn, tmp_path)
    provider.ensure_networks()
    provider.ensure_lb(None, "")
    provider.ensure_lb(None, "")  # converges: no second secret, no pool update
    [pool] = conn.cloud.objects["pool"].values()
    [monitor] = conn.cloud.objects["monitor"].values()
    [secret] = conn.cloud.objects["secret"].values()
    assert (pool.protocol, pool.tls_enabled, monitor.type) == ("HTTP", True, "HTTPS")
    assert pool.ca_tls_container_ref == secret.secret_ref
    ca_pem = (tmp_path / "secrets" / "ostest.ca.pem").read_text()
    assert (secret.secret_type, secret.payload) == ("certificate", ca_pem)
    assert "PRIVATE KEY" not in secret.payload
    assert [c[0] for c in changes(conn, "create_secret", "create_pool")] == ["create_secret", "create_pool"]
    assert not changes(conn, "update_pool")
    image = provider.image(
        "web", glance(conn, "web", "1.0", "verified", "2026-01-01T00:00:00Z").properties["kiln.version"]
    )
    provider.lb_register(provider.launch("web", 1, image, "#cloud-config\nhostname: web1\n"))
    [member] = conn.cloud.objects["member"].values()
    assert member.protocol_port == 443


def test_a_new_environment_ca_gets_its_own_secret_and_the_pool_follows(conn, tmp_path):
    before = tls_provider(conn, tmp_path / "first")
    before.ensure_networks()
    before.ensure_lb(None, "")
    first = {s.secret_ref for s in conn.cloud.objects["secret"].values()}
    tls_provider(conn, tmp_path / "second").ensure_lb(None, "")  # another checkout's CA: a rotation
    [pool] = conn.cloud.objects["pool"].values()
    [new_ref] = {s.secret_ref for s in conn.cloud.objects["secret"].values()} - first
    assert pool.ca_tls_container_ref == new_ref
    assert changes(conn, "update_pool") == [("update_pool", "kiln-ostest")]
    removed = tls_provider(conn, tmp_path / "second").destroy()
    assert not conn.cloud.objects["secret"]
    assert sum(r.startswith("secret kiln-ostest-instance-ca-") for r in removed) == 2


def test_internal_tls_on_a_cloud_without_barbican_is_refused_before_anything_is_made(tmp_path):
    conn = FakeConnection(services=("compute", "network", "image", "load-balancer"))
    provider = tls_provider(conn, tmp_path)
    provider.ensure_networks()
    made = list(conn.cloud.calls)
    with pytest.raises(KilnError, match=r"field 'internal_tls': .* cloud 'fake' has no key-manager service"):
        provider.ensure_lb(None, "")
    assert conn.cloud.calls == made


NAMES = ["shop.example.test", "10.42.0.99"]
CHANGES = ("create_", "update_", "delete_", "add_", "remove_", "set_")


def https_provider(conn, project, port=8443, names=NAMES, days=90, redirect=True) -> OpenStackProvider:
    plain = make_env()
    frontend = dataclasses.replace(plain.spec.frontend, tls=FrontendTls(port, list(names), days, redirect))
    env = Environment(plain.name, dataclasses.replace(plain.spec, frontend=frontend), plain.file)
    settings = Settings(project_root=project, state_dir=project / ".kiln", cloud_poll=0.01, cloud_timeout=5)
    return OpenStackProvider(settings, env, conn)


def made_changes(conn) -> list[tuple[str, str]]:
    """The changes made, but the health monitor's: ensure_lb re-applies its settings every time."""
    return [c for c in conn.cloud.calls if c[0].startswith(CHANGES) and c[0] != "update_health_monitor"]


def frontend_secrets(conn) -> list:
    return [s for s in conn.cloud.objects["secret"].values() if s.name.startswith("kiln-ostest-frontend-")]


def bundle_of(conn, secret):
    """The secret's PKCS12 bundle as Octavia reads it: (key, certificate, CA certificates)."""
    return pkcs12.load_key_and_certificates(base64.b64decode(secret.payload), None)


def test_https_listener_serves_a_pkcs12_bundle_of_the_environment_ca_from_barbican(conn, tmp_path):
    provider = https_provider(conn, tmp_path)
    provider.ensure_networks()
    provider.ensure_lb(None, "")
    [secret] = frontend_secrets(conn)
    assert re.fullmatch(r"kiln-ostest-frontend-[0-9a-f]{12}", secret.name)
    assert (secret.secret_type, secret.payload_content_type, secret.payload_content_encoding) == (
        "opaque",
        "application/octet-stream",
        "base64",
    )
    key, leaf, cas = bundle_of(conn, secret)
    ca = x509.load_pem_x509_certificate((tmp_path / "secrets" / "ostest.ca.pem").read_bytes())
    leaf.verify_directly_issued_by(ca)
    assert list(leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value) == (
        tls.subject_names(NAMES)
    )
    assert key.public_key() == leaf.public_key() and cas == [ca]

    http = conn.cloud.find("listener", "kiln-ostest")
    https = conn.cloud.find("listener", "kiln-ostest-https")
    [pool] = conn.cloud.objects["pool"].values()
    assert (https.protocol, https.protocol_port, https.loadbalancer_id) == (
        "TERMINATED_HTTPS",
        8443,
        http.loadbalancer_id,
    )
    assert (https.default_pool_id, https.default_tls_container_ref) == (pool.id, secret.secret_ref)
    [policy] = conn.cloud.objects["l7policy"].values()
    assert (policy.listener_id, policy.action, policy.redirect_prefix, policy.redirect_http_code) == (
        http.id,
        "REDIRECT_PREFIX",
        "https://shop.example.test:8443",
        301,
    )
    assert policy.rules == [{"type": "PATH", "compare_type": "STARTS_WITH", "value": "/"}]
    assert provider.https_frontend() == "https://10.42.0.5:8443/"
    # The key went to Barbican only: nothing in the project (its state folder included) holds it.
    assert [f for f in tmp_path.rglob("*") if f.is_file() and b"PRIVATE KEY" in f.read_bytes()] == []


def test_a_second_ensure_lb_changes_nothing(conn, tmp_path):
    https_provider(conn, tmp_path).ensure_networks()
    https_provider(conn, tmp_path).ensure_lb(None, "")
    made = made_changes(conn)
    https_provider(conn, tmp_path).ensure_lb(None, "")  # a new process: nothing remembered but the cloud
    assert made_changes(conn) == made


def test_the_redirect_and_the_https_listener_follow_the_environment(conn, tmp_path):
    https_provider(conn, tmp_path, redirect=False).ensure_networks()
    https_provider(conn, tmp_path, redirect=False).ensure_lb(None, "")
    assert not conn.cloud.objects["l7policy"] and conn.cloud.find("listener", "kiln-ostest-https")

    https_provider(conn, tmp_path, redirect=True).ensure_lb(None, "")
    [policy] = conn.cloud.objects["l7policy"].values()
    assert policy.redirect_prefix == "https://shop.example.test:8443"
    https_provider(conn, tmp_path, names=["::1"]).ensure_lb(None, "")
    assert policy.redirect_prefix == "https://[::1]:8443"

    plain = OpenStackProvider(https_provider(conn, tmp_path).settings, make_env(), conn)  # tls removed
    plain.ensure_lb(None, "")
    assert [listener.name for listener in conn.cloud.objects["listener"].values()] == ["kiln-ostest"]
    assert not conn.cloud.objects["l7policy"] and not frontend_secrets(conn)
    assert plain.https_frontend() is None


def test_a_due_certificate_gets_a_new_secret_the_listener_follows_then_the_old_goes(
    conn, tmp_path, monkeypatch
):
    issued_at = tls.now() - datetime.timedelta(days=2, hours=1)
    with monkeypatch.context() as clock:
        clock.setattr(tls, "now", lambda: issued_at)  # a 3-day leaf issued 2 days and an hour ago
        https_provider(conn, tmp_path, days=3).ensure_networks()
        https_provider(conn, tmp_path, days=3).ensure_lb(None, "")
    [old] = frontend_secrets(conn)
    conn.cloud.calls.clear()
    https_provider(conn, tmp_path, days=3).ensure_lb(None, "")
    [new] = frontend_secrets(conn)
    assert new.name != old.name
    assert conn.cloud.find("listener", "kiln-ostest-https").default_tls_container_ref == new.secret_ref
    assert made_changes(conn) == [
        ("create_secret", new.name),
        ("update_listener", "kiln-ostest-https"),
        ("delete_secret", old.name),
    ]
    assert bundle_of(conn, new)[1].not_valid_after_utc > bundle_of(conn, old)[1].not_valid_after_utc

    https_provider(conn, tmp_path, days=3, names=["www.example.test"]).ensure_lb(None, "")  # other names
    [renamed] = frontend_secrets(conn)
    leaf = bundle_of(conn, renamed)[1]
    assert leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName
    ) == ["www.example.test"]


def test_frontend_tls_on_a_cloud_without_barbican_is_refused_before_anything_is_made(tmp_path):
    conn = FakeConnection(services=("compute", "network", "image", "load-balancer"))
    provider = https_provider(conn, tmp_path)
    provider.ensure_networks()
    made = list(conn.cloud.calls)
    with pytest.raises(KilnError) as caught:
        provider.ensure_lb(None, "")
    assert str(caught.value) == (
        "environments/ostest.yml: field 'frontend.tls': Octavia reads the HTTPS certificate from "
        "Barbican, and cloud 'fake' has no key-manager service: ask for Barbican, or remove frontend.tls"
    )
    assert conn.cloud.calls == made


def test_an_https_port_of_0_is_refused_in_one_line(conn, tmp_path):
    with pytest.raises(KilnError) as caught:
        https_provider(conn, tmp_path, port=0)
    assert str(caught.value) == (
        "environments/ostest.yml: field 'frontend.tls.port': an Octavia listener needs a fixed port"
    )
    assert conn.cloud.calls == []


def test_destroy_removes_the_frontend_secrets_after_the_load_balancer(conn, tmp_path):
    provider = https_provider(conn, tmp_path)
    provider.ensure_networks()
    provider.ensure_lb(None, "")
    [secret] = frontend_secrets(conn)
    conn.cloud.calls.clear()
    removed = provider.destroy()
    order = [c for c in made_changes(conn) if c[0] in ("delete_load_balancer", "delete_secret")]
    assert order == [("delete_load_balancer", "kiln-ostest"), ("delete_secret", secret.name)]
    assert f"secret {secret.name}" in removed
    assert not conn.cloud.objects["secret"] and not conn.cloud.objects["l7policy"]


def test_unknown_zone_names_the_field(conn, tmp_path):
    env = make_env(zones=["nova-a", "nova-q"])
    with pytest.raises(KilnError, match=r"field 'zones\[1\]': 'nova-q' is not a Nova availability zone"):
        OpenStackProvider(Settings(state_dir=tmp_path), env, conn).ensure_networks()
    assert conn.cloud.calls == []


def test_settings_octavia_refuses_are_refused_before_anything_changes(conn, tmp_path):
    with pytest.raises(KilnError, match=r"field 'health.interval': 0.5 is outside Octavia's whole 1-3600"):
        OpenStackProvider(Settings(state_dir=tmp_path), make_env(interval=0.5), conn)
    assert conn.cloud.calls == []


def test_image_lookup_by_properties_refuses_unverified(conn, provider):
    glance(conn, "web", "1.0", "verified", "2026-01-01T00:00:00Z")
    newest = glance(conn, "web", "1.1", "promoted", "2026-02-01T00:00:00Z")
    glance(conn, "web", "1.2", "baked", "2026-03-01T00:00:00Z")
    assert provider.image("web").id == newest.id
    assert provider.image("web", "1.0").version == "1.0"
    refused = r"no verified or promoted Glance image of web version 1.2 \(found: baked\)"
    with pytest.raises(KilnError, match=refused):
        provider.image("web", "1.2")
    glance(conn, "web", "1.3", "rejected", "2026-03-02T00:00:00Z")
    with pytest.raises(KilnError, match=r"^web version 1.3 was rejected by verification: it may not be"):
        provider.image("web", "1.3")
    with pytest.raises(KilnError, match=r"no Glance image of db .*`invoke bake db --target openstack`"):
        provider.image("db")


def test_launch_drain_deregister_and_servers(conn, provider):
    provider.ensure_networks()
    provider.ensure_lb(None, "")
    image = provider.image(
        "web", glance(conn, "web", "1.0", "verified", "2026-01-01T00:00:00Z").properties["kiln.version"]
    )
    assert provider.peer_address("web1") == "10.42.17.11"
    web1 = provider.launch("web", 1, image, "#cloud-config\nhostname: web1\n")
    assert (web1.name, web1.zone, web1.address, web1.running) == ("web1", 1, "10.42.17.11", True)
    server = conn.cloud.find("server", "kiln-ostest-web1")
    assert server.availability_zone == "nova-b"
    assert server.networks[0]["uuid"] == conn.cloud.find("network", "kiln-ostest-nova-b").id
    sent = base64.b64decode(server.user_data).decode()
    assert sent.startswith("#cloud-config\n") and yaml.safe_load(sent)["hostname"] == "web1"
    [login] = yaml.safe_load(sent)["users"]  # the SSH channel's account, with the environment's key
    assert login["name"] == "kiln" and login["ssh_authorized_keys"] == [provider.identity.public_key()]
    assert server.metadata == {
        "kiln.env": "ostest",
        "kiln.role": "web",
        "kiln.instance": "web1",
        "kiln.version": "1.0",
        "kiln.zone": "nova-b",
    }
    assert provider.instances() == [web1] and provider.instances("db") == []

    channel = provider.channel(web1)  # SSH to the fixed address; the host key pinned from the console
    assert (channel.target.host, channel.alias) == ("10.42.17.11", server.id)
    assert provider.identity.known_hosts.read_text() == f"{server.id} {HOST_KEY}\n"

    provider.lb_register(web1)
    provider.lb_register(web1)  # once only
    [member] = conn.cloud.objects["member"].values()
    assert (member.address, member.protocol_port, member.weight) == ("10.42.17.11", 80, 1)
    assert member.subnet_id == conn.cloud.find("subnet", "kiln-ostest-nova-b").id
    server_state = provider.lb_servers()["web1"]
    assert (server_state.healthy, server_state.state, server_state.sessions) == (True, "ready", 0)

    provider.lb_drain(web1)
    assert member.weight == 0 and "web1" in [m.name for m in conn.cloud.objects["member"].values()]
    drained = provider.lb_servers()["web1"]
    assert (drained.state, drained.sessions) == ("drain", 1)  # no per-member count: waits out the drain

    provider.lb_deregister("web1")
    assert provider.lb_servers() == {}
    assert changes(conn, "update_member", "delete_member") == [
        ("update_member", "web1"),
        ("delete_member", "web1"),
    ]
    provider.lb_deregister("web1")  # absent is fine

    provider.terminate(web1)
    provider.terminate(web1)
    assert provider.instances() == []


def test_lb_servers_maps_operating_status(conn, provider):
    provider.ensure_networks()
    provider.ensure_lb(None, "")
    pool = conn.cloud.find("pool", "kiln-ostest")
    for name, status, weight, up in [("web1", "ERROR", 1, True), ("web2", "NO_MONITOR", 1, False)]:
        conn.load_balancer.create_member(pool, name=name, weight=weight, address="", protocol_port=80)
        member = conn.load_balancer.find_member(name, pool)
        member.operating_status, member.is_admin_state_up = status, up
    servers = provider.lb_servers()
    assert (servers["web1"].healthy, servers["web1"].state, servers["web1"].check) == (
        False,
        "ready",
        "error",
    )
    assert (servers["web2"].healthy, servers["web2"].state) == (False, "maint")


def test_destroy_removes_in_dependency_order(conn, provider):
    provider.ensure_networks()
    provider.ensure_lb(None, "")
    image = provider.image(
        "db", glance(conn, "db", "1.0", "verified", "2026-01-01T00:00:00Z").properties["kiln.version"]
    )
    provider.launch("db", 1, image, "#cloud-config\n")
    conn.cloud.calls.clear()
    removed = provider.destroy()
    order = [c[0] for c in conn.cloud.calls if c[0] != "wait_for_load_balancer"]
    assert order == [
        "delete_server",
        "delete_load_balancer",
        "remove_interface_from_router",
        "remove_interface_from_router",
        "delete_router",
        "delete_subnet",
        "delete_subnet",
        "delete_network",
        "delete_network",
        "delete_security_group",
    ]
    assert removed[:2] == ["kiln-ostest-db1", "kiln-ostest"]
    assert all(not objects for kind, objects in conn.cloud.objects.items() if kind not in ("image", "rule"))


def test_check_user_data_offline(provider):
    from kiln.cloudinit import UserData

    provider.check_user_data(None, [UserData("web1", "#cloud-config\nhostname: web1\n")])
    with pytest.raises(KilnError, match=r"^user-data of web2 is not valid YAML: line 2: mapping values"):
        provider.check_user_data(None, [UserData("web2", "#cloud-config\nhostname: a: b\n")])
    with pytest.raises(KilnError, match=r"^user-data of web3 does not start with '#cloud-config'"):
        provider.check_user_data(None, [UserData("web3", "hostname: web3\n")])
    with pytest.raises(KilnError, match=r"^user-data of web4 is \d+ bytes, over the 49151-byte limit"):
        provider.check_user_data(None, [UserData("web4", "#cloud-config\n#" + "x" * 50000 + "\n")])


def test_sdk_failures_become_one_line(conn, provider):
    import openstack.exceptions

    def refuse(*args, **kwargs):
        raise openstack.exceptions.ConflictException("Load Balancer is immutable\nmore detail")

    conn.load_balancer.find_load_balancer = refuse
    with pytest.raises(OperationFailed, match=r"^OpenStack find_load_balancer failed: .*immutable$"):
        provider.frontend()


def test_unknown_cloud_and_unreachable_endpoint_are_one_line(tmp_path, monkeypatch):
    """The real SDK, configured from a clouds.yaml whose auth_url is a closed loopback port."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    clouds = tmp_path / "clouds.yaml"
    clouds.write_text(
        "clouds:\n  closed:\n    auth:\n"
        f"      auth_url: http://127.0.0.1:{port}/v3\n      username: kiln\n      password: {SECRET}\n"
        "      project_name: kiln\n      user_domain_name: Default\n      project_domain_name: Default\n"
        "    region_name: RegionOne\n"
    )
    for name in [k for k in __import__("os").environ if k.startswith("OS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(clouds))
    with pytest.raises(
        KilnError, match=r"^no usable OpenStack cloud 'nowhere' .*KILN_OPENSTACK_CLOUD or OS_CLOUD"
    ):
        OpenStackProvider(Settings(state_dir=tmp_path, openstack_cloud="nowhere"), make_env())
    provider = OpenStackProvider(Settings(state_dir=tmp_path, openstack_cloud="closed"), make_env())
    with pytest.raises(KilnError) as caught:
        provider.instances()
    assert str(caught.value).startswith("cannot reach OpenStack cloud 'closed': check its auth_url")
    assert SECRET not in str(caught.value) and "\n" not in str(caught.value)


def test_up_and_a_rollout_through_the_engine(conn, tmp_path):
    """The engine's calls end to end on the fake: drained members wait out drain_timeout, then go."""
    from kiln.rollout import lifecycle
    from kiln.rollout.engine import Engine

    settings = Settings(project_root=REPO, state_dir=tmp_path, cloud_poll=0.01, cloud_timeout=5)
    env = make_env(drain_timeout=0.2)
    for role in ("web", "db"):  # no lb image: Octavia is the load balancer
        glance(conn, role, "1.0", "verified", "2026-01-01T00:00:00Z")
    engine = Engine(settings, env, OpenStackProvider(settings, env, conn), lambda line: None)
    lifecycle.up(engine)
    assert {i.name: i.version for i in engine.provider.instances()} == {
        "db1": "1.0",
        "web1": "1.0",
        "web2": "1.0",
    }
    web_user_data = base64.b64decode(conn.cloud.find("server", "kiln-ostest-web1").user_data).decode()
    assert "10.42.16.11" in web_user_data  # db1's fixed address in zone 1, named before db1 started

    target = engine.provider.image(
        "web", glance(conn, "web", "2.0", "verified", "2026-02-01T00:00:00Z").properties["kiln.version"]
    )
    state = engine.run(engine.start(target), target)
    assert state.status == "succeeded"
    web = engine.provider.instances("web")
    assert {i.version for i in web} == {"2.0"} and {i.zone for i in web} == {0, 1}
    assert set(engine.provider.lb_servers()) == {i.name for i in web}
    drained = [c[1] for c in conn.cloud.calls if c[0] == "update_member"]
    assert sorted(drained) == ["web1", "web2"]
    actions = [e["action"] for e in state.events]
    assert actions.count("draining") == 2 and actions.count("deregistered") == 2
