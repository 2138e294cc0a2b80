"""The disk catalog (qcow2 + sidecar JSON) and the names VM artefacts get, without booting anything."""

import json
from dataclasses import replace

import pytest
import yaml

from kiln import catalogs, images
from kiln.bake import Baker
from kiln.diskimages import DiskImageStore
from kiln.errors import KilnError
from kiln.verify import control_name
from kiln.vm import accelerator, write_seed
from kiln.vmdisk import bootstrap_disk_path


def labels(role, version, built, parent=""):
    return {
        "kiln.role": role,
        "kiln.version": version,
        "kiln.built": built,
        "kiln.bake-id": f"bake-{version}",
        "kiln.parent-id": parent,
        "kiln.status": "baked",
    }


def add(store, tmp_path, role, version, built, parent=""):
    built_disk = tmp_path / f"out-{role}-{version}.qcow2"
    built_disk.write_bytes(b"QFI\xfb")
    return store.add(built_disk, labels(role, version, built, parent))


def test_a_disk_is_recorded_with_its_labels_beside_it(settings, tmp_path):
    store = DiskImageStore(settings)
    record = add(store, tmp_path, "web", "aaa", "2026-01-01T00:00:00Z")
    disk = settings.state_dir / "vm" / "web" / "web-aaa.qcow2"
    assert record.image == record.id == str(disk) and disk.exists()
    assert json.loads(disk.with_suffix(".json").read_text())["kiln.role"] == "web"
    assert store.find("web", "aaa") == record and store.find("web", "bbb") is None


def test_status_changes_rewrite_only_the_sidecar(settings, tmp_path):
    store = DiskImageStore(settings)
    record = store.set_status(add(store, tmp_path, "web", "aaa", "2026-01-01T00:00:00Z"), "verified")
    assert store.find("web", "aaa").status == "verified" == record.status
    unverified = add(store, tmp_path, "web", "bbb", "2026-01-02T00:00:00Z")
    with pytest.raises(KilnError, match="only a verified image may be promoted"):
        images.promote(store, "web", unverified.version)
    assert images.promote(store, "web", "aaa").labels["kiln.promoted"]


def test_listing_is_newest_first_and_ignores_disks_without_labels(settings, tmp_path):
    store = DiskImageStore(settings)
    add(store, tmp_path, "base", "b1", "2026-01-01T00:00:00Z")
    add(store, tmp_path, "web", "w1", "2026-01-02T00:00:00Z", parent="base@bake-b1")
    (settings.state_dir / "vm" / "web" / "web-partial.qcow2").write_bytes(b"")
    assert [r.version for r in store.list()] == ["w1", "b1"]
    assert [r.version for r in store.list("web")] == ["w1"]


def test_prune_keeps_parents_and_removes_disk_and_sidecar(settings, tmp_path):
    store = DiskImageStore(settings)
    add(store, tmp_path, "base", "b1", "2026-01-01T00:00:00Z")
    add(store, tmp_path, "base", "b2", "2026-01-03T00:00:00Z")
    add(store, tmp_path, "web", "w1", "2026-01-02T00:00:00Z", parent="base@bake-b1")
    decisions = {d.record.version: d for d in images.prune(store, keep=1, remove=True)}
    assert decisions["b1"].keep and decisions["b1"].reason.startswith("parent of")
    assert decisions["b2"].keep and decisions["w1"].keep
    add(store, tmp_path, "web", "w2", "2026-01-04T00:00:00Z", parent="base@bake-b2")
    decisions = {d.record.version: d for d in images.prune(store, keep=1, remove=True)}
    assert not decisions["w1"].keep and not decisions["b1"].keep
    assert sorted(p.name for p in (settings.state_dir / "vm").rglob("*")) == sorted(
        ["base", "web", "base-b2.qcow2", "base-b2.json", "web-w2.qcow2", "web-w2.json"]
    )


def test_bootstrap_disk_is_named_after_the_mirror(settings):
    other = replace(settings, mirror="http://snapshot.example/debian")
    assert bootstrap_disk_path(settings) != bootstrap_disk_path(other)
    assert bootstrap_disk_path(settings).name.startswith("kiln-bootstrap-debian-bookworm-")


def test_cloud_targets_have_no_local_catalog(settings):
    with pytest.raises(KilnError, match="--target openstack: its images live in the cloud"):
        catalogs.image_store(settings, "openstack")


def test_control_names_drop_the_ssh_host():
    assert control_name("test_sshd_option[ssh://vm-permitrootlogin]") == "test_sshd_option[permitrootlogin]"
    assert control_name("test_machine_id_made_per_machine[ssh://vm]") == "test_machine_id_made_per_machine"


def test_accelerator_setting_skips_the_probe_or_is_refused(settings):
    assert accelerator(replace(settings, vm_accel="tcg")) == "tcg"
    with pytest.raises(KilnError, match="KILN_VM_ACCEL='fast': expected auto, kvm or tcg"):
        accelerator(replace(settings, vm_accel="fast"))


def test_seed_gives_one_user_its_key_and_sudo(tmp_path):
    user_data, meta_data = write_seed(tmp_path, "kilnverify", "ssh-ed25519 AAAA kiln@test", "kilnvm-1")
    config = yaml.safe_load(user_data.read_text())
    assert user_data.read_text().startswith("#cloud-config\n")
    assert config["users"] == [
        {
            "name": "kilnverify",
            "shell": "/bin/bash",
            "lock_passwd": True,
            "sudo": "ALL=(ALL) NOPASSWD:ALL",
            "ssh_authorized_keys": ["ssh-ed25519 AAAA kiln@test"],
        }
    ]
    assert yaml.safe_load(meta_data.read_text())["instance-id"] == "kilnvm-1"


def test_a_vm_bake_never_resolves_a_lock_itself(settings):
    """Resolving would boot a VM only to ask apt: the lock comes from `invoke lock` (docker)."""
    baker = Baker(settings, "qemu")
    role = baker.catalog.get("web")
    role.lock_file.unlink()
    with pytest.raises(KilnError, match=r"packages.lock is missing: .* `invoke lock web --update`"):
        baker.ensure_lock(role, "/disks/base.qcow2", locked=False)
