#!/usr/bin/env bash
# VM test fixture: what every VM must show (kiln/suites/test_vm_runtime.py) in a few lines,
# and the page the declared health service serves.
set -euo pipefail
cat > /etc/sysctl.d/60-fixture.conf <<'CONF'
kernel.kptr_restrict = 2
net.ipv4.tcp_syncookies = 1
CONF
cat > /etc/audit/rules.d/60-fixture.rules <<'RULES'
-w /etc/passwd -p wa -k identity
-w /etc/shadow -p wa -k identity
RULES
cat > /etc/nftables.conf <<'NFT'
#!/usr/sbin/nft -f
flush ruleset
table inet filter {
  chain input {
    type filter hook input priority 0; policy drop;
    iif lo accept
    ct state established,related accept
    # IPv6 neighbour discovery and router adverts, as base's ruleset lets in.
    ip6 nexthdr icmpv6 icmpv6 type { nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert } accept
    tcp dport { 22, 8080 } accept
  }
}
NFT
systemctl enable nftables.service
install -d -m 0755 /srv/fixture
echo ok > /srv/fixture/health
chmod 0644 /srv/fixture/health
