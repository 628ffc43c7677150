#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

//! cni-overlay as a runtime runs it, without the daemon: the node facts are written by the test.
//! A delegate ADD that fails leaves no saved delegate configuration behind.

use std::path::PathBuf;

use serde_json::{json, Value};
use test_support::{require_root, run_plugin_in, workspace_binary, Netns};

fn bin() -> PathBuf {
    let me = PathBuf::from(env!("CARGO_BIN_EXE_cni-overlay"));
    workspace_binary(&me, "cni-bridge");
    workspace_binary(&me, "cni-ipam");
    me
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
    let path = bin().parent().unwrap().display().to_string();
    let run = |id: &str, netns: &str, args: &str, conf: &Value| {
        run_plugin_in(
            Some(&node),
            &bin(),
            &[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", id),
                ("CNI_NETNS", netns),
                ("CNI_IFNAME", "eth0"),
                ("CNI_PATH", &path),
                ("CNI_ARGS", args),
            ],
            conf,
        )
    };
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
    // And a good ADD still saves one.
    run("ok1", &pod_path, "", &conf(json!({}))).ok();
    assert_eq!(saved(), 1);
}
