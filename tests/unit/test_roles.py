from pathlib import Path

import pytest

from kiln.errors import KilnError
from kiln.roles import RoleCatalog, version_of


def digest(settings, name, parent="bootstrap@1", template=b"T"):
    return RoleCatalog(settings).get(name).inputs_digest(template, parent)


def test_shipped_roles_load_and_chain(settings):
    catalog = RoleCatalog(settings)
    assert catalog.names() == ["base", "db", "lb", "web", "worker"]
    assert [r.name for r in catalog.chain("web")] == ["base", "web"]
    assert catalog.get("web").spec.health.path == "/health"


def test_unknown_role_names_the_known_ones(settings):
    with pytest.raises(KilnError, match=r"unknown role 'wbe'; known roles: base, db, lb, web, worker\."):
        RoleCatalog(settings).get("wbe")


def write_role(project: Path, name: str, body: str) -> None:
    (project / "images" / name).mkdir(parents=True, exist_ok=True)
    (project / "images" / name / "role.yml").write_text(body)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("name: other\ndescription: d\nparent: base\n", "field 'name': 'other' must match its folder"),
        ("name: extra\ndescription: d\nparent: nope\n", "field 'parent': unknown role 'nope'"),
        ("name: extra\ndescription: d\n", "field 'parent': only the 'base' role may have no parent"),
        (
            "name: extra\ndescription: d\nparent: base\nprovisioners: [missing]\n",
            r"field 'provisioners\[0\]': no file provisioners/missing.sh",
        ),
        (
            "name: extra\ndescription: d\nparent: base\npackages: ['Bad Name']\n",
            r"field 'packages\[0\]': 'Bad Name' is not a Debian package name",
        ),
        (
            "name: extra\ndescription: d\nparent: base\nports: [70000]\n",
            r"field 'ports\[0\]': 70000 is not a TCP port",
        ),
        (
            "name: extra\ndescription: d\nparent: base\nfiles: [{src: nothere, dest: /x}]\n",
            r"field 'files\[0\].src': no such path images/extra/nothere",
        ),
        (
            "name: extra\ndescription: d\nparent: base\ncloud_init: none.j2\n",
            "field 'cloud_init': no file cloud-init/none.j2",
        ),
        ("name: extra\ndescription: d\nparent: base\nenv: {lower: x}\n", "field 'env.lower'"),
        (
            "name: extra\ndescription: d\nparent: base\npackage: [x]\n",
            "field 'package': unknown field; did you mean 'packages'",
        ),
    ],
)
def test_invalid_role_files_name_file_and_field(project, settings, body, message):
    write_role(project, "extra", body)
    with pytest.raises(KilnError, match=r"images/extra/role.yml: " + message):
        RoleCatalog(settings).get("extra")


def test_parent_cycle_is_reported(project, settings):
    write_role(project, "a", "name: a\ndescription: d\nparent: b\n")
    write_role(project, "b", "name: b\ndescription: d\nparent: a\n")
    with pytest.raises(KilnError, match="cycle a -> b -> a"):
        RoleCatalog(settings).chain("a")


def test_version_is_stable_for_unchanged_inputs(settings):
    assert digest(settings, "web") == digest(settings, "web")
    assert len(version_of(digest(settings, "web"))) == 12


def test_shared_provisioner_change_changes_every_role_using_it(project, settings):
    before = {name: digest(settings, name) for name in ("base", "web", "db")}
    with (project / "provisioners" / "finish.sh").open("a") as f:
        f.write("# changed\n")
    after = {name: digest(settings, name) for name in ("base", "web", "db")}
    assert all(before[n] != after[n] for n in before)


def test_role_only_provisioner_change_leaves_other_roles(project, settings):
    base, db = digest(settings, "base"), digest(settings, "db")
    web = digest(settings, "web")
    with (project / "provisioners" / "web-app.sh").open("a") as f:
        f.write("# changed\n")
    assert digest(settings, "web") != web
    assert (digest(settings, "base"), digest(settings, "db")) == (base, db)


def test_parent_identity_template_and_lock_are_inputs(project, settings):
    web = digest(settings, "web")
    assert digest(settings, "web", parent="base@other-bake") != web
    assert digest(settings, "web", template=b"other target") != web
    lock = project / "images" / "web" / "packages.lock"
    lock.write_text(lock.read_text().replace("nginx=", "nginx=0"))
    assert digest(settings, "web") != web


def test_copied_file_content_and_mode_are_inputs(project, settings):
    web = digest(settings, "web")
    app = project / "images" / "web" / "files" / "opt" / "kiln-web" / "app.py"
    app.chmod(0o600)
    assert digest(settings, "web") != web


def test_tests_do_not_change_the_version(project, settings):
    web = digest(settings, "web")
    (project / "images" / "web" / "tests").mkdir(exist_ok=True)
    (project / "images" / "web" / "tests" / "test_more.py").write_text("def test_x(): pass\n")
    assert digest(settings, "web") == web
