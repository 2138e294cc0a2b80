#!/usr/bin/env bash
# OpenSSH server hardened after dev-sec ssh-baseline and ANSSI BP-028: keys only, no root,
# modern algorithms only, verbose logs. Host keys are never baked: each VM makes its own at first
# boot (base's ssh-hostkeys service, and ssh.service's ExecStartPre); a container runs no sshd.
set -euo pipefail

cat > /etc/ssh/sshd_config <<'CONF'
# Kiln hardened sshd configuration (provisioners/harden-ssh.sh); drop-ins are not read.
HostKey /etc/ssh/ssh_host_ed25519_key
HostKey /etc/ssh/ssh_host_rsa_key
KexAlgorithms sntrup761x25519-sha512@openssh.com,curve25519-sha256,curve25519-sha256@libssh.org,diffie-hellman-group16-sha512,diffie-hellman-group18-sha512,diffie-hellman-group-exchange-sha256
Ciphers chacha20-poly1305@openssh.com,aes256-gcm@openssh.com,aes128-gcm@openssh.com,aes256-ctr,aes192-ctr,aes128-ctr
MACs hmac-sha2-512-etm@openssh.com,hmac-sha2-256-etm@openssh.com,umac-128-etm@openssh.com
HostKeyAlgorithms ssh-ed25519,rsa-sha2-512,rsa-sha2-256
PermitRootLogin no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitEmptyPasswords no
PubkeyAuthentication yes
HostbasedAuthentication no
IgnoreRhosts yes
StrictModes yes
UsePAM yes
MaxAuthTries 2
MaxSessions 2
MaxStartups 10:30:60
LoginGraceTime 30
ClientAliveInterval 300
ClientAliveCountMax 2
TCPKeepAlive no
AllowTcpForwarding no
AllowAgentForwarding no
AllowStreamLocalForwarding no
GatewayPorts no
X11Forwarding no
PermitTunnel no
PermitUserEnvironment no
Compression no
UseDNS no
LogLevel VERBOSE
SyslogFacility AUTH
Banner /etc/issue.net
PrintMotd no
PrintLastLog yes
AcceptEnv LANG LC_*
Subsystem sftp internal-sftp -f AUTHPRIV -l INFO
CONF
chown root:root /etc/ssh/sshd_config
chmod 0600 /etc/ssh/sshd_config
rm -rf /etc/ssh/sshd_config.d

# Weak Diffie-Hellman groups out of the group-exchange pool.
if [ -f /etc/ssh/moduli ]; then
  awk '$5 >= 3071' /etc/ssh/moduli > /etc/ssh/moduli.kiln
  mv /etc/ssh/moduli.kiln /etc/ssh/moduli
  chmod 0644 /etc/ssh/moduli
fi

# fail2ban bans addresses that keep failing to log in (sshd logs through rsyslog to auth.log).
cat > /etc/fail2ban/jail.local <<'CONF'
# Kiln (provisioners/harden-ssh.sh)
[DEFAULT]
bantime = 1h
findtime = 10m
maxretry = 3
backend = auto

[sshd]
enabled = true
CONF
chmod 0644 /etc/fail2ban/jail.local

# On a VM, ssh.service makes the host keys the image lacks before sshd starts.
install -d -m 0755 /etc/systemd/system/ssh.service.d
cat > /etc/systemd/system/ssh.service.d/kiln-hostkeys.conf <<'CONF'
[Service]
ExecStartPre=/usr/local/sbin/kiln-ssh-hostkeys
CONF
chmod 0755 /usr/local/sbin/kiln-ssh-hostkeys

# sshd -t needs a host key and its privilege-separation directory: check with a scratch key.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
ssh-keygen -q -t ed25519 -N '' -f "$scratch/key"
install -d -m 0755 /run/sshd
sshd -t -f /etc/ssh/sshd_config -h "$scratch/key"
