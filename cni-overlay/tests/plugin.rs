#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

//! cni-overlay as a runtime runs it, without the daemon: the node facts are written by the test.
//! A delegate ADD that fails leaves no saved delegate configuration behind. cni-bridge and
//! cni-ipam are linked into cni-overlay (and cni-portmap and cni-bandwidth when the entry asks
//! for them): CNI_PATH here holds cni-overlay alone.

use std::path::PathBuf;

use serde_json::{json, Value};
use test_support::{require_root, run_plugin_in, Netns, PluginOut};

/// A node namespace, the overlay's facts, state and lease directories, and CNI_PATH with
/// cni-overlay alone.
struct Site {
    node: Netns,
    run_dir: tempfile::TempDir,
    state: tempfile::TempDir,
    leases: tempfile::TempDir,
    cni_dir: tempfile::TempDir,
}

impl Site {
    fn new(name: &str) -> Site {
        require_root();
        let site = Site {
            node: Netns::new(name),
            run_dir: tempfile::tempdir().unwrap(),
            state: tempfile::tempdir().unwrap(),
            leases: tempfile::tempdir().unwrap(),
            cni_dir: tempfile::tempdir().unwrap(),
        };
        site.node.exec(&["ip", "link", "set", "lo", "up"]);
        std::fs::write(
            site.run_dir.path().join("overlay.json"),
            serde_json::to_vec(&json!({
                "nodeName": "n1", "subnets": ["10.92.1.0/24"], "clusterCidrs": ["10.92.0.0/16"],
                "mtu": 1450, "vxlanDevice": "tether.1"
            }))
            .unwrap(),
        )
        .unwrap();
        std::fs::copy(
            PathBuf::from(env!("CARGO_BIN_EXE_cni-overlay")),
            site.cni_dir.path().join("cni-overlay"),
        )
        .unwrap();
        site
    }

    fn conf(&self, extra: Value) -> Value {
        let mut c = json!({
            "cniVersion": "1.1.0", "name": "ovnet", "type": "cni-overlay",
            "runDir": self.run_dir.path(), "stateDir": self.state.path(),
            "ipam": {"dataDir": self.leases.path()}
        });
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    }

    fn call(&self, command: &str, id: &str, netns: &str, args: &str, conf: &Value) -> PluginOut {
        run_plugin_in(
            Some(&self.node),
            &self.cni_dir.path().join("cni-overlay"),
            &[
                ("CNI_COMMAND", command),
                ("CNI_CONTAINERID", id),
                ("CNI_NETNS", netns),
                ("CNI_IFNAME", "eth0"),
                ("CNI_PATH", &self.cni_dir.path().display().to_string()),
                ("CNI_ARGS", args),
            ],
            conf,
        )
    }

    /// Saved delegate configurations.
    fn saved(&self) -> usize {
        std::fs::read_dir(self.state.path().join("ovnet"))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Leased addresses.
    fn leased(&self) -> usize {
        std::fs::read_dir(self.leases.path().join("ovnet"))
            .map(|d| {
                d.filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .file_name()
                        .to_string_lossy()
                        .starts_with("10.")
                })
                .count()
            })
            .unwrap_or(0)
    }
}

#[test]
fn a_failed_delegate_add_leaves_no_saved_configuration() {
    let site = Site::new("ovfail");
    let pod = Netns::new("ovfailp");
    let pod_path = pod.path().display().to_string();
    // A netns that does not exist, a requested address outside the node's subnet, a bridge
    // name no interface can have: each fails, and nothing stays saved.
    let out = site.call(
        "ADD",
        "f1",
        "/var/run/netns/tt-does-not-exist",
        "",
        &site.conf(json!({})),
    );
    assert_ne!(out.code, 0, "{}", out.stdout);
    let out = site.call(
        "ADD",
        "f2",
        &pod_path,
        "IgnoreUnknown=1;IP=10.99.0.5",
        &site.conf(json!({})),
    );
    assert_eq!(out.json["code"], 113, "{}", out.stdout);
    assert!(
        out.json["msg"]
            .as_str()
            .unwrap()
            .starts_with("cni-bridge ADD: cni-ipam ADD:"),
        "{}",
        out.stdout
    );
    let out = site.call(
        "ADD",
        "f3",
        &pod_path,
        "",
        &site.conf(json!({"bridge": "a-bridge-name-too-long"})),
    );
    assert_eq!(out.json["code"], 7, "{}", out.stdout);
    assert_eq!(site.saved(), 0, "saved delegate configurations were left");
    // And a good ADD still saves one, which its DEL (twice) removes with the lease.
    site.call("ADD", "ok1", &pod_path, "", &site.conf(json!({})))
        .ok();
    assert_eq!(site.saved(), 1);
    assert_eq!(site.leased(), 1);
    for _ in 0..2 {
        site.call("DEL", "ok1", &pod_path, "", &site.conf(json!({})))
            .ok();
    }
    assert_eq!(site.saved(), 0);
    assert_eq!(site.leased(), 0);
}

#[test]
fn hostports_and_bandwidth_run_in_the_overlays_call_and_a_failed_one_undoes_the_pod() {
    let site = Site::new("ovchain");
    let pods = [Netns::new("ovchaina"), Netns::new("ovchainb")];
    let paths: Vec<String> = pods
        .iter()
        .map(|p| p.path().display().to_string())
        .collect();
    let entry = |port: u16| {
        site.conf(json!({
            "portmap": {}, "bandwidth": {},
            "runtimeConfig": {
                "portMappings": [{"hostPort": port, "containerPort": 80, "protocol": "tcp"}],
                "bandwidth": {"egressRate": 10_000_000u64, "egressBurst": 1_000_000u64}
            }
        }))
    };
    let ifbs = || {
        site.node
            .exec(&["ip", "-o", "link", "show", "type", "ifb"])
            .lines()
            .count()
    };
    let out = site.call("ADD", "pa", &paths[0], "", &entry(18080));
    assert_eq!(out.code, 0, "{}", out.stdout);
    assert_eq!(ifbs(), 1, "cni-bandwidth shaped the pod");
    let ruleset = site.node.exec(&["nft", "list", "ruleset"]);
    assert!(
        ruleset.contains("18080"),
        "cni-portmap mapped the port\n{ruleset}"
    );
    let result = out.json.clone();
    let mut check = entry(18080);
    check["prevResult"] = result.clone();
    let out = site.call("CHECK", "pa", &paths[0], "", &check);
    assert_eq!(out.code, 0, "{}", out.stdout);

    // The same hostPort for a second pod: cni-portmap refuses it, and the pod's bridge part
    // (veth, lease, saved configuration) is undone with it.
    let out = site.call("ADD", "pb", &paths[1], "", &entry(18080));
    assert_ne!(out.code, 0, "{}", out.stdout);
    assert!(
        out.json["msg"]
            .as_str()
            .unwrap()
            .starts_with("cni-portmap ADD:"),
        "{}",
        out.stdout
    );
    assert_eq!(site.saved(), 1);
    assert_eq!(site.leased(), 1);
    assert_eq!(ifbs(), 1);
    assert!(
        pods[1].exec(&["ip", "-o", "link"]).lines().count() == 1,
        "the veth stayed"
    );

    // An option that is not an object is the entry's error.
    let out = site.call(
        "ADD",
        "pc",
        &paths[1],
        "",
        &site.conf(json!({"portmap": true})),
    );
    assert_eq!(out.json["code"], 7, "{}", out.stdout);

    // DEL (twice) takes all of it away.
    let mut del = entry(18080);
    del["prevResult"] = result;
    for _ in 0..2 {
        let out = site.call("DEL", "pa", &paths[0], "", &del);
        assert_eq!(out.code, 0, "{}", out.stdout);
    }
    assert_eq!((site.saved(), site.leased(), ifbs()), (0, 0, 0));
    let ruleset = site.node.exec(&["nft", "list", "ruleset"]);
    assert!(!ruleset.contains("18080"), "{ruleset}");
}
