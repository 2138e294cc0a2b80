"""Files in and out of a real container through the engine's API."""

from __future__ import annotations

import pytest

from kiln.bootstrap import bootstrap_ref
from kiln.containerfiles import put_file, read_file
from kiln.errors import OperationFailed
from kiln.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
def container(docker_client, kiln):
    image = bootstrap_ref(Settings())
    if not docker_client.images.list(name=image):
        kiln.invoke("bake", "base", "--no-verify")  # builds the bootstrap image on a new machine
    box = docker_client.containers.run(
        image, ["sleep", "120"], detach=True, network_mode="none", name=f"{kiln.prefix}-files", init=True
    )
    yield box
    box.remove(force=True)


def test_put_then_read_keeps_bytes_mode_and_owner(container):
    put_file(container, "/etc/kiln-secret.env", b"A=1\nB=\xff\n", mode=0o600, owner=(33, 33))
    assert read_file(container, "/etc/kiln-secret.env") == b"A=1\nB=\xff\n"
    code, out = container.exec_run(["stat", "-c", "%a %u:%g", "/etc/kiln-secret.env"])
    assert (code, out.decode().strip()) == (0, "600 33:33")


def test_reading_a_folder_is_a_clear_error(container):
    with pytest.raises(OperationFailed, match=r"/etc in .* is not a regular file"):
        read_file(container, "/etc")


def test_writing_into_a_missing_folder_fails(container):
    with pytest.raises(Exception, match=r"(?i)not found|could not write"):
        put_file(container, "/no/such/folder/file", b"x")
