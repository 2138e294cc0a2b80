"""A container instance runs as its image was verified: the local provider's web instance and
`invoke verify`'s container of the same image have the same live capabilities, network sysctls
and loaded firewall, and the instance still resolves its peers (Docker's DNS) with it."""

from __future__ import annotations

import time
import uuid

import pytest

from kiln import container_options, environments
from kiln.images import DockerImageStore
from kiln.providers.local import LocalProvider
from kiln.settings import Settings
from kiln.verify import Verifier

pytestmark = pytest.mark.integration

ENVIRONMENT = """provider: local
zones: [z0]
instances: {web: 1}
frontend: {port: 0}
"""


def booted(container, seconds: float = 60) -> None:
    """Wait for kiln-init to have run base's services (the firewall step is one of them)."""
    deadline = time.monotonic() + seconds
    while container.exec_run(["nft", "list", "chain", "inet", "kiln", "input"]).exit_code != 0:
        assert time.monotonic() < deadline, f"{container.name}: no firewall after {seconds} s"
        time.sleep(0.3)


def live(container, keys: list[str]) -> dict:
    booted(container)

    def run(*command: str) -> str:
        code, out = container.exec_run(list(command))
        assert code == 0, f"{command} in {container.name}: {out.decode(errors='replace')}"
        return out.decode().strip()

    status = dict(line.split(":\t", 1) for line in run("cat", "/proc/1/status").splitlines() if ":\t" in line)
    return {
        "capabilities": status["CapEff"],
        "sysctls": dict(zip(keys, run("sysctl", "-n", *keys).splitlines(), strict=True)),
        "firewall": "policy drop" in run("nft", "list", "chain", "inet", "kiln", "input"),
    }


def test_local_instance_runs_as_verify_saw_it(kiln, baked_web, docker_client):
    settings = Settings(project_root=kiln.project, state_dir=kiln.project / ".kiln", image_repo=kiln.prefix)
    name = f"{kiln.prefix}-runtime"
    environments.env_dir(settings).mkdir(exist_ok=True)  # the session's project copy has none
    (environments.env_dir(settings) / f"{name}.yml").write_text(ENVIRONMENT)
    record = DockerImageStore(docker_client, settings).find("web", baked_web["web"])
    provider = LocalProvider(settings, environments.load(settings, name))
    keys = sorted(container_options.namespaced_sysctls(docker_client, record.id, settings.name_prefix))
    verify_container = f"{kiln.prefix}-verify-{uuid.uuid4().hex[:8]}"
    try:
        provider.ensure_networks()
        instance = provider.launch("web", 1, record, "#cloud-config\nusers: {}\n")
        container = docker_client.containers.get(provider.container_name(instance.name))
        Verifier(settings, docker_client)._start(record, verify_container)
        verified = docker_client.containers.get(verify_container)
        seen = {"instance": live(container, keys), "verify": live(verified, keys)}
        assert seen["instance"] == seen["verify"]
        assert seen["instance"]["firewall"] and keys  # the hardening is there, not just equal
        code, _ = container.exec_run(["getent", "hosts", provider.container_name(instance.name)])
        assert code == 0, "the instance's firewall broke Docker's DNS"
    finally:
        provider.destroy()
        Verifier(settings, docker_client)._remove(verify_container)
