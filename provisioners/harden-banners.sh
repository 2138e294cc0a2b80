#!/usr/bin/env bash
# Legal banners before login (console, SSH) and after it: required by CIS and ANSSI, and what
# makes unauthorised access provably unauthorised. No OS or version is disclosed.
set -euo pipefail
banner='Authorised access only. Activity on this system is logged and monitored; unauthorised
use is prohibited and may be prosecuted. Disconnect now if you are not authorised.'
for file in /etc/issue /etc/issue.net /etc/motd; do
  printf '%s\n' "$banner" > "$file"
  chown root:root "$file"
  chmod 0644 "$file"
done
