#!/usr/bin/env bash
# Base image runtime: the kiln-init entry point and the start.d convention roles plug into.
set -euo pipefail
install -d -m 0755 /etc/kiln/start.d
chmod 0755 /usr/local/sbin/kiln-init
# A container has no kernel, console or hardware of its own to configure at boot.
ln -sf /usr/share/zoneinfo/Etc/UTC /etc/localtime
