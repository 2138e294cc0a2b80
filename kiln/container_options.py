"""How a container of a role image runs, in one place: verify and audit judge an image run this
way, and the local provider launches its instances the same way, so an instance is what was
verified.

A container shares its host's kernel: systemd-sysctl cannot apply the image's sysctl.d as on a
VM, so Docker applies the network-namespace keys at creation (the kernel-wide rest stays the
host's); CAP_NET_ADMIN lets the image's own firewall load into its namespace; an init reaps
what kiln-init's services leave behind.
"""

from __future__ import annotations

import io
import re
import tarfile
import uuid
from pathlib import Path

import docker
import docker.errors

from kiln.sysctl import parse_sysctl_conf

# Forwarding is left out: Docker applies sysctls in no set order, and turning forwarding off
# after accept_redirects resets accept_redirects to 1 (the namespace has one interface anyway).
NAMESPACED_SYSCTL = re.compile(
    r"^net\.(ipv4\.(conf\.[^.]+\.(?!forwarding$)|tcp_|icmp_|ip_local_port_range$)|ipv6\.conf\.[^.]+\.(?!forwarding$))"
)
CAPABILITIES = ["NET_ADMIN"]


def namespaced_sysctls(client: docker.DockerClient, image: str, prefix: str) -> dict[str, str]:
    """The network-namespace sysctls the image persists in /etc/sysctl.d/*.conf, last one wins."""
    container = client.containers.create(
        image, ["true"], entrypoint=[], network_mode="none", name=f"{prefix}-sysctl-{uuid.uuid4().hex[:8]}"
    )
    try:
        stream, _ = container.get_archive("/etc/sysctl.d")
    except docker.errors.NotFound:
        return {}
    finally:
        container.remove(force=True)
    values: dict[str, str] = {}
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
        for member in sorted(tar.getmembers(), key=lambda m: Path(m.name).name):
            # 99-sysctl.conf links to ../sysctl.conf, which Debian leaves all comments.
            extracted = tar.extractfile(member) if member.isfile() and member.name.endswith(".conf") else None
            if extracted is not None:
                values.update(parse_sysctl_conf(extracted.read().decode(errors="replace")))
    return {k: v for k, v in values.items() if NAMESPACED_SYSCTL.match(k)}


def run_options(client: docker.DockerClient, image: str, prefix: str) -> dict:
    """docker-py `containers.run`/`create` keyword arguments every container of `image` gets."""
    return {"init": True, "cap_add": list(CAPABILITIES), "sysctls": namespaced_sysctls(client, image, prefix)}
