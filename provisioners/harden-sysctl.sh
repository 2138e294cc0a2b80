#!/usr/bin/env bash
# Kernel and network hardening (dev-sec linux-baseline, ANSSI BP-028, CIS Debian 12) persisted
# in sysctl.d: applied by the kernel of a VM at boot. A container shares its host's kernel: its
# network namespace gets the net.* keys from Docker (kiln/container_options.py), the rest stays
# the host's.
set -euo pipefail
cat > /etc/sysctl.d/90-kiln-hardening.conf <<'CONF'
# Kiln hardening baseline (provisioners/harden-sysctl.sh)
# Forwarding first: turning it off resets accept_redirects, which the keys below set again.
net.ipv4.ip_forward = 0
net.ipv4.conf.all.forwarding = 0
net.ipv4.conf.default.forwarding = 0
net.ipv6.conf.all.forwarding = 0
dev.tty.ldisc_autoload = 0
fs.protected_fifos = 2
fs.protected_hardlinks = 1
fs.protected_regular = 2
fs.protected_symlinks = 1
fs.suid_dumpable = 0
kernel.core_uses_pid = 1
kernel.ctrl-alt-del = 0
kernel.dmesg_restrict = 1
kernel.kptr_restrict = 2
kernel.panic_on_oops = 1
kernel.perf_cpu_time_max_percent = 1
kernel.perf_event_max_sample_rate = 1
kernel.perf_event_paranoid = 3
kernel.pid_max = 65536
kernel.randomize_va_space = 2
kernel.sysrq = 0
kernel.unprivileged_bpf_disabled = 1
kernel.yama.ptrace_scope = 1
net.core.bpf_jit_harden = 2
net.ipv4.conf.all.accept_local = 0
net.ipv4.conf.all.accept_redirects = 0
net.ipv4.conf.all.accept_source_route = 0
# arp_filter 0, the value ANSSI's SCAP profile checks: 1 only matters with two interfaces on one subnet.
net.ipv4.conf.all.arp_filter = 0
net.ipv4.conf.all.arp_ignore = 2
net.ipv4.conf.all.drop_gratuitous_arp = 1
net.ipv4.conf.all.log_martians = 1
net.ipv4.conf.all.route_localnet = 0
net.ipv4.conf.all.rp_filter = 1
net.ipv4.conf.all.secure_redirects = 0
net.ipv4.conf.all.send_redirects = 0
net.ipv4.conf.all.shared_media = 0
net.ipv4.conf.default.accept_redirects = 0
net.ipv4.conf.default.accept_source_route = 0
net.ipv4.conf.default.log_martians = 1
net.ipv4.conf.default.rp_filter = 1
net.ipv4.conf.default.secure_redirects = 0
net.ipv4.conf.default.send_redirects = 0
net.ipv4.conf.default.shared_media = 0
net.ipv4.icmp_echo_ignore_broadcasts = 1
net.ipv4.icmp_ignore_bogus_error_responses = 1
net.ipv4.icmp_ratelimit = 100
net.ipv4.ip_local_port_range = 32768 65535
net.ipv4.tcp_rfc1337 = 1
net.ipv4.tcp_syncookies = 1
net.ipv4.tcp_timestamps = 0
net.ipv6.conf.all.accept_ra = 0
net.ipv6.conf.all.accept_ra_defrtr = 0
net.ipv6.conf.all.accept_ra_pinfo = 0
net.ipv6.conf.all.accept_ra_rtr_pref = 0
net.ipv6.conf.all.accept_redirects = 0
net.ipv6.conf.all.accept_source_route = 0
net.ipv6.conf.all.autoconf = 0
net.ipv6.conf.all.max_addresses = 1
net.ipv6.conf.all.router_solicitations = 0
net.ipv6.conf.default.accept_ra = 0
net.ipv6.conf.default.accept_ra_defrtr = 0
net.ipv6.conf.default.accept_ra_pinfo = 0
net.ipv6.conf.default.accept_ra_rtr_pref = 0
net.ipv6.conf.default.accept_redirects = 0
net.ipv6.conf.default.accept_source_route = 0
net.ipv6.conf.default.autoconf = 0
net.ipv6.conf.default.max_addresses = 1
net.ipv6.conf.default.router_solicitations = 0
vm.mmap_min_addr = 65536
CONF
chmod 0644 /etc/sysctl.d/90-kiln-hardening.conf
chmod 0755 /etc/sysctl.d

# systemd-sysctl applies the sysctl.d files of /usr/lib and /etc in name order, so a package's
# file can undo ours at boot (procps' 99-protect-links.conf set fs.protected_fifos back to 1 on a
# booted VM), and scanners read every file. A package file that sets one of our keys otherwise is
# moved aside with dpkg-divert, which keeps it aside through upgrades; one that also sets keys we
# do not set stops the bake, as moving it would drop them unseen.
kiln_value() { awk -F' *= *' -v key="$1" '$1 == key { print $2 }' /etc/sysctl.d/90-kiln-hardening.conf; }
for vendor in /usr/lib/sysctl.d/*.conf; do
  [ -f "$vendor" ] || continue
  differs="" others=""
  while read -r key value; do
    ours=$(kiln_value "$key")
    if [ -z "$ours" ]; then others+=" $key"; elif [ "$ours" != "$value" ]; then differs+=" $key"; fi
  done < <(sed -E -n 's/^-?([A-Za-z0-9_.*-]+)[[:space:]]*=[[:space:]]*(.*[^[:space:]])[[:space:]]*$/\1 \2/p' "$vendor")
  [ -n "$differs" ] || continue
  if [ -n "$others" ]; then
    echo "harden-sysctl: $vendor sets$differs otherwise and also$others; add those to the list above" >&2
    exit 1
  fi
  dpkg-divert --quiet --local --rename --divert "$vendor.kiln-diverted" --add "$vendor"
done
# No core dumps: they can hold secrets from any process's memory.
install -d -m 0755 /etc/security/limits.d /etc/systemd/coredump.conf.d /etc/modprobe.d
printf '* hard core 0\n* soft core 0\n' > /etc/security/limits.d/90-kiln-nocore.conf
printf '[Coredump]\nStorage=none\nProcessSizeMax=0\n' > /etc/systemd/coredump.conf.d/90-kiln.conf

# Filesystems, protocols and buses a server never needs cannot be loaded.
{
  echo "# Kiln: modules a server never loads (provisioners/harden-sysctl.sh)"
  for module in cramfs freevxfs jffs2 hfs hfsplus squashfs udf usb-storage firewire-core \
                firewire-ohci dccp sctp rds tipc bluetooth btusb; do
    echo "install $module /bin/true"
    echo "blacklist $module"
  done
} > /etc/modprobe.d/90-kiln-blacklist.conf
chmod 0644 /etc/modprobe.d/90-kiln-blacklist.conf
