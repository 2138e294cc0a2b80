"""HCL2-JSON for current Packer, translated from the legacy template every target renders.

Only Packer 1.6.6 runs here: it reads HCL2 but knows neither `required_plugins` nor `packer
init`, so the translation without its `packer` block is `packer validate`d for real, and the
block itself is checked for shape."""

import dataclasses
import json
import shutil

import pytest

from kiln import packer
from kiln.errors import KilnError
from kiln.targets import TARGETS, get_target
from kiln.targets.hcl2 import PLUGINS, translate
from tests.unit.test_render import cloud_environment, context, keystone_url  # noqa: F401


@pytest.mark.parametrize(
    ("target", "plugins"),
    [
        ("docker", {"docker": "github.com/hashicorp/docker"}),
        ("amazon-ebs", {"amazon": "github.com/hashicorp/amazon"}),
        ("openstack", {"openstack": "github.com/hashicorp/openstack"}),
    ],
)
def test_required_plugins_name_each_builder(settings, target, plugins):
    hcl = translate(get_target(target).render(context(settings, "web")))
    required = hcl["packer"]["required_plugins"]
    assert {name: p["source"] for name, p in required.items()} == plugins
    assert all(p["version"].startswith(">= ") for p in required.values())


def test_every_builder_kiln_renders_has_a_plugin():
    assert set(TARGETS) <= set(PLUGINS)


def test_docker_template_structure(settings):
    legacy = get_target("docker").render(context(settings, "web"))
    hcl = translate(legacy)
    source = hcl["source"]["docker"]["kiln"]
    assert "type" not in source and source["image"] == "sha256:parent"
    assert "{{.Image}}" in source["run_command"]  # Packer still expands it at build time
    build = hcl["build"]
    assert build["sources"] == ["source.docker.kiln"]
    kinds = [next(iter(step)) for step in build["provisioner"]]
    assert kinds == [step["type"] for step in legacy["provisioners"]]
    shell = build["provisioner"][-1]["shell"]
    assert shell["scripts"] == legacy["provisioners"][-1]["scripts"]
    chain = build["post-processors"][0]["post-processor"]
    assert [next(iter(p)) for p in chain] == ["docker-tag", "manifest"]
    assert chain[1]["manifest"]["custom_data"]["version"] == "0123456789ab"


def test_variables_become_hcl2_variables_and_env_defaults(settings):
    hcl = translate(get_target("amazon-ebs").render(context(settings, "web", parent_ref="abc")))
    assert hcl["variable"]["aws_region"] == {"type": "string", "default": '${env("AWS_REGION")}'}
    assert hcl["variable"]["instance_type"]["default"] == "t3.small"
    source = hcl["source"]["amazon-ebs"]["kiln"]
    assert source["region"] == "${var.aws_region}"
    assert source["source_ami_filter"]["filters"]["tag:kiln.version"] == "abc"


def test_literal_interpolation_is_escaped_and_unknown_templates_refused():
    legacy = {
        "builders": [{"type": "docker", "image": "x", "commit": True, "changes": ["ENV A=${HOME}"]}],
        "provisioners": [{"type": "shell", "inline": ["echo %{x}"]}],
    }
    hcl = translate(legacy)
    assert hcl["source"]["docker"]["kiln"]["changes"] == ["ENV A=$${HOME}"]
    assert hcl["build"]["provisioner"][0]["shell"]["inline"] == ["echo %%{x}"]
    legacy["builders"][0]["image"] = "{{timestamp}}"
    with pytest.raises(ValueError, match="no HCL2 translation"):
        translate(legacy)


@pytest.mark.skipif(shutil.which("packer") is None, reason="packer is installed by ./setup.sh")
@pytest.mark.parametrize("target", sorted(TARGETS))
def test_translation_passes_packer_validate(settings, tmp_path, monkeypatch, keystone_url, target):  # noqa: F811
    cloud_environment(monkeypatch, keystone_url)
    ctx = context(settings, "web", parent_ref="sha256:parent", build_dir=tmp_path)
    get_target(target).prepare(ctx)
    hcl = translate(get_target(target).render(ctx), plugins=False)
    path = tmp_path / "t.pkr.json"
    path.write_text(json.dumps(hcl, indent=2))
    packer.validate(path, settings)


def test_packer_1_6_gets_the_legacy_template(settings, tmp_path):
    template = get_target("docker").render(context(settings, "web"))
    path = packer.write_template(template, tmp_path / "template.json", settings)
    assert path.name == "template.json" and json.loads(path.read_text()) == template


def test_packer_1_7_or_later_gets_hcl2_after_packer_init(settings, tmp_path):
    """Packer 1.7+ does not run here: a stand-in executable answers `version` as Packer 1.11.2
    does and records the `init` call, so what Kiln asks of a current Packer is checked."""
    calls = tmp_path / "calls"
    stand_in = tmp_path / "packer-1.11"
    stand_in.write_text(
        f'#!/bin/sh\necho "$PWD $*" >> {calls}\n'
        '[ "$1" = version ] && echo "Packer v1.11.2"\nexit 0\n'
    )
    stand_in.chmod(0o755)
    current = dataclasses.replace(settings, packer=str(stand_in))
    template = get_target("docker").render(context(settings, "web"))
    path = packer.write_template(template, tmp_path / "build" / "template.json", current)
    assert path.name == "template.pkr.json"
    assert json.loads(path.read_text())["packer"]["required_plugins"]["docker"]["source"] == (
        "github.com/hashicorp/docker"
    )
    assert calls.read_text().splitlines()[-1] == f"{path.parent} init template.pkr.json"


def test_an_executable_that_is_not_packer_is_named(settings, tmp_path):
    impostor = tmp_path / "impostor"
    impostor.write_text("#!/bin/sh\necho hello\n")
    impostor.chmod(0o755)
    with pytest.raises(KilnError, match=r"does not say a Packer version \(hello\): check KILN_PACKER"):
        packer.write_template({}, tmp_path / "t.json", dataclasses.replace(settings, packer=str(impostor)))
