#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

//! cni-portmap chained after cni-bridge on the real kernel, run as a runtime runs a conflist.
//! A simulated node (a namespace) is cabled to an "outside" namespace; pods are namespaces with
//! a server that answers with the address it saw, so each check proves both that the hostPort
//! works and whether the connection was masqueraded on the way.

use std::path::PathBuf;

use serde_json::{json, Value};
use test_support::chain::{bin_dir_of, Attachment, Conflist};
use test_support::responder::{ask, Responder};
use test_support::{require_root, workspace_binary, Netns};

fn bin_dir() -> PathBuf {
    let dir = bin_dir_of(&PathBuf::from(env!("CARGO_BIN_EXE_cni-portmap")));
    let portmap = dir.join("cni-portmap");
    workspace_binary(&portmap, "cni-bridge");
    workspace_binary(&portmap, "cni-ipam");
    dir
}

struct Site {
    node: Netns,
    outside: Netns,
    data: tempfile::TempDir,
}

impl Site {
    fn new(tag: &str) -> Site {
        require_root();
        let node = Netns::new(&format!("{tag}n"));
        let outside = Netns::new(&format!("{tag}o"));
        node.cable("up0", "192.0.2.1/24", &outside, "o0", "192.0.2.2/24");
        node.ip(&["addr", "add", "192.0.2.100/24", "dev", "up0"]);
        node.ip(&["addr", "add", "2001:db8::1/64", "dev", "up0", "nodad"]);
        outside.ip(&["addr", "add", "2001:db8::2/64", "dev", "o0", "nodad"]);
        Site {
            node,
            outside,
            data: tempfile::tempdir().unwrap(),
        }
    }

    fn conflist(&self) -> Conflist<'_> {
        self.conflist_of("1.0.0")
    }

    fn conflist_of(&self, version: &str) -> Conflist<'_> {
        Conflist {
            list: json!({
                "cniVersion": version,
                "name": "pmnet",
                "plugins": [
                    {
                        "type": "cni-bridge",
                        "isGateway": true,
                        "isDefaultGateway": true,
                        "hairpinMode": true,
                        "ipam": {
                            "type": "cni-ipam",
                            "dataDir": self.data.path(),
                            "ranges": [[{"subnet": "10.90.0.0/24"}], [{"subnet": "fd90::/64"}]]
                        }
                    },
                    {"type": "cni-portmap", "capabilities": {"portMappings": true}}
                ]
            }),
            bin_dirs: vec![bin_dir()],
            node: Some(&self.node),
        }
    }

    fn nft(&self) -> String {
        String::from_utf8_lossy(
            &self
                .node
                .try_exec(&["nft", "list", "table", "inet", "tether-hostports"])
                .stdout,
        )
        .into_owned()
    }
}

fn mapping(host: u16, container: u16, proto: &str, host_ip: &str) -> Value {
    json!({"hostPort": host, "containerPort": container, "protocol": proto, "hostIP": host_ip})
}

fn pod_ip(result: &Value, v6: bool) -> String {
    test_support::result_address(result, v6).unwrap()
}

#[test]
fn host_ports_from_outside_the_node_localhost_pods_and_hairpin() {
    let site = Site::new("pm1");
    let list = site.conflist();
    let a = Netns::new("pm1a");
    let b = Netns::new("pm1b");
    let a_path = a.path().display().to_string();
    let b_path = b.path().display().to_string();
    let ports = json!({"portMappings": [
        mapping(8080, 80, "tcp", ""),
        mapping(5353, 53, "udp", ""),
        mapping(8443, 443, "tcp", "192.0.2.1"),
    ]});
    let att_a = Attachment {
        id: "pm-a",
        netns: &a_path,
        ifname: "eth0",
        runtime: ports,
    };
    let result_a = list.add(&att_a).unwrap();
    let att_b = Attachment {
        id: "pm-b",
        netns: &b_path,
        ifname: "eth0",
        runtime: json!({}),
    };
    let result_b = list.add(&att_b).unwrap();
    assert_eq!(
        result_a["ips"].as_array().unwrap().len(),
        2,
        "prevResult passed through: {result_a}"
    );
    let _tcp = Responder::start(&a, 80, "tcp");
    let _tls = Responder::start(&a, 443, "tcp");
    let _udp = Responder::start(&a, 53, "udp");
    let gateway = "10.90.0.1";

    // From outside the node: the client's own address arrives (no SNAT), IPv4 and IPv6.
    assert_eq!(
        ask(&site.outside, "192.0.2.1", 8080, "tcp", 0).as_deref(),
        Some("192.0.2.2")
    );
    assert_eq!(
        ask(&site.outside, "192.0.2.100", 8080, "tcp", 0).as_deref(),
        Some("192.0.2.2")
    );
    assert_eq!(
        ask(&site.outside, "2001:db8::1", 8080, "tcp", 0).as_deref(),
        Some("2001:db8::2")
    );
    assert_eq!(
        ask(&site.outside, "192.0.2.1", 5353, "udp", 0).as_deref(),
        Some("192.0.2.2")
    );
    // A hostIP mapping answers on that address only.
    assert_eq!(
        ask(&site.outside, "192.0.2.1", 8443, "tcp", 0).as_deref(),
        Some("192.0.2.2")
    );
    assert_eq!(ask(&site.outside, "192.0.2.100", 8443, "tcp", 0), None);
    // From the node itself, also through 127.0.0.1 (route_localnet + SNAT to the bridge).
    assert_eq!(
        ask(&site.node, "192.0.2.1", 8080, "tcp", 0).as_deref(),
        Some("192.0.2.1")
    );
    assert_eq!(
        ask(&site.node, "127.0.0.1", 8080, "tcp", 0).as_deref(),
        Some(gateway)
    );
    // From another pod on the node, and from the pod itself through the node (hairpin).
    assert_eq!(
        ask(&b, "192.0.2.1", 8080, "tcp", 0).as_deref(),
        Some(gateway)
    );
    assert_eq!(
        ask(&a, "192.0.2.1", 8080, "tcp", 0).as_deref(),
        Some(gateway)
    );
    // Traffic the node forwards to other destinations is not captured.
    assert_eq!(ask(&b, "192.0.2.2", 8080, "tcp", 0), None);

    // CHECK passes, and notices a mapping removed behind the plugin's back.
    list.check(&att_a, &result_a).unwrap();
    site.node.exec(&[
        "nft",
        "flush",
        "map",
        "inet",
        "tether-hostports",
        "anyaddr4",
    ]);
    let err = list.check(&att_a, &result_a).unwrap_err();
    assert_eq!(err.json["code"], 142, "{}", err.stdout);
    // The runtime retries the portmap step: the mappings are put back.
    list.run_one("ADD", 1, &att_a, Some(&result_a)).ok();
    list.check(&att_a, &result_a).unwrap();

    // Another pod asking for the same hostPort is refused with the owner named.
    let c = Netns::new("pm1c");
    let c_path = c.path().display().to_string();
    let att_c = Attachment {
        id: "pm-c",
        netns: &c_path,
        ifname: "eth0",
        runtime: json!({"portMappings": [mapping(8080, 80, "tcp", "")]}),
    };
    let err = list.add(&att_c).unwrap_err();
    assert_eq!(err.json["code"], 141, "{}", err.stdout);
    assert!(
        err.json["msg"].as_str().unwrap().contains("pm-a"),
        "{}",
        err.stdout
    );

    // DEL needs neither the netns nor prevResult; twice is fine; the last one removes the table.
    let gone = Attachment {
        id: "pm-a",
        netns: "",
        ifname: "eth0",
        runtime: json!({}),
    };
    list.del(&gone, None).unwrap();
    list.del(&gone, None).unwrap();
    assert_eq!(ask(&site.outside, "192.0.2.1", 8080, "tcp", 0), None);
    list.del(&att_b, Some(&result_b)).unwrap();
    assert!(site.nft().is_empty(), "table left: {}", site.nft());
    let _ = pod_ip(&result_a, false);
}

#[test]
fn a_udp_host_port_is_not_black_holed_by_an_earlier_flow() {
    let site = Site::new("pm2");
    let list = site.conflist();
    // A client keeps sending to a port nothing is mapped to yet: the kernel tracks that flow
    // as going to the node itself.
    assert_eq!(ask(&site.outside, "192.0.2.1", 6000, "udp", 40000), None);
    let pod = Netns::new("pm2a");
    let path = pod.path().display().to_string();
    let att = Attachment {
        id: "pm-udp",
        netns: &path,
        ifname: "eth0",
        runtime: json!({"portMappings": [mapping(6000, 60, "udp", "")]}),
    };
    let result = list.add(&att).unwrap();
    let _udp = Responder::start(&pod, 60, "udp");
    // The same flow (same source port) reaches the pod at once.
    assert_eq!(
        ask(&site.outside, "192.0.2.1", 6000, "udp", 40000).as_deref(),
        Some("192.0.2.2")
    );
    list.del(&att, Some(&result)).unwrap();
    // And after DEL it does not keep reaching the old target.
    assert_eq!(ask(&site.outside, "192.0.2.1", 6000, "udp", 40000), None);
}

#[test]
fn gc_removes_mappings_of_attachments_no_longer_valid() {
    let site = Site::new("pm3");
    let list = site.conflist_of("1.1.0");
    let keep = Netns::new("pm3k");
    let drop = Netns::new("pm3d");
    let (kp, dp) = (
        keep.path().display().to_string(),
        drop.path().display().to_string(),
    );
    let k = Attachment {
        id: "pm-keep",
        netns: &kp,
        ifname: "eth0",
        runtime: json!({"portMappings": [mapping(7001, 80, "tcp", "")]}),
    };
    let d = Attachment {
        id: "pm-drop",
        netns: &dp,
        ifname: "eth0",
        runtime: json!({"portMappings": [mapping(7002, 80, "tcp", ""), mapping(7003, 53, "udp", "")]}),
    };
    list.add(&k).unwrap();
    list.add(&d).unwrap();
    list.gc(&[("pm-keep", "eth0")]).unwrap();
    let table = site.nft();
    assert!(
        table.contains("7001") && !table.contains("7002") && !table.contains("7003"),
        "{table}"
    );
    list.gc(&[]).unwrap();
    assert!(site.nft().is_empty(), "{}", site.nft());
}

/// Kubernetes' hostPort semantics (the triple hostIP, protocol, port; `""` every address,
/// `0.0.0.0` every IPv4 one, `::` every IPv6 one): overlapping mappings of another pod are
/// refused (141, the holder named), disjoint ones live side by side and each answers.
#[test]
fn host_port_conflicts_follow_the_addresses_they_cover() {
    let site = Site::new("pmc");
    let list = site.conflist_of("1.1.0");
    let mut pods = Vec::new();
    let mut add = |id: &'static str, ports: Vec<Value>| {
        let pod = Netns::new(&format!("pmc{id}"));
        let path = pod.path().display().to_string();
        let att = Attachment {
            id,
            netns: &path,
            ifname: "eth0",
            runtime: json!({"portMappings": ports}),
        };
        let out = list.add(&att);
        let servers = vec![
            Responder::start(&pod, 80, "tcp"),
            Responder::start(&pod, 80, "udp"),
        ];
        pods.push((pod, servers));
        out.map_err(|e| e.json)
    };
    // Every address, then one address of the node: refused, and the other way round.
    add("all", vec![mapping(8080, 80, "tcp", "")]).unwrap();
    let err = add("one", vec![mapping(8080, 80, "tcp", "192.0.2.1")]).unwrap_err();
    assert_eq!(err["code"], 141, "{err}");
    assert!(err["msg"].as_str().unwrap().contains("all"), "{err}");
    add("one2", vec![mapping(8081, 80, "tcp", "192.0.2.1")]).unwrap();
    let err = add("all2", vec![mapping(8081, 80, "tcp", "")]).unwrap_err();
    assert_eq!(err["code"], 141, "{err}");
    // 0.0.0.0 and :: do not meet; 0.0.0.0 meets an IPv4 address but not an IPv6 one.
    add("any4", vec![mapping(9090, 80, "tcp", "0.0.0.0")]).unwrap();
    add("any6", vec![mapping(9090, 80, "tcp", "::")]).unwrap();
    let err = add("v4one", vec![mapping(9090, 80, "tcp", "192.0.2.100")]).unwrap_err();
    assert_eq!(err["code"], 141, "{err}");
    add("v6one", vec![mapping(9091, 80, "tcp", "2001:db8::1")]).unwrap();
    add("any4b", vec![mapping(9091, 80, "tcp", "0.0.0.0")]).unwrap();
    // Another protocol on the same port and address is no conflict.
    add("udp", vec![mapping(8080, 80, "udp", "")]).unwrap();
    // Each side answers its own family.
    assert_eq!(
        ask(&site.outside, "192.0.2.1", 9090, "tcp", 0).as_deref(),
        Some("192.0.2.2")
    );
    assert_eq!(
        ask(&site.outside, "2001:db8::1", 9090, "tcp", 0).as_deref(),
        Some("2001:db8::2")
    );
    let table = site.nft();
    assert!(
        table.contains("pmnet/any4/eth0") && table.contains("pmnet/any6/eth0"),
        "{table}"
    );
    // The refused pods left nothing of theirs in the table.
    for refused in ["pmnet/one/", "pmnet/all2/", "pmnet/v4one/"] {
        assert!(!site.nft().contains(refused), "{refused}: {}", site.nft());
    }
    list.gc(&[]).unwrap();
    assert!(site.nft().is_empty(), "{}", site.nft());
}

/// A node upgraded with pods running keeps the table of the earlier layout (a verdict map
/// jumping to a chain per attachment): DEL and GC empty it and remove it, and ADD writes only
/// the new table.
#[test]
fn the_earlier_layouts_table_is_emptied_by_del_and_gc() {
    let site = Site::new("pml");
    let list = site.conflist_of("1.1.0");
    let chain = |owner: &str| {
        let network = owner.split('/').next().unwrap();
        format!(
            "pm_{:08x}_{:016x}",
            cni_core::names::hash32(network.bytes()),
            cni_core::names::hash64(owner.bytes())
        )
    };
    let (old, gone) = (chain("pmnet/old/eth0"), chain("pmnet/gone/eth0"));
    site.node.exec(&[
        "nft",
        &format!(
            "add table inet tether-portmap; \
             add map inet tether-portmap ports {{ type inet_proto . inet_service : verdict; }}; \
             add chain inet tether-portmap {old}; add chain inet tether-portmap {gone}; \
             add element inet tether-portmap ports {{ tcp . 7100 comment \"pmnet/old/eth0\" : jump {old}, \
                 udp . 7101 comment \"pmnet/gone/eth0\" : jump {gone} }}"
        ),
    ]);
    let legacy = || {
        String::from_utf8_lossy(
            &site
                .node
                .try_exec(&["nft", "list", "table", "inet", "tether-portmap"])
                .stdout,
        )
        .into_owned()
    };
    let pod = Netns::new("pmlp");
    let path = pod.path().display().to_string();
    let new = Attachment {
        id: "new",
        netns: &path,
        ifname: "eth0",
        runtime: json!({"portMappings": [mapping(7102, 80, "tcp", "")]}),
    };
    list.add(&new).unwrap();
    assert!(site.nft().contains("pmnet/new/eth0"), "{}", site.nft());
    assert!(!legacy().contains("pmnet/new/eth0"), "{}", legacy());
    // GC keeps the valid ones of both layouts.
    list.gc(&[("new", "eth0"), ("old", "eth0")]).unwrap();
    let table = legacy();
    assert!(
        table.contains("7100") && !table.contains("7101") && !table.contains(&gone),
        "{table}"
    );
    // DEL of the last attachment of the earlier layout removes its table.
    let old_attachment = Attachment {
        id: "old",
        netns: "",
        ifname: "eth0",
        runtime: json!({}),
    };
    list.del(&old_attachment, None).unwrap();
    assert!(legacy().is_empty(), "{}", legacy());
    assert!(site.nft().contains("pmnet/new/eth0"), "{}", site.nft());
    list.del(&new, None).unwrap();
    assert!(site.nft().is_empty(), "{}", site.nft());
}
