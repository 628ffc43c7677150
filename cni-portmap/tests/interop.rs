#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

//! Tether's plugins chained with the reference ones (containernetworking-plugins, Debian's
//! /usr/lib/cni), both ways: the reference portmap and bandwidth after cni-bridge, and
//! cni-portmap and cni-bandwidth after the reference bridge + host-local.

use std::path::PathBuf;

use serde_json::{json, Value};
use test_support::chain::{bin_dir_of, Attachment, Conflist};
use test_support::responder::{ask, Responder};
use test_support::{require_root, workspace_binary, Netns};

const REFERENCE: &str = "/usr/lib/cni";

fn tether_dir() -> PathBuf {
    let dir = bin_dir_of(&PathBuf::from(env!("CARGO_BIN_EXE_cni-portmap")));
    for b in ["cni-bridge", "cni-ipam", "cni-bandwidth"] {
        workspace_binary(&dir.join("cni-portmap"), b);
    }
    dir
}

fn site(tag: &str) -> (Netns, Netns) {
    require_root();
    let node = Netns::new(&format!("{tag}n"));
    let outside = Netns::new(&format!("{tag}o"));
    node.cable("up0", "192.0.2.1/24", &outside, "o0", "192.0.2.2/24");
    (node, outside)
}

fn bridge_entry(kind: &str, ipam: &str, data: &std::path::Path) -> Value {
    json!({
        "type": kind, "bridge": "cni0", "isGateway": true, "isDefaultGateway": true,
        "hairpinMode": true,
        "ipam": {"type": ipam, "dataDir": data, "ranges": [[{"subnet": "10.95.0.0/24"}]]}
    })
}

/// ADD, reachability, shaping, CHECK (with `check`), DEL, nothing left.
fn exercise(list: &Conflist<'_>, node: &Netns, outside: &Netns, tag: &str, check: bool) {
    let pod = Netns::new(&format!("{tag}p"));
    let path = pod.path().display().to_string();
    let att = Attachment {
        id: &format!("{tag}-pod"),
        netns: &path,
        ifname: "eth0",
        runtime: json!({
            "portMappings": [{"hostPort": 9090, "containerPort": 80, "protocol": "tcp"}],
            "bandwidth": {"ingressRate": 100_000_000u64, "ingressBurst": 1_000_000u64,
                          "egressRate": 100_000_000u64, "egressBurst": 1_000_000u64}
        }),
    };
    let result = list
        .add(&att)
        .unwrap_or_else(|e| panic!("ADD: {} {}", e.stdout, e.stderr));
    let _server = Responder::start(&pod, 80, "tcp");
    assert_eq!(
        ask(outside, "192.0.2.1", 9090, "tcp", 0).as_deref(),
        Some("192.0.2.2"),
        "{result}"
    );
    let qdiscs = node.exec(&["tc", "qdisc", "show"]);
    assert!(qdiscs.contains("tbf"), "shaping in place: {qdiscs}");
    if check {
        list.check(&att, &result)
            .unwrap_or_else(|e| panic!("CHECK: {} {}", e.stdout, e.stderr));
    }
    list.del(&att, Some(&result))
        .unwrap_or_else(|e| panic!("DEL: {} {}", e.stdout, e.stderr));
    assert_eq!(ask(outside, "192.0.2.1", 9090, "tcp", 0), None);
    let links = node.ip(&["-o", "link"]);
    assert!(!links.contains("bwp"), "{links}");
}

#[test]
fn reference_portmap_and_bandwidth_after_cni_bridge() {
    let (node, outside) = site("io1");
    let data = tempfile::tempdir().unwrap();
    let list = Conflist {
        list: json!({
            "cniVersion": "1.0.0", "name": "interop1",
            "plugins": [
                bridge_entry("cni-bridge", "cni-ipam", data.path()),
                {"type": "portmap", "capabilities": {"portMappings": true}},
                {"type": "bandwidth", "capabilities": {"bandwidth": true}}
            ]
        }),
        bin_dirs: vec![tether_dir(), PathBuf::from(REFERENCE)],
        node: Some(&node),
    };
    // The reference portmap 1.1.1's CHECK looks for an IPv6 chain an IPv4-only pod never gets
    // ("chain CNI-DN-... not found"): its CHECK is not run here.
    exercise(&list, &node, &outside, "io1", false);
}

#[test]
fn cni_portmap_and_cni_bandwidth_after_the_reference_bridge() {
    let (node, outside) = site("io2");
    let data = tempfile::tempdir().unwrap();
    let list = Conflist {
        list: json!({
            "cniVersion": "1.0.0", "name": "interop2",
            "plugins": [
                bridge_entry("bridge", "host-local", data.path()),
                {"type": "cni-portmap", "capabilities": {"portMappings": true}},
                {"type": "cni-bandwidth", "capabilities": {"bandwidth": true}}
            ]
        }),
        bin_dirs: vec![PathBuf::from(REFERENCE), tether_dir()],
        node: Some(&node),
    };
    exercise(&list, &node, &outside, "io2", true);
    let tables = node.exec(&["nft", "list", "tables"]);
    assert!(
        !tables.contains("tether-portmap") && !tables.contains("tether-hostports"),
        "{tables}"
    );
}
