#!/usr/bin/env bash
# The db role: PostgreSQL 15 listening on the network with scram-sha-256 logins, WAL archived
# continuously through pgBackRest once Kiln has configured a repository (the archive_command
# must name pgbackrest, or pgBackRest refuses to back up).
set -euo pipefail
conf=/etc/postgresql/15/main
[ -d "$conf" ] || pg_createcluster 15 main
install -d -m 0755 "$conf/conf.d"
cat > "$conf/conf.d/kiln.conf" <<'CONF'
listen_addresses = '*'
password_encryption = 'scram-sha-256'
wal_level = replica
archive_mode = on
archive_command = '/usr/local/sbin/kiln-pgbackrest-archive-push %p'
# A partly filled segment is archived after 30 s at most: the bound on the RPO.
archive_timeout = 30
# Commit times survive in WAL, so a restore can say how recent its newest transaction is.
track_commit_timestamp = on
# A standby that fell behind for a while still finds the WAL it needs on the primary.
wal_keep_size = '256MB'
CONF
chmod 0644 "$conf/conf.d/kiln.conf"
grep -q '^host all all 0.0.0.0/0 scram-sha-256' "$conf/pg_hba.conf" ||
  echo 'host all all 0.0.0.0/0 scram-sha-256' >> "$conf/pg_hba.conf"
# Standbys copy and stream from the primary with the kiln_replicator login (kiln-db-bootstrap).
grep -q '^host replication kiln_replicator 0.0.0.0/0 scram-sha-256' "$conf/pg_hba.conf" ||
  echo 'host replication kiln_replicator 0.0.0.0/0 scram-sha-256' >> "$conf/pg_hba.conf"

# pgBackRest: settings that never change are baked; the repository, retention and cipher key
# arrive at run time in conf.d/kiln.conf (mode 0600, postgres), written by Kiln.
command -v pgbackrest >/dev/null
install -d -m 0750 -o postgres -g postgres /etc/pgbackrest/conf.d /var/lib/pgbackrest /var/log/pgbackrest
cat > /etc/pgbackrest/pgbackrest.conf <<'CONF'
[global]
log-path=/var/log/pgbackrest
lock-path=/tmp/pgbackrest
log-level-console=warn
log-level-file=info
compress-type=lz4
start-fast=y
archive-timeout=60

[main]
pg1-path=/var/lib/postgresql/15/main
CONF
chown postgres:postgres /etc/pgbackrest/pgbackrest.conf
chmod 0640 /etc/pgbackrest/pgbackrest.conf
chmod 0755 /usr/local/sbin/kiln-pgbackrest-archive-push /usr/local/sbin/kiln-db-bootstrap \
  /usr/local/sbin/kiln-db-standby /usr/local/sbin/kiln-db-role-agent /usr/local/sbin/kiln-db-tls
