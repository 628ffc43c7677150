#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

//! cni-overlay as a runtime runs it, without the daemon: the node facts are written by the test.
//! A delegate ADD that fails leaves no saved delegate configuration behind. cni-bridge and
//! cni-ipam are linked into cni-overlay: CNI_PATH here holds cni-overlay alone.

use std::path::PathBuf;

use serde_json::{json, Value};
use test_support::{require_root, run_plugin_in, Netns};

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cni-overlay"))
}

#[test]
fn a_failed_delegate_add_leaves_no_saved_configuration() {
    require_root();
    let node = Netns::new("ovfail");
    let pod = Netns::new("ovfailp");
    let run_dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let leases = tempfile::tempdir().unwrap();
    std::fs::write(
        run_dir.path().join("overlay.json"),
        serde_json::to_vec(&json!({
            "nodeName": "n1", "subnets": ["10.92.1.0/24"], "clusterCidrs": ["10.92.0.0/16"],
            "mtu": 1450, "vxlanDevice": "tether.1"
        }))
        .unwrap(),
    )
    .unwrap();
    let conf = |extra: Value| {
        let mut c = json!({
            "cniVersion": "1.1.0", "name": "ovnet", "type": "cni-overlay",
            "runDir": run_dir.path(), "stateDir": state.path(),
            "ipam": {"dataDir": leases.path()}
        });
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let cni_dir = tempfile::tempdir().unwrap();
    let overlay = cni_dir.path().join("cni-overlay");
    std::fs::copy(bin(), &overlay).unwrap();
    let path = cni_dir.path().display().to_string();
    let call = |command: &str, id: &str, netns: &str, args: &str, conf: &Value| {
        run_plugin_in(
            Some(&node),
            &overlay,
            &[
                ("CNI_COMMAND", command),
                ("CNI_CONTAINERID", id),
                ("CNI_NETNS", netns),
                ("CNI_IFNAME", "eth0"),
                ("CNI_PATH", &path),
                ("CNI_ARGS", args),
            ],
            conf,
        )
    };
    let run = |id: &str, netns: &str, args: &str, conf: &Value| call("ADD", id, netns, args, conf);
    let pod_path = pod.path().display().to_string();
    let saved = || {
        std::fs::read_dir(state.path().join("ovnet"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    // A netns that does not exist, a requested address outside the node's subnet, a bridge
    // name no interface can have: each fails, and nothing stays saved.
    let out = run(
        "f1",
        "/var/run/netns/tt-does-not-exist",
        "",
        &conf(json!({})),
    );
    assert_ne!(out.code, 0, "{}", out.stdout);
    let out = run(
        "f2",
        &pod_path,
        "IgnoreUnknown=1;IP=10.99.0.5",
        &conf(json!({})),
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
    let out = run(
        "f3",
        &pod_path,
        "",
        &conf(json!({"bridge": "a-bridge-name-too-long"})),
    );
    assert_eq!(out.json["code"], 7, "{}", out.stdout);
    assert_eq!(saved(), 0, "saved delegate configurations were left");
    // And a good ADD still saves one, which its DEL (twice) removes with the lease.
    call("ADD", "ok1", &pod_path, "", &conf(json!({}))).ok();
    assert_eq!(saved(), 1);
    let leased = || {
        std::fs::read_dir(leases.path().join("ovnet"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("10.")
            })
            .count()
    };
    assert_eq!(leased(), 1);
    for _ in 0..2 {
        call("DEL", "ok1", &pod_path, "", &conf(json!({}))).ok();
    }
    assert_eq!(saved(), 0);
    assert_eq!(leased(), 0);
}
