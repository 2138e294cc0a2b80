#!/usr/bin/env bash
# cloud-init for the platform this image is baked for (KILN_TARGET): the datasources that
# platform passes user-data through, so nothing probes a metadata address it does not have, and
# the modules that apply there (a container has no disk, hostname or SSH login of its own to set
# up; a VM grows its root filesystem and takes its SSH keys from the platform).
set -euo pipefail
case "${KILN_TARGET:-docker}" in
  docker) runtime=container datasources="NoCloud, None" ;;
  qemu) runtime=vm datasources="NoCloud, ConfigDrive, None" ;;
  openstack) runtime=vm datasources="ConfigDrive, OpenStack, None" ;;
  amazon-ebs) runtime=vm datasources="Ec2, None" ;;
  *) echo "base-cloud-init: no datasources known for target '${KILN_TARGET}'" >&2; exit 1 ;;
esac
conf=/etc/cloud/cloud.cfg.d/90-kiln.cfg
{
  cat "/usr/local/lib/kiln/cloud-init/${runtime}.cfg"
  echo "# Datasources of target ${KILN_TARGET:-docker}, tried in this order."
  echo "datasource_list: [${datasources}]"
} > "$conf"
chmod 0644 "$conf"
