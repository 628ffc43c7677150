#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

//! cni-core's delegation, exercised with the real cni-ipam binary as the delegate (as cni-bridge
//! will use it).

use std::path::Path;

use cni_core::delegate::{invoke, DelegateError};
use cni_core::{CniError, Command, Request};
use serde_json::{json, Value};

fn request(command: Command, cni_path: &str, conf: &Value) -> Request {
    let env = |key: &str| -> Option<String> {
        match key {
            "CNI_CONTAINERID" => Some("deleg1".into()),
            "CNI_IFNAME" => Some("eth0".into()),
            "CNI_NETNS" => Some("/var/run/netns/x".into()),
            "CNI_PATH" => Some(cni_path.into()),
            "CNI_ARGS" => Some("IgnoreUnknown=1;K8S_POD_NAME=p".into()),
            _ => None,
        }
    };
    Request::from_parts(command, &env, conf.clone()).unwrap()
}

fn bin_dir() -> String {
    Path::new(env!("CARGO_BIN_EXE_cni-ipam"))
        .parent()
        .unwrap()
        .display()
        .to_string()
}

fn conf(dir: &Path, subnet: &str) -> Value {
    json!({
        "cniVersion": "1.0.0", "name": "delegated", "type": "cni-bridge",
        "vendorKeyNobodyKnows": {"kept": true},
        "ipam": {"type": "cni-ipam", "dataDir": dir, "ranges": [[{"subnet": subnet}]]}
    })
}

#[test]
fn add_and_del_through_the_delegate() {
    let dir = tempfile::tempdir().unwrap();
    let conf = conf(dir.path(), "10.40.0.0/30");
    let path = format!("/nonexistent:{}", bin_dir());
    let add = request(Command::Add, &path, &conf);
    let result = invoke(&add, "cni-ipam", Command::Add, &conf)
        .unwrap()
        .unwrap();
    assert_eq!(result.ips[0].address.to_string(), "10.40.0.2/30");
    assert!(dir.path().join("delegated/10.40.0.2").exists());

    // The delegate's own CNI error comes back with its code unchanged (110: exhausted).
    let other = conf.clone();
    let mut again = add.clone();
    again.container_id = "deleg2".into();
    let err = invoke(&again, "cni-ipam", Command::Add, &other).unwrap_err();
    assert!(matches!(err, DelegateError::Reported { .. }), "{err}");
    assert_eq!(err.code(), 110);

    let del = request(Command::Del, &path, &conf);
    assert!(invoke(&del, "cni-ipam", Command::Del, &conf)
        .unwrap()
        .is_none());
    assert!(!dir.path().join("delegated/10.40.0.2").exists());
}

#[test]
fn missing_and_unsafe_plugin_names() {
    let dir = tempfile::tempdir().unwrap();
    let conf = conf(dir.path(), "10.41.0.0/24");
    let req = request(Command::Add, &bin_dir(), &conf);
    let err = invoke(&req, "no-such-plugin", Command::Add, &conf).unwrap_err();
    assert_eq!(err.code(), 4);
    assert!(err.to_string().contains("no-such-plugin"));
    let err = invoke(&req, "../cni-ipam", Command::Add, &conf).unwrap_err();
    assert_eq!(err.code(), 7);
    let empty_path = request(Command::Add, "", &conf);
    assert_eq!(
        invoke(&empty_path, "cni-ipam", Command::Add, &conf)
            .unwrap_err()
            .code(),
        4
    );
}

#[test]
fn unknown_config_keys_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let req = request(Command::Add, &bin_dir(), &conf(dir.path(), "10.42.0.0/24"));
    assert_eq!(
        req.raw_config["vendorKeyNobodyKnows"],
        json!({"kept": true})
    );
}
