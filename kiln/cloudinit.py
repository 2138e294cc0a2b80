"""User-data per instance: jinja2 templates in cloud-init/, checked by `cloud-init schema`.

The schema check runs in a throwaway container of the instance's own image (cloud-init is in
the base image), so the host needs no cloud-init and the check matches what boots.
"""

from __future__ import annotations

import io
import tarfile
import uuid
from dataclasses import dataclass

import docker
import docker.errors
import jinja2

from kiln.errors import KilnError
from kiln.settings import Settings


@dataclass(frozen=True)
class UserData:
    instance: str
    text: str


def template_name(role: str) -> str:
    return f"{role}.yml.j2"


def render(settings: Settings, role: str, variables: dict) -> str:
    folder = settings.project_root / "cloud-init"
    name = template_name(role)
    display = f"cloud-init/{name}"
    if not (folder / name).is_file():
        raise KilnError(f"{display}: no such template; every role an environment runs needs one")
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(folder), undefined=jinja2.StrictUndefined, keep_trailing_newline=True
    )
    try:
        return env.get_template(name).render(**variables)
    except jinja2.TemplateSyntaxError as exc:
        raise KilnError(f"{display}: line {exc.lineno}: {exc.message}") from exc
    except jinja2.UndefinedError as exc:
        known = ", ".join(sorted(variables))
        raise KilnError(f"{display}: {exc.message}; the variables are: {known}") from exc


def check(client: docker.DockerClient, image: str, documents: list[UserData], name_prefix: str) -> None:
    """`cloud-init schema` on every document in one offline container; KilnError on the first bad."""
    if not documents:
        return
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        for doc in documents:
            data = doc.text.encode()
            info = tarfile.TarInfo(f"user-data/{doc.instance}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    script = (
        'for f in /tmp/user-data/*; do out=$(cloud-init schema --config-file "$f" 2>&1) '
        "|| { echo \"${f##*/}: $out\" | tr '\\n' ' '; exit 1; }; done"
    )
    container = client.containers.create(
        image,
        ["sh", "-c", script],
        entrypoint=[],
        network_mode="none",
        name=f"{name_prefix}-{uuid.uuid4().hex[:8]}",
        labels={"kiln.purpose": "schema-check"},
    )
    try:
        container.put_archive("/tmp", archive.getvalue())
        container.start()
        code = container.wait(timeout=120)["StatusCode"]
        output = container.logs().decode(errors="replace").strip()
    finally:
        container.remove(force=True)
    if code != 0:
        raise KilnError(f"user-data fails `cloud-init schema` for {output}")
