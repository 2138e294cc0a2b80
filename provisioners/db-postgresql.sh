#!/usr/bin/env bash
# The db role: PostgreSQL 15 listening on the network with scram-sha-256 logins; pgBackRest
# present for backups.
set -euo pipefail
conf=/etc/postgresql/15/main
[ -d "$conf" ] || pg_createcluster 15 main
install -d -m 0755 "$conf/conf.d"
cat > "$conf/conf.d/kiln.conf" <<'CONF'
listen_addresses = '*'
password_encryption = 'scram-sha-256'
CONF
grep -q '^host all all 0.0.0.0/0 scram-sha-256' "$conf/pg_hba.conf" ||
  echo 'host all all 0.0.0.0/0 scram-sha-256' >> "$conf/pg_hba.conf"
command -v pgbackrest >/dev/null
