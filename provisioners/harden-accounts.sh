#!/usr/bin/env bash
# Accounts and logins (dev-sec linux-baseline, ANSSI BP-028): password ageing and strength,
# lockout after failures, yescrypt hashes, umask 027, idle shells time out, sudo restricted.
set -euo pipefail

set_login_def() {
  if grep -qE "^$1\s" /etc/login.defs; then
    sed -i -E "s|^$1\s.*|$1 $2|" /etc/login.defs
  else
    echo "$1 $2" >> /etc/login.defs
  fi
}
set_login_def UMASK 027
set_login_def HOME_MODE 0750
set_login_def PASS_MAX_DAYS 60
set_login_def PASS_MIN_DAYS 7
set_login_def PASS_WARN_AGE 7
set_login_def LOGIN_RETRIES 5
set_login_def LOGIN_TIMEOUT 60
set_login_def ENCRYPT_METHOD YESCRYPT
set_login_def YESCRYPT_COST_FACTOR 11
set_login_def SHA_CRYPT_MIN_ROUNDS 5000
set_login_def PASS_MIN_LEN 15

# Password quality (libpam-pwquality registers itself in common-password when installed).
cat > /etc/security/pwquality.conf <<'CONF'
# Kiln (provisioners/harden-accounts.sh): ANSSI BP-028 password strength
minlen = 15
minclass = 4
dcredit = -1
ucredit = -1
lcredit = -1
ocredit = -1
retry = 3
enforce_for_root
CONF
# pam_unix: remember the last passwords, costlier hashes.
sed -i -E '/^password.*pam_unix\.so/{/remember=/!s/$/ remember=2/;/rounds=/!s/$/ rounds=11/}' /etc/pam.d/common-password
touch /etc/security/opasswd
chmod 0600 /etc/security/opasswd

# Lock an account for 15 minutes after 3 failures within 15 minutes (CIS Debian 12 profiles).
cat > /etc/security/faillock.conf <<'CONF'
deny = 3
fail_interval = 900
unlock_time = 900
CONF
cat > /usr/share/pam-configs/kiln-faillock <<'CONF'
Name: Kiln: deny access after repeated failures (pam_faillock)
Default: yes
Priority: 0
Auth-Type: Primary
Auth:
	[default=die] pam_faillock.so authfail
	sufficient pam_faillock.so authsucc
CONF
cat > /usr/share/pam-configs/kiln-faillock-notify <<'CONF'
Name: Kiln: count failures and reset the count on success (pam_faillock)
Default: yes
Priority: 1024
Auth-Type: Primary
Auth:
	required pam_faillock.so preauth
Account-Type: Primary
Account:
	required pam_faillock.so
CONF
DEBIAN_FRONTEND=noninteractive pam-auth-update --package --enable kiln-faillock kiln-faillock-notify
# No account may log in with an empty password.
sed -i -E 's/\s+nullok\b//' /etc/pam.d/common-auth /etc/pam.d/common-password

# umask 027 for every login session, including non-shell ones through pam_umask.
grep -q 'pam_umask.so' /etc/pam.d/common-session ||
  echo 'session optional pam_umask.so' >> /etc/pam.d/common-session
cat > /etc/profile.d/kiln-hardening.sh <<'CONF'
# Kiln (provisioners/harden-accounts.sh): private files by default, no core dumps.
umask 027
ulimit -c 0
CONF
# Idle bash sessions end after 10 min. typeset is bash's (dash stops before it), and the form
# ANSSI's and CIS's scanners read.
cat > /etc/profile.d/kiln-tmout.sh <<'CONF'
[ -n "${BASH_VERSION:-}" ] || return 0
typeset -xr TMOUT=600
CONF
chmod 0644 /etc/profile.d/kiln-hardening.sh /etc/profile.d/kiln-tmout.sh
# Accounts made at boot (cloud-init's admins) get shell start-up files only they can change or
# others read.
find /etc/skel -maxdepth 1 -type f -name '.*' -exec chmod u-s,g-wxs,o= {} +

# Root logs in through nothing but sudo from a named account; its password still ages.
: > /etc/securetty
chage -M 365 root
usermod -L root 2>/dev/null || true
# No standing sudo rule in the image (ANSSI: no rule targets root or runs any command); an
# instance's administrators get explicit rules from its cloud-init user-data.
sed -i -E 's/^(root|%sudo)(\s+ALL\s*=)/# \1\2/' /etc/sudoers
install -d -m 0750 /etc/sudoers.d
cat > /etc/sudoers.d/90-kiln-hardening <<'CONF'
# Kiln (provisioners/harden-accounts.sh): sudo keeps a clean environment, a pty and a log.
Defaults env_reset
Defaults ignore_dot
Defaults noexec
Defaults requiretty
Defaults use_pty
Defaults umask=0077
Defaults logfile=/var/log/sudo.log
CONF
chmod 0440 /etc/sudoers.d/90-kiln-hardening
visudo -cq
