"""Packer templates for every target: shape checked here, `packer validate` for real."""

import base64
import http.server
import json
import shutil
import tarfile
import threading
from pathlib import Path

import pytest
import yaml

from kiln import locks, packer
from kiln.errors import KilnError
from kiln.roles import RoleCatalog
from kiln.targets import TARGETS, BakeContext, get_target
from kiln.vm import seed_user_data


def context(settings, role_name, parent_ref="sha256:parent", build_dir=Path("/tmp/b")):
    role = RoleCatalog(settings).get(role_name)
    lock = locks.read_lock(role)
    labels = {
        "kiln.role": role_name,
        "kiln.version": "0123456789ab",
        "kiln.status": "baked",
        "kiln.repository": f"kilnunit/{role_name}",
    }
    return BakeContext(role, "0123456789ab", parent_ref, labels, lock.specs(), build_dir, "b1")


def test_docker_template_builds_from_parent_without_pulling(settings):
    template = get_target("docker").render(context(settings, "web"))
    builder = template["builders"][0]
    assert builder["image"] == "sha256:parent"
    assert builder["pull"] is False
    assert "kiln-bake-web-b1" in builder["run_command"]
    assert 'kiln.status="baked"' in builder["changes"][0]
    assert "EXPOSE 80" in builder["changes"]
    tag, manifest = template["post-processors"][0]
    assert tag == {"type": "docker-tag", "repository": "kilnunit/web", "tags": ["0123456789ab"]}
    assert manifest["type"] == "manifest"


def test_provisioners_run_packages_first_and_finish_last(settings):
    ctx = context(settings, "web")
    steps = get_target("docker").render(ctx)["provisioners"]
    assert steps[0]["type"] == "file" and steps[0]["source"].endswith("images/web/files/")
    scripts = [Path(s).name for s in steps[-1]["scripts"]]
    assert scripts[0] == "packages.sh" and scripts[-2:] == ["services.sh", "finish.sh"]
    assert scripts[1:-2] == [f"{name}.sh" for name in ctx.role.spec.provisioners]
    env = dict(e.split("=", 1) for e in steps[-1]["environment_vars"])
    declared = json.loads(base64.b64decode(env["KILN_SERVICES"]))
    assert [s["name"] for s in declared] == ["web-app", "nginx"]
    assert env["KILN_REQUESTED"].split() == ctx.role.spec.packages
    assert env["KILN_PACKAGES"].split() == ctx.package_specs
    assert env["KILN_HEALTH_PATH"] == "/health"


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_every_target_installs_the_declared_services_and_its_cloud_init(settings, target):
    for role, services in {
        "base": ["ssh-hostkeys", "firewall", "node-exporter", "syslog"],
        "web": ["web-app", "nginx"],
    }.items():
        shell = [
            s
            for s in get_target(target).render(context(settings, role))["provisioners"]
            if s["type"] == "shell"
        ]
        scripts = [Path(p).name for step in shell for p in step.get("scripts", [])]
        assert scripts[-2:] == ["services.sh", "finish.sh"]
        assert ("base-cloud-init.sh" in scripts) is (role == "base")
        env = dict(e.split("=", 1) for step in shell for e in step.get("environment_vars", []))
        assert [s["name"] for s in json.loads(base64.b64decode(env["KILN_SERVICES"]))] == services


def test_cloud_templates_find_parent_by_kiln_tags(settings):
    ami = get_target("amazon-ebs").render(context(settings, "web", parent_ref="abc"))["builders"][0]
    assert ami["source_ami_filter"]["filters"] == {"tag:kiln.role": "base", "tag:kiln.version": "abc"}
    assert ami["tags"]["kiln.role"] == "web"
    glance = get_target("openstack").render(context(settings, "web", parent_ref="abc"))["builders"][0]
    assert glance["source_image_filter"]["filters"]["properties"]["kiln.version"] == "abc"
    assert glance["metadata"]["kiln.status"] == "baked"


def test_cloud_base_starts_from_official_debian(settings):
    ami = get_target("amazon-ebs").render(context(settings, "base", parent_ref=""))["builders"][0]
    assert ami["source_ami_filter"]["owners"] == ["136693071363"]


def test_qemu_template_boots_the_parent_disk_with_a_one_time_build_user(settings, tmp_path):
    ctx = context(settings, "web", parent_ref="/disks/base-1.qcow2", build_dir=tmp_path)
    target = get_target("qemu")
    target.prepare(ctx)
    builder = target.render(ctx)["builders"][0]
    assert builder["iso_url"] == "/disks/base-1.qcow2" and builder["disk_image"] is True
    assert builder["vm_name"] == "web-0123456789ab.qcow2" and builder["format"] == "qcow2"
    assert builder["accelerator"] == "tcg" and builder["cd_label"] == "cidata"
    user_data = (tmp_path / "seed" / "user-data").read_text()
    public_key = (tmp_path / "id_ed25519.pub").read_text().strip()
    assert "name: kilnbuild" in user_data and public_key in user_data
    assert builder["ssh_private_key_file"] == str(tmp_path / "id_ed25519")
    # SSH is forwarded on loopback only, and the build user and cloud-init state do not ship.
    assert ["-netdev", "user,id=user.0,hostfwd=tcp:127.0.0.1:{{ .SSHHostPort }}-:22"] in builder["qemuargs"]
    for forgotten in ("userdel --force --remove kilnbuild", "cloud-init clean", "/etc/ssh/ssh_host_*"):
        assert forgotten in builder["shutdown_command"]


def test_qemu_bake_skips_syncs_only_while_baking(settings, tmp_path):
    """The bake's disk is cached unsafely and dpkg skips fsync; the shutdown removes the dpkg
    setting before the image is sealed, and a verification seed never carries it."""
    ctx = context(settings, "web", parent_ref="/disks/base-1.qcow2", build_dir=tmp_path)
    target = get_target("qemu")
    target.prepare(ctx)
    builder = target.render(ctx)["builders"][0]
    assert builder["disk_cache"] == "unsafe" and builder["disk_discard"] == "unmap"
    seed = yaml.safe_load((tmp_path / "seed" / "user-data").read_text())
    [unsafe_io] = [f for f in seed["write_files"] if f["path"].startswith("/etc/dpkg/dpkg.cfg.d/")]
    assert unsafe_io["content"] == "force-unsafe-io\n"
    shutdown = builder["shutdown_command"]
    assert unsafe_io["path"] in shutdown and shutdown.index(unsafe_io["path"]) < shutdown.index("shutdown -P")
    assert "dpkg.cfg.d" not in seed_user_data("kilnadmin", "ssh-ed25519 AAAA kiln@test")


@pytest.mark.parametrize("target", ["qemu", "amazon-ebs", "openstack"])
def test_ssh_targets_stage_files_and_move_them_with_sudo(settings, target, tmp_path):
    ctx = context(settings, "web", build_dir=tmp_path)
    get_target(target).prepare(ctx)
    steps = get_target(target).render(ctx)["provisioners"]
    upload = next(s for s in steps if s["type"] == "file")
    assert upload["source"] == str(tmp_path / "files-0.tar")
    assert upload["destination"] == "/tmp/kiln-staging/0.tar"
    move = steps[steps.index(upload) + 1]
    assert "; sudo env {{ .Vars }} {{ .Path }}" in move["execute_command"]
    assert move["inline"][0] == "tar -xpf /tmp/kiln-staging/0.tar -C / --no-overwrite-dir"
    with tarfile.open(tmp_path / "files-0.tar") as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert all(m.uid == 0 and m.uname == "root" for m in members.values())
    # Modes are the repository's, whatever the SSH user's umask: the app stays world-readable.
    assert members["opt/kiln-web/app.py"].mode & 0o004
    shell = next(s for s in steps if "scripts" in s)
    assert "KILN_TARGET=" + target in shell["environment_vars"]


def test_unknown_target_lists_known_ones():
    known = "docker, qemu, amazon-ebs, openstack"
    with pytest.raises(KilnError, match=f"unknown target 'gce'; known targets: {known}"):
        get_target("gce")


class TokenOnlyKeystone(http.server.BaseHTTPRequestHandler):
    """Packer 1.6.6's openstack builder logs in while validating; no OpenStack exists here, so
    this loopback endpoint answers the Keystone v3 token request and nothing else."""

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        scope = {"id": "kiln", "name": "kiln", "domain": {"id": "default", "name": "Default"}}
        token = {
            "expires_at": "2099-01-01T00:00:00.000000Z",
            "methods": ["password"],
            "catalog": [],
            "user": scope,
            "project": scope,
        }
        body = json.dumps({"token": token}).encode()
        self.send_response(201)
        self.send_header("X-Subject-Token", "validate-only")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def cloud_environment(monkeypatch, keystone_url: str) -> None:
    """What a real run takes from the environment; nothing here contacts a cloud."""
    for name, value in {
        "AWS_REGION": "eu-west-1",
        "OS_AUTH_URL": keystone_url,
        "OS_FLAVOR": "m1.small",
        "OS_NETWORK": "private",
        "OS_USERNAME": "kiln",
        "OS_PASSWORD": "validate-only",
        "OS_PROJECT_NAME": "kiln",
        "OS_DOMAIN_NAME": "Default",
    }.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def keystone_url():
    server = http.server.HTTPServer(("127.0.0.1", 0), TokenOnlyKeystone)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/v3"
    server.shutdown()
    server.server_close()


@pytest.mark.skipif(shutil.which("packer") is None, reason="packer is installed by ./setup.sh")
@pytest.mark.parametrize("target", sorted(TARGETS))
@pytest.mark.parametrize("role", ["base", "web"])
def test_rendered_templates_pass_packer_validate(settings, tmp_path, monkeypatch, keystone_url, target, role):
    cloud_environment(monkeypatch, keystone_url)
    ctx = context(settings, role, parent_ref="sha256:parent", build_dir=tmp_path)
    get_target(target).prepare(ctx)
    path = packer.write_template(get_target(target).render(ctx), tmp_path / "t.json")
    packer.validate(path, settings)


def test_render_task_path_writes_and_validates_a_cloud_template_without_a_local_catalog(settings):
    """`invoke render web --target amazon-ebs` (the pipeline's validate job) needs no Docker or
    disk catalog: the cloud keeps its images, and the labels name them after the same prefix."""
    from kiln.bake import Baker

    path, version = Baker(settings, "amazon-ebs").render("web")
    tags = json.loads(path.read_text())["builders"][0]["tags"]
    assert tags["kiln.repository"] == f"{settings.image_repo}/web" and tags["kiln.version"] == version
