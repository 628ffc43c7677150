//! kube-proxy's Service rules, written into a node's namespace in the shapes kube-proxy itself
//! writes them, for datapath tests on a machine where kube-proxy cannot run (it needs an API
//! server). Both modes Kubernetes ships:
//!
//! - `iptables` (through iptables-nft, as on every current distribution): `KUBE-SERVICES` from
//!   the nat `PREROUTING` and `OUTPUT` chains, `KUBE-SVC-*` / `KUBE-EXT-*` / `KUBE-SEP-*` per
//!   Service, `KUBE-MARK-MASQ` (mark 0x4000) for traffic from outside the cluster CIDR, from a
//!   backend to itself (hairpin) and to NodePorts, `KUBE-POSTROUTING` masquerading the marked
//!   packets, and `KUBE-FORWARD` in the filter table (drops conntrack-INVALID packets);
//! - `nftables`: table `ip kube-proxy` / `ip6 kube-proxy` with the `service-ips` and
//!   `service-nodeports` verdict maps, `service-*`, `external-*` and `endpoint-*` chains,
//!   `mark-for-masquerade` and `masquerading`.
//!
//! The shapes follow kube-proxy's own expected-output tests (`pkg/proxy/iptables` and
//! `pkg/proxy/nftables` in kubernetes/kubernetes, v1.33): rule for rule, minus what the tests
//! here do not exercise (LoadBalancer firewalls, session affinity, health-check node ports).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};

use crate::Netns;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Iptables,
    Nftables,
}

/// One Service port of one IP family, and its ready endpoints (of the same family).
#[derive(Debug, Clone)]
pub struct Service {
    /// `namespace/name:port`, as kube-proxy's comments name it.
    pub name: String,
    pub cluster_ip: IpAddr,
    pub port: u16,
    /// `tcp` or `udp`.
    pub protocol: &'static str,
    pub node_port: Option<u16>,
    pub endpoints: Vec<SocketAddr>,
}

/// What kube-proxy knows of its node for one IP family.
#[derive(Debug, Clone)]
pub struct Node {
    /// `--cluster-cidr` of this family: traffic from outside it to a ClusterIP is masqueraded.
    pub cluster_cidr: String,
    /// The Service CIDR (nftables mode drops traffic to unallocated ClusterIPs in it).
    pub service_cidr: String,
    /// The addresses NodePorts answer on (nftables mode's `nodeport-ips`).
    pub node_ips: Vec<IpAddr>,
}

/// Writes kube-proxy's rules for `services` (all of one family, that of `node`) into `ns`.
pub fn install(ns: &Netns, mode: Mode, node: &Node, services: &[Service]) {
    let v6 = node.cluster_cidr.contains(':');
    match mode {
        Mode::Iptables => {
            let restore = if v6 {
                "ip6tables-nft-restore"
            } else {
                "iptables-nft-restore"
            };
            feed(
                ns,
                &[restore, "--noflush"],
                &iptables_rules(v6, node, services),
            );
        }
        Mode::Nftables => feed(ns, &["nft", "-f", "-"], &nftables_rules(v6, node, services)),
    }
}

fn feed(ns: &Netns, command: &[&str], input: &str) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .args(command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running the kube-proxy rule loader (iptables / nftables: scripts/setup.sh)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("writing kube-proxy's rules");
    let out = child.wait_with_output().expect("waiting for the loader");
    assert!(
        out.status.success(),
        "{command:?} refused kube-proxy's rules: {}\n{input}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// kube-proxy's chain-name hash: 16 characters of base32 (here of a std hash: only uniqueness
/// matters).
fn chain_hash(parts: &[&str]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut hasher = DefaultHasher::new();
    parts.hash(&mut hasher);
    let mut value = hasher.finish();
    (0..16)
        .map(|_| {
            let c = ALPHABET[(value & 31) as usize] as char;
            value = value.rotate_right(5) ^ 0x9e37_79b9_7f4a_7c15;
            c
        })
        .collect()
}

fn endpoint_text(ep: &SocketAddr) -> String {
    match ep {
        SocketAddr::V4(a) => format!("{}:{}", a.ip(), a.port()),
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    }
}

fn iptables_rules(v6: bool, node: &Node, services: &[Service]) -> String {
    let mut chains = vec![
        "KUBE-SERVICES".to_string(),
        "KUBE-NODEPORTS".to_string(),
        "KUBE-POSTROUTING".to_string(),
        "KUBE-MARK-MASQ".to_string(),
    ];
    let mut rules = vec![
        r#"-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES"#.to_string(),
        r#"-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES"#.to_string(),
        r#"-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING"#.to_string(),
        "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN".to_string(),
        "-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000".to_string(),
        r#"-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully"#.to_string(),
        "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000".to_string(),
    ];
    for svc in services {
        let (name, proto) = (&svc.name, svc.protocol);
        let hash = chain_hash(&[name, proto]);
        let svc_chain = format!("KUBE-SVC-{hash}");
        let ext_chain = format!("KUBE-EXT-{hash}");
        chains.push(svc_chain.clone());
        rules.push(format!(
            r#"-A KUBE-SERVICES -m comment --comment "{name} cluster IP" -m {proto} -p {proto} -d {} --dport {} -j {svc_chain}"#,
            svc.cluster_ip, svc.port
        ));
        rules.push(format!(
            r#"-A {svc_chain} -m comment --comment "{name} cluster IP" -m {proto} -p {proto} -d {} --dport {} ! -s {} -j KUBE-MARK-MASQ"#,
            svc.cluster_ip, svc.port, node.cluster_cidr
        ));
        if let Some(node_port) = svc.node_port {
            chains.push(ext_chain.clone());
            rules.push(format!(
                "-A KUBE-NODEPORTS -m comment --comment {name} -m {proto} -p {proto} --dport {node_port} -j {ext_chain}"
            ));
            rules.push(format!(
                r#"-A {ext_chain} -m comment --comment "masquerade traffic for {name} external destinations" -j KUBE-MARK-MASQ"#
            ));
            rules.push(format!("-A {ext_chain} -j {svc_chain}"));
        }
        let count = svc.endpoints.len();
        for (i, ep) in svc.endpoints.iter().enumerate() {
            let ep_text = endpoint_text(ep);
            let sep_chain = format!("KUBE-SEP-{}", chain_hash(&[name, proto, &ep_text]));
            chains.push(sep_chain.clone());
            let pick = if i + 1 < count {
                format!(
                    " -m statistic --mode random --probability {:.10}",
                    1.0 / (count - i) as f64
                )
            } else {
                String::new()
            };
            rules.push(format!(
                r#"-A {svc_chain} -m comment --comment "{name} -> {ep_text}"{pick} -j {sep_chain}"#
            ));
            rules.push(format!(
                "-A {sep_chain} -m comment --comment {name} -s {} -j KUBE-MARK-MASQ",
                ep.ip()
            ));
            rules.push(format!(
                "-A {sep_chain} -m comment --comment {name} -m {proto} -p {proto} -j DNAT --to-destination {ep_text}"
            ));
        }
    }
    let not_localhost = if v6 { " ! -d ::1/128" } else { "" };
    rules.push(format!(
        r#"-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL{not_localhost} -j KUBE-NODEPORTS"#
    ));
    let mut out = String::from("*filter\n:KUBE-FORWARD - [0:0]\n");
    out.push_str(
        r#"-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
COMMIT
*nat
"#,
    );
    for chain in &chains {
        out.push_str(&format!(":{chain} - [0:0]\n"));
    }
    for rule in &rules {
        out.push_str(rule);
        out.push('\n');
    }
    out.push_str("COMMIT\n");
    out
}

fn nftables_rules(v6: bool, node: &Node, services: &[Service]) -> String {
    let (fam, ip, addr_type) = if v6 {
        ("ip6", "ip6", "ipv6_addr")
    } else {
        ("ip", "ip", "ipv4_addr")
    };
    let t = format!("{fam} kube-proxy");
    let mut out = format!(
        r#"add table {t} {{ comment "rules for kube-proxy" ; }}
add set {t} cluster-ips {{ type {addr_type} ; comment "Active ClusterIPs" ; }}
add set {t} nodeport-ips {{ type {addr_type} ; comment "IPs that accept NodePort traffic" ; }}
add map {t} firewall-ips {{ type {addr_type} . inet_proto . inet_service : verdict ; comment "destinations that are subject to LoadBalancerSourceRanges" ; }}
add map {t} no-endpoint-nodeports {{ type inet_proto . inet_service : verdict ; comment "vmap to drop or reject packets to service nodeports with no endpoints" ; }}
add map {t} no-endpoint-services {{ type {addr_type} . inet_proto . inet_service : verdict ; comment "vmap to drop or reject packets to services with no endpoints" ; }}
add map {t} service-ips {{ type {addr_type} . inet_proto . inet_service : verdict ; comment "ClusterIP, ExternalIP and LoadBalancer IP traffic" ; }}
add map {t} service-nodeports {{ type inet_proto . inet_service : verdict ; comment "NodePort traffic" ; }}
add chain {t} cluster-ips-check
add chain {t} filter-prerouting-pre-dnat {{ type filter hook prerouting priority -110 ; }}
add chain {t} filter-output-pre-dnat {{ type filter hook output priority -110 ; }}
add chain {t} filter-forward {{ type filter hook forward priority 0 ; }}
add chain {t} filter-input {{ type filter hook input priority 0 ; }}
add chain {t} filter-output {{ type filter hook output priority 0 ; }}
add chain {t} firewall-check
add chain {t} mark-for-masquerade
add chain {t} masquerading
add chain {t} nat-output {{ type nat hook output priority -100 ; }}
add chain {t} nat-postrouting {{ type nat hook postrouting priority 100 ; }}
add chain {t} nat-prerouting {{ type nat hook prerouting priority -100 ; }}
add chain {t} nodeport-endpoints-check
add chain {t} reject-chain {{ comment "helper for @no-endpoint-services / @no-endpoint-nodeports" ; }}
add chain {t} services
add chain {t} service-endpoints-check
add rule {t} cluster-ips-check {ip} daddr @cluster-ips reject comment "Reject traffic to invalid ports of ClusterIPs"
add rule {t} cluster-ips-check {ip} daddr {{ {service_cidr} }} drop comment "Drop traffic to unallocated ClusterIPs"
add rule {t} filter-prerouting-pre-dnat ct state new jump firewall-check
add rule {t} filter-forward ct state new jump service-endpoints-check
add rule {t} filter-forward ct state new jump cluster-ips-check
add rule {t} filter-input ct state new jump nodeport-endpoints-check
add rule {t} filter-input ct state new jump service-endpoints-check
add rule {t} filter-output ct state new jump service-endpoints-check
add rule {t} filter-output-pre-dnat ct state new jump firewall-check
add rule {t} filter-output ct state new jump cluster-ips-check
add rule {t} firewall-check {ip} daddr . meta l4proto . th dport vmap @firewall-ips
add rule {t} mark-for-masquerade mark set mark or 0x4000
add rule {t} masquerading mark and 0x4000 == 0 return
add rule {t} masquerading mark set mark xor 0x4000
add rule {t} masquerading masquerade fully-random
add rule {t} nat-output jump services
add rule {t} nat-postrouting jump masquerading
add rule {t} nat-prerouting jump services
add rule {t} nodeport-endpoints-check {ip} daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports
add rule {t} reject-chain reject
add rule {t} services {ip} daddr . meta l4proto . th dport vmap @service-ips
add rule {t} services {ip} daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports
add rule {t} service-endpoints-check {ip} daddr . meta l4proto . th dport vmap @no-endpoint-services
"#,
        service_cidr = node.service_cidr,
    );
    for node_ip in &node.node_ips {
        out.push_str(&format!("add element {t} nodeport-ips {{ {node_ip} }}\n"));
    }
    for svc in services {
        let (name, proto) = (&svc.name, svc.protocol);
        // kube-proxy's chain names: namespace/name/protocol/port, and an IPv6 endpoint's
        // colons as dots (a chain name cannot hold a colon).
        let (service, port_name) = name.split_once(':').unwrap_or((name, ""));
        let id = format!("{service}/{proto}/{port_name}");
        let hash = &chain_hash(&[name, proto])[..8];
        let svc_chain = format!("service-{hash}-{id}");
        let ext_chain = format!("external-{hash}-{id}");
        out.push_str(&format!("add chain {t} {svc_chain}\n"));
        out.push_str(&format!(
            "add rule {t} {svc_chain} {ip} daddr {} {ip} saddr != {} jump mark-for-masquerade\n",
            svc.cluster_ip, node.cluster_cidr
        ));
        let mut picks = Vec::new();
        for (i, ep) in svc.endpoints.iter().enumerate() {
            let ep_text = endpoint_text(ep);
            let ep_hash = &chain_hash(&[name, proto, &ep_text])[..8];
            let ep_chain = format!(
                "endpoint-{ep_hash}-{id}__{}/{}",
                ep.ip().to_string().replace(':', "."),
                ep.port()
            );
            out.push_str(&format!("add chain {t} {ep_chain}\n"));
            out.push_str(&format!(
                "add rule {t} {ep_chain} {ip} saddr {} jump mark-for-masquerade\n",
                ep.ip()
            ));
            out.push_str(&format!(
                "add rule {t} {ep_chain} meta l4proto {proto} dnat to {ep_text}\n"
            ));
            picks.push(format!("{i} : goto {ep_chain}"));
        }
        out.push_str(&format!(
            "add rule {t} {svc_chain} numgen random mod {} vmap {{ {} }}\n",
            picks.len(),
            picks.join(" , ")
        ));
        out.push_str(&format!(
            "add element {t} cluster-ips {{ {} }}\n",
            svc.cluster_ip
        ));
        out.push_str(&format!(
            "add element {t} service-ips {{ {} . {proto} . {} : goto {svc_chain} }}\n",
            svc.cluster_ip, svc.port
        ));
        if let Some(node_port) = svc.node_port {
            out.push_str(&format!("add chain {t} {ext_chain}\n"));
            out.push_str(&format!(
                "add rule {t} {ext_chain} jump mark-for-masquerade\n"
            ));
            out.push_str(&format!("add rule {t} {ext_chain} goto {svc_chain}\n"));
            out.push_str(&format!(
                "add element {t} service-nodeports {{ {proto} . {node_port} : goto {ext_chain} }}\n"
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn web() -> (Node, Vec<Service>) {
        let node = Node {
            cluster_cidr: "10.244.0.0/16".into(),
            service_cidr: "10.96.0.0/16".into(),
            node_ips: vec!["192.168.77.10".parse().unwrap()],
        };
        let svc = Service {
            name: "default/web:http".into(),
            cluster_ip: "10.96.0.10".parse().unwrap(),
            port: 80,
            protocol: "tcp",
            node_port: Some(30500),
            endpoints: vec![
                "10.244.5.3:8080".parse().unwrap(),
                "10.244.6.3:8080".parse().unwrap(),
            ],
        };
        (node, vec![svc])
    }

    #[test]
    fn iptables_mode_has_kube_proxys_chains_in_order() {
        let (node, services) = web();
        let rules = iptables_rules(false, &node, &services);
        for expected in [
            "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000",
            "--dport 80 ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ",
            "-m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-",
            "-s 10.244.5.3 -j KUBE-MARK-MASQ",
            "-j DNAT --to-destination 10.244.6.3:8080",
            "--dport 30500 -j KUBE-EXT-",
            "-m addrtype --dst-type LOCAL -j KUBE-NODEPORTS",
        ] {
            assert!(rules.contains(expected), "{expected}\n{rules}");
        }
        let last_nat_rule = rules.lines().rev().nth(1).unwrap();
        assert!(last_nat_rule.contains("KUBE-NODEPORTS"), "{last_nat_rule}");
    }

    #[test]
    fn nftables_mode_dispatches_through_verdict_maps() {
        let (node, services) = web();
        let rules = nftables_rules(false, &node, &services);
        assert!(rules.contains("numgen random mod 2 vmap { 0 : goto endpoint-"));
        assert!(rules.contains(
            "add element ip kube-proxy service-nodeports { tcp . 30500 : goto external-"
        ));
        assert!(rules.contains("add element ip kube-proxy nodeport-ips { 192.168.77.10 }"));
        assert!(rules.contains("meta l4proto tcp dnat to 10.244.5.3:8080"));
    }
}
