#!/usr/bin/env bash
# Install the role's locked packages (KILN_PACKAGES: name=version ...) exactly. Stop, naming
# them, when the mirror no longer has a locked version or apt needs a package the lock lacks.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt_opts=(-o Acquire::Languages=none -o APT::Install-Recommends=false -o Dpkg::Use-Pty=0
          -o Dpkg::Options::=--force-confold)

apt-get "${apt_opts[@]}" update -qq
read -r -a specs <<< "${KILN_PACKAGES:-}"
[ "${#specs[@]}" -gt 0 ] || { echo "no packages to install"; exit 0; }

# One simulated install names every locked version the mirror lacks (a check per package
# costs seconds on a large lock).
missing=$(apt-get "${apt_opts[@]}" install --simulate -qq "${specs[@]}" 2>&1 >/dev/null |
  sed -n "s/^E: Version '\(.*\)' for '\(.*\)' was not found$/\2=\1/p" || true)
if [ -n "$missing" ]; then
  while read -r spec; do echo "kiln-missing-package: $spec"; done <<< "$missing"
  exit 3
fi

installed() { dpkg-query -W -f='${Package}\n' | sort; }
before=$(installed)
apt-get "${apt_opts[@]}" install -y -qq "${specs[@]}"
# Anything apt pulled in that the lock does not name would be unpinned: refuse it.
unlocked=$(comm -13 <(echo "$before") <(installed) | grep -vxF -f <(printf '%s\n' "${specs[@]%%=*}") || true)
if [ -n "$unlocked" ]; then
  while read -r name; do echo "kiln-unlocked-package: $name"; done <<< "$unlocked"
  exit 4
fi
# Only the packages the role asked for stay marked manual, as if apt had resolved them itself.
read -r -a requested <<< "${KILN_REQUESTED:-}"
apt-mark auto "${specs[@]%%=*}" >/dev/null
[ "${#requested[@]}" -eq 0 ] || apt-mark manual "${requested[@]}" >/dev/null
