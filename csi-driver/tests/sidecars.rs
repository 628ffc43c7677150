#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

//! Every capability tether-csi advertises must exist in the CSI spec that each shipped sidecar
//! vendors: a value a sidecar does not know crashes its log sanitizer (csi-provisioner v5.2.0,
//! CSI spec 1.11, on GET_SNAPSHOT). The sidecars and their spec versions are listed once, in
//! deploy/sidecars.json, which deploy/validate.py holds the manifests to.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use tether_csi_proto::v1::{
    self as csi, controller_client::ControllerClient, identity_client::IdentityClient,
    node_client::NodeClient,
};

/// The CSI spec version that introduced each enum value tether-csi may advertise (from the
/// spec's history of csi.proto): (enum, value, name, since).
const SINCE: &[(&str, i32, &str, (u32, u32))] = &[
    (
        "PluginCapability.Service.Type",
        1,
        "CONTROLLER_SERVICE",
        (1, 0),
    ),
    (
        "PluginCapability.Service.Type",
        2,
        "VOLUME_ACCESSIBILITY_CONSTRAINTS",
        (1, 0),
    ),
    (
        "PluginCapability.Service.Type",
        3,
        "GROUP_CONTROLLER_SERVICE",
        (1, 8),
    ),
    (
        "PluginCapability.Service.Type",
        4,
        "SNAPSHOT_METADATA_SERVICE",
        (1, 10),
    ),
    ("PluginCapability.VolumeExpansion.Type", 1, "ONLINE", (1, 1)),
    (
        "PluginCapability.VolumeExpansion.Type",
        2,
        "OFFLINE",
        (1, 1),
    ),
    (
        "ControllerServiceCapability.RPC.Type",
        1,
        "CREATE_DELETE_VOLUME",
        (1, 0),
    ),
    (
        "ControllerServiceCapability.RPC.Type",
        2,
        "PUBLISH_UNPUBLISH_VOLUME",
        (1, 0),
    ),
    (
        "ControllerServiceCapability.RPC.Type",
        3,
        "LIST_VOLUMES",
        (1, 0),
    ),
    (
        "ControllerServiceCapability.RPC.Type",
        4,
        "GET_CAPACITY",
        (1, 0),
    ),
    (
        "ControllerServiceCapability.RPC.Type",
        5,
        "CREATE_DELETE_SNAPSHOT",
        (1, 0),
    ),
    (
        "ControllerServiceCapability.RPC.Type",
        6,
        "LIST_SNAPSHOTS",
        (1, 0),
    ),
    (
        "ControllerServiceCapability.RPC.Type",
        7,
        "CLONE_VOLUME",
        (1, 0),
    ),
    (
        "ControllerServiceCapability.RPC.Type",
        8,
        "PUBLISH_READONLY",
        (1, 0),
    ),
    (
        "ControllerServiceCapability.RPC.Type",
        9,
        "EXPAND_VOLUME",
        (1, 1),
    ),
    (
        "ControllerServiceCapability.RPC.Type",
        10,
        "LIST_VOLUMES_PUBLISHED_NODES",
        (1, 2),
    ),
    (
        "ControllerServiceCapability.RPC.Type",
        11,
        "VOLUME_CONDITION",
        (1, 3),
    ),
    (
        "ControllerServiceCapability.RPC.Type",
        12,
        "GET_VOLUME",
        (1, 3),
    ),
    (
        "ControllerServiceCapability.RPC.Type",
        13,
        "SINGLE_NODE_MULTI_WRITER",
        (1, 5),
    ),
    (
        "ControllerServiceCapability.RPC.Type",
        14,
        "MODIFY_VOLUME",
        (1, 9),
    ),
    (
        "ControllerServiceCapability.RPC.Type",
        15,
        "GET_SNAPSHOT",
        (1, 12),
    ),
    (
        "NodeServiceCapability.RPC.Type",
        1,
        "STAGE_UNSTAGE_VOLUME",
        (1, 0),
    ),
    (
        "NodeServiceCapability.RPC.Type",
        2,
        "GET_VOLUME_STATS",
        (1, 1),
    ),
    ("NodeServiceCapability.RPC.Type", 3, "EXPAND_VOLUME", (1, 1)),
    (
        "NodeServiceCapability.RPC.Type",
        4,
        "VOLUME_CONDITION",
        (1, 3),
    ),
    (
        "NodeServiceCapability.RPC.Type",
        5,
        "SINGLE_NODE_MULTI_WRITER",
        (1, 5),
    ),
    (
        "NodeServiceCapability.RPC.Type",
        6,
        "VOLUME_MOUNT_GROUP",
        (1, 5),
    ),
];

fn version(text: &str) -> (u32, u32) {
    let mut parts = text.trim_start_matches('v').split('.');
    let major = parts.next().unwrap().parse().unwrap();
    let minor = parts.next().unwrap().parse().unwrap();
    (major, minor)
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Everything tether-csi (controller and node in one process) advertises: (enum, value).
async fn advertised() -> Vec<(&'static str, i32)> {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("csi.sock");
    let _driver = Running(
        std::process::Command::new(env!("CARGO_BIN_EXE_tether-csi"))
            .args(["--mode", "all", "--node-id", "sidecar-check"])
            .arg("--endpoint")
            .arg(&socket)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "tether-csi did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let channel = tether_csi::client::channel(&socket.display().to_string())
        .await
        .unwrap();
    let mut found = Vec::new();
    let plugin = IdentityClient::new(channel.clone())
        .get_plugin_capabilities(csi::GetPluginCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    for capability in plugin.capabilities {
        match capability.r#type.unwrap() {
            csi::plugin_capability::Type::Service(s) => {
                found.push(("PluginCapability.Service.Type", s.r#type))
            }
            csi::plugin_capability::Type::VolumeExpansion(e) => {
                found.push(("PluginCapability.VolumeExpansion.Type", e.r#type))
            }
        }
    }
    let controller = ControllerClient::new(channel.clone())
        .controller_get_capabilities(csi::ControllerGetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    for capability in controller.capabilities {
        let csi::controller_service_capability::Type::Rpc(rpc) = capability.r#type.unwrap();
        found.push(("ControllerServiceCapability.RPC.Type", rpc.r#type));
    }
    let node = NodeClient::new(channel)
        .node_get_capabilities(csi::NodeGetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    for capability in node.capabilities {
        let csi::node_service_capability::Type::Rpc(rpc) = capability.r#type.unwrap();
        found.push(("NodeServiceCapability.RPC.Type", rpc.r#type));
    }
    found
}

#[tokio::test]
async fn every_advertised_value_is_known_to_every_shipped_sidecar() {
    let listing = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/sidecars.json");
    let listing: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(listing).unwrap()).unwrap();
    let sidecars = listing["sidecars"].as_array().unwrap();
    assert!(sidecars.len() >= 5, "{listing}");
    let advertised = advertised().await;
    assert!(advertised.len() >= 10, "{advertised:?}");
    let mut problems = Vec::new();
    for sidecar in sidecars {
        let name = sidecar["name"].as_str().unwrap();
        let spec = version(sidecar["csiSpec"].as_str().unwrap());
        for (kind, value) in &advertised {
            match SINCE.iter().find(|(k, v, _, _)| k == kind && v == value) {
                None => problems.push(format!("{kind} value {value} is in no known CSI spec")),
                Some((_, _, label, since)) if *since > spec => problems.push(format!(
                    "{name} {} vendors CSI spec {}.{}, which has no {kind} {label} (since {}.{})",
                    sidecar["tag"], spec.0, spec.1, since.0, since.1
                )),
                Some(_) => {}
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // The check itself: the provisioner that crash-looped (CSI spec 1.11) would fail it.
    let old = version("1.11.0");
    assert!(advertised.iter().any(|(k, v)| SINCE
        .iter()
        .any(|(sk, sv, _, since)| sk == k && sv == v && *since > old)));
}
