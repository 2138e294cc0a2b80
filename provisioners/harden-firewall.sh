#!/usr/bin/env bash
# Default-deny nftables ruleset: inbound only loopback, replies, ICMP, SSH, node metrics
# (prometheus-node-exporter, 9100: every instance serves them) and the role's own ports (KILN_PORTS from the role file). Persisted in /etc/nftables.conf (nftables.service loads
# it on a VM) and applied at boot by base's firewall service where CAP_NET_ADMIN allows.
# finish.sh re-runs it at the end of every child bake so each role opens its own ports.
set -euo pipefail
ports="22, 9100"
for port in ${KILN_PORTS:-}; do
  [[ "$port" =~ ^[0-9]+$ ]] || { echo "KILN_PORTS: '$port' is not a port number" >&2; exit 1; }
  ports="$ports, $port"
done
cat > /etc/nftables.conf <<CONF
#!/usr/sbin/nft -f
# Kiln default-deny firewall (provisioners/harden-firewall.sh) for role ${KILN_ROLE:-unknown}.
# Only Kiln's own table is replaced (declared, deleted, defined again in one transaction): a
# container engine keeps rules of its own in the namespace (Docker's DNS), a flush would drop them.
table inet kiln
delete table inet kiln
table inet kiln {
  chain input {
    type filter hook input priority filter; policy drop;
    ct state established,related accept
    ct state invalid drop
    iif "lo" accept
    ip protocol icmp icmp type { echo-request, destination-unreachable, time-exceeded, parameter-problem } limit rate 10/second accept
    ip6 nexthdr icmpv6 icmpv6 type { echo-request, destination-unreachable, packet-too-big, time-exceeded, parameter-problem, nd-neighbor-solicit, nd-neighbor-advert, nd-router-advert } accept
    tcp dport { ${ports} } ct state new accept
  }
  chain forward {
    type filter hook forward priority filter; policy drop;
  }
  chain output {
    type filter hook output priority filter; policy accept;
  }
}
CONF
chown root:root /etc/nftables.conf
chmod 0600 /etc/nftables.conf
# Debian ships nftables.service disabled: without this a VM would boot with no firewall at all.
# (What `systemctl enable` does; a container bake has no systemctl.)
install -d -m 0755 /etc/systemd/system/sysinit.target.wants
ln -sf /lib/systemd/system/nftables.service /etc/systemd/system/sysinit.target.wants/nftables.service
hook=/usr/local/lib/kiln/finish.d/harden-firewall.sh
[ "$0" -ef "$hook" ] || install -D -m 0755 "$0" "$hook"
