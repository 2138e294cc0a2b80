#!/usr/bin/env bash
# What must not ship in a golden image: compilers and unneeded network clients/servers, SSH host
# keys (every instance makes its own at first boot), a machine-id (systemd makes one per
# machine), shell history. finish.sh re-runs it at the end of every child bake.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
unwanted=$(dpkg-query -W -f='${db:Status-Abbrev} ${Package}\n' 2>/dev/null |
  awk '$1 ~ /^.i/ && $2 ~ /^(gcc|g\+\+|cpp|clang|make|binutils|telnet|telnetd|rsh-client|rsh-server|ftp|tftp|tftpd|xinetd|nis|talk|talkd|ypbind|ldap-utils)(-[0-9.]+)?$/ {print $2}')
if [ -n "$unwanted" ]; then
  # shellcheck disable=SC2086 # one package name per word
  apt-get purge -y -qq $unwanted
fi
rm -f /etc/ssh/ssh_host_*
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id /root/.bash_history /root/.lesshst
hook=/usr/local/lib/kiln/finish.d/harden-cleanup.sh
[ "$0" -ef "$hook" ] || install -D -m 0755 "$0" "$hook"
