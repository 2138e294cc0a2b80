"""Verification on the real engine: every role's image verified by `invoke bake`, a weakened image
rejected with the control and role named, and bad input answered in one line."""

from __future__ import annotations

import io
import json
import tarfile

import pytest

pytestmark = pytest.mark.integration


def images_json(kiln) -> dict[str, dict]:
    """role:version -> the image's JSON, for every image of this run's prefix."""
    return {f"{i['role']}:{i['version']}": i for i in json.loads(kiln.invoke("images", "--json").stdout)}


def versions(proc) -> dict[str, str]:
    return dict(line.split("\t")[:2] for line in proc.stdout.splitlines() if "\t" in line)


def leftover_verify_containers(kiln, docker_client) -> list[str]:
    """Verification containers of this run's images (others may be verifying on the same engine)."""
    containers = docker_client.containers.list(all=True, filters={"label": "kiln.verify"})
    return [c.name for c in containers if c.labels["kiln.verify"].startswith(kiln.prefix + "/")]


def test_bake_verifies_every_role(kiln, baked_all, docker_client):
    assert set(baked_all) == {"base", "web", "db", "lb", "worker"}
    listed = images_json(kiln)
    for role, version in baked_all.items():
        assert listed[f"{role}:{version}"]["status"] == "verified", role
        assert docker_client.images.get(f"{kiln.prefix}/{role}:{version}").labels["kiln.status"] == "verified"
        junits = sorted((kiln.project / ".kiln" / "verify" / role).glob(f"{version}-*.xml"))
        assert junits, f"no JUnit file for {role}"
        assert 'failures="0"' in junits[-1].read_text()
    # No verification container is left behind.
    assert not leftover_verify_containers(kiln, docker_client)


def test_verify_runs_the_common_suite_and_the_roles_own(kiln, baked_all):
    proc = kiln.invoke("verify", "lb", "--version", baked_all["lb"])
    assert f"lb {baked_all['lb']} verified" in proc.stderr
    junit = sorted((kiln.project / ".kiln" / "verify" / "lb").glob(f"{baked_all['lb']}-*.xml"))[
        -1
    ].read_text()
    assert "test_sshd_option" in junit and "test_haproxy_config_valid" in junit


def test_verify_of_a_missing_image_says_how_to_bake_it(kiln):
    proc = kiln.invoke("verify", "web", "--version", "000000000000", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "kiln: no baked image of web version 000000000000: bake it with `invoke bake web`"
    )


def test_unknown_role_is_refused(kiln):
    proc = kiln.invoke("verify", "nope", check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith("kiln: unknown role 'nope'")


def test_too_many_pending_security_updates_reject_the_image(scratch_project, baked_all, docker_client):
    """An image recorded with 5 pending security updates, against a role allowing none."""
    role_file = scratch_project.project / "images" / "lb" / "role.yml"
    role_file.write_text(role_file.read_text() + "max_security_pending: 0\n")
    source = docker_client.images.get(f"{scratch_project.prefix}/lb:{baked_all['lb']}")
    dockerfile = f'FROM {source.id}\nLABEL kiln.security-pending="5" kiln.version="pending5"\n'.encode()
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        tar.addfile(info, io.BytesIO(dockerfile))
    context.seek(0)
    image, _ = docker_client.images.build(fileobj=context, custom_context=True, rm=True)
    image.tag(f"{scratch_project.prefix}/lb", "pending5")
    proc = scratch_project.invoke("verify", "lb", "--version", "pending5", check=False)
    assert proc.returncode == 1
    assert (
        "5 security updates were pending at bake, more than max_security_pending: 0 (images/lb/role.yml)"
        in proc.stderr
    )
    assert (
        docker_client.images.get(f"{scratch_project.prefix}/lb:pending5").labels["kiln.status"] == "rejected"
    )


def test_a_weakening_provisioner_yields_a_rejected_image(scratch_project, baked_all, docker_client):
    project = scratch_project.project
    (project / "provisioners" / "web-weaken.sh").write_text(
        "#!/usr/bin/env bash\nset -euo pipefail\n"
        "sed -i 's/^PermitRootLogin no/PermitRootLogin yes/' /etc/ssh/sshd_config\n"
    )
    (project / "provisioners" / "web-weaken.sh").chmod(0o755)
    role_file = project / "images" / "web" / "role.yml"
    role_file.write_text(role_file.read_text().replace("  - web-app\n", "  - web-app\n  - web-weaken\n"))
    proc = scratch_project.invoke("bake", "web", check=False)
    assert proc.returncode == 1, proc.stderr
    version = versions(proc)["web"]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"kiln: web {version} rejected: web: control test_sshd_option[")
    assert "permitrootlogin" in last and "Traceback" not in proc.stderr
    labels = docker_client.images.get(f"{scratch_project.prefix}/web:{version}").labels
    assert labels["kiln.status"] == "rejected"
    # base was verified before and is left as it was.
    assert versions(proc)["base"] == baked_all["base"]
    assert not leftover_verify_containers(scratch_project, docker_client)


def test_no_verify_leaves_the_image_baked(scratch_project, baked_all, docker_client):
    role_file = scratch_project.project / "images" / "lb" / "role.yml"
    role_file.write_text(role_file.read_text() + "# any change makes a new version\n")
    proc = scratch_project.invoke("bake", "lb", "--no-verify")
    version = versions(proc)["lb"]
    assert version != baked_all["lb"]
    assert docker_client.images.get(f"{scratch_project.prefix}/lb:{version}").labels["kiln.status"] == "baked"
