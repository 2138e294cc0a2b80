#!/usr/bin/env bash
# Security updates install themselves between rebakes (Debian-Security origin only, the
# unattended-upgrades default), and apt shows changelogs and keeps a log.
set -euo pipefail
cat > /etc/apt/apt.conf.d/20auto-upgrades <<'CONF'
APT::Periodic::Update-Package-Lists "1";
APT::Periodic::Unattended-Upgrade "1";
APT::Periodic::AutocleanInterval "7";
CONF
chmod 0644 /etc/apt/apt.conf.d/20auto-upgrades
# The security origin is what must stay enabled (Debian's default).
grep -q 'label=Debian-Security' /etc/apt/apt.conf.d/50unattended-upgrades
