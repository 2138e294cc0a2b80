#!/usr/bin/env bash
# Accountability (CIS Debian 12 "logging and auditing", ANSSI BP-028): auditd rules for identity,
# privilege, time, module and login events; process accounting and sysstat on; syslog kept.
set -euo pipefail

install -d -m 0750 /etc/audit/rules.d
cat > /etc/audit/rules.d/90-kiln.rules <<'RULES'
## Kiln audit rules (provisioners/harden-audit.sh)
-D
-b 8192
-f 1
-w /etc/passwd -p wa -k identity
-w /etc/group -p wa -k identity
-w /etc/shadow -p wa -k identity
-w /etc/gshadow -p wa -k identity
-w /etc/security/opasswd -p wa -k identity
-w /etc/sudoers -p wa -k scope
-w /etc/sudoers.d/ -p wa -k scope
-w /etc/ssh/sshd_config -p wa -k sshd
-w /var/log/sudo.log -p wa -k actions
-w /var/log/lastlog -p wa -k logins
-w /var/run/faillock/ -p wa -k logins
-w /etc/localtime -p wa -k time-change
-a always,exit -F arch=b64 -S adjtimex,settimeofday,clock_settime -k time-change
-a always,exit -F arch=b64 -S sethostname,setdomainname -k system-locale
-w /etc/hosts -p wa -k system-locale
-w /etc/issue -p wa -k system-locale
-w /etc/issue.net -p wa -k system-locale
-w /etc/nftables.conf -p wa -k firewall
-w /etc/sysctl.d/ -p wa -k sysctl
-a always,exit -F arch=b64 -S init_module,finit_module,delete_module -k modules
-a always,exit -F path=/usr/bin/sudo -F perm=x -F auid>=1000 -F auid!=unset -k privileged
-a always,exit -F path=/usr/bin/su -F perm=x -F auid>=1000 -F auid!=unset -k privileged
-a always,exit -F arch=b64 -S execve -C uid!=euid -F euid=0 -k privilege-escalation
-a always,exit -F arch=b64 -S mount -F auid>=1000 -F auid!=unset -k mounts
-a always,exit -F arch=b64 -S unlink,unlinkat,rename,renameat -F auid>=1000 -F auid!=unset -k delete
-e 2
RULES
chmod 0640 /etc/audit/rules.d/90-kiln.rules
# Compile rules.d into audit.rules now; the kernel loads it when auditd starts on a VM.
augenrules >/dev/null
chmod 0640 /etc/audit/audit.rules
sed -i -E 's/^max_log_file_action\s*=.*/max_log_file_action = keep_logs/; s/^space_left_action\s*=.*/space_left_action = syslog/' /etc/audit/auditd.conf

# Process accounting and system statistics for after-the-fact investigation.
sed -i -E 's/^ENABLED=.*/ENABLED="true"/' /etc/default/sysstat
install -d -m 0750 /var/log/account
[ -e /var/log/account/pacct ] || install -m 0640 /dev/null /var/log/account/pacct

# File integrity: AIDE with strong digests (images/base/files/etc/aide/aide.conf); finish.sh
# records the baseline of each image as it ships.
chmod 0600 /etc/aide/aide.conf
aide --config-check --config=/etc/aide/aide.conf
