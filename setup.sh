#!/usr/bin/env bash
# Kiln set-up for a Debian 12 machine: idempotent, safe to run before every command.
# Installs the Debian packages Kiln drives, creates .venv with Kiln and its test tools,
# and starts the Docker engine when none answers. A second run with everything in place
# takes about a second.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"
log() { printf 'setup: %s\n' "$*" >&2; }

if [ "$(id -u)" -eq 0 ]; then sudo=(); else sudo=(sudo); fi

# Debian packages Kiln runs for real (the embedded default): engine, builder, bootstrapper,
# linters, age (secrets/<env>.env.age), ssh (VMs and the SSH channel), and for VM images QEMU, GRUB (i386-pc), sfdisk, loop
# devices and an ISO maker for the NoCloud seed. Later features add theirs here.
debian_packages=(
  docker.io packer mmdebstrap shellcheck
  python3-venv ca-certificates git rsync
  age openssh-client
  qemu-system-x86 qemu-utils grub-pc-bin grub2-common fdisk e2fsprogs mount genisoimage
)
# gitlab-ci-local runs pipelines/ locally; it needs Node.js >= 18 and npm (Debian's, unless the
# machine already has its own).
command -v npm >/dev/null 2>&1 || debian_packages+=(nodejs npm)

missing=()
for pkg in "${debian_packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
  [ "$status" = "install ok installed" ] || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  # An unreachable third-party source must not stop the Debian install, so update is allowed
  # to warn; the install itself must succeed.
  "${sudo[@]}" apt-get update -qq || log "apt-get update reported errors; trying the install anyway"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi

# Python environment: rebuilt only when pyproject.toml changed since the last install.
stamp=.venv/.kiln-installed
if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  python3 -m venv .venv
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  log "installing Kiln and its test tools into .venv (log: .venv/pip.log)"
  if ! { .venv/bin/python -m pip install --upgrade pip &&
         .venv/bin/python -m pip install -e '.[test]'; } >.venv/pip.log 2>&1; then
    tail -n 20 .venv/pip.log >&2
    log "pip install failed; full log: .venv/pip.log"
    exit 2
  fi
  touch "$stamp"
fi

gitlab_ci_local=.venv/npm/node_modules/.bin/gitlab-ci-local
if [ ! -x "$gitlab_ci_local" ]; then
  log "installing gitlab-ci-local into .venv/npm"
  # 4.65.0 is the last release that runs on Node 18-20 (later ones crash there).
  # npm's --silent also hides why it failed: keep its output in a log and show the end of it.
  if ! npm install --no-audit --no-fund --fetch-retries=4 --fetch-timeout=120000 \
      --prefix .venv/npm gitlab-ci-local@4.65.0 >.venv/npm.log 2>&1; then
    tail -n 20 .venv/npm.log >&2
    log "npm install of gitlab-ci-local failed; full log: .venv/npm.log"
    exit 2
  fi
fi

# Docker engine: systemd where it runs, otherwise dockerd in the background with a log file.
if ! docker info >/dev/null 2>&1; then
  if [ -d /run/systemd/system ]; then
    log "starting docker with systemctl"
    "${sudo[@]}" systemctl start docker
  else
    log "starting dockerd (log: /var/log/kiln-dockerd.log)"
    "${sudo[@]}" sh -c 'nohup dockerd >/var/log/kiln-dockerd.log 2>&1 &'
  fi
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && break
    sleep 0.5
  done
  docker info >/dev/null 2>&1 || { log "dockerd did not come up; see /var/log/kiln-dockerd.log"; exit 2; }
fi
# The qemu provider's VMs join their zones through tap devices, made through the TUN device; a
# container (a CI runner, ../shared/tools/fresh-machine) may have the kernel's driver but no node.
if [ ! -c /dev/net/tun ]; then
  log "creating /dev/net/tun (tap devices for VMs)"
  "${sudo[@]}" mkdir -p /dev/net
  "${sudo[@]}" mknod -m 0666 /dev/net/tun c 10 200
fi
log "ready"
