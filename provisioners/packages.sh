#!/usr/bin/env bash
# Install the role's locked packages (KILN_PACKAGES: name=version ...) exactly, or stop with
# the list of versions the mirror no longer has, before anything is installed.
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

apt-get "${apt_opts[@]}" install -y -qq "${specs[@]}"
# Only the packages the role asked for stay marked manual, as if apt had resolved them itself.
read -r -a requested <<< "${KILN_REQUESTED:-}"
apt-mark auto "${specs[@]%%=*}" >/dev/null
[ "${#requested[@]}" -eq 0 ] || apt-mark manual "${requested[@]}" >/dev/null
