"""User-data per instance: jinja2 templates in cloud-init/, checked against cloud-init's schema.

The schema check runs in a throwaway container of the instance's own image (cloud-init is in
the base image), so the host needs no cloud-init and the check matches what boots. It calls
the function `cloud-init schema --config-file` runs, once for all documents in one process:
a CLI process per document cost seconds each on a busy machine, before any rollout step.
"""

from __future__ import annotations

import io
import tarfile
import uuid
from dataclasses import dataclass

import docker
import docker.errors
import jinja2
import yaml

from kiln.config import yaml_problem
from kiln.errors import KilnError
from kiln.settings import Settings


@dataclass(frozen=True)
class UserData:
    instance: str
    text: str


SCHEMA_SCRIPT = """
import sys
from cloudinit.config.schema import get_schema, validate_cloudconfig_file
schema, failed = get_schema(), 0
for path in sys.argv[1:]:
    try:
        validate_cloudconfig_file(path, schema)
    except Exception as exc:
        print("kiln-schema: " + path.rsplit("/", 1)[-1] + ": " + " ".join(str(exc).split()))
        failed = 1
sys.exit(failed)
"""


def template_name(role: str) -> str:
    return f"{role}.yml.j2"


def render(settings: Settings, role: str, variables: dict) -> str:
    folder = settings.project_root / "cloud-init"
    name = template_name(role)
    display = f"cloud-init/{name}"
    if not (folder / name).is_file():
        raise KilnError(f"{display}: no such template; every role an environment runs needs one")
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(folder), undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
        trim_blocks=True, lstrip_blocks=True,  # a line holding only a tag leaves no blank line in the YAML
    )  # fmt: skip
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
    container = client.containers.create(
        image,
        ["python3", "-c", SCHEMA_SCRIPT, *(f"/tmp/user-data/{doc.instance}" for doc in documents)],
        entrypoint=[],
        network_mode="none",
        name=f"{name_prefix}-{uuid.uuid4().hex[:8]}",
        labels={"kiln.purpose": "schema-check"},
    )
    try:
        container.put_archive("/tmp", archive.getvalue())
        container.start()
        code = container.wait(timeout=120)["StatusCode"]
        output = container.logs().decode(errors="replace")
    finally:
        container.remove(force=True)
    prefix = "kiln-schema: "
    failures = [line.removeprefix(prefix) for line in output.splitlines() if line.startswith(prefix)]
    if code != 0:
        detail = "; ".join(failures) or output.strip().replace("\n", " ")
        raise KilnError(f"user-data fails the cloud-init schema: {detail}")


def check_offline(documents: list[UserData], max_bytes: int, where: str) -> None:
    """What can be checked without the image's cloud-init: a `#cloud-config` YAML mapping that fits.

    Cloud providers use it where no local container of the image runs `cloud-init schema`.
    """
    for doc in documents:
        size = len(doc.text.encode())
        if size > max_bytes:
            raise KilnError(
                f"user-data of {doc.instance} is {size} bytes, over the {max_bytes}-byte limit of {where}: "
                "shorten its cloud-init template"
            )
        if not doc.text.startswith("#cloud-config"):
            raise KilnError(
                f"user-data of {doc.instance} does not start with '#cloud-config': fix its template"
            )
        try:
            data = yaml.safe_load(doc.text)
        except yaml.YAMLError as exc:
            line, _, problem = yaml_problem(exc)
            where = f"line {line}: " if line else ""
            raise KilnError(f"user-data of {doc.instance} is not valid YAML: {where}{problem}") from exc
        if not isinstance(data, dict):
            raise KilnError(f"user-data of {doc.instance} is not a cloud-config mapping (key: value lines)")
