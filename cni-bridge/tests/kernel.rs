#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

//! cni-bridge on the real kernel. Each test is a simulated node: a namespace in which the plugin
//! runs (so the bridge, sysctls and nftables tables are the node's, never the host's), with pods as
//! further namespaces. Everything is removed when the guards drop, also on failure.

use std::path::PathBuf;

use serde_json::{json, Value};
use test_support::{require_root, run_plugin_in, workspace_binary, Netns, PluginOut};

fn bridge_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cni-bridge"))
}

struct Node {
    ns: Netns,
    data: tempfile::TempDir,
    cni_path: String,
}

impl Node {
    fn new(tag: &str) -> Node {
        require_root();
        let bin = bridge_bin();
        workspace_binary(&bin, "cni-ipam");
        Node {
            ns: Netns::new(tag),
            data: tempfile::tempdir().unwrap(),
            cni_path: bin.parent().unwrap().display().to_string(),
        }
    }

    /// A configuration for this node; `extra` keys are merged over the defaults.
    fn conf(&self, extra: Value) -> Value {
        let mut conf = json!({
            "cniVersion": "1.1.0",
            "name": "testnet",
            "type": "cni-bridge",
            "isGateway": true,
            "ipam": {
                "type": "cni-ipam",
                "dataDir": self.data.path(),
                "ranges": [[{"subnet": "10.88.0.0/24"}]],
                "routes": [{"dst": "0.0.0.0/0"}]
            }
        });
        for (k, v) in extra.as_object().unwrap() {
            conf[k] = v.clone();
        }
        conf
    }

    fn run(
        &self,
        command: &str,
        id: &str,
        pod: Option<&Netns>,
        ifname: &str,
        conf: &Value,
    ) -> PluginOut {
        let netns = pod
            .map(|p| p.path().display().to_string())
            .unwrap_or_default();
        run_plugin_in(
            Some(&self.ns),
            &bridge_bin(),
            &[
                ("CNI_COMMAND", command),
                ("CNI_CONTAINERID", id),
                ("CNI_NETNS", &netns),
                ("CNI_IFNAME", ifname),
                ("CNI_PATH", &self.cni_path),
            ],
            conf,
        )
    }

    fn add(&self, id: &str, pod: &Netns, conf: &Value) -> Value {
        self.run("ADD", id, Some(pod), "eth0", conf).ok()
    }

    fn leases(&self) -> usize {
        std::fs::read_dir(self.data.path().join("testnet"))
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
                    .count()
            })
            .unwrap_or(0)
    }

    fn link(&self, name: &str) -> Option<Value> {
        let out = self.ns.try_exec(&["ip", "-j", "-d", "link", "show", name]);
        out.status
            .success()
            .then(|| serde_json::from_slice::<Value>(&out.stdout).unwrap()[0].clone())
    }

    fn nft(&self) -> String {
        String::from_utf8(self.ns.try_exec(&["nft", "list", "ruleset"]).stdout).unwrap()
    }
}

fn pod_address(result: &Value, family: u8) -> String {
    test_support::result_address(result, family == 6).unwrap()
}

fn host_veth(result: &Value) -> String {
    result["interfaces"][1]["name"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn two_pods_reach_each_other_and_the_gateway() {
    let node = Node::new("br2pods");
    let (a, b) = (Netns::new("br2a"), Netns::new("br2b"));
    let conf = node.conf(json!({"isDefaultGateway": true}));
    let ra = node.add("pod-a", &a, &conf);
    let rb = node.add("pod-b", &b, &conf);

    // Result shape: bridge, host veth, pod interface; IPs point at the pod interface.
    assert_eq!(ra["interfaces"][0]["name"], "cni0");
    assert_eq!(ra["interfaces"][2]["name"], "eth0");
    assert_eq!(
        ra["interfaces"][2]["sandbox"],
        a.path().display().to_string()
    );
    assert_eq!(ra["ips"][0]["interface"], 2);
    assert_eq!(ra["ips"][0]["address"], "10.88.0.2/24");

    // Kernel state, read with ip(8): veth attached to cni0, gateway on the bridge.
    let veth = node.link(&host_veth(&ra)).unwrap();
    assert_eq!(veth["master"], "cni0");
    let bridge = node.ns.ip_json(&["addr", "show", "cni0"]);
    assert!(bridge.to_string().contains("10.88.0.1"));
    let routes = a.ip_json(&["route", "show", "default"]);
    assert_eq!(routes[0]["gateway"], "10.88.0.1");

    assert!(a.ping(&pod_address(&rb, 4)), "pod a reaches pod b");
    assert!(b.ping(&pod_address(&ra, 4)), "pod b reaches pod a");
    assert!(a.ping("10.88.0.1"), "pod a reaches the gateway");
    assert_eq!(
        node.ns
            .try_exec(&["cat", "/proc/sys/net/ipv4/ip_forward"])
            .stdout,
        b"1\n",
        "isGateway turns on forwarding in the node"
    );
}

#[test]
fn results_in_every_version() {
    let node = Node::new("brver");
    for (i, version) in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
        .iter()
        .enumerate()
    {
        let pod = Netns::new(&format!("brver{i}"));
        let conf = node.conf(json!({"cniVersion": version}));
        let result = node.add(&format!("v{i}"), &pod, &conf);
        assert_eq!(result["cniVersion"], *version);
        assert_eq!(result["interfaces"].as_array().unwrap().len(), 3);
        assert_eq!(result["ips"][0]["interface"], 2);
        assert_eq!(
            result["ips"][0].get("version").is_some(),
            version.starts_with('0')
        );
        assert_eq!(
            result["interfaces"][2].get("mtu").is_some(),
            *version == "1.1.0"
        );
        node.run("DEL", &format!("v{i}"), Some(&pod), "eth0", &conf)
            .ok();
    }
}

#[test]
fn dual_stack_pods_talk_over_ipv6_at_once() {
    let node = Node::new("brv6");
    let (a, b) = (Netns::new("brv6a"), Netns::new("brv6b"));
    let mut conf = node.conf(json!({"isDefaultGateway": true}));
    conf["ipam"]["ranges"] = json!([[{"subnet": "10.89.0.0/24"}], [{"subnet": "fd00:89::/64"}]]);
    let ra = node.add("v6a", &a, &conf);
    let rb = node.add("v6b", &b, &conf);
    assert_eq!(pod_address(&ra, 6), "fd00:89::2");
    // No waiting for DAD: the addresses are not tentative when ADD returns.
    let addrs = a.ip_json(&["-6", "addr", "show", "eth0"]).to_string();
    assert!(!addrs.contains("tentative"), "{addrs}");
    assert!(
        a.ping(&pod_address(&rb, 6)),
        "IPv6 pod to pod right after ADD"
    );
    assert!(a.ping("fd00:89::1"), "IPv6 gateway");
    assert!(b.ping(&pod_address(&ra, 4)), "IPv4 too");
    let v6_default = a.ip_json(&["-6", "route", "show", "default"]);
    assert_eq!(v6_default[0]["gateway"], "fd00:89::1");
    // The host ends are bridge ports: no IPv6 address (no link-local, no DAD) of their own, while
    // the pods keep theirs.
    for result in [&ra, &rb] {
        let veth = host_veth(result);
        assert!(node.link(&veth).is_some(), "{veth} exists");
        let host_addrs = node.ns.ip_json(&["-6", "addr", "show", "dev", &veth]);
        let any = host_addrs
            .as_array()
            .into_iter()
            .flatten()
            .any(|l| l["addr_info"].as_array().is_some_and(|a| !a.is_empty()));
        assert!(!any, "{veth}: {host_addrs}");
    }
    assert!(
        addrs.contains("fe80:"),
        "the pod keeps its link-local: {addrs}"
    );
}

#[test]
fn mtu_from_config_or_from_the_node_uplink() {
    let node = Node::new("brmtu");
    // The node's uplink: a default route through a link with MTU 1400, as eth0 here. (This
    // kernel has no dummy devices; one end of a veth pair serves.)
    node.ns.ip(&[
        "link", "add", "up0", "mtu", "1400", "type", "veth", "peer", "name", "up0p",
    ]);
    node.ns.ip(&["link", "set", "up0p", "up"]);
    node.ns.ip(&["link", "set", "up0", "up"]);
    node.ns.ip(&["addr", "add", "192.0.2.2/24", "dev", "up0"]);
    node.ns.ip(&["route", "add", "default", "via", "192.0.2.1"]);

    let derived = Netns::new("brmtud");
    let result = node.add("derived", &derived, &node.conf(json!({})));
    assert_eq!(derived.ip_json(&["link", "show", "eth0"])[0]["mtu"], 1400);
    assert_eq!(node.link(&host_veth(&result)).unwrap()["mtu"], 1400);
    assert_eq!(result["interfaces"][2]["mtu"], 1400);

    let explicit = Netns::new("brmtue");
    let result = node.add("explicit", &explicit, &node.conf(json!({"mtu": 1300})));
    assert_eq!(explicit.ip_json(&["link", "show", "eth0"])[0]["mtu"], 1300);
    assert_eq!(node.link(&host_veth(&result)).unwrap()["mtu"], 1300);
    node.run(
        "ADD",
        "bad",
        Some(&Netns::new("brmtub")),
        "eth0",
        &node.conf(json!({"mtu": 20})),
    )
    .err(7);
}

#[test]
fn hairpin_promisc_and_mac_are_applied() {
    let node = Node::new("brhair");
    let pod = Netns::new("brhairp");
    let mut conf = node.conf(json!({"hairpinMode": true, "promiscMode": true}));
    conf["runtimeConfig"] = json!({"mac": "0a:58:0a:58:00:42"});
    let result = node.add("hair", &pod, &conf);
    let veth = node.link(&host_veth(&result)).unwrap();
    assert_eq!(
        veth["linkinfo"]["info_slave_data"]["hairpin"], true,
        "{veth}"
    );
    let bridge = node.link("cni0").unwrap();
    assert!(bridge["flags"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f == "PROMISC"));
    assert_eq!(
        pod.ip_json(&["link", "show", "eth0"])[0]["address"],
        "0a:58:0a:58:00:42"
    );
    assert_eq!(result["interfaces"][2]["mac"], "0a:58:0a:58:00:42");

    // MAC from CNI_ARGS too; a multicast MAC is refused before anything is made.
    let other = Netns::new("brhairq");
    let out = run_plugin_in(
        Some(&node.ns),
        &bridge_bin(),
        &[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "hair2"),
            ("CNI_NETNS", &other.path().display().to_string()),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", &node.cni_path),
            ("CNI_ARGS", "IgnoreUnknown=1;MAC=0a:58:0a:58:00:43"),
        ],
        &node.conf(json!({})),
    );
    out.ok();
    assert_eq!(
        other.ip_json(&["link", "show", "eth0"])[0]["address"],
        "0a:58:0a:58:00:43"
    );
    let mut multicast = node.conf(json!({}));
    multicast["runtimeConfig"] = json!({"mac": "01:00:5e:00:00:01"});
    node.run(
        "ADD",
        "hair3",
        Some(&Netns::new("brhairm")),
        "eth0",
        &multicast,
    )
    .err(7);
    assert_eq!(node.leases(), 2);
}

/// The VLAN option needs bridge VLAN filtering. Where the kernel has it, pods in one VLAN reach
/// each other and not pods of another; where it lacks it (this machine's kernel), ADD fails with
/// code 2 and leaves nothing behind. `vlan.rs` runs this test again inside a VM whose kernel has
/// it, where the first branch is required.
#[test]
fn vlan_isolates_pods_or_fails_cleanly() {
    let node = Node::new("brvlan");
    let (a, b, c) = (
        Netns::new("brvla"),
        Netns::new("brvlb"),
        Netns::new("brvlc"),
    );
    let vlan100 = node.conf(json!({"vlan": 100, "isGateway": false}));
    let first = node.run("ADD", "vl-a", Some(&a), "eth0", &vlan100);
    // In the VM (vlan_in_a_vm) the kernel has VLAN filtering: the refusal branch is a failure.
    let must_work = std::env::var("TETHER_REQUIRE_VLAN").is_ok_and(|v| v == "1");
    if first.code != 0 && !must_work {
        let err = first.err(2);
        assert!(err["msg"].as_str().unwrap().contains("VLAN"), "{err}");
        assert_eq!(node.leases(), 0, "nothing left behind");
        assert!(!a.has_link("eth0"));
        return;
    }
    assert_eq!(first.code, 0, "{} {}", first.stdout, first.stderr);
    let rb = node.add("vl-b", &b, &vlan100);
    let rc = node.add(
        "vl-c",
        &c,
        &node.conf(json!({"vlan": 200, "isGateway": false})),
    );
    assert!(a.ping(&pod_address(&rb, 4)), "same VLAN");
    assert!(!a.ping(&pod_address(&rc, 4)), "other VLAN is isolated");
}

#[test]
fn masquerade_rule_follows_attachments() {
    let node = Node::new("brmasq");
    let (a, b) = (Netns::new("brmqa"), Netns::new("brmqb"));
    let plain = node.conf(json!({}));
    node.add("nomasq", &a, &plain);
    assert!(
        !node.nft().contains("masquerade"),
        "no masquerade without ipMasq"
    );
    node.run("DEL", "nomasq", Some(&a), "eth0", &plain).ok();

    let masq = node.conf(json!({"ipMasq": true}));
    let ra = node.add("m1", &a, &masq);
    let rb = node.add("m2", &b, &masq);
    let rules = node.nft();
    assert_eq!(
        rules.matches("masquerade").count(),
        1,
        "one rule per subnet, not per pod:\n{rules}"
    );
    assert!(rules.contains("ip saddr 10.88.0.0/24"), "{rules}");
    assert!(
        rules.contains("ip daddr != 10.88.0.0/24"),
        "pod-to-pod traffic is not masqueraded"
    );
    for r in [&ra, &rb] {
        assert!(
            rules.contains(&pod_address(r, 4)),
            "pod is in the set:\n{rules}"
        );
    }
    node.run("DEL", "m1", Some(&a), "eth0", &masq).ok();
    let rules = node.nft();
    assert!(!rules.contains(&pod_address(&ra, 4)));
    assert!(rules.contains("masquerade"), "m2 still needs the rule");
    // DEL after the pod's netns is gone, and with no netns at all.
    drop(b);
    node.run("DEL", "m2", None, "eth0", &masq).ok();
    assert!(
        !node.nft().contains("masquerade"),
        "last pod gone, rule gone:\n{}",
        node.nft()
    );
}

/// The masquerade element of an address belongs to whoever holds the address now: pod A's DEL
/// cut short after IPAM released the address leaves A's element; pod B gets the address; A's
/// retried DEL and a GC that keeps only B must leave B masqueraded.
#[test]
fn a_masquerade_element_follows_the_current_owner_of_its_address() {
    let node = Node::new("brmqown");
    let (a, b) = (Netns::new("brmqowa"), Netns::new("brmqowb"));
    let masq = node.conf(json!({"ipMasq": true}));
    let ra = node.add("own-a", &a, &masq);
    let address = pod_address(&ra, 4);
    // A's DEL killed between releasing the address and removing its element.
    node.ns.ip(&["link", "del", &host_veth(&ra)]);
    std::fs::remove_file(node.data.path().join("testnet").join(&address)).unwrap();
    let mut wants_it = masq.clone();
    wants_it["runtimeConfig"] = json!({"ips": [address]});
    let rb = node.add("own-b", &b, &wants_it);
    assert_eq!(pod_address(&rb, 4), address, "B got A's address");
    let element = |owner: &str| {
        node.nft()
            .contains(&format!("{address} comment \"{owner}/eth0\""))
    };
    assert!(element("own-b") && !element("own-a"), "{}", node.nft());
    node.run("DEL", "own-a", None, "eth0", &masq).ok();
    assert!(
        element("own-b"),
        "A's retried DEL took B's element:\n{}",
        node.nft()
    );
    let mut gc = masq.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "own-b", "ifname": "eth0"}]);
    node.run("GC", "", None, "", &gc).ok();
    assert!(
        element("own-b"),
        "GC keeping B took its element:\n{}",
        node.nft()
    );
    let mut with_prev = masq.clone();
    with_prev["prevResult"] = rb.clone();
    node.run("CHECK", "own-b", Some(&b), "eth0", &with_prev)
        .ok();
    // CHECK sees the nftables state too: B's element gone is a mismatch.
    let rules = node.nft();
    let set = rules
        .split_whitespace()
        .find(|w| w.starts_with("masq4_"))
        .unwrap()
        .to_string();
    node.ns.exec(&[
        "nft",
        "delete",
        "element",
        "inet",
        "tether",
        &set,
        &format!("{{ {address} }}"),
    ]);
    let err = node
        .run("CHECK", "own-b", Some(&b), "eth0", &with_prev)
        .err(123);
    assert!(err["msg"].as_str().unwrap().contains("masquerade"), "{err}");
    node.run("DEL", "own-b", Some(&b), "eth0", &masq).ok();
    assert!(!node.nft().contains("masquerade"), "{}", node.nft());
}

#[test]
fn masquerade_really_rewrites_the_source_address() {
    let node = Node::new("brsnat");
    let pod = Netns::new("brsnatp");
    let outside = Netns::new("brsnato");
    // The node's uplink to an "outside" namespace.
    node.ns.ip(&[
        "link",
        "add",
        "up0",
        "type",
        "veth",
        "peer",
        "name",
        "out0",
        "netns",
        &outside.name,
    ]);
    node.ns
        .ip(&["addr", "add", "198.51.100.1/24", "dev", "up0"]);
    node.ns.ip(&["link", "set", "up0", "up"]);
    outside.ip(&["addr", "add", "198.51.100.2/24", "dev", "out0"]);
    outside.ip(&["link", "set", "out0", "up"]);
    node.add(
        "snat",
        &pod,
        &node.conf(json!({"ipMasq": true, "isDefaultGateway": true})),
    );
    // "outside" has no route back to 10.88.0.0/24: only a masqueraded ping can be answered.
    assert!(
        pod.ping("198.51.100.2"),
        "masqueraded traffic leaves the node"
    );
}

#[test]
fn del_is_idempotent_and_works_without_the_netns() {
    let node = Node::new("brdel");
    let pod = Netns::new("brdelp");
    let conf = node.conf(json!({"macspoofchk": true}));
    let result = node.add("gone", &pod, &conf);
    assert!(node.nft().contains("ether saddr"));
    // CHECK covers the spoof-check rule: gone, it is a mismatch.
    let mut with_prev = conf.clone();
    with_prev["prevResult"] = result.clone();
    node.run("CHECK", "gone", Some(&pod), "eth0", &with_prev)
        .ok();
    node.ns
        .exec(&["nft", "flush", "chain", "bridge", "tether", "spoofcheck"]);
    let err = node
        .run("CHECK", "gone", Some(&pod), "eth0", &with_prev)
        .err(123);
    assert!(err["msg"].as_str().unwrap().contains("spoof"), "{err}");
    drop(pod); // the runtime deleted the netns first
    node.run("DEL", "gone", None, "eth0", &conf).ok();
    node.run("DEL", "gone", None, "eth0", &conf).ok();
    assert!(node.link(&host_veth(&result)).is_none());
    assert_eq!(node.leases(), 0);
    assert!(!node.nft().contains("ether saddr"), "spoof check removed");
    node.run("DEL", "never-added", None, "eth0", &conf).ok();
}

#[test]
fn del_removes_both_ends_before_it_returns_and_the_names_are_free_again() {
    // DEL leaves the kernel's post-deletion wait to a helper process; everything a runtime can
    // observe must already be gone when DEL exits.
    let node = Node::new("brredo");
    let pod = Netns::new("brredop");
    let conf = node.conf(json!({}));
    for round in 0..5 {
        let result = node.add("again", &pod, &conf);
        let veth = host_veth(&result);
        assert!(node.link(&veth).is_some());
        assert!(pod.has_link("eth0"));
        node.run("DEL", "again", Some(&pod), "eth0", &conf).ok();
        assert!(
            node.link(&veth).is_none(),
            "round {round}: host end still there"
        );
        assert!(!pod.has_link("eth0"), "round {round}: pod end still there");
        assert_eq!(node.leases(), 0);
    }
}

#[test]
fn add_onto_an_existing_interface_fails_and_undoes_ipam() {
    let node = Node::new("brdup");
    let pod = Netns::new("brdupp");
    let conf = node.conf(json!({}));
    node.add("dup", &pod, &conf);
    let err = node.run("ADD", "dup2", Some(&pod), "eth0", &conf).err(120);
    assert!(err["msg"].as_str().unwrap().contains("eth0"));
    assert_eq!(node.leases(), 1, "no lease for the failed ADD");

    // A failure after IPAM ADD (the bridge holds another address in the subnet) releases the lease.
    let other = Netns::new("brdupq");
    let conflict = Node::new("brconf");
    conflict.ns.ip(&["link", "add", "cni0", "type", "bridge"]);
    conflict
        .ns
        .ip(&["addr", "add", "10.88.0.200/24", "dev", "cni0"]);
    let err = conflict
        .run("ADD", "c1", Some(&other), "eth0", &conflict.conf(json!({})))
        .err(121);
    assert!(
        err["msg"].as_str().unwrap().contains("forceAddress"),
        "{err}"
    );
    assert_eq!(conflict.leases(), 0);
    assert!(!other.has_link("eth0"));
    conflict.add("c2", &other, &conflict.conf(json!({"forceAddress": true})));
    let addrs = conflict.ns.ip_json(&["addr", "show", "cni0"]).to_string();
    assert!(
        addrs.contains("10.88.0.1") && !addrs.contains("10.88.0.200"),
        "{addrs}"
    );
}

#[test]
fn an_ipam_failure_leaves_no_veth_behind() {
    // The veth pair is made while IPAM runs; when IPAM refuses (here: the range is full), the
    // pair goes again and the error is IPAM's own.
    let node = Node::new("brfull");
    let conf = node.conf(json!({
        "ipam": {
            "type": "cni-ipam",
            "dataDir": node.data.path(),
            "ranges": [[{"subnet": "10.88.0.0/30"}]]
        }
    }));
    let first = Netns::new("brfulla");
    let second = Netns::new("brfullb");
    node.add("only", &first, &conf);
    let out = node.run("ADD", "none", Some(&second), "eth0", &conf);
    assert_ne!(out.code, 0);
    let err = out.json;
    assert_eq!(err["code"], 110, "IPAM's own code (range exhausted): {err}");
    let msg = err["msg"].as_str().unwrap();
    assert!(
        msg.starts_with("cni-ipam ADD: ") && msg.contains("10.88.0.0/30"),
        "the message names the delegate and carries its own: {err}"
    );
    assert!(!second.has_link("eth0"), "pod end left behind");
    let veths = node.ns.ip_json(&["-d", "link", "show", "type", "veth"]);
    assert_eq!(
        veths.as_array().unwrap().len(),
        1,
        "only the first pod's veth: {veths}"
    );
    assert_eq!(node.leases(), 1);
}

#[test]
fn check_finds_a_removed_address_and_a_removed_veth() {
    let node = Node::new("brchk");
    let pod = Netns::new("brchkp");
    let conf = node.conf(json!({"isDefaultGateway": true}));
    let result = node.add("chk", &pod, &conf);
    let mut with_prev = conf.clone();
    with_prev["prevResult"] = result.clone();
    node.run("CHECK", "chk", Some(&pod), "eth0", &with_prev)
        .ok();
    node.run("CHECK", "chk", Some(&pod), "eth0", &conf).err(7); // no prevResult

    pod.ip(&["addr", "del", "10.88.0.2/24", "dev", "eth0"]);
    let err = node
        .run("CHECK", "chk", Some(&pod), "eth0", &with_prev)
        .err(123);
    assert!(err["msg"].as_str().unwrap().contains("10.88.0.2"), "{err}");

    node.ns.ip(&["link", "del", &host_veth(&result)]);
    let err = node
        .run("CHECK", "chk", Some(&pod), "eth0", &with_prev)
        .err(123);
    assert!(err["msg"].as_str().unwrap().contains("veth"), "{err}");
}

#[test]
fn thirty_two_parallel_adds_on_a_fresh_node() {
    let node = Node::new("brpar");
    let pods: Vec<Netns> = (0..32).map(|i| Netns::new(&format!("brp{i}"))).collect();
    let conf = node.conf(json!({}));
    let results: Vec<PluginOut> = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, pod)| {
                let (node, conf) = (&node, &conf);
                s.spawn(move || node.run("ADD", &format!("par{i}"), Some(pod), "eth0", conf))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let results: Vec<Value> = results.into_iter().map(PluginOut::ok).collect();
    let bridges: Vec<Value> = node
        .ns
        .ip_json(&["-d", "link", "show", "type", "bridge"])
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(bridges.len(), 1, "one bridge");
    let addrs = node.ns.ip_json(&["-4", "addr", "show", "cni0"]);
    assert_eq!(
        addrs[0]["addr_info"].as_array().unwrap().len(),
        1,
        "one gateway address: {addrs}"
    );
    let mut seen = std::collections::HashSet::new();
    for (pod, result) in pods.iter().zip(&results) {
        assert!(seen.insert(pod_address(result, 4)));
        assert!(pod.ping("10.88.0.1"), "{} works", pod.name);
    }
}

#[test]
fn gc_removes_attachments_not_in_the_valid_list() {
    let node = Node::new("brgc");
    let (keep, drop_me) = (Netns::new("brgck"), Netns::new("brgcd"));
    let conf = node.conf(json!({"ipMasq": true}));
    let kept = node.add("keep", &keep, &conf);
    let dropped = node.add("drop", &drop_me, &conf);
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "keep", "ifname": "eth0"}]);
    node.run("GC", "", None, "", &gc).ok();
    assert!(node.link(&host_veth(&kept)).is_some());
    assert!(
        node.link(&host_veth(&dropped)).is_none(),
        "leftover veth removed"
    );
    assert_eq!(node.leases(), 1);
    let rules = node.nft();
    assert!(
        rules.contains(&pod_address(&kept, 4)) && !rules.contains(&pod_address(&dropped, 4)),
        "{rules}"
    );
    assert!(keep.ping("10.88.0.1"), "the kept pod still works");
}

#[test]
fn status_and_bad_input() {
    let node = Node::new("brstat");
    let conf = node.conf(json!({}));
    node.run("STATUS", "", None, "", &conf).ok();
    assert!(node.link("cni0").is_some(), "STATUS made the bridge");
    let blocked = Node::new("brstab");
    blocked.ns.ip(&[
        "link", "add", "cni0", "type", "veth", "peer", "name", "cni0p",
    ]);
    let err = blocked
        .run("STATUS", "", None, "", &blocked.conf(json!({})))
        .err(50);
    assert!(
        err["msg"].as_str().unwrap().contains("not a bridge"),
        "{err}"
    );
    // The netns does not exist: code 3, and no lease was taken.
    node.run("ADD", "x", None, "eth0", &conf).err(4); // ADD without CNI_NETNS
    let out = run_plugin_in(
        Some(&node.ns),
        &bridge_bin(),
        &[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "x"),
            ("CNI_NETNS", "/var/run/netns/does-not-exist"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", &node.cni_path),
        ],
        &conf,
    );
    out.err(3);
    node.run(
        "ADD",
        "x",
        Some(&Netns::new("brstx")),
        "eth0",
        &node.conf(json!({"bridge": "this-name-is-too-long"})),
    )
    .err(7);
    let mut no_ipam = node.conf(json!({}));
    no_ipam["ipam"] = json!({"type": "no-such-ipam"});
    node.run("ADD", "y", Some(&Netns::new("brsty")), "eth0", &no_ipam)
        .err(4);
    assert_eq!(node.leases(), 0);
}

#[test]
fn ids_too_long_and_netns_paths_that_are_no_network_namespace() {
    let node = Node::new("brlim");
    let pod = Netns::new("brlimp");
    let conf = node.conf(json!({"ipMasq": true}));
    // The longest id works end to end (veth alias, lease index, nftables comment).
    let longest = "a".repeat(128);
    node.add(&longest, &pod, &conf);
    node.run("DEL", &longest, Some(&pod), "eth0", &conf).ok();
    // Past it: refused before anything is made; DEL of it succeeds.
    let too_long = "b".repeat(250);
    let err = node.run("ADD", &too_long, Some(&pod), "eth0", &conf).err(4);
    assert!(err["msg"].as_str().unwrap().contains("128"), "{err}");
    node.run("DEL", &too_long, Some(&pod), "eth0", &conf).ok();
    node.run("DEL", &too_long, None, "eth0", &conf).ok();
    let veths = node.ns.ip_json(&["link", "show", "type", "veth"]);
    assert_eq!(veths.as_array().unwrap().len(), 0, "{veths}");
    assert_eq!(node.leases(), 0);

    // CNI_NETNS naming a regular file, a directory, or a namespace of another kind: code 4,
    // the path named.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-netns");
    std::fs::write(&file, b"").unwrap();
    for path in [
        file.display().to_string(),
        dir.path().display().to_string(),
        "/proc/self/ns/uts".into(),
    ] {
        let out = run_plugin_in(
            Some(&node.ns),
            &bridge_bin(),
            &[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "badns"),
                ("CNI_NETNS", &path),
                ("CNI_IFNAME", "eth0"),
                ("CNI_PATH", &node.cni_path),
            ],
            &conf,
        );
        let err = out.err(4);
        let msg = err["msg"].as_str().unwrap();
        assert!(msg.contains(&path) && msg.contains("CNI_NETNS"), "{err}");
    }
    assert_eq!(node.leases(), 0);

    // A network name of 300 bytes is a configuration error.
    let mut long_name = conf.clone();
    long_name["name"] = json!("n".repeat(300));
    node.run("ADD", "longnet", Some(&pod), "eth0", &long_name)
        .err(7);
}

#[test]
fn the_last_masqueraded_pod_takes_the_nft_table_with_it() {
    let node = Node::new("brtab");
    let conf = node.conf(json!({"ipMasq": true}));
    let pods: Vec<Netns> = (0..2).map(|i| Netns::new(&format!("brtab{i}"))).collect();
    for (i, pod) in pods.iter().enumerate() {
        node.add(&format!("tab{i}"), pod, &conf);
    }
    assert!(node.nft().contains("table inet tether"));
    node.run("DEL", "tab0", None, "eth0", &conf).ok();
    assert!(node.nft().contains("table inet tether"), "one pod is left");
    node.run("DEL", "tab1", None, "eth0", &conf).ok();
    assert!(!node.nft().contains("table inet tether"), "{}", node.nft());
    // GC that removes the last pod's state removes the table too.
    node.add("tab2", &pods[0], &conf);
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([]);
    node.run("GC", "", None, "", &gc).ok();
    assert!(!node.nft().contains("table inet tether"), "{}", node.nft());
}

#[test]
fn a_del_killed_at_any_point_never_frees_an_address_a_veth_still_holds() {
    // Kill DELs at random moments; whenever a pod's veth survives its killed DEL, its lease
    // must have survived too (else the next ADD hands the same address out twice); the retried
    // DEL always converges to nothing left.
    let node = Node::new("brkill");
    let conf = node.conf(json!({}));
    let pod = Netns::new("brkillp");
    let mut seed = u64::from(std::process::id());
    for round in 0..40 {
        let id = format!("kill{round}");
        let result = node.add(&id, &pod, &conf);
        let veth = host_veth(&result);
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let delay = std::time::Duration::from_micros((seed >> 33) % 12_000);
        let mut child = test_support::spawn_plugin_in(
            Some(&node.ns),
            &bridge_bin(),
            &[
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", id.as_str()),
                ("CNI_NETNS", ""),
                ("CNI_IFNAME", "eth0"),
                ("CNI_PATH", node.cni_path.as_str()),
            ],
            &conf,
        );
        std::thread::sleep(delay);
        // SIGKILL the plugin itself (the child of `ip netns exec`, which execs it).
        let _ = child.kill();
        let _ = child.wait();
        if node.link(&veth).is_some() {
            assert_eq!(
                node.leases(),
                1,
                "round {round}: the veth survived but its lease did not"
            );
        }
        node.run("DEL", &id, None, "eth0", &conf).ok();
        assert!(
            node.link(&veth).is_none(),
            "round {round}: veth left after the retried DEL"
        );
        assert_eq!(
            node.leases(),
            0,
            "round {round}: lease left after the retried DEL"
        );
    }
}

#[test]
fn isolated_ports_route_pod_to_pod_through_the_host_firewall() {
    let node = Node::new("briso");
    let (a, b) = (Netns::new("brisoa"), Netns::new("brisob"));
    let mut conf = node.conf(json!({"isDefaultGateway": true, "portIsolation": true}));
    conf["ipam"]["ranges"] = json!([[{"subnet": "10.90.0.0/24"}], [{"subnet": "fd00:90::/64"}]]);
    let ra = node.add("iso-a", &a, &conf);
    let rb = node.add("iso-b", &b, &conf);
    let (b4, b6) = (pod_address(&rb, 4), pod_address(&rb, 6));

    // The host end is an isolated port; the pod's subnet goes via the gateway, on the link by
    // declaration, and the result says so.
    let veth = node.link(&host_veth(&ra)).unwrap();
    assert_eq!(
        veth["linkinfo"]["info_slave_data"]["isolated"], true,
        "{veth}"
    );
    let subnet = a.ip_json(&["route", "show", "10.90.0.0/24"]);
    assert_eq!(subnet[0]["gateway"], "10.90.0.1", "{subnet}");
    assert!(
        subnet[0]["flags"].to_string().contains("onlink"),
        "{subnet}"
    );
    let subnet6 = a.ip_json(&["-6", "route", "show", "fd00:90::/64"]);
    assert_eq!(subnet6[0]["gateway"], "fd00:90::1", "{subnet6}");
    let routes = ra["routes"].to_string();
    assert!(
        routes.contains("10.90.0.0/24") && routes.contains("fd00:90::/64"),
        "{routes}"
    );
    for family in ["ipv4", "ipv6"] {
        let path = format!("/proc/sys/net/{family}/conf/eth0/accept_redirects");
        assert_eq!(a.exec(&["cat", &path]).trim(), "0", "{path}");
    }

    // Routed by the node (one hop: TTL 63), both families, with br_netfilter off.
    node.ns
        .exec(&["sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0"]);
    node.ns
        .exec(&["sysctl", "-qw", "net.bridge.bridge-nf-call-ip6tables=0"]);
    let ping = a.exec(&["ping", "-c1", "-W2", &b4]);
    assert!(ping.contains("ttl=63"), "{ping}");
    let ping6 = a.exec(&["ping", "-6", "-c1", "-W2", &b6]);
    assert!(ping6.contains("ttl=63"), "{ping6}");
    assert!(b.ping(&pod_address(&ra, 4)) && a.ping("10.90.0.1") && a.ping("fd00:90::1"));

    // So the node's inet forward hook sees pod-to-pod traffic without br_netfilter.
    node.ns.exec(&["nft", "add", "table", "inet", "isotest"]);
    node.ns.exec(&[
        "nft",
        "add",
        "chain",
        "inet",
        "isotest",
        "pods",
        "{ type filter hook forward priority 0; policy accept; }",
    ]);
    node.ns.exec(&[
        "nft", "add", "rule", "inet", "isotest", "pods", "ip", "daddr", &b4, "drop",
    ]);
    node.ns.exec(&[
        "nft", "add", "rule", "inet", "isotest", "pods", "ip6", "daddr", &b6, "drop",
    ]);
    assert!(
        !a.ping(&b4),
        "the node's forward rule drops IPv4 pod to pod"
    );
    assert!(!a.ping(&b6), "and IPv6");
    node.ns.exec(&["nft", "delete", "table", "inet", "isotest"]);
    assert!(a.ping(&b4));

    // Going around the node at layer 2 (b's MAC, b on the link) is dropped by the bridge.
    let b_mac = rb["interfaces"][2]["mac"].as_str().unwrap().to_string();
    a.ip(&["route", "replace", &format!("{b4}/32"), "dev", "eth0"]);
    a.ip(&[
        "neigh",
        "replace",
        &b4,
        "lladdr",
        &b_mac,
        "dev",
        "eth0",
        "nud",
        "permanent",
    ]);
    assert!(!a.ping(&b4), "isolated ports do not forward to each other");
    a.ip(&["route", "del", &format!("{b4}/32")]);

    // CHECK accepts what ADD made; DEL twice; the config needs a gateway.
    let mut with_prev = conf.clone();
    with_prev["prevResult"] = ra.clone();
    node.run("CHECK", "iso-a", Some(&a), "eth0", &with_prev)
        .ok();
    let veth_a = host_veth(&ra);
    node.ns
        .exec(&["bridge", "link", "set", "dev", &veth_a, "isolated", "off"]);
    let err = node
        .run("CHECK", "iso-a", Some(&a), "eth0", &with_prev)
        .err(123);
    assert!(err["msg"].as_str().unwrap().contains("isolated"), "{err}");
    for _ in 0..2 {
        node.run("DEL", "iso-a", Some(&a), "eth0", &conf).ok();
    }
    let err = node
        .run(
            "ADD",
            "iso-c",
            Some(&Netns::new("brisoc")),
            "eth0",
            &node.conf(json!({"isGateway": false, "portIsolation": true})),
        )
        .err(7);
    assert!(err["msg"].as_str().unwrap().contains("isGateway"), "{err}");
}

#[test]
fn routed_pods_are_links_of_their_own_routed_by_the_node() {
    let node = Node::new("brrt");
    let (a, b) = (Netns::new("brrta"), Netns::new("brrtb"));
    let mut conf = node.conf(json!({"isDefaultGateway": true, "routed": true}));
    conf["ipam"]["ranges"] = json!([[{"subnet": "10.91.0.0/24"}], [{"subnet": "fd00:91::/64"}]]);
    let ra = node.add("rt-a", &a, &conf);
    let rb = node.add("rt-b", &b, &conf);
    let (a4, a6) = (pod_address(&ra, 4), pod_address(&ra, 6));
    let (b4, b6) = (pod_address(&rb, 4), pod_address(&rb, 6));
    let veth_a = host_veth(&ra);

    // The host end is no bridge port and has no address of its own; the bridge, without
    // ports, holds the gateways.
    let veth = node.link(&veth_a).unwrap();
    assert!(veth.get("master").is_none(), "{veth}");
    assert!(node
        .ns
        .ip(&["-o", "addr", "show", "dev", &veth_a])
        .is_empty());
    assert_eq!(node.ns.exec(&["ls", "/sys/class/net/cni0/brif"]).trim(), "");
    // The node routes each pod address to its host veth, from the gateway, with a permanent
    // neighbour entry; the pod reaches its subnet and the rest via the gateway, whose neighbour
    // entry (the host veth's MAC) is permanent too: no ARP or neighbour discovery on the link.
    let host_mac = node.link(&veth_a).unwrap()["address"].clone();
    let route = node.ns.ip_json(&["route", "show", &format!("{a4}/32")]);
    assert_eq!(route[0]["dev"], veth_a.as_str(), "{route}");
    assert_eq!(route[0]["prefsrc"], "10.91.0.1", "{route}");
    let route6 = node
        .ns
        .ip_json(&["-6", "route", "show", &format!("{a6}/128")]);
    assert_eq!(route6[0]["dev"], veth_a.as_str(), "{route6}");
    let neigh = node.ns.ip_json(&["neigh", "show", "dev", &veth_a]);
    assert!(
        neigh.to_string().contains(&a4) && neigh.to_string().contains("PERMANENT"),
        "{neigh}"
    );
    let pod_neigh = a.ip_json(&["neigh", "show", "dev", "eth0"]);
    for gw in ["10.91.0.1", "fd00:91::1"] {
        let entry = pod_neigh
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["dst"] == gw)
            .unwrap_or_else(|| panic!("no neighbour entry for {gw}: {pod_neigh}"));
        assert_eq!(entry["lladdr"], host_mac, "{entry}");
    }
    let subnet = a.ip_json(&["route", "show", "10.91.0.0/24"]);
    assert_eq!(subnet[0]["gateway"], "10.91.0.1", "{subnet}");

    // Pod to pod is routed by the node (TTL 63) in both families, whatever br_netfilter says,
    // and so passes the node's forward hook.
    for value in ["1", "0"] {
        for table in ["iptables", "ip6tables"] {
            node.ns.exec(&[
                "sysctl",
                "-qw",
                &format!("net.bridge.bridge-nf-call-{table}={value}"),
            ]);
        }
        let ping = a.exec(&["ping", "-c1", "-W2", &b4]);
        assert!(ping.contains("ttl=63"), "{ping}");
        let ping6 = a.exec(&["ping", "-6", "-c1", "-W2", &b6]);
        assert!(ping6.contains("ttl=63"), "{ping6}");
    }
    assert!(b.ping(&a4) && a.ping("10.91.0.1") && a.ping("fd00:91::1"));
    node.ns.exec(&["nft", "add", "table", "inet", "rttest"]);
    node.ns.exec(&[
        "nft",
        "add",
        "chain",
        "inet",
        "rttest",
        "pods",
        "{ type filter hook forward priority 0; policy accept; }",
    ]);
    node.ns.exec(&[
        "nft", "add", "rule", "inet", "rttest", "pods", "ip", "daddr", &b4, "drop",
    ]);
    assert!(!a.ping(&b4), "the node's forward rule drops pod to pod");
    node.ns.exec(&["nft", "delete", "table", "inet", "rttest"]);

    // A pod cannot send as another: the host end checks sources strictly.
    assert_eq!(
        node.ns
            .exec(&[
                "cat",
                &format!("/proc/sys/net/ipv4/conf/{veth_a}/rp_filter")
            ])
            .trim(),
        "1"
    );
    node.ns.exec(&["nft", "add", "table", "inet", "rtspoof"]);
    node.ns.exec(&[
        "nft",
        "add",
        "chain",
        "inet",
        "rtspoof",
        "spoof",
        "{ type filter hook forward priority 0; policy accept; }",
    ]);
    node.ns.exec(&[
        "nft", "add", "rule", "inet", "rtspoof", "spoof", "ip", "saddr", &b4, "iifname", &veth_a,
        "counter",
    ]);
    a.ip(&[
        "addr",
        "add",
        &format!("{b4}/32"),
        "dev",
        "eth0",
        "noprefixroute",
    ]);
    let _ = a.try_exec(&["ping", "-c2", "-i0.2", "-W1", "-I", &b4, "10.91.0.9"]);
    a.ip(&["addr", "del", &format!("{b4}/32"), "dev", "eth0"]);
    let counted = node
        .ns
        .exec(&["nft", "list", "chain", "inet", "rtspoof", "spoof"]);
    assert!(
        counted.contains("packets 0 "),
        "spoofed packets were forwarded: {counted}"
    );
    node.ns.exec(&["nft", "delete", "table", "inet", "rtspoof"]);

    // CHECK accepts what ADD made and sees a lost route; DEL twice leaves nothing.
    let mut with_prev = conf.clone();
    with_prev["prevResult"] = ra.clone();
    node.run("CHECK", "rt-a", Some(&a), "eth0", &with_prev).ok();
    node.ns.ip(&["route", "del", &format!("{a4}/32")]);
    let err = node
        .run("CHECK", "rt-a", Some(&a), "eth0", &with_prev)
        .err(123);
    assert!(err["msg"].as_str().unwrap().contains(&a4), "{err}");
    for _ in 0..2 {
        node.run("DEL", "rt-a", None, "eth0", &conf).ok();
    }
    assert!(node.link(&veth_a).is_none());
    let left = node.ns.ip(&["route", "show", &format!("{b4}/32")]);
    assert!(!left.is_empty(), "b's route went with a's DEL");
    assert!(node
        .ns
        .ip(&["-6", "route", "show", &format!("{a6}/128")])
        .is_empty());
    assert_eq!(node.leases(), 2, "b's two addresses stay leased");

    // Options that only make sense on a bridge port are refused, clearly.
    for (key, value) in [
        ("portIsolation", json!(true)),
        ("vlan", json!(7)),
        ("macspoofchk", json!(true)),
        ("isGateway", json!(false)),
    ] {
        let mut bad = node.conf(json!({"routed": true}));
        bad[key] = value;
        let err = node
            .run("ADD", "rt-c", Some(&Netns::new("brrtc")), "eth0", &bad)
            .err(7);
        assert!(err["msg"].as_str().unwrap().contains(key), "{key}: {err}");
    }
}

#[test]
fn a_killed_plugins_ipam_child_never_acts_afterwards() {
    // An IPAM that takes its time, then records that it acted (a lease written, a GC done).
    // cni-bridge is SIGKILLed while it waits for that child, at several moments: the child must
    // die with it, never acting once the runtime has seen the plugin gone.
    let node = Node::new("brorph");
    let pod = Netns::new("brorphp");
    let dir = tempfile::tempdir().unwrap();
    let ipam = dir.path().join("slow-ipam");
    std::fs::write(
        &ipam,
        "#!/bin/sh\ncat >/dev/null\nsleep 0.8\ntouch \"$(dirname \"$0\")/acted-$CNI_COMMAND-$CNI_CONTAINERID\"\necho '{\"cniVersion\":\"1.1.0\",\"ips\":[]}'\n",
    )
    .unwrap();
    std::fs::set_permissions(&ipam, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let cni_path = format!("{}:{}", dir.path().display(), node.cni_path);
    let mut conf = node.conf(json!({"isGateway": false}));
    conf["ipam"] = json!({"type": "slow-ipam"});
    for (round, (command, kill_after_ms)) in
        [("ADD", 100u64), ("ADD", 400), ("GC", 100), ("DEL", 300)]
            .into_iter()
            .enumerate()
    {
        let id = format!("orph{round}");
        let mut input = conf.clone();
        input["cni.dev/valid-attachments"] = json!([]);
        let mut child = test_support::spawn_plugin_in(
            Some(&node.ns),
            &bridge_bin(),
            &[
                ("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
                ("CNI_COMMAND", command),
                ("CNI_CONTAINERID", id.as_str()),
                ("CNI_NETNS", &pod.path().display().to_string()),
                ("CNI_IFNAME", "eth0"),
                ("CNI_PATH", cni_path.as_str()),
            ],
            &input,
        );
        std::thread::sleep(std::time::Duration::from_millis(kill_after_ms));
        let _ = child.kill();
        let _ = child.wait();
        std::thread::sleep(std::time::Duration::from_millis(1500));
        let marker = dir.path().join(format!("acted-{command}-{id}"));
        assert!(
            !marker.exists(),
            "round {round}: the IPAM child of a killed {command} acted after its parent was gone"
        );
    }
    // Unkilled, the same IPAM does act: the test can see it.
    let conf_done = conf.clone();
    let out = run_plugin_in(
        Some(&node.ns),
        &bridge_bin(),
        &[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "orph-done"),
            ("CNI_NETNS", ""),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", &cni_path),
        ],
        &conf_done,
    );
    assert_eq!(out.code, 0, "{}", out.stdout);
    assert!(dir.path().join("acted-DEL-orph-done").exists());
}

#[test]
fn gc_finds_the_veths_of_adds_killed_before_they_named_their_owner() {
    // ADDs SIGKILLed at random moments leave pairs made but not named (the alias is set by a
    // second request); their link group, set as the pair is made, lets GC find them.
    let node = Node::new("brgcv");
    let conf = node.conf(json!({}));
    let pod = Netns::new("brgcvp");
    let mut seed = u64::from(std::process::id()) | 1;
    for round in 0..30 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let delay = std::time::Duration::from_micros((seed >> 33) % 15_000);
        let mut child = test_support::spawn_plugin_in(
            Some(&node.ns),
            &bridge_bin(),
            &[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", &format!("gcv{round}")),
                ("CNI_NETNS", &pod.path().display().to_string()),
                ("CNI_IFNAME", &format!("k{round}")),
                ("CNI_PATH", node.cni_path.as_str()),
            ],
            &conf,
        );
        std::thread::sleep(delay);
        let _ = child.kill();
        let _ = child.wait();
    }
    // One attachment that stays valid, one foreign veth without alias (not ours: default
    // group), one unnamed veth of ours whose name is the valid attachment's.
    let kept = node.add("gcv-kept", &pod, &conf);
    node.ns.ip(&[
        "link",
        "add",
        "tt-foreign",
        "type",
        "veth",
        "peer",
        "name",
        "tt-foreignp",
    ]);
    node.ns.ip(&["link", "set", &host_veth(&kept), "alias", ""]);
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "gcv-kept", "ifname": "eth0"}]);
    node.run("GC", "", None, "", &gc).ok();
    let veths: Vec<String> = node
        .ns
        .ip_json(&["-d", "link", "show", "type", "veth"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["group"] != "default")
        .map(|l| l["ifname"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(veths, [host_veth(&kept)], "GC left veths of killed ADDs");
    assert!(
        node.ns.has_link("tt-foreign"),
        "GC took a veth that is not ours"
    );
    assert_eq!(node.leases(), 1, "leases of killed ADDs are left");
}
