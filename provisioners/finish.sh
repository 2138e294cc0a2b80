#!/usr/bin/env bash
# Last step of every bake: record image facts, count pending security updates, and leave
# no apt caches or lists behind.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

install -d -m 0755 /etc/kiln
cat > /etc/kiln/image.json <<JSON
{"role": "${KILN_ROLE}", "version": "${KILN_VERSION}"}
JSON
chmod 0644 /etc/kiln/image.json

# Freshness: security updates the mirror offers for what is installed (lists are fresh from
# the package step).
pending=$(apt-get -o Acquire::Languages=none -s -qq upgrade 2>/dev/null | grep -c '^Inst .*[Ss]ecurity' || true)
echo "kiln-fact: security-pending=${pending}"

# Steps the base image installed to re-apply to what each role adds (permissions, its ports
# in the firewall, no host keys).
for hook in /usr/local/lib/kiln/finish.d/*.sh; do
  if [ -x "$hook" ]; then "$hook"; fi
done

apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/debconf/*-old /var/log/apt/* /tmp/* /var/tmp/*

# The file-integrity baseline comes last, so it describes the image exactly as it ships:
# `aide --check` on any instance then shows what changed since the bake.
if command -v aide >/dev/null && [ -f /etc/aide/aide.conf ]; then
  install -d -m 0700 /var/lib/aide
  aide --init --config=/etc/aide/aide.conf >/dev/null
  mv /var/lib/aide/aide.db.new /var/lib/aide/aide.db
  chmod 0600 /var/lib/aide/aide.db
fi
