"""The aws provider against moto's server on 127.0.0.1: real boto3 calls, no Docker, no AWS.

moto answers the EC2 and ELBv2 APIs but fakes their behaviour: a registered target is healthy
at once and deregistration is immediate (no `draining`). These tests check calls, ids, tags and
settings; the draining mapping is checked on a recorded describe_target_health answer.
"""

from __future__ import annotations

import base64
import datetime
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

import boto3
import pytest
import yaml
from cryptography import x509

from kiln import tls
from kiln.channels.ssh import Bastion, SshSettings
from kiln.environments import Environment, EnvironmentSpec, Frontend, FrontendTls, HealthCheck, RolloutPolicy
from kiln.errors import KilnError
from kiln.providers import get_provider
from kiln.providers.aws import AwsProvider, lb_server
from kiln.rollout import lifecycle
from kiln.rollout.engine import Engine
from kiln.settings import Settings
from tests.conftest import REPO, copy_project

pytestmark = pytest.mark.integration

REGION = "eu-west-1"
ZONES = ["eu-west-1a", "eu-west-1b"]
SECRET = "kilntest-secret-never-printed"
START_TIMEOUT = 20  # seconds moto's server may take to answer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url + "/moto-api/", timeout=1).close()
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False
    return True


@pytest.fixture(scope="module")
def moto_url(tmp_path_factory):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        for _ in range(START_TIMEOUT * 10):
            if answers(url):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"moto server did not start: {log.read_text()[-2000:]}")
            time.sleep(0.1)
        else:
            pytest.fail(f"moto server did not answer in {START_TIMEOUT} s")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture
def aws_env(monkeypatch, tmp_path):
    """Fake credentials only, no profile files and no instance metadata lookups (not loopback)."""
    for name in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "kilntest")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def moto(moto_url, aws_env):
    urllib.request.urlopen(urllib.request.Request(moto_url + "/moto-api/reset", method="POST"), timeout=10)
    return moto_url


def make_env(name="mototest", zones=ZONES, **health) -> Environment:
    spec = EnvironmentSpec(
        provider="aws",
        zones=list(zones),
        instances={"web": 2, "db": 1},
        frontend=Frontend(8080),
        health=HealthCheck(
            **{"path": "/healthz", "interval": 10, "rise": 3, "fall": 4, "timeout": 30, **health}
        ),
        rollout=RolloutPolicy(max_surge=1, max_unavailable=0, warmup=0, drain_timeout=45, canary=1),
        app={"greeting": "hello from moto"},
    )
    return Environment(name, spec, f"environments/{name}.yml")


def make_settings(tmp_path: Path, url: str) -> Settings:
    return Settings(
        project_root=REPO,
        state_dir=tmp_path / "state",
        aws_endpoint_url=url,
        cloud_poll=0.05,
        cloud_timeout=30,
    )


def client(url: str, service: str):
    return boto3.client(service, region_name=REGION, endpoint_url=url)


def bake_ami(url: str, role: str, version: str, status: str, built: str) -> str:
    """An AMI tagged as kiln/targets/amazon_ebs.py tags baked images (moto needs an instance)."""
    ec2 = client(url, "ec2")
    source = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    instance = ec2.run_instances(ImageId=source, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    tags = {"kiln.role": role, "kiln.version": version, "kiln.status": status, "kiln.built": built}
    image = ec2.create_image(
        InstanceId=instance,
        Name=f"kiln-{role}-{version}",
        TagSpecifications=[
            {"ResourceType": "image", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}
        ],
    )["ImageId"]
    ec2.terminate_instances(InstanceIds=[instance])
    return image


def tags_of(resource: dict) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in resource.get("Tags", [])}


def env_resources(url: str, env: str) -> dict[str, list]:
    ec2, elb = client(url, "ec2"), client(url, "elbv2")
    f = [{"Name": "tag:kiln.env", "Values": [env]}]
    live = [{"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]}]
    lbs = [
        lb for lb in elb.describe_load_balancers()["LoadBalancers"] if lb["LoadBalancerName"] == f"kiln-{env}"
    ]
    groups = [
        g
        for g in elb.describe_target_groups()["TargetGroups"]
        if g["TargetGroupName"].startswith(f"kiln-{env}-")
    ]
    return {
        "vpcs": ec2.describe_vpcs(Filters=f)["Vpcs"],
        "subnets": ec2.describe_subnets(Filters=f)["Subnets"],
        "groups": ec2.describe_security_groups(Filters=f)["SecurityGroups"],
        "gateways": ec2.describe_internet_gateways(Filters=f)["InternetGateways"],
        "instances": [
            i for r in ec2.describe_instances(Filters=f + live)["Reservations"] for i in r["Instances"]
        ],
        "lbs": lbs,
        "target_groups": groups,
    }


def test_networks_are_created_once(moto, tmp_path):
    env = make_env()
    provider = AwsProvider(make_settings(tmp_path, moto), env)
    provider.ensure_networks()
    provider.ensure_networks()
    found = env_resources(moto, env.name)
    assert len(found["vpcs"]) == 1 and len(found["gateways"]) == 1 and len(found["groups"]) == 1
    subnets = {s["AvailabilityZone"]: s for s in found["subnets"]}
    assert sorted(subnets) == ZONES and len(found["subnets"]) == 2
    assert {tags_of(s)["Name"] for s in found["subnets"]} == {f"kiln-mototest-{z}" for z in ZONES}
    assert all(s["VpcId"] == found["vpcs"][0]["VpcId"] for s in found["subnets"])


def test_load_balancer_follows_the_environment(moto, tmp_path):
    env = make_env()
    provider = AwsProvider(make_settings(tmp_path, moto), env)
    provider.ensure_networks()
    assert provider.frontend() is None
    provider.ensure_lb(None, "")
    provider.ensure_lb(None, "")  # idempotent
    elb = client(moto, "elbv2")
    [lb] = elb.describe_load_balancers(Names=["kiln-mototest"])["LoadBalancers"]
    assert provider.frontend() == f"http://{lb['DNSName']}:8080/"
    [group] = elb.describe_target_groups(Names=["kiln-mototest-web"])["TargetGroups"]
    assert group["HealthCheckPath"] == "/healthz"
    assert group["HealthCheckIntervalSeconds"] == 10
    assert group["HealthyThresholdCount"] == 3
    assert group["UnhealthyThresholdCount"] == 4
    attributes = elb.describe_target_group_attributes(TargetGroupArn=group["TargetGroupArn"])["Attributes"]
    assert {a["Key"]: a["Value"] for a in attributes}["deregistration_delay.timeout_seconds"] == "45"
    [listener] = elb.describe_listeners(LoadBalancerArn=lb["LoadBalancerArn"])["Listeners"]
    assert listener["Port"] == 8080
    assert listener["DefaultActions"][0]["TargetGroupArn"] == group["TargetGroupArn"]


def test_with_internal_tls_the_target_group_reaches_the_instances_over_https(moto, tmp_path):
    plain = make_env("mototls")
    env = Environment(plain.name, replace(plain.spec, internal_tls=True), plain.file)
    provider = AwsProvider(make_settings(tmp_path, moto), env)
    provider.ensure_networks()
    provider.ensure_lb(None, "")
    [group] = client(moto, "elbv2").describe_target_groups(Names=["kiln-mototls-web"])["TargetGroups"]
    assert (group["Protocol"], group["Port"], group["HealthCheckProtocol"]) == ("HTTPS", 443, "HTTPS")
    provider.destroy()


NAMES = ["shop.example.test", "10.42.0.99"]


def https_env(name="motohttps", port=8443, names=NAMES, days=90, redirect=True) -> Environment:
    plain = make_env(name)
    frontend = replace(plain.spec.frontend, tls=FrontendTls(port, list(names), days, redirect))
    return Environment(name, replace(plain.spec, frontend=frontend), plain.file)


def https_provider(project: Path, url: str, **tls_settings) -> AwsProvider:
    """Settings on a copy of the project: the environment's CA is written to its secrets/."""
    settings = Settings(
        project_root=project, state_dir=project / ".kiln", aws_endpoint_url=url, cloud_poll=0.05
    )
    return AwsProvider(settings, https_env(**tls_settings))


def listeners_by_port(url: str, env: str) -> dict[int, dict]:
    elb = client(url, "elbv2")
    [lb] = elb.describe_load_balancers(Names=[f"kiln-{env}"])["LoadBalancers"]
    return {
        found["Port"]: found
        for found in elb.describe_listeners(LoadBalancerArn=lb["LoadBalancerArn"])["Listeners"]
    }


def env_certificates(url: str, env: str) -> list[str]:
    acm = client(url, "acm")
    arns = [
        c["CertificateArn"]
        for c in acm.list_certificates(Includes={"keyTypes": ["EC_prime256v1"]})["CertificateSummaryList"]
    ]
    return [
        a for a in arns if tags_of(acm.list_tags_for_certificate(CertificateArn=a)).get("kiln.env") == env
    ]


def served_leaf(url: str, arn: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(
        client(url, "acm").get_certificate(CertificateArn=arn)["Certificate"].encode()
    )


def test_https_listener_serves_a_certificate_of_the_environment_ca_imported_into_acm(moto, project):
    provider = https_provider(project, moto)
    provider.ensure_networks()
    provider.ensure_lb(None, "")
    [arn] = env_certificates(moto, "motohttps")
    acm = client(moto, "acm")
    assert tags_of(acm.list_tags_for_certificate(CertificateArn=arn)) == {
        "Name": "kiln-motohttps-frontend",
        "kiln.env": "motohttps",
    }
    ca_pem = (project / "secrets" / "motohttps.ca.pem").read_bytes()
    leaf = served_leaf(moto, arn)
    leaf.verify_directly_issued_by(x509.load_pem_x509_certificate(ca_pem))
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(names) == tls.subject_names(NAMES)
    # moto, as it says AWS does, appends Amazon's root to the chain it was given
    assert acm.get_certificate(CertificateArn=arn)["CertificateChain"].encode().startswith(ca_pem)

    listeners = listeners_by_port(moto, "motohttps")
    [group] = client(moto, "elbv2").describe_target_groups(Names=["kiln-motohttps-web"])["TargetGroups"]
    https = listeners[8443]
    assert (https["Protocol"], https["Certificates"], https["SslPolicy"]) == (
        "HTTPS",
        [{"CertificateArn": arn}],
        "ELBSecurityPolicy-TLS13-1-2-2021-06",
    )
    assert [(a["Type"], a["TargetGroupArn"]) for a in https["DefaultActions"]] == [
        ("forward", group["TargetGroupArn"])
    ]
    [redirect] = listeners[8080]["DefaultActions"]
    assert (redirect["Type"], redirect["RedirectConfig"]) == (
        "redirect",
        {"Protocol": "HTTPS", "Port": "8443", "StatusCode": "HTTP_301"},
    )
    [lb] = client(moto, "elbv2").describe_load_balancers(Names=["kiln-motohttps"])["LoadBalancers"]
    assert provider.https_frontend() == f"https://{lb['DNSName']}:8443/"
    [sg] = env_resources(moto, "motohttps")["groups"]
    world = {r["FromPort"] for r in sg["IpPermissions"] if {"CidrIp": "0.0.0.0/0"} in r.get("IpRanges", [])}
    assert world == {8080, 8443}

    # The key went to ACM only: nothing in the project (its state folder included) holds it in clear.
    plain_keys = [f for f in project.rglob("*") if f.is_file() and b"PRIVATE KEY" in f.read_bytes()]
    assert plain_keys == []


def test_a_second_ensure_lb_changes_nothing(moto, project):
    provider = https_provider(project, moto)
    provider.ensure_networks()
    provider.ensure_lb(None, "")
    [arn] = env_certificates(moto, "motohttps")
    listeners, serial = listeners_by_port(moto, "motohttps"), served_leaf(moto, arn).serial_number
    https_provider(project, moto).ensure_networks()
    https_provider(project, moto).ensure_lb(None, "")  # a new process: nothing remembered but the cloud
    assert env_certificates(moto, "motohttps") == [arn]
    assert served_leaf(moto, arn).serial_number == serial
    assert listeners_by_port(moto, "motohttps") == listeners


def test_plain_http_forwards_without_redirect_and_follows_the_setting(moto, project):
    provider = https_provider(project, moto, redirect=False)
    provider.ensure_networks()
    provider.ensure_lb(None, "")
    [group] = client(moto, "elbv2").describe_target_groups(Names=["kiln-motohttps-web"])["TargetGroups"]
    forward = [("forward", group["TargetGroupArn"])]
    listeners = listeners_by_port(moto, "motohttps")
    assert [(a["Type"], a.get("TargetGroupArn")) for a in listeners[8080]["DefaultActions"]] == forward
    assert listeners[8443]["Protocol"] == "HTTPS"

    https_provider(project, moto, redirect=True).ensure_lb(None, "")
    [action] = listeners_by_port(moto, "motohttps")[8080]["DefaultActions"]
    assert (action["Type"], action["RedirectConfig"]["Port"]) == ("redirect", "8443")

    # frontend.tls removed: the HTTPS listener and its certificate go, plain HTTP forwards again
    plain = https_env()
    plain = Environment(plain.name, replace(plain.spec, frontend=Frontend(8080)), plain.file)
    AwsProvider(provider.settings, plain).ensure_lb(None, "")
    listeners = listeners_by_port(moto, "motohttps")
    assert list(listeners) == [8080]
    assert [(a["Type"], a.get("TargetGroupArn")) for a in listeners[8080]["DefaultActions"]] == forward
    assert env_certificates(moto, "motohttps") == []
    assert AwsProvider(provider.settings, plain).https_frontend() is None


def test_a_due_certificate_is_reimported_into_the_same_arn(moto, project, monkeypatch):
    provider = https_provider(project, moto, days=3)
    provider.ensure_networks()
    provider.ensure_lb(None, "")
    [arn] = env_certificates(moto, "motohttps")
    # Two days and an hour ago, a 3-day leaf of the same CA was issued: most of its life is spent.
    ca = tls.authority(provider.settings, "motohttps")
    issued_at = tls.now() - datetime.timedelta(days=2, hours=1)
    with monkeypatch.context() as clock:
        clock.setattr(tls, "now", lambda: issued_at)
        old_certificate, old_key = tls.issue_server(ca, NAMES, days=3)
    acm = client(moto, "acm")
    tags = acm.list_tags_for_certificate(CertificateArn=arn)["Tags"]
    acm.import_certificate(
        CertificateArn=arn, Certificate=old_certificate, PrivateKey=old_key, CertificateChain=ca.pem
    )
    acm.add_tags_to_certificate(CertificateArn=arn, Tags=tags)  # moto drops them on a re-import
    old = served_leaf(moto, arn)
    provider.ensure_lb(None, "")
    assert env_certificates(moto, "motohttps") == [arn]
    renewed = served_leaf(moto, arn)
    assert renewed.serial_number != old.serial_number
    assert renewed.not_valid_after_utc > old.not_valid_after_utc + datetime.timedelta(days=1)
    assert listeners_by_port(moto, "motohttps")[8443]["Certificates"] == [{"CertificateArn": arn}]

    https_provider(project, moto, days=3, names=["shop.example.test", "www.example.test"]).ensure_lb(None, "")
    assert env_certificates(moto, "motohttps") == [arn]
    names = served_leaf(moto, arn).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["shop.example.test", "www.example.test"]


def test_destroy_deletes_the_certificate_after_the_load_balancer(moto, project):
    provider = https_provider(project, moto)
    provider.ensure_networks()
    provider.ensure_lb(None, "")
    assert len(env_certificates(moto, "motohttps")) == 1
    removed = provider.destroy()
    assert removed.index("kiln-motohttps-frontend") > removed.index("kiln-motohttps")
    assert env_certificates(moto, "motohttps") == []
    assert all(not found for found in env_resources(moto, "motohttps").values())


def test_an_https_port_of_0_is_refused_before_anything_changes(moto, project):
    with pytest.raises(KilnError) as caught:
        https_provider(project, moto, port=0)
    assert str(caught.value) == (
        "environments/motohttps.yml: field 'frontend.tls.port': an ELBv2 listener needs a fixed port"
    )
    assert not any(env_resources(moto, "motohttps").values())
    assert env_certificates(moto, "motohttps") == []


def test_settings_elbv2_refuses_are_refused_before_anything_changes(moto, tmp_path):
    settings = make_settings(tmp_path, moto)
    with pytest.raises(KilnError, match=r"field 'health.interval': 0.5 s is outside ELBv2's whole 5-300 s"):
        AwsProvider(settings, make_env(interval=0.5))
    with pytest.raises(
        KilnError, match=r"field 'zones': an application load balancer needs two zones or more"
    ):
        AwsProvider(settings, make_env(zones=["eu-west-1a"]))
    assert not any(env_resources(moto, "mototest").values())


def test_image_lookup_by_kiln_tags(moto, tmp_path):
    provider = AwsProvider(make_settings(tmp_path, moto), make_env())
    old = bake_ami(moto, "web", "1.0", "verified", "2026-01-01T00:00:00Z")
    new = bake_ami(moto, "web", "1.1", "promoted", "2026-02-01T00:00:00Z")
    bake_ami(moto, "web", "1.2", "baked", "2026-03-01T00:00:00Z")
    assert provider.image("web").id == new
    record = provider.image("web", "1.0")
    assert (record.id, record.version, record.status) == (old, "1.0", "verified")
    with pytest.raises(
        KilnError, match=r"no verified or promoted AMI of web version 1.2 .*found: baked.*--target amazon-ebs"
    ):
        provider.image("web", "1.2")
    with pytest.raises(KilnError, match=r"no AMI of db in eu-west-1 .*`invoke bake db --target amazon-ebs`"):
        provider.image("db")


def test_instances_and_load_balancer_membership(moto, tmp_path):
    env = make_env()
    provider = AwsProvider(make_settings(tmp_path, moto), env)
    provider.ensure_networks()
    provider.ensure_lb(None, "")
    ami = bake_ami(moto, "web", "1.0", "verified", "2026-01-01T00:00:00Z")
    image = provider.image("web", "1.0")
    assert image.id == ami
    assert provider.peer_address("web1") == "10.42.17.11"  # fixed before launch: zone 1, role web
    launched = [provider.launch("web", n, image, f"#cloud-config\nhostname: web{n}\n") for n in (1, 2)]
    assert [(i.name, i.zone, i.address) for i in launched] == [
        ("web1", 1, "10.42.17.11"),
        ("web2", 0, "10.42.1.12"),
    ]
    assert provider.peer_address("web1") == "10.42.17.11"

    ec2 = client(moto, "ec2")
    subnets = {s["AvailabilityZone"]: s["SubnetId"] for s in env_resources(moto, env.name)["subnets"]}
    for inst in launched:
        [raw] = [
            i
            for r in ec2.describe_instances(Filters=[{"Name": "tag:kiln.instance", "Values": [inst.name]}])[
                "Reservations"
            ]
            for i in r["Instances"]
        ]
        assert raw["SubnetId"] == subnets[ZONES[inst.zone]]
        assert raw["Placement"]["AvailabilityZone"] == ZONES[inst.zone]
        tags = tags_of(raw)
        assert tags["Name"] == f"kiln-mototest-{inst.name}"
        assert (tags["kiln.env"], tags["kiln.role"], tags["kiln.version"]) == ("mototest", "web", "1.0")
        assert tags["kiln.zone"] == ZONES[inst.zone]
        user_data = ec2.describe_instance_attribute(InstanceId=raw["InstanceId"], Attribute="userData")
        sent = base64.b64decode(user_data["UserData"]["Value"]).decode()
        document = yaml.safe_load(sent)
        assert sent.startswith("#cloud-config\n") and document["hostname"] == inst.name
        [login] = document["users"]  # the account the SSH channel logs in as, with this environment's key
        assert login["name"] == "kiln" and login["ssh_authorized_keys"] == [provider.identity.public_key()]
        assert "PRIVATE" not in sent

    assert [i.name for i in provider.instances("web")] == ["web1", "web2"]
    assert provider.instances("db") == []
    assert all(i.running for i in provider.instances())

    channel = provider.channel(launched[0])  # SSH to the private address, pinned under the instance id
    [raw_web1] = [
        i for i in env_resources(moto, env.name)["instances"] if tags_of(i)["kiln.instance"] == "web1"
    ]
    assert (channel.target.host, channel.target.user, channel.alias) == (
        "10.42.17.11",
        "kiln",
        raw_web1["InstanceId"],
    )
    assert channel.bastion is None and (provider.identity.key.stat().st_mode & 0o777) == 0o600

    provider.lb_register(launched[0])
    servers = provider.lb_servers()
    assert list(servers) == ["web1"]
    assert servers["web1"].state == "ready"
    assert servers["web1"].healthy  # moto: healthy at once, no health check ever runs
    provider.lb_drain(launched[0])
    assert "web1" not in provider.lb_servers()  # moto: no draining state, the target is gone at once
    provider.lb_register(launched[1])
    provider.lb_deregister("web2")
    assert provider.lb_servers() == {}

    provider.terminate(launched[0])
    provider.terminate(launched[0])  # absent is fine
    assert [i.name for i in provider.instances()] == ["web2"]

    removed = provider.destroy()
    assert "kiln-mototest-web2" in removed and "kiln-mototest" in removed and "kiln-mototest-vpc" in removed
    assert all(not found for found in env_resources(moto, env.name).values())


def test_the_channel_goes_through_the_bastion_named_in_the_environment(moto, tmp_path):
    env = make_env()
    env = Environment(
        env.name,
        replace(env.spec, ssh=SshSettings(bastion=Bastion("bastion.example.test", "ops", 2222))),
        env.file,
    )
    provider = AwsProvider(make_settings(tmp_path, moto), env)
    provider.ensure_networks()
    bake_ami(moto, "db", "1.0", "verified", "2026-01-01T00:00:00Z")
    db = provider.launch("db", 1, provider.image("db", "1.0"), "#cloud-config\n")
    argv = provider.channel(db).ssh_argv("true")
    proxy = next(a for a in argv if a.startswith("ProxyCommand="))
    assert "-W %h:%p" in proxy and "-p 2222 -l ops" in proxy and proxy.endswith("bastion.example.test")
    assert argv[-3:] == [db.address, "--", "true"] and str(provider.identity.known_hosts) in proxy


def test_draining_target_maps_to_a_session_until_gone():
    draining = lb_server("web1", {"State": "draining", "Reason": "Target.DeregistrationInProgress"})
    assert (draining.state, draining.sessions, draining.healthy) == ("drain", 1, False)
    assert draining.check == "draining: Target.DeregistrationInProgress"
    initial = lb_server("web2", {"State": "initial", "Reason": "Elb.RegistrationInProgress"})
    assert (initial.state, initial.sessions, initial.healthy) == ("ready", 0, False)
    assert lb_server("web3", {"State": "healthy"}).healthy


def test_up_and_a_rollout_through_the_engine(moto, tmp_path):
    """The engine's calls end to end; moto's instant health says nothing about real readiness."""
    env = make_env()
    settings = make_settings(tmp_path, moto)
    # No lb AMI: ELBv2 is the load balancer.
    for role in ("web", "db"):
        bake_ami(moto, role, "1.0", "verified", "2026-01-01T00:00:00Z")
    said = []
    engine = Engine(settings, env, get_provider(settings, env), said.append)
    lifecycle.up(engine)
    before = {i.name: i.version for i in engine.provider.instances()}
    assert before == {"db1": "1.0", "web1": "1.0", "web2": "1.0"}
    assert set(engine.provider.lb_servers()) == {"web1", "web2"}

    bake_ami(moto, "web", "2.0", "verified", "2026-02-01T00:00:00Z")
    target = engine.provider.image("web", "2.0")
    state = engine.run(engine.start(target), target)
    assert state.status == "succeeded"
    web = engine.provider.instances("web")
    assert len(web) == 2 and {i.version for i in web} == {"2.0"}
    assert {i.zone for i in web} == {0, 1}
    assert set(engine.provider.lb_servers()) == {i.name for i in web}
    actions = [(e["action"], e.get("instance")) for e in state.events if e["action"] != "zone done"]
    # moto drops a deregistered target at once, so the engine never sees it draining or removes it.
    assert actions == [
        ("launched", "web4"),
        ("registered", "web4"),
        ("canary", None),
        ("healthy", None),
        ("draining", "web2"),
        ("terminated", "web2"),
        ("launched", "web3"),
        ("registered", "web3"),
        ("healthy", None),
        ("draining", "web1"),
        ("terminated", "web1"),
    ]
    engine.provider.destroy()
    assert all(not found for found in env_resources(moto, env.name).values())


def test_unknown_zone_names_the_field(moto, tmp_path):
    provider = AwsProvider(make_settings(tmp_path, moto), make_env(zones=["eu-west-1a", "eu-west-1q"]))
    with pytest.raises(
        KilnError, match=r"field 'zones\[1\]': 'eu-west-1q' is not an availability zone of eu-west-1"
    ):
        provider.ensure_networks()


def test_unreachable_endpoint_is_one_line_without_secrets(aws_env, tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    provider = AwsProvider(make_settings(tmp_path, url), make_env())
    with pytest.raises(KilnError) as caught:
        provider.ensure_networks()
    message = str(caught.value)
    assert (
        message
        == f"cannot reach the AWS endpoint {url}: check KILN_AWS_ENDPOINT_URL, or unset it to use AWS itself"
    )
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_no_credentials_is_one_line(aws_env, monkeypatch, moto, tmp_path):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    provider = AwsProvider(make_settings(tmp_path, moto), make_env())
    with pytest.raises(KilnError, match=r"^no AWS credentials found: set AWS_PROFILE, or AWS_ACCESS_KEY_ID"):
        provider.ensure_networks()


def test_the_cli_exits_2_with_one_line(aws_env, tmp_path):
    """`invoke status staging` against a closed port: exit 2, one line, no traceback, no secret."""
    project = copy_project(tmp_path / "project")
    (project / "environments").mkdir()
    (project / "environments" / "staging.yml").write_text((REPO / "environments" / "staging.yml").read_text())
    url = f"http://127.0.0.1:{free_port()}"
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", "status", "staging"],
        cwd=project,
        env={**os.environ, "KILN_PROJECT_ROOT": str(project), "KILN_AWS_ENDPOINT_URL": url},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"kiln: cannot reach the AWS endpoint {url}: "
        "check KILN_AWS_ENDPOINT_URL, or unset it to use AWS itself"
    ]
    assert SECRET not in proc.stdout + proc.stderr


def test_region_comes_from_the_first_zone_or_the_setting(aws_env, tmp_path):
    settings = make_settings(tmp_path, "")
    assert AwsProvider(settings, make_env()).region == "eu-west-1"
    with pytest.raises(KilnError, match=r"^environments/mototest.yml: field 'zones\[0\]': 'z0' is not an"):
        AwsProvider(settings, make_env(zones=["z0", "z1"]))
    with pytest.raises(KilnError, match=r"^KILN_AWS_REGION='no region' is not an AWS region name"):
        AwsProvider(Settings(aws_region="no region"), make_env(zones=["z0", "z1"]))
