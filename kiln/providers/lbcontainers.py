"""The local load balancer's containers: a network holder, and the HAProxy that runs inside it.

The holder (`kiln-<env>-lb`) owns everything clients and instances know the load balancer by:
the published frontend ports, an address on every zone network, the DNS name. It runs only
`sleep`. HAProxy runs in its own container (`kiln-<env>-lb-<version>`) that joins the holder's
network namespace. Docker can neither publish a port from two containers nor move a published
port, so this is what lets an lb rollout start the new version's HAProxy beside the old one,
let it take the listening sockets over (kiln-haproxy's `-x`), and only then stop the old one
softly: the frontend never stops accepting.
"""

from __future__ import annotations

import time

import docker
import docker.errors
from docker.models.containers import Container

from kiln.errors import OperationFailed

HOLDER_LABEL = "kiln.lb-network"
HAPROXY_LABEL = "kiln.lb-haproxy"
# The lb image's readiness: its HAProxy holds the frontend's listening socket.
LISTENING = ["/usr/local/sbin/kiln-haproxy-listening"]
NOT_AN_LB_IMAGE = (126, 127)  # docker exec could not run it: the image has no kiln-haproxy-listening
FIREWALL = ["/usr/local/sbin/kiln-firewall"]  # base's: loads the image's ruleset into the namespace


def find(client: docker.DockerClient, name: str) -> Container | None:
    try:
        return client.containers.get(name)
    except docker.errors.NotFound:
        return None


def haproxies(client: docker.DockerClient, env: str) -> list[Container]:
    """The environment's HAProxy containers, running or not, oldest first."""
    found = client.containers.list(
        all=True, filters={"label": [f"kiln.env={env}", HAPROXY_LABEL]}, ignore_removed=True
    )
    return sorted(found, key=lambda c: c.attrs["Created"])


def is_holder(container: Container | None) -> bool:
    """A holder, rather than an LB container from before holders (HAProxy and ports in one)."""
    return container is not None and HOLDER_LABEL in container.labels


def create_holder(
    client: docker.DockerClient,
    name: str,
    image: str,
    labels: dict,
    ports: dict,
    network: str,
    sysctls: dict,
    address: str | None = None,
) -> Container:
    """The network namespace's owner, at `address` on `network` when given (else Docker picks).
    The namespace's sysctls are set here: a container that joins it cannot set them. SIGKILL
    stops it at once (`sleep` ignores SIGTERM as PID 1)."""
    endpoint = {network: client.api.create_endpoint_config(ipv4_address=address)} if address else None
    return client.containers.create(
        image,
        ["infinity"],
        entrypoint=["sleep"],
        name=name,
        hostname="lb",
        labels={**labels, HOLDER_LABEL: "1"},
        network=network,
        networking_config=endpoint,
        ports=ports,
        sysctls=sysctls,
        stop_signal="SIGKILL",
        cap_drop=["ALL"],
        read_only=True,
    )


def create_haproxy(
    client: docker.DockerClient,
    name: str,
    image: str,
    holder: str,
    labels: dict,
    volumes: dict,
    options: dict,
) -> Container:
    """HAProxy's container in the holder's network namespace (options: container_options'
    run_options without the sysctls, which belong to the holder)."""
    return client.containers.create(
        image,
        name=name,
        labels={**labels, HAPROXY_LABEL: "1"},
        network_mode=f"container:{holder}",
        volumes=volumes,
        **{k: v for k, v in options.items() if k != "sysctls"},
    )


def wait_listening(container: Container, timeout: float, poll: float = 0.2) -> None:
    """Until the container's HAProxy holds the frontend's socket; OperationFailed when it stops,
    is not an lb image, or takes longer than `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        container.reload()
        if container.status != "running":
            tail = container.logs(tail=5).decode(errors="replace").strip() or "no output"
            raise OperationFailed(
                f"{container.name} stopped ({container.status}) before it took the frontend: {tail}"
            )
        code = container.exec_run(LISTENING).exit_code
        if code == 0:
            return
        if code in NOT_AN_LB_IMAGE:
            raise OperationFailed(f"{container.name} has no {LISTENING[0]}: its image is not an lb image")
        if time.monotonic() > deadline:
            raise OperationFailed(f"{container.name} did not take the frontend over in {timeout:g} s")
        time.sleep(poll)
