"""The qemu provider's pure parts: device names, MACs, instance records, network-config, and
the image catalog seeing which disks instances boot from. Booting VMs:
tests/integration/test_qemu_provider.py."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from kiln import environments
from kiln.backup.operations import backup_settings
from kiln.diskimages import DiskImageStore
from kiln.errors import KilnError
from kiln.providers.qemu import Nic, VmRecord, mac_address, network_config, tap_name
from kiln.settings import Settings


def test_tap_names_fit_linux_and_differ_per_launch_and_zone():
    names = {tap_name(f"kiln-vm-web1-{token}", zone) for token in ("aa", "bb") for zone in (0, 1, 15)}
    assert len(names) == 6
    assert all(name.startswith("kiln") and len(name) <= 15 for name in names)


def test_mac_addresses_are_qemus_and_fixed_by_launch_and_zone():
    mac = mac_address("kiln-vm-web1-aa", 0)
    assert mac.startswith("52:54:00:") and len(mac.split(":")) == 6
    assert mac == mac_address("kiln-vm-web1-aa", 0) != mac_address("kiln-vm-web1-aa", 1)


def test_a_record_reads_back_as_written(tmp_path: Path):
    vm = VmRecord("db1", "db", 1, "abc", "kiln-vm-db1-aa",
                  [Nic(0, "kiln0123456789a0", "52:54:00:00:00:01", "10.64.0.11/20")])  # fmt: skip
    path = tmp_path / "instance.json"
    path.write_text(json.dumps(asdict(vm)))
    assert VmRecord.read(path) == vm


def test_a_vm_routes_through_its_own_zones_gateway_only():
    """A db in zone 1 with a NIC on both zones' bridges: one default route, via zone 1's."""
    nics = [Nic(0, "kiln0123456789a0", "52:54:00:00:00:01", "10.64.0.11/20"),
            Nic(1, "kiln0123456789a1", "52:54:00:00:00:02", "10.64.16.11/20")]  # fmt: skip
    ethernets = network_config(VmRecord("db1", "db", 1, "abc", "kiln-vm-db1-aa", nics))["ethernets"]
    assert ethernets["z0"] == {"match": {"macaddress": "52:54:00:00:00:01"}, "set-name": "z0",
                               "addresses": ["10.64.0.11/20"]}  # fmt: skip
    assert ethernets["z1"]["gateway4"] == "10.64.16.1"


def test_disks_booted_by_instances_are_in_use(tmp_path: Path):
    settings = Settings(project_root=tmp_path, state_dir=tmp_path / ".kiln")
    store = DiskImageStore(settings)
    assert store.in_use() == set()
    folder = settings.store_dir / "envs" / "vm" / "vms" / "web1"
    folder.mkdir(parents=True)
    (folder / "instance.json").write_text(json.dumps({"role": "web", "version": "v1"}))
    (folder.parent / "broken").mkdir()
    (folder.parent / "broken" / "instance.json").write_text("{")
    assert store.in_use() == {("web", "v1")}


def test_backups_of_vms_go_to_s3_not_a_volume(tmp_path: Path):
    settings = Settings(project_root=tmp_path, state_dir=tmp_path / ".kiln")
    (tmp_path / "environments").mkdir()
    env = tmp_path / "environments" / "vm.yml"
    head = "provider: qemu\nzones: [z0]\ninstances: {web: 1, db: 1}\nfrontend: {port: 0}\n"
    env.write_text(head)
    with pytest.raises(KilnError, match=r"field 'backup': missing; .* add `backup: \{repository: s3, s3: "):
        backup_settings(settings, "vm")
    env.write_text(head + "backup: {}\n")  # repository: volume, the default
    with pytest.raises(
        KilnError, match=r"^environments/vm.yml: field 'backup.repository': the qemu provider"
    ):
        environments.load(settings, "vm")
    env.write_text(head + "backup: {repository: s3, s3: {endpoint: '127.0.0.1:9000', bucket: b}}\n")
    assert environments.load(settings, "vm").spec.backup.repository == "s3"


def test_each_provider_names_the_bake_target_of_its_images():
    from kiln.providers import provider_class
    from kiln.rollout.lifecycle import bake_command

    targets = {name: (provider_class(name).target_of("web"), provider_class(name).target_of("lb"))
               for name in ("local", "qemu", "aws", "openstack")}  # fmt: skip
    assert targets == {
        "local": ("docker", "docker"),
        "qemu": ("qemu", "docker"),  # VMs behind a load balancer container
        "aws": ("amazon-ebs", "amazon-ebs"),
        "openstack": ("openstack", "openstack"),
    }
    assert bake_command("web", "qemu") == "invoke bake web --target qemu"
    assert bake_command("lb", "docker") == "invoke bake lb"
