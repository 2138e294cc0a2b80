#!/usr/bin/env bash
# Strict ownership and modes on accounts, cron, logs and world-writable paths (CIS Debian 12,
# dev-sec os-*). finish.sh re-runs it at the end of every child bake, for what the role added.
set -euo pipefail

chown root:root /etc/passwd /etc/group
chmod 0644 /etc/passwd /etc/group
chown root:shadow /etc/shadow /etc/gshadow
chmod 0640 /etc/shadow /etc/gshadow
for backup in /etc/passwd- /etc/group- /etc/shadow- /etc/gshadow-; do
  [ ! -e "$backup" ] || chmod 0600 "$backup"
done
chmod 0700 /root
[ ! -e /etc/ssh/sshd_config ] || chmod 0600 /etc/ssh/sshd_config

# Only root schedules jobs; cron and at tables are root's alone.
[ ! -e /etc/crontab ] || chmod 0600 /etc/crontab
for dir in /etc/cron.d /etc/cron.hourly /etc/cron.daily /etc/cron.weekly /etc/cron.monthly; do
  [ ! -d "$dir" ] || chmod 0700 "$dir"
done
for allow in /etc/cron.allow /etc/at.allow; do
  echo root > "$allow"
  chmod 0600 "$allow"
done
rm -f /etc/cron.deny /etc/at.deny

# Logs are not for everyone; home folders are private.
find /var/log -xdev -type f -perm /0027 -exec chmod g-w,o-rwx {} +
find /home -mindepth 1 -maxdepth 1 -type d -exec chmod 0750 {} +

# No world-writable file, no world-writable folder without the sticky bit, nothing unowned.
find / -xdev \( -path /proc -o -path /sys \) -prune -o -type f -perm -0002 -exec chmod o-w {} +
find / -xdev \( -path /proc -o -path /sys \) -prune -o -type d -perm -0002 ! -perm -1000 -exec chmod +t {} +
find / -xdev \( -path /proc -o -path /sys \) -prune -o \( -nouser -o -nogroup \) -exec chown root:root {} +

# Children add packages: finish.sh re-applies this step at the end of every role's bake.
hook=/usr/local/lib/kiln/finish.d/harden-files.sh
[ "$0" -ef "$hook" ] || install -D -m 0755 "$0" "$hook"
