"""Real bakes with Packer on the local Docker engine."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.integration


def images_json(kiln) -> list[dict]:
    return json.loads(kiln.invoke("images", "--json").stdout)


def test_bake_web_bakes_base_then_web_with_labels(kiln, baked_web, docker_client):
    assert set(baked_web) == {"base", "web"}
    listed = {image["role"]: image for image in images_json(kiln)}
    for role in ("base", "web"):
        image = listed[role]
        assert image["version"] == baked_web[role]
        assert image["image"] == f"{kiln.prefix}/{role}:{baked_web[role]}"
        assert image["status"] in {"baked", "verified"}
        labels = docker_client.images.get(image["image"]).labels
        for key in ("inputs-hash", "git-commit", "built", "bake-id", "lock-hash", "security-pending"):
            assert labels[f"kiln.{key}"], key
        assert labels["kiln.inputs-hash"].startswith(baked_web[role])
    web_labels = docker_client.images.get(listed["web"]["image"]).labels
    assert web_labels["kiln.parent"] == "base"
    assert web_labels["kiln.parent-id"].startswith("base@")


def test_build_files_are_kept_per_build(kiln, baked_web):
    builds = sorted((kiln.project / ".kiln" / "builds" / "web").iterdir())
    assert builds, "no build folder for web"
    files = {p.name for p in builds[-1].iterdir()}
    assert {"template.json", "build.log", "manifest.json", "packages.txt"} <= files
    packages = (builds[-1] / "packages.txt").read_text()
    assert "nginx\t" in packages and "gunicorn\t" in packages
    manifest = json.loads((builds[-1] / "manifest.json").read_text())
    assert manifest["builds"][0]["custom_data"]["version"] == baked_web["web"]


def test_second_bake_is_a_no_op(kiln, baked_web):
    before = sorted((kiln.project / ".kiln" / "builds" / "web").iterdir())
    proc = kiln.invoke("bake", "web")
    assert f"web {baked_web['web']} is up to date" in proc.stderr
    assert f"base {baked_web['base']} is up to date" in proc.stderr
    assert sorted((kiln.project / ".kiln" / "builds" / "web").iterdir()) == before


def test_baked_web_serves_health_with_its_version(kiln, baked_web, docker_client):
    container = docker_client.containers.run(
        f"{kiln.prefix}/web:{baked_web['web']}",
        detach=True,
        init=True,
        name=f"{kiln.prefix}-web-health",
    )
    try:
        code, out = container.exec_run(
            [
                "python3",
                "-c",
                "import time, urllib.request as u\n"
                "for _ in range(50):\n"
                "    try:\n"
                "        print(u.urlopen('http://127.0.0.1/health').read().decode()); break\n"
                "    except OSError:\n"
                "        time.sleep(0.1)\n",
            ]
        )
        assert code == 0
        health = json.loads(out.decode())
        assert {k: health[k] for k in ("status", "role", "version")} == {
            "status": "ok",
            "role": "web",
            "version": baked_web["web"],
        }
    finally:
        container.remove(force=True)


def test_a_command_given_to_the_image_runs_instead_of_its_services(kiln, baked_web, docker_client):
    """`docker run IMAGE COMMAND` behaves as with any image: the command, not kiln-init's services."""
    out = docker_client.containers.run(
        f"{kiln.prefix}/web:{baked_web['web']}",
        ["cat", "/etc/kiln/image.json"],
        remove=True,
        network_mode="none",
        name=f"{kiln.prefix}-web-command",
    )
    assert json.loads(out.decode()) == {"role": "web", "version": baked_web["web"]}


def test_changing_a_base_provisioner_rebakes_base_and_web(scratch_project, baked_web):
    with (scratch_project.project / "provisioners" / "base-init.sh").open("a") as f:
        f.write("# a change every role inherits\n")
    proc = scratch_project.invoke("bake", "web", "--no-verify")  # verification is tested elsewhere
    versions = dict(line.split("\t")[:2] for line in proc.stdout.splitlines() if "\t" in line)
    assert versions["base"] != baked_web["base"]
    assert versions["web"] != baked_web["web"]
    assert "baked " in proc.stderr and "up to date" not in proc.stderr


def test_failed_provisioner_leaves_no_container_and_no_image(scratch_project, baked_web, docker_client):
    project = scratch_project.project
    (project / "provisioners" / "explode.sh").write_text("#!/usr/bin/env bash\necho boom >&2\nexit 7\n")
    role = project / "images" / "broken"
    role.mkdir()
    (role / "role.yml").write_text(
        "name: broken\ndescription: fails on purpose\nparent: base\nprovisioners: [explode]\n"
    )
    (role / "packages.lock").write_text("# requested: \n")
    proc = scratch_project.invoke("bake", "broken", check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "kiln: baking broken failed: provisioner explode.sh failed: boom (full log: "
    )
    assert "full log:" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not [c.name for c in docker_client.containers.list(all=True) if "broken" in c.name]
    assert not [t for i in docker_client.images.list() for t in i.tags if "/broken:" in t]


def test_unknown_role_names_the_known_ones(kiln):
    proc = kiln.invoke("bake", "nope", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "kiln: unknown role 'nope'; known roles: base, db, lb, web, worker. "
        "To add one, create images/nope/role.yml (see README: Adding a role)."
    )


def test_malformed_role_file_names_file_and_field(scratch_project):
    role_file = scratch_project.project / "images" / "web" / "role.yml"
    text = role_file.read_text()
    assert "ports: [80, 443]" in text  # the replacement below must hit
    role_file.write_text(text.replace("ports: [80, 443]", "ports: [http, 443]"))
    proc = scratch_project.invoke("bake", "web", check=False)
    assert proc.returncode == 2
    assert "images/web/role.yml: field 'ports[0]': expected an integer, got str 'http'" in proc.stderr


def test_dead_daemon_gives_the_fix(kiln):
    proc = kiln.invoke("bake", "web", check=False, env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    assert proc.returncode == 2
    assert "the Docker engine does not answer" in proc.stderr and "./setup.sh" in proc.stderr


def test_missing_packer_gives_the_fix(kiln):
    proc = kiln.invoke("bake", "web", "--force", check=False, env={"KILN_PACKER": "packer-not-installed"})
    assert proc.returncode == 2
    assert "Packer is not installed" in proc.stderr and "apt-get install packer" in proc.stderr


def test_ctrl_c_stops_packer_and_leaves_no_container(scratch_project, baked_web, docker_client):
    with (scratch_project.project / "provisioners" / "web-app.sh").open("a") as f:
        f.write("sleep 60  # keep the build busy until the test interrupts it\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "invoke", "bake", "web"],
        cwd=scratch_project.project,
        env=scratch_project.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # As in a terminal: a test run started in the background of a shell inherits SIGINT ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 240
        while not [
            c
            for c in docker_client.containers.list()
            if c.name.startswith(f"{scratch_project.prefix}-bake-web-")
        ]:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the bake never started its build container"
            time.sleep(0.5)
        proc.send_signal(signal.SIGINT)  # what a terminal's Ctrl-C delivers to the foreground process
        _, stderr = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    assert "interrupted" in stderr
    assert not [
        c.name
        for c in docker_client.containers.list(all=True)
        if c.name.startswith(f"{scratch_project.prefix}-bake-web-")
    ]
