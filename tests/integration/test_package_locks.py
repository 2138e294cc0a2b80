"""Package locks against the real mirror: reproducible package sets and honest refreshes."""

from __future__ import annotations

import re

import pytest

from kiln.bake import Baker
from kiln.settings import Settings

pytestmark = pytest.mark.integration


def installed(build_dir) -> dict[str, str]:
    lines = (build_dir / "packages.txt").read_text().splitlines()
    return dict(line.split("\t") for line in lines)


def test_missing_lock_is_written_and_the_same_lock_bakes_the_same_packages(scratch_project, baked_web, capfd):
    lock_file = scratch_project.project / "images" / "web" / "packages.lock"
    committed = lock_file.read_text()
    lock_file.unlink()
    baker = Baker(Settings(project_root=scratch_project.project, image_repo=scratch_project.prefix))
    # The re-resolved lock is the committed one, so the version is unchanged: force real builds.
    *_, first = baker.bake("web", force=True)
    assert "images/web/packages.lock is missing: resolved" in capfd.readouterr().err
    assert lock_file.read_text() == committed  # same mirror, same resolution
    *_, second = baker.bake("web", force=True)
    assert first.version == second.version
    assert installed(first.build_dir) == installed(second.build_dir)
    locked = dict(line.split("=", 1) for line in committed.splitlines() if not line.startswith("#"))
    for name, version in locked.items():
        assert installed(second.build_dir)[name] == version


def test_a_locked_version_gone_from_the_mirror_stops_before_building(
    scratch_project, baked_web, docker_client
):
    def web_tags() -> set[str]:
        return {
            t
            for i in docker_client.images.list()
            for t in i.tags
            if t.startswith(f"{scratch_project.prefix}/web:")
        }

    before = web_tags()
    lock_file = scratch_project.project / "images" / "web" / "packages.lock"
    lock_file.write_text(
        re.sub(r"^gunicorn=.*$", "gunicorn=0.0.1-kiln-gone", lock_file.read_text(), flags=re.M)
    )
    proc = scratch_project.invoke("bake", "web", check=False)
    assert proc.returncode == 2
    message = proc.stderr.strip().splitlines()[-1]
    assert (
        "images/web/packages.lock locks versions the mirror no longer has: gunicorn=0.0.1-kiln-gone"
        in message
    )
    assert "invoke lock web --update" in message
    assert not [
        c.name
        for c in docker_client.containers.list(all=True)
        if c.name.startswith(f"{scratch_project.prefix}-bake-web")
    ]
    assert web_tags() == before


def test_lock_shows_a_readable_diff_and_update_writes_it(scratch_project, baked_web):
    lock_file = scratch_project.project / "images" / "web" / "packages.lock"
    original = lock_file.read_text()
    real_gunicorn = re.search(r"^gunicorn=(.*)$", original, re.M)[1]
    nginx_line = re.search(r"^nginx=.*$", original, re.M)[0]
    edited = re.sub(r"^gunicorn=.*$", "gunicorn=19.0-old", original, flags=re.M)
    edited = edited.replace(nginx_line + "\n", "") + "oldpkg=1.0\n"
    lock_file.write_text(edited)

    proc = scratch_project.invoke("lock", "web")
    diff = proc.stdout.splitlines()
    assert f"~ gunicorn 19.0-old -> {real_gunicorn}" in diff
    assert "- oldpkg 1.0" in diff
    assert nginx_line.replace("nginx=", "+ nginx ") in diff
    assert "invoke lock web --update" in proc.stderr
    assert lock_file.read_text() == edited  # a dry run changes nothing

    scratch_project.invoke("lock", "web", "--update")
    assert lock_file.read_text() == original


def test_locked_mode_refuses_to_resolve(scratch_project, baked_web):
    (scratch_project.project / "images" / "web" / "packages.lock").unlink()
    proc = scratch_project.invoke("bake", "web", "--locked", check=False)
    assert proc.returncode == 2
    assert "images/web/packages.lock is missing and --locked forbids resolving" in proc.stderr
    assert not (scratch_project.project / "images" / "web" / "packages.lock").exists()
