#!/usr/bin/env bash
# USB devices (DISA STIG "USBGuard", CIS Debian 12 1.1.x): USBGuard blocks every device its policy
# does not name. A machine's policy is made on its first boot from the devices present then
# (a VM's virtual keyboard and tablet stay usable); anything plugged in later stays blocked.
# usb-storage cannot even load (harden-sysctl.sh).
set -euo pipefail
conf=/etc/usbguard/usbguard-daemon.conf

set_option() {
  if grep -q "^$1=" "$conf"; then
    sed -i "s|^$1=.*|$1=$2|" "$conf"
  else
    echo "$1=$2" >> "$conf"
  fi
}
set_option RuleFile /etc/usbguard/rules.conf
set_option ImplicitPolicyTarget block
set_option PresentDevicePolicy apply-policy
set_option PresentControllerPolicy apply-policy
set_option InsertedDevicePolicy apply-policy
set_option RestoreControllerDeviceState false
# Only root may change the policy (Debian also lets group plugdev), and decisions go to auditd
# with the rest of the audit trail.
set_option IPCAllowedUsers root
set_option IPCAllowedGroups root
set_option AuditBackend LinuxAudit
chmod 0600 "$conf"

# The package's postinst wrote the build machine's devices into the policy and gave plugdev an
# IPC grant: neither belongs in an image. The empty policy is filled on first boot.
rm -f /etc/usbguard/IPCAccessControl.d/*
install -m 0600 /dev/null /etc/usbguard/rules.conf
rm -f /var/lib/kiln/usbguard-policy-made

install -d -m 0755 /etc/systemd/system/usbguard.service.d
cat > /etc/systemd/system/usbguard.service.d/kiln-first-boot-policy.conf <<'CONF'
[Unit]
ConditionPathIsDirectory=/sys/bus/usb/devices

[Service]
ExecStartPre=/usr/local/sbin/kiln-usbguard-policy
CONF
chmod 0755 /usr/local/sbin/kiln-usbguard-policy
