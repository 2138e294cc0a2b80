"""cloud-init as the image's platform needs it: the datasources it offers user-data through
(a NoCloud seed for a container) and only the modules that apply there."""

import yaml

CONF = "/etc/cloud/cloud.cfg.d/90-kiln.cfg"
VM_ONLY = {"growpart", "resizefs", "ssh", "set_hostname"}


def kiln_conf(host) -> dict:
    return yaml.safe_load(host.file(CONF).content_string)


def test_kiln_cloud_config_passes_the_schema(host):
    result = host.run(f"cloud-init schema --config-file {CONF}")
    assert result.rc == 0, result.stdout + result.stderr


def test_datasources_match_the_runtime(host):
    datasources = kiln_conf(host)["datasource_list"]
    assert datasources[-1] == "None"  # boots without user-data rather than hang probing
    if host.backend.NAME == "docker":
        assert datasources == ["NoCloud", "None"]  # nothing probes a metadata address
    else:
        assert datasources[:-1] and set(datasources[:-1]) <= {"NoCloud", "ConfigDrive", "Ec2", "OpenStack"}


def test_modules_match_the_runtime(host):
    conf = kiln_conf(host)
    modules = set(conf["cloud_init_modules"]) | set(conf["cloud_config_modules"])
    if host.backend.NAME == "docker":
        assert not modules & VM_ONLY
    else:
        assert modules >= VM_ONLY
