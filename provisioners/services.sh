#!/usr/bin/env bash
# The role's services (role.yml `services:`, passed as KILN_SERVICES): stored for kiln-init and
# rendered as enabled systemd units, so a container and a VM run the same declaration.
set -euo pipefail
python3 /usr/local/sbin/kiln-services install
