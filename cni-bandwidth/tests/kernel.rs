#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

//! cni-bandwidth chained after cni-bridge on the real kernel: iperf3 through a shaped pod lands
//! within 10% of the configured rate each way; traffic to an unshaped subnet is not held back;
//! DEL removes the ifb and qdiscs with the netns gone; CHECK and GC.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use serde_json::{json, Value};
use test_support::chain::{bin_dir_of, Attachment, Conflist};
use test_support::{require_root, workspace_binary, Netns};

fn bin_dir() -> PathBuf {
    let dir = bin_dir_of(&PathBuf::from(env!("CARGO_BIN_EXE_cni-bandwidth")));
    let me = dir.join("cni-bandwidth");
    workspace_binary(&me, "cni-bridge");
    workspace_binary(&me, "cni-ipam");
    dir
}

/// An iperf3 server in a namespace, stopped by pid on drop.
struct Iperf(Child);

impl Iperf {
    fn start(ns: &Netns) -> Iperf {
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns.name,
                "iperf3",
                "-s",
                "-1",
                "--forceflush",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        Iperf(child)
    }
}

impl Drop for Iperf {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Mbit/s received by the receiving end of an iperf3 TCP run from `client` to `server_ip`
/// (`reverse`: the server sends).
fn mbits(client: &Netns, server: &Netns, server_ip: &str, reverse: bool) -> f64 {
    let _server = Iperf::start(server);
    let mut args = vec!["iperf3", "-c", server_ip, "-t", "4", "-O", "1", "-J"];
    if reverse {
        args.push("-R");
    }
    let out = client.exec(&args);
    let report: Value = serde_json::from_str(&out).unwrap();
    report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap()
        / 1e6
}

struct Site {
    node: Netns,
    outside: Netns,
    far: Netns,
    data: tempfile::TempDir,
}

impl Site {
    fn new(tag: &str) -> Site {
        require_root();
        let node = Netns::new(&format!("{tag}n"));
        let outside = Netns::new(&format!("{tag}o"));
        let far = Netns::new(&format!("{tag}f"));
        for (peer, ours, theirs, net) in [
            (&outside, "up0", "o0", "192.0.2"),
            (&far, "up1", "f0", "198.51.100"),
        ] {
            node.cable(
                ours,
                &format!("{net}.1/24"),
                peer,
                theirs,
                &format!("{net}.2/24"),
            );
            peer.ip(&["route", "add", "default", "via", &format!("{net}.1")]);
        }
        Site {
            node,
            outside,
            far,
            data: tempfile::tempdir().unwrap(),
        }
    }

    fn conflist(&self, bandwidth: Value) -> Conflist<'_> {
        let mut shaper = json!({"type": "cni-bandwidth", "capabilities": {"bandwidth": true}});
        for (k, v) in bandwidth.as_object().unwrap() {
            shaper[k] = v.clone();
        }
        Conflist {
            list: json!({
                "cniVersion": "1.1.0",
                "name": "bwnet",
                "plugins": [
                    {
                        "type": "cni-bridge",
                        "isGateway": true,
                        "isDefaultGateway": true,
                        "ipMasq": true,
                        "ipam": {
                            "type": "cni-ipam",
                            "dataDir": self.data.path(),
                            "ranges": [[{"subnet": "10.91.0.0/24"}]]
                        }
                    },
                    shaper
                ]
            }),
            bin_dirs: vec![bin_dir()],
            node: Some(&self.node),
        }
    }

    fn links(&self) -> String {
        self.node.ip(&["-o", "link"])
    }
}

fn within(measured: f64, wanted: f64) -> bool {
    (measured - wanted).abs() <= wanted * 0.1
}

#[test]
fn a_shaped_pod_gets_its_rates_each_way_and_teardown_leaves_nothing() {
    let site = Site::new("bw1");
    let list = site.conflist(json!({}));
    let pod = Netns::new("bw1p");
    let path = pod.path().display().to_string();
    // What containerd sends for kubernetes.io/ingress-bandwidth: 40M, egress-bandwidth: 20M.
    let att = Attachment {
        id: "bw-a",
        netns: &path,
        ifname: "eth0",
        runtime: json!({"bandwidth": {
            "ingressRate": 40_000_000u64, "ingressBurst": u32::MAX,
            "egressRate": 20_000_000u64, "egressBurst": u32::MAX
        }}),
    };
    let result = list.add(&att).unwrap_or_else(|e| panic!("{}", e.stdout));
    let egress = mbits(&pod, &site.outside, "192.0.2.2", false);
    let ingress = mbits(&pod, &site.outside, "192.0.2.2", true);
    eprintln!("egress {egress:.1} Mbit/s (20 wanted), ingress {ingress:.1} Mbit/s (40 wanted)");
    assert!(within(egress, 20.0), "egress {egress:.1} Mbit/s, wanted 20");
    assert!(
        within(ingress, 40.0),
        "ingress {ingress:.1} Mbit/s, wanted 40"
    );

    list.check(&att, &result).unwrap();
    let ifb = site
        .links()
        .lines()
        .find_map(|l| {
            l.split(": ")
                .nth(1)
                .filter(|n| n.starts_with("bwp"))
                .map(str::to_string)
        })
        .expect("an ifb");
    site.node.ip(&["link", "del", &ifb]);
    let err = list.check(&att, &result).unwrap_err();
    assert_eq!(err.json["code"], 152, "{}", err.stdout);

    // DEL with the pod gone: nothing of the shaping is left, and DEL again is fine.
    list.run_one("ADD", 1, &att, Some(&result)).ok();
    assert!(site.links().contains("bwp"));
    drop(pod);
    let gone = Attachment {
        id: "bw-a",
        netns: "",
        ifname: "eth0",
        runtime: json!({}),
    };
    list.del(&gone, Some(&result)).unwrap();
    list.del(&gone, Some(&result)).unwrap();
    assert!(!site.links().contains("bwp"), "{}", site.links());
}

#[test]
fn unshaped_subnets_are_not_held_back_and_gc_collects_ifbs() {
    let site = Site::new("bw2");
    let list = site.conflist(json!({"unshapedSubnets": ["198.51.100.0/24"]}));
    let pod = Netns::new("bw2p");
    let path = pod.path().display().to_string();
    let att = Attachment {
        id: "bw-b",
        netns: &path,
        ifname: "eth0",
        runtime: json!({"bandwidth": {"egressRate": 20_000_000u64, "egressBurst": u32::MAX}}),
    };
    list.add(&att).unwrap_or_else(|e| panic!("{}", e.stdout));
    let shaped = mbits(&pod, &site.outside, "192.0.2.2", false);
    let unshaped = mbits(&pod, &site.far, "198.51.100.2", false);
    eprintln!("shaped {shaped:.1} Mbit/s (20 wanted), unshaped {unshaped:.1} Mbit/s");
    assert!(within(shaped, 20.0), "shaped {shaped:.1} Mbit/s, wanted 20");
    assert!(unshaped > 100.0, "unshaped {unshaped:.1} Mbit/s");
    list.gc(&[]).unwrap();
    assert!(!site.links().contains("bwp"), "{}", site.links());
}

/// A link that carries the name of an attachment's ifb but was not made for it (another type, or
/// an ifb without our alias or link group) is never used and never deleted: ADD and DEL say so
/// with code 153. An ifb of ours whose ADD was killed before its alias was set is collected by GC.
#[test]
fn a_link_under_the_ifb_name_that_is_not_ours_is_never_used_or_deleted() {
    let site = Site::new("bw3");
    let list = site.conflist(json!({}));
    let pod = Netns::new("bw3p");
    let path = pod.path().display().to_string();
    let att = Attachment {
        id: "bw-c",
        netns: &path,
        ifname: "eth0",
        runtime: json!({"bandwidth": {"egressRate": 20_000_000u64, "egressBurst": u32::MAX}}),
    };
    let ifb_of = |links: &str| {
        links
            .split_whitespace()
            .find(|w| w.starts_with("bwp"))
            .map(|w| w.trim_end_matches(':').to_string())
    };
    let result = list.add(&att).unwrap_or_else(|e| panic!("{}", e.stdout));
    let ifb = ifb_of(&site.links()).expect("an ifb");
    list.del(&att, Some(&result)).unwrap();

    for foreign in [
        vec!["type", "veth", "peer", "name", "bw3peer"],
        vec!["type", "ifb"],
    ] {
        let mut args = vec!["link", "add", ifb.as_str()];
        args.extend(foreign.iter().copied());
        site.node.ip(&args);
        let err = list
            .add(&att)
            .expect_err("ADD used a link that is not ours");
        assert_eq!(err.json["code"], 153, "{}", err.stdout);
        assert!(err.stdout.contains(&ifb), "{}", err.stdout);
        let del = list.run_one("DEL", 1, &att, None);
        assert_eq!(del.json["code"], 153, "{}", del.stdout);
        assert!(
            site.node.has_link(&ifb),
            "DEL deleted a link that is not ours"
        );
        list.gc(&[]).unwrap_or_else(|e| panic!("{}", e.stdout));
        assert!(
            site.node.has_link(&ifb),
            "GC deleted a link that is not ours"
        );
        site.node.ip(&["link", "del", &ifb]);
        list.del(&att, None)
            .unwrap_or_else(|e| panic!("{}", e.stdout));
    }

    // An ifb in our link group without an alias: made by an ADD killed before naming it. GC
    // collects it; an unrelated ifb stays.
    site.node.ip(&[
        "link",
        "add",
        &ifb,
        "group",
        &format!("{}", cni_core::netlink::group::SHAPING_IFB),
        "type",
        "ifb",
    ]);
    site.node.ip(&["link", "add", "tt-bw3other", "type", "ifb"]);
    list.gc(&[]).unwrap_or_else(|e| panic!("{}", e.stdout));
    assert!(!site.node.has_link(&ifb), "{}", site.links());
    assert!(site.node.has_link("tt-bw3other"));
}
