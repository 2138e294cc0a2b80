#!/usr/bin/env bash
# The worker role: /opt/kiln-worker/worker.py as an unprivileged account, its heartbeat folder.
set -euo pipefail
id kiln-worker >/dev/null 2>&1 || useradd --system --no-create-home --home-dir /nonexistent \
  --shell /usr/sbin/nologin kiln-worker
chown -R root:root /opt/kiln-worker
chmod 0755 /opt/kiln-worker /usr/local/bin/kiln-worker-alive
chmod 0644 /opt/kiln-worker/worker.py
install -d -m 0750 -o kiln-worker -g kiln-worker /var/lib/kiln-worker
python3 -m py_compile /opt/kiln-worker/worker.py
rm -rf /opt/kiln-worker/__pycache__
