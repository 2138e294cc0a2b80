#!/usr/bin/env bash
# Base image runtime: kiln-init (a container's init) and kiln-services, which turns each role's
# declared services into what kiln-init and systemd run (provisioners/services.sh).
set -euo pipefail
install -d -m 0755 /etc/kiln/services
chmod 0755 /usr/local/sbin/kiln-init /usr/local/sbin/kiln-services /usr/local/sbin/kiln-firewall
chmod 0644 /usr/local/lib/kiln/kiln_services.py
# A container has no kernel, console or hardware of its own to configure at boot.
ln -sf /usr/share/zoneinfo/Etc/UTC /etc/localtime
