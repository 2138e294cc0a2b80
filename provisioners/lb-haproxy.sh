#!/usr/bin/env bash
# The lb role: HAProxy with a runtime API socket; the config must pass its own check.
set -euo pipefail
chmod 0644 /etc/haproxy/haproxy.cfg
install -d -m 0755 /run/haproxy
haproxy -c -f /etc/haproxy/haproxy.cfg
