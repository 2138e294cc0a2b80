"""The aws provider: EC2 instances in one subnet per availability zone behind an ELBv2 ALB.

Everything carries the environment's name: tag `kiln.env=<env>` and Name `kiln-<env>-...` on
the VPC, its internet gateway, subnets (one per zone), security group and instances; the load
balancer is `kiln-<env>` and its target group `kiln-<env>-<balanced role>`; with `frontend.tls`
its HTTPS listener serves the ACM certificate `kiln-<env>-frontend` (tags as above), issued from
the environment's CA (kiln/tls.py). Images are AMIs found by their kiln.* tags
(kiln/targets/amazon_ebs.py). Tested against moto's server, which answers the API calls but
fakes behaviour (targets are healthy at once, no draining, no TLS served).
"""

from __future__ import annotations

import re
import time

import boto3
import botocore.config
import botocore.exceptions

from kiln import cloudinit, tls
from kiln.cloudinit import UserData
from kiln.environments import Environment
from kiln.errors import KilnError, OperationFailed
from kiln.haproxy import HTTPS_PORT  # the web instances' with internal_tls
from kiln.images import ImageRecord
from kiln.providers import cloud
from kiln.providers.base import Instance, LbServer
from kiln.settings import Settings

REDIRECT_KEYS = ("Protocol", "Port", "StatusCode")
USER_DATA_LIMIT = 16384  # bytes, before base64: EC2's limit
APP_PORT = 80
AZ_NAME = re.compile(r"^(?P<region>[a-z]{2}(?:-[a-z]+)+-\d+)[a-z]$")
LIVE_STATES = ["pending", "running"]
NOT_GONE = ["pending", "running", "shutting-down", "stopping", "stopped"]
# TLS 1.2 and 1.3 only: the ALB's default policy still accepts TLS 1.0
SSL_POLICY = "ELBSecurityPolicy-TLS13-1-2-2021-06"
CERTIFICATE_KEY_TYPE = "EC_prime256v1"  # kiln/tls.py's keys; ACM lists only RSA_2048 unless asked
AUTH_CODES = {"AuthFailure", "UnrecognizedClientException", "InvalidClientTokenId", "SignatureDoesNotMatch"}
# describe_target_health state -> (load-balancer state, sessions). ELBv2 counts no connections per
# target: a draining target counts as one session until its deregistration delay ends and it is gone,
# so the engine waits out the drain instead of removing it at once.
TARGET_STATES = {
    "initial": ("ready", 0),
    "healthy": ("ready", 0),
    "unhealthy": ("ready", 0),
    "draining": ("drain", 1),
    "unhealthy.draining": ("drain", 1),
    "unused": ("maint", 0),
    "unavailable": ("maint", 0),
}


class AwsError(OperationFailed):
    """An AWS API call the service refused; `code` lets callers accept the expected ones."""

    def __init__(self, message: str, code: str):
        super().__init__(message)
        self.code = code


class AwsApi:
    """A boto3 client whose failures are one-line KilnErrors that never echo credentials."""

    def __init__(self, client, settings: Settings):
        self._client = client
        self._settings = settings

    def __getattr__(self, operation: str):
        method = getattr(self._client, operation)

        def call(**kwargs):
            try:
                return method(**kwargs)
            except (botocore.exceptions.NoCredentialsError, botocore.exceptions.PartialCredentialsError):
                raise KilnError(
                    "no AWS credentials found: set AWS_PROFILE, or AWS_ACCESS_KEY_ID and "
                    "AWS_SECRET_ACCESS_KEY (for a moto server any non-empty values do)"
                ) from None
            except (botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectTimeoutError):
                where = self._client.meta.endpoint_url
                fix = (
                    "check KILN_AWS_ENDPOINT_URL, or unset it to use AWS itself"
                    if self._settings.aws_endpoint_url
                    else "check the network and KILN_AWS_REGION"
                )
                raise KilnError(f"cannot reach the AWS endpoint {where}: {fix}") from None
            except botocore.exceptions.ClientError as exc:
                error = exc.response.get("Error", {})
                code = error.get("Code", "Unknown")
                if code in AUTH_CODES:
                    raise KilnError(
                        f"AWS refused the credentials ({code}): check AWS_PROFILE or AWS_ACCESS_KEY_ID"
                    ) from None
                message = " ".join(str(error.get("Message", "")).split())
                raise AwsError(f"AWS {operation} failed: {code}: {message}", code) from None
            except botocore.exceptions.ParamValidationError:  # its message quotes the values: a key
                raise OperationFailed(
                    f"AWS {operation}: botocore refused Kiln's parameters (values not shown): a bug in Kiln"
                ) from None
            except botocore.exceptions.BotoCoreError as exc:  # timeouts, TLS: messages hold no secrets
                raise OperationFailed(f"AWS {operation} failed: {exc}") from None

        return call


class AwsProvider(cloud.CloudProvider):
    lb_service = "ELBv2"
    terminates_tls = True
    image_target = "amazon-ebs"

    def __init__(self, settings: Settings, env: Environment):
        super().__init__(settings, env)
        self.region = settings.aws_region or self.zone_region(env)
        config = botocore.config.Config(
            connect_timeout=5, read_timeout=60, retries={"max_attempts": 3, "mode": "standard"}
        )
        session = boto3.session.Session(region_name=self.region)
        endpoint = settings.aws_endpoint_url or None
        try:
            self.ec2 = AwsApi(session.client("ec2", endpoint_url=endpoint, config=config), settings)
            self.elb = AwsApi(session.client("elbv2", endpoint_url=endpoint, config=config), settings)
            self.acm = AwsApi(session.client("acm", endpoint_url=endpoint, config=config), settings)
        except (botocore.exceptions.InvalidRegionError, ValueError):
            raise KilnError(
                f"KILN_AWS_REGION={self.region!r} is not an AWS region name, like eu-west-1"
            ) from None
        self._zones_checked = False
        self.check_environment()

    @staticmethod
    def zone_region(env: Environment) -> str:
        match = AZ_NAME.match(env.zones[0])
        if not match:
            raise KilnError(
                f"{env.file}: field 'zones[0]': '{env.zones[0]}' is not an availability zone name like "
                "eu-west-1a: name AWS zones, or set KILN_AWS_REGION"
            )
        return match["region"]

    # ---- names and tags ---------------------------------------------------------------------

    def name(self, suffix: str) -> str:
        return f"kiln-{self.env.name}-{suffix}"

    @property
    def lb_name(self) -> str:
        return f"kiln-{self.env.name}"

    @property
    def target_group_name(self) -> str:
        return self.name(self.env.spec.balanced_role)

    @property
    def certificate_name(self) -> str:
        return self.name("frontend")

    def tags(self, name: str, **extra: str) -> list[dict]:
        return [{"Key": k, "Value": v} for k, v in {"Name": name, "kiln.env": self.env.name, **extra}.items()]

    def tag_spec(self, resource: str, name: str, **extra: str) -> list[dict]:
        return [{"ResourceType": resource, "Tags": self.tags(name, **extra)}]

    @property
    def env_filter(self) -> list[dict]:
        return [{"Name": "tag:kiln.env", "Values": [self.env.name]}]

    # ---- infrastructure ---------------------------------------------------------------------

    def check_environment(self) -> None:
        """What ELBv2 would refuse, refused before anything is created."""
        if len(self.env.zones) < 2:
            raise KilnError(
                f"{self.env.file}: field 'zones': an application load balancer needs two zones or more"
            )
        for name in (self.lb_name, self.target_group_name):
            if len(name) > 32:
                raise KilnError(
                    f"{self.env.file}: the AWS name '{name}' is over 32 characters: "
                    "use a shorter environment name"
                )
        self.health_check()
        self.frontend_port()
        self.tls_port()
        if self.env.spec.rollout.drain_timeout > 3600:
            raise KilnError(f"{self.env.file}: field 'rollout.drain_timeout': ELBv2 allows at most 3600 s")

    def check_zones(self) -> None:
        """Every zone is an availability zone of the region, or one line naming the bad one."""
        if self._zones_checked:
            return
        known = {
            z["ZoneName"]
            for z in self.ec2.describe_availability_zones(AllAvailabilityZones=True)["AvailabilityZones"]
        }
        for i, zone in enumerate(self.env.zones):
            if zone not in known:
                raise KilnError(
                    f"{self.env.file}: field 'zones[{i}]': '{zone}' is not an availability zone of "
                    f"{self.region} (KILN_AWS_REGION); known: {', '.join(sorted(known))}"
                )
        self._zones_checked = True

    def ensure_networks(self) -> None:
        self.check_zones()
        vpc_id = self.vpc_id()
        if vpc_id is None:
            vpc = self.ec2.create_vpc(
                CidrBlock=cloud.NETWORK_CIDR, TagSpecifications=self.tag_spec("vpc", self.name("vpc"))
            )["Vpc"]
            vpc_id = vpc["VpcId"]
            self.ec2.modify_vpc_attribute(VpcId=vpc_id, EnableDnsHostnames={"Value": True})
        if not self.ec2.describe_internet_gateways(Filters=self.env_filter)["InternetGateways"]:
            # An internet-facing load balancer needs a gateway and a default route in its VPC.
            igw = self.ec2.create_internet_gateway(
                TagSpecifications=self.tag_spec("internet-gateway", self.name("igw"))
            )["InternetGateway"]["InternetGatewayId"]
            self.ec2.attach_internet_gateway(InternetGatewayId=igw, VpcId=vpc_id)
            main = self.ec2.describe_route_tables(
                Filters=[
                    {"Name": "vpc-id", "Values": [vpc_id]},
                    {"Name": "association.main", "Values": ["true"]},
                ]
            )["RouteTables"][0]["RouteTableId"]
            self.ec2.create_route(RouteTableId=main, DestinationCidrBlock="0.0.0.0/0", GatewayId=igw)
        have = self.subnets()
        for zone, zone_name in enumerate(self.env.zones):
            if zone not in have:
                self.ec2.create_subnet(
                    VpcId=vpc_id,
                    AvailabilityZone=zone_name,
                    CidrBlock=cloud.zone_cidr(zone),
                    TagSpecifications=self.tag_spec(
                        "subnet", self.name(zone_name), **{"kiln.zone": zone_name}
                    ),
                )
        group = self.security_group_id()
        if group is None:
            group = self.ec2.create_security_group(
                GroupName=self.name("sg"),
                Description=f"Kiln environment {self.env.name}",
                VpcId=vpc_id,
                TagSpecifications=self.tag_spec("security-group", self.name("sg")),
            )["GroupId"]
            # The load balancer and the instances (web to db) reach each other.
            self.ec2.authorize_security_group_ingress(
                GroupId=group, IpPermissions=[{"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": group}]}]
            )
        self.open_frontend_ports(group)

    def open_frontend_ports(self, group: str) -> None:
        """The frontend's ports open to everyone: HTTP's, and HTTPS's once frontend.tls names one."""
        [found] = self.ec2.describe_security_groups(GroupIds=[group])["SecurityGroups"]
        open_ports = {
            rule.get("FromPort")
            for rule in found.get("IpPermissions", [])
            if any(r.get("CidrIp") == "0.0.0.0/0" for r in rule.get("IpRanges", []))
        }
        wanted = [self.frontend_port(), self.tls_port()]
        missing = [port for port in wanted if port is not None and port not in open_ports]
        if missing:
            self.ec2.authorize_security_group_ingress(
                GroupId=group,
                IpPermissions=[
                    {"IpProtocol": "tcp", "FromPort": p, "ToPort": p, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
                    for p in missing
                ],
            )

    def vpc_id(self) -> str | None:
        vpcs = self.ec2.describe_vpcs(Filters=self.env_filter)["Vpcs"]
        return vpcs[0]["VpcId"] if vpcs else None

    def subnets(self) -> dict[int, str]:
        """Subnet id by zone index."""
        found = {}
        for subnet in self.ec2.describe_subnets(Filters=self.env_filter)["Subnets"]:
            if subnet["AvailabilityZone"] in self.env.zones:
                found[self.env.zones.index(subnet["AvailabilityZone"])] = subnet["SubnetId"]
        return found

    def security_group_id(self) -> str | None:
        groups = self.ec2.describe_security_groups(
            Filters=[*self.env_filter, {"Name": "group-name", "Values": [self.name("sg")]}]
        )["SecurityGroups"]
        return groups[0]["GroupId"] if groups else None

    def health_check(self) -> dict:
        """The target group's health check from the environment, within ELBv2's limits."""
        h, within = self.env.spec.health, self.whole_within
        interval = within("health.interval", h.interval, 5, 300, " s")
        return {
            "HealthCheckProtocol": self.target_protocol()[0],
            "HealthCheckPath": h.path,
            "HealthCheckIntervalSeconds": interval,
            "HealthCheckTimeoutSeconds": max(2, min(interval - 1, 120)),  # ELBv2: less than the interval
            "HealthyThresholdCount": within("health.rise", h.rise, 2, 10),
            "UnhealthyThresholdCount": within("health.fall", h.fall, 2, 10),
            "Matcher": {"HttpCode": "200"},
        }

    def target_protocol(self) -> tuple[str, int]:
        """How the ALB reaches the web instances: HTTPS with internal_tls (encrypted; an ALB does
        not check a target's certificate, AWS documents), else HTTP."""
        return ("HTTPS", HTTPS_PORT) if self.env.spec.internal_tls else ("HTTP", APP_PORT)

    def ensure_lb(self, image: ImageRecord | None, user_data: str) -> None:
        health, port, tls_port = self.health_check(), self.frontend_port(), self.tls_port()
        delay = int(self.env.spec.rollout.drain_timeout)
        subnets, group = self.subnets(), self.security_group_id()
        if len(subnets) < len(self.env.zones) or group is None:
            raise KilnError(
                f"the networks of {self.env.name} are incomplete: run `invoke up {self.env.name}`"
            )
        certificate = self.frontend_certificate()  # a CA that cannot be opened stops here
        lb = self.load_balancer()
        if lb is None:
            lb = self.elb.create_load_balancer(
                Name=self.lb_name,
                Subnets=[subnets[z] for z in sorted(subnets)],
                SecurityGroups=[group],
                Scheme="internet-facing",
                Type="application",
                Tags=self.tags(self.lb_name),
            )["LoadBalancers"][0]
        group_arn = self.target_group_arn()
        if group_arn is None:
            protocol, target_port = self.target_protocol()
            group_arn = self.elb.create_target_group(
                Name=self.target_group_name,
                Protocol=protocol,
                Port=target_port,
                VpcId=self.vpc_id(),
                TargetType="instance",
                Tags=self.tags(self.target_group_name),
                **health,
            )["TargetGroups"][0]["TargetGroupArn"]
        else:  # the environment's health settings may have changed since
            self.elb.modify_target_group(TargetGroupArn=group_arn, **health)
        self.elb.modify_target_group_attributes(
            TargetGroupArn=group_arn,
            Attributes=[{"Key": "deregistration_delay.timeout_seconds", "Value": str(delay)}],
        )
        lb_arn = lb["LoadBalancerArn"]
        listeners = {
            found["Port"]: found for found in self.elb.describe_listeners(LoadBalancerArn=lb_arn)["Listeners"]
        }
        forward = [{"Type": "forward", "TargetGroupArn": group_arn}]
        tls_spec = self.env.spec.frontend.tls
        http_actions = forward
        if tls_spec is not None and tls_spec.redirect:
            redirect = {"Protocol": "HTTPS", "Port": str(tls_port), "StatusCode": "HTTP_301"}
            http_actions = [{"Type": "redirect", "RedirectConfig": redirect}]
        self.ensure_listener(
            lb_arn, listeners.get(port), {"Protocol": "HTTP", "Port": port, "DefaultActions": http_actions}
        )
        for stale in listeners.values():
            if stale["Protocol"] == "HTTPS" and stale["Port"] not in (port, tls_port):  # tls removed or moved
                self.elb.delete_listener(ListenerArn=stale["ListenerArn"])
                if certificate is None:
                    self.delete_certificates([c["CertificateArn"] for c in stale.get("Certificates", [])])
        if certificate is not None:
            https = {
                "Protocol": "HTTPS",
                "Port": tls_port,
                "DefaultActions": forward,
                "Certificates": [{"CertificateArn": certificate}],
                "SslPolicy": SSL_POLICY,
            }
            self.ensure_listener(lb_arn, listeners.get(tls_port), https)
        self.wait(
            f"load balancer {self.lb_name} to become active",
            lambda: (self.load_balancer() or {}).get("State", {}).get("Code") == "active",
        )

    def ensure_listener(self, lb_arn: str, found: dict | None, wanted: dict) -> None:
        """The listener `wanted` describes, created, or changed where it differs (redirect turned on
        or off, another certificate); left alone when it matches."""
        if found is None:
            self.elb.create_listener(LoadBalancerArn=lb_arn, **wanted)
        elif listener_shape(found) != listener_shape(wanted):
            self.elb.modify_listener(ListenerArn=found["ListenerArn"], **wanted)

    def frontend_certificate(self) -> str | None:
        """The ARN of the HTTPS listener's certificate in ACM, issued from the environment's CA.
        A due one (kiln/tls.py: spent, other names, another CA) is re-imported into the same ARN,
        so the listener keeps it. ACM's copy decides: its key is kept nowhere else."""
        tls_spec = self.env.spec.frontend.tls
        if tls_spec is None:
            return None
        ca = tls.authority(self.settings, self.env.name)
        arn = next(iter(self.certificate_arns()), None)
        current = self.acm.get_certificate(CertificateArn=arn)["Certificate"].encode() if arn else None
        if not tls.leaf_due(current, ca, tls_spec.names):
            return arn
        certificate, key = tls.issue_server(ca, tls_spec.names, tls_spec.days)
        if arn is None:
            return self.acm.import_certificate(
                Certificate=certificate,
                PrivateKey=key,
                CertificateChain=ca.pem,
                Tags=self.tags(self.certificate_name),
            )["CertificateArn"]
        self.acm.import_certificate(
            CertificateArn=arn, Certificate=certificate, PrivateKey=key, CertificateChain=ca.pem
        )
        # ACM keeps the tags of a re-imported certificate, moto's server drops them: tag it again
        self.acm.add_tags_to_certificate(CertificateArn=arn, Tags=self.tags(self.certificate_name))
        return arn

    def certificate_arns(self) -> list[str]:
        """This environment's frontend certificates in ACM, by their tags (ACM filters by none)."""
        found, token = [], None
        while True:
            page = self.acm.list_certificates(
                Includes={"keyTypes": [CERTIFICATE_KEY_TYPE]}, **({"NextToken": token} if token else {})
            )
            for summary in page["CertificateSummaryList"]:
                tags = tag_dict(self.acm.list_tags_for_certificate(CertificateArn=summary["CertificateArn"]))
                if tags.get("kiln.env") == self.env.name and tags.get("Name") == self.certificate_name:
                    found.append(summary["CertificateArn"])
            token = page.get("NextToken")
            if not token:
                return found

    def delete_certificates(self, arns: list[str]) -> list[str]:
        for arn in arns:
            # ACM counts it in use by a deleted listener or load balancer for a little while
            self.retry_dependent(
                lambda a=arn: self.acm.delete_certificate(CertificateArn=a), "ResourceInUseException"
            )
        return [self.certificate_name] * len(arns)

    def load_balancer(self) -> dict | None:
        try:
            return self.elb.describe_load_balancers(Names=[self.lb_name])["LoadBalancers"][0]
        except AwsError as exc:
            if exc.code == "LoadBalancerNotFound":
                return None
            raise

    def target_group_arn(self) -> str | None:
        try:
            groups = self.elb.describe_target_groups(Names=[self.target_group_name])["TargetGroups"]
        except AwsError as exc:
            if exc.code == "TargetGroupNotFound":
                return None
            raise
        return groups[0]["TargetGroupArn"]

    def frontend(self) -> str | None:
        lb = self.load_balancer()
        return f"http://{lb['DNSName']}:{self.env.spec.frontend.port}/" if lb else None

    def https_frontend(self) -> str | None:
        tls_port = self.tls_port()
        lb = self.load_balancer() if tls_port else None
        return f"https://{lb['DNSName']}:{tls_port}/" if lb else None

    def destroy(self) -> list[str]:
        removed = []
        doomed = self.describe_instances(
            [*self.env_filter, {"Name": "instance-state-name", "Values": NOT_GONE}]
        )
        if doomed:
            self.terminate_ids([i["InstanceId"] for i in doomed])
            removed += [tag_dict(i).get("Name", i["InstanceId"]) for i in doomed]
        lb = self.load_balancer()
        if lb is not None:
            self.elb.delete_load_balancer(LoadBalancerArn=lb["LoadBalancerArn"])  # and its listeners
            self.wait(f"load balancer {self.lb_name} to go away", lambda: self.load_balancer() is None)
            removed.append(self.lb_name)
        group_arn = self.target_group_arn()
        if group_arn is not None:
            self.elb.delete_target_group(TargetGroupArn=group_arn)
            removed.append(self.target_group_name)
        removed += self.delete_certificates(self.certificate_arns())
        group = self.security_group_id()
        if group is not None:
            # The load balancer's network interfaces linger a little after it is deleted.
            self.retry_dependent(lambda: self.ec2.delete_security_group(GroupId=group))
            removed.append(self.name("sg"))
        for subnet in self.ec2.describe_subnets(Filters=self.env_filter)["Subnets"]:
            self.retry_dependent(lambda s=subnet: self.ec2.delete_subnet(SubnetId=s["SubnetId"]))
            removed.append(tag_dict(subnet).get("Name", subnet["SubnetId"]))
        vpc_id = self.vpc_id()
        for igw in self.ec2.describe_internet_gateways(Filters=self.env_filter)["InternetGateways"]:
            for attachment in igw.get("Attachments", []):
                self.ec2.detach_internet_gateway(
                    InternetGatewayId=igw["InternetGatewayId"], VpcId=attachment["VpcId"]
                )
            self.ec2.delete_internet_gateway(InternetGatewayId=igw["InternetGatewayId"])
            removed.append(tag_dict(igw).get("Name", igw["InternetGatewayId"]))
        if vpc_id is not None:
            self.retry_dependent(lambda: self.ec2.delete_vpc(VpcId=vpc_id))
            removed.append(self.name("vpc"))
        return removed

    def retry_dependent(self, delete, code: str = "DependencyViolation") -> None:
        deadline = time.monotonic() + self.settings.cloud_timeout
        for _ in range(cloud.polls(self.settings)):
            try:
                delete()
                return
            except AwsError as exc:
                if exc.code != code or time.monotonic() > deadline:
                    raise
            time.sleep(self.settings.cloud_poll)
        delete()  # the last try reports why

    def wait(self, what: str, done) -> None:
        cloud.wait_until(self.settings, what, done)

    # ---- images and instances ---------------------------------------------------------------

    def image(self, role: str, version: str | None = None) -> ImageRecord:
        filters = [{"Name": "tag:kiln.role", "Values": [role]}]
        if version:
            filters.append({"Name": "tag:kiln.version", "Values": [version]})
        images = self.ec2.describe_images(Owners=["self"], Filters=filters)["Images"]
        return cloud.newest_deployable(
            [image_record(i) for i in images],
            role,
            version,
            kind="AMI",
            place=f" in {self.region}",
            lookup="tags kiln.role, kiln.version",
            target="amazon-ebs",
            deployable=self.env.deployable,
        )

    def check_user_data(self, image: ImageRecord, documents: list[UserData]) -> None:
        # The AMI's own cloud-init cannot run here: YAML, header and EC2's size limit only.
        cloudinit.check_offline(documents, USER_DATA_LIMIT, "EC2 user-data")

    def peer_address(self, instance: str, zone: int = 0) -> str:
        found = self.describe_instances(self.name_filter(instance, LIVE_STATES))
        if found:
            return found[0]["PrivateIpAddress"]
        return cloud.fixed_address(self.env, instance)

    def launch(self, role: str, number: int, image: ImageRecord, user_data: str) -> Instance:
        name = f"{role}{number}"
        zone = self.env.zone_of(number)
        subnet, group = self.subnets().get(zone), self.security_group_id()
        if subnet is None or group is None:
            raise KilnError(
                f"the networks of {self.env.name} are incomplete: run `invoke up {self.env.name}`"
            )
        tags = {
            "kiln.role": role,
            "kiln.instance": name,
            "kiln.version": image.version,
            "kiln.zone": self.env.zones[zone],
        }
        user_data = self.with_login(user_data)
        reservation = self.ec2.run_instances(
            ImageId=image.id,
            InstanceType=self.settings.aws_instance_type,
            MinCount=1,
            MaxCount=1,
            SubnetId=subnet,
            SecurityGroupIds=[group],
            PrivateIpAddress=cloud.fixed_address(self.env, name),
            UserData=user_data,
            MetadataOptions={"HttpTokens": "required", "HttpEndpoint": "enabled"},  # IMDSv2 only
            TagSpecifications=[
                *self.tag_spec("instance", self.name(name), **tags),
                *self.tag_spec("volume", self.name(name), **tags),
            ],
        )
        instance_id = reservation["Instances"][0]["InstanceId"]
        state = {}

        def running() -> bool:
            found = self.describe_instances([{"Name": "instance-id", "Values": [instance_id]}])
            state.update(found[0] if found else {})
            code = state.get("State", {}).get("Name")
            if code in ("shutting-down", "terminated", "stopped"):
                reason = state.get("StateReason", {}).get("Message", code)
                raise OperationFailed(f"{name} ({instance_id}) stopped while starting: {reason}")
            return code == "running"

        self.wait(f"{name} ({instance_id}) to run", running)
        return self.instance(state)

    def instances(self, role: str | None = None) -> list[Instance]:
        filters = [
            *self.env_filter,
            {"Name": "tag-key", "Values": ["kiln.instance"]},
            {"Name": "instance-state-name", "Values": LIVE_STATES},
        ]
        if role:
            filters.append({"Name": "tag:kiln.role", "Values": [role]})
        found = [self.instance(raw) for raw in self.describe_instances(filters)]
        return sorted(found, key=lambda i: (i.role, i.number))

    def machine_console(self, instance: Instance) -> tuple[str, str]:
        found = self.describe_instances(self.name_filter(instance.name, ["running"]))
        if not found:
            raise OperationFailed(f"{instance.name} of {self.env.name} is not running: no channel into it")
        machine = found[0]["InstanceId"]
        return machine, self.ec2.get_console_output(InstanceId=machine).get(
            "Output"
        ) or ""  # botocore decodes it

    def terminate(self, instance: Instance) -> None:
        found = self.describe_instances(self.name_filter(instance.name, NOT_GONE))
        if found:
            self.terminate_ids([i["InstanceId"] for i in found])

    def terminate_ids(self, ids: list[str]) -> None:
        self.ec2.terminate_instances(InstanceIds=ids)
        self.wait(
            f"{', '.join(ids)} to terminate",
            lambda: (
                not self.describe_instances(
                    [
                        {"Name": "instance-id", "Values": ids},
                        {"Name": "instance-state-name", "Values": NOT_GONE},
                    ]
                )
            ),
        )

    def name_filter(self, instance: str, states: list[str] | None = None) -> list[dict]:
        filters = [*self.env_filter, {"Name": "tag:kiln.instance", "Values": [instance]}]
        if states:
            filters.append({"Name": "instance-state-name", "Values": states})
        return filters

    def describe_instances(self, filters: list[dict]) -> list[dict]:
        found, token = [], None
        while True:
            page = self.ec2.describe_instances(Filters=filters, **({"NextToken": token} if token else {}))
            found += [i for r in page["Reservations"] for i in r["Instances"]]
            token = page.get("NextToken")
            if not token:
                return found

    def instance(self, raw: dict) -> Instance:
        tags = tag_dict(raw)
        zone_name = raw["Placement"]["AvailabilityZone"]
        if zone_name not in self.env.zones:
            raise KilnError(
                f"{self.env.file}: field 'zones': instance {tags['kiln.instance']} runs in {zone_name}, "
                "which is not listed: add the zone back or terminate the instance"
            )
        return Instance(
            name=tags["kiln.instance"],
            role=tags.get("kiln.role", ""),
            zone=self.env.zones.index(zone_name),
            version=tags.get("kiln.version", ""),
            address=raw.get("PrivateIpAddress", ""),
            running=raw["State"]["Name"] == "running",
        )

    # ---- load balancer ----------------------------------------------------------------------

    def required_target_group(self) -> str:
        arn = self.target_group_arn()
        if arn is None:
            raise KilnError(
                f"environment {self.env.name} has no load balancer: run `invoke up {self.env.name}`"
            )
        return arn

    def targets_of(self, name: str, states: list[str] | None = None) -> list[dict]:
        found = self.describe_instances(self.name_filter(name, states))
        return [{"Id": i["InstanceId"], "Port": self.target_protocol()[1]} for i in found]

    def lb_register(self, instance: Instance) -> None:
        targets = self.targets_of(instance.name, LIVE_STATES)
        if not targets:
            raise OperationFailed(f"{instance.name} is not running: it cannot join the load balancer")
        self.elb.register_targets(TargetGroupArn=self.required_target_group(), Targets=targets)

    def lb_drain(self, instance: Instance) -> None:
        # ELBv2 has no drain apart from deregistering: the target drains for the deregistration delay.
        targets = self.targets_of(instance.name)
        if targets:
            self.elb.deregister_targets(TargetGroupArn=self.required_target_group(), Targets=targets)

    def target_health(self) -> list[dict]:
        arn = self.target_group_arn()
        if arn is None:
            return []
        return self.elb.describe_target_health(TargetGroupArn=arn)["TargetHealthDescriptions"]

    def lb_servers(self) -> dict[str, LbServer]:
        descriptions = self.target_health()
        if not descriptions:
            return {}
        ids = [d["Target"]["Id"] for d in descriptions]
        names = {
            i["InstanceId"]: tag_dict(i).get("kiln.instance", i["InstanceId"])
            for i in self.describe_instances([{"Name": "instance-id", "Values": ids}])
        }
        servers = {}
        for d in descriptions:
            name = names.get(d["Target"]["Id"], d["Target"]["Id"])
            servers[name] = lb_server(name, d["TargetHealth"])
        return servers

    def lb_deregister(self, name: str) -> None:
        arn = self.required_target_group()
        ids = {t["Id"] for t in self.targets_of(name)} or {name}  # a target whose instance is long gone
        registered = [d for d in self.target_health() if d["Target"]["Id"] in ids]
        serving = [d["Target"] for d in registered if "draining" not in d["TargetHealth"]["State"]]
        if serving:
            self.elb.deregister_targets(TargetGroupArn=arn, Targets=serving)
        # Connections that outlive the deregistration delay are closed by ELBv2 when it ends.
        self.wait(
            f"{name} to leave the target group",
            lambda: not any(d["Target"]["Id"] in ids for d in self.target_health()),
        )


def tag_dict(resource: dict) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in resource.get("Tags", [])}


def listener_shape(listener: dict) -> tuple:
    """What Kiln sets on a listener, comparable between a description and a request (ELBv2
    describes more: a redirect's host, path and query)."""
    actions = tuple(
        (a["Type"], a.get("TargetGroupArn"), *(a.get("RedirectConfig", {}).get(k) for k in REDIRECT_KEYS))
        for a in listener["DefaultActions"]
    )
    https = listener["Protocol"] == "HTTPS"
    certificates = tuple(c["CertificateArn"] for c in listener.get("Certificates", []))
    return listener["Protocol"], actions, certificates, listener.get("SslPolicy") if https else None


def image_record(raw: dict) -> ImageRecord:
    tags = tag_dict(raw)
    return ImageRecord(
        role=tags["kiln.role"],
        version=tags.get("kiln.version", ""),
        status=tags.get("kiln.status", "baked"),
        image=raw["ImageId"],
        id=raw["ImageId"],
        labels={k: v for k, v in tags.items() if k.startswith("kiln.")},
    )


def lb_server(name: str, health: dict) -> LbServer:
    state = health.get("State", "unavailable")
    lb_state, sessions = TARGET_STATES.get(state, ("maint", 0))
    reason = health.get("Reason") or health.get("Description")
    return LbServer(
        name=name,
        healthy=state == "healthy",
        state=lb_state,
        sessions=sessions,
        check=f"{state}: {reason}" if reason else state,
    )
