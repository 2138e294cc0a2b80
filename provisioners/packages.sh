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

missing=0
for spec in "${specs[@]}"; do
  if ! apt-cache show "$spec" >/dev/null 2>&1; then
    echo "kiln-missing-package: $spec"
    missing=1
  fi
done
[ "$missing" -eq 0 ] || exit 3

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
