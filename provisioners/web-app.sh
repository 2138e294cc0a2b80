#!/usr/bin/env bash
# The web role: nginx in front of gunicorn serving /opt/kiln-web/app.py.
set -euo pipefail
id kiln-web >/dev/null 2>&1 || useradd --system --no-create-home --home-dir /nonexistent \
  --shell /usr/sbin/nologin kiln-web
chown -R root:root /opt/kiln-web
chmod 0755 /opt/kiln-web
chmod 0644 /opt/kiln-web/app.py
rm -f /etc/nginx/sites-enabled/default
ln -sf /etc/nginx/sites-available/kiln-web /etc/nginx/sites-enabled/kiln-web
install -m 0640 -o kiln-web -g adm /dev/null /var/log/kiln-web.log
# Uploaded files live outside the code so they can be backed up and restored on their own.
install -d -m 0750 -o kiln-web -g kiln-web /srv/kiln-web /srv/kiln-web/uploads
nginx -t
python3 -c "import sys; sys.path.insert(0, '/opt/kiln-web'); import app"
