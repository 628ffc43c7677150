//! `tetherctl volume PVC|PV|VOLUME-ID`: where a volume lives (server, share, directory, layout),
//! its claim and capacity, its usage as kubelet reports it (the Summary API, which asks
//! tether-csi's NodeGetVolumeStats), the pods and nodes that use it, and its snapshots.

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use serde::Serialize;
use serde_json::Value;
use tether_csi::share::ids::{Layout, NfsVersion, VolumeId};

use crate::cluster::{Cluster, Reply};
use crate::error::CtlError;

/// tether-csi's driver name.
const DRIVER: &str = "nfs.tether.dev";

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Location {
    pub server: String,
    pub share: String,
    pub directory: String,
    pub layout: String,
    pub nfs_version: String,
    /// What a node mounts: `server:/share/directory`.
    pub source: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    pub pod: String,
    pub node: String,
    pub phase: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    pub node: String,
    pub pod: String,
    pub used_bytes: Option<u64>,
    pub capacity_bytes: Option<u64>,
    pub inodes_used: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    pub content: String,
    pub snapshot: String,
    pub handle: String,
    pub ready: bool,
    pub restore_size: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeReport {
    pub persistent_volume: Option<String>,
    pub claim: Option<String>,
    pub phase: String,
    pub capacity: Option<String>,
    pub storage_class: Option<String>,
    pub access_modes: Vec<String>,
    pub reclaim_policy: Option<String>,
    pub handle: Option<String>,
    pub location: Option<Location>,
    /// What limits the volume's size.
    pub limit: String,
    pub used_by: Vec<User>,
    pub usage: Vec<Usage>,
    pub snapshots: Vec<Snapshot>,
    pub problems: Vec<String>,
}

/// Finds the volume named by `what`: `NAMESPACE/CLAIM`, a claim in `namespace`, a
/// PersistentVolume's name, or a tether-csi volume id.
pub async fn describe(
    cluster: &Cluster,
    what: &str,
    namespace: &str,
) -> Result<VolumeReport, CtlError> {
    let volumes = cluster.persistent_volumes().await?;
    let (claim_ns, claim_name) = what.split_once('/').unwrap_or((namespace, what));
    let claim = if VolumeId::decode(what).is_some() {
        None
    } else {
        cluster.claim(claim_ns, claim_name).await?
    };
    let volume: Option<PersistentVolume> = match &claim {
        Some(c) => {
            let bound = c.spec.as_ref().and_then(|s| s.volume_name.clone());
            volumes
                .iter()
                .find(|v| bound.is_some() && v.metadata.name == bound)
                .cloned()
        }
        None => volumes
            .iter()
            .find(|v| v.metadata.name.as_deref() == Some(what) || handle_of(v) == Some(what))
            .cloned(),
    };
    if claim.is_none() && volume.is_none() && VolumeId::decode(what).is_none() {
        return Err(CtlError::NoSuchVolume(what.to_string()));
    }
    let mut report = base_report(claim.as_ref(), volume.as_ref(), what);
    // A claim bound through its volume when it was asked by the volume's name or id.
    let claim = match (&claim, &volume) {
        (Some(c), _) => Some(c.clone()),
        (None, Some(v)) => match v.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) {
            Some(r) => {
                let ns = r.namespace.clone().unwrap_or_default();
                let name = r.name.clone().unwrap_or_default();
                report.claim = Some(format!("{ns}/{name}"));
                cluster.claim(&ns, &name).await?
            }
            None => None,
        },
        (None, None) => None,
    };
    if let Some(claim) = &claim {
        users_and_usage(cluster, claim, &mut report).await?;
    }
    if let Some(handle) = report.handle.clone() {
        report.snapshots = snapshots_of(cluster, &handle).await?;
        for s in &report.snapshots {
            if !s.ready {
                report.problems.push(format!(
                    "snapshot {} is not ready to use yet (its copy is running or failed: see the VolumeSnapshot's events)",
                    s.snapshot
                ));
            }
        }
    }
    Ok(report)
}

fn handle_of(v: &PersistentVolume) -> Option<&str> {
    v.spec
        .as_ref()?
        .csi
        .as_ref()
        .map(|c| c.volume_handle.as_str())
}

fn base_report(
    claim: Option<&PersistentVolumeClaim>,
    volume: Option<&PersistentVolume>,
    asked: &str,
) -> VolumeReport {
    let mut problems = Vec::new();
    let claim_phase = claim
        .and_then(|c| c.status.as_ref())
        .and_then(|s| s.phase.clone());
    if claim.is_some() && claim_phase.as_deref() != Some("Bound") {
        problems.push(format!(
            "the claim is {}: csi-provisioner has not made its volume (see `kubectl describe pvc`: the driver's error is in its events)",
            claim_phase.clone().unwrap_or_else(|| "not bound".into())
        ));
    }
    let spec = volume.and_then(|v| v.spec.clone()).unwrap_or_default();
    let csi = spec.csi.clone();
    let handle = csi
        .as_ref()
        .map(|c| c.volume_handle.clone())
        .or_else(|| VolumeId::decode(asked).map(|_| asked.to_string()));
    if let Some(c) = &csi {
        if c.driver != DRIVER {
            problems.push(format!(
                "the volume belongs to CSI driver {}, not tether-csi ({DRIVER})",
                c.driver
            ));
        }
    }
    let location = handle.as_deref().and_then(VolumeId::decode).map(|id| {
        let source = format!(
            "{}:{}/{}",
            id.share.server,
            id.share.export.trim_end_matches('/'),
            id.path.as_str()
        );
        Location {
            server: id.share.server.clone(),
            share: id.share.export.clone(),
            directory: id.path.as_str().to_string(),
            layout: match id.layout {
                Layout::Directory => "directory".into(),
                Layout::Image => "image".into(),
            },
            nfs_version: match id.share.version {
                NfsVersion::V3 => "3".into(),
                NfsVersion::V41 => "4.1".into(),
            },
            source,
        }
    });
    if handle.is_some() && location.is_none() && csi.as_ref().is_some_and(|c| c.driver == DRIVER) {
        problems.push("the volume handle is not a tether-csi volume id".into());
    }
    let capacity = spec
        .capacity
        .as_ref()
        .and_then(|c| c.get("storage"))
        .map(|q| q.0.clone());
    let limit = match location.as_ref().map(|l| l.layout.as_str()) {
        Some("image") => format!(
            "the image's own filesystem: {}",
            capacity.clone().unwrap_or_else(|| "?".into())
        ),
        Some(_) => "none: a directory volume can fill its share (NFS has no quota operation; tether-nfs-agent is not in use)".into(),
        None => "-".into(),
    };
    VolumeReport {
        persistent_volume: volume.and_then(|v| v.metadata.name.clone()),
        claim: claim.map(|c| {
            format!(
                "{}/{}",
                c.metadata.namespace.as_deref().unwrap_or_default(),
                c.metadata.name.as_deref().unwrap_or_default()
            )
        }),
        phase: volume
            .and_then(|v| v.status.as_ref())
            .and_then(|s| s.phase.clone())
            .or(claim_phase)
            .unwrap_or_else(|| "-".into()),
        capacity,
        storage_class: spec.storage_class_name.clone().or_else(|| {
            claim
                .and_then(|c| c.spec.as_ref())
                .and_then(|s| s.storage_class_name.clone())
        }),
        access_modes: spec.access_modes.clone().unwrap_or_default(),
        reclaim_policy: spec.persistent_volume_reclaim_policy.clone(),
        handle,
        location,
        limit,
        used_by: Vec::new(),
        usage: Vec::new(),
        snapshots: Vec::new(),
        problems,
    }
}

fn mounts_claim(pod: &Pod, claim: &str) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .is_some_and(|volumes| {
            volumes.iter().any(|v| {
                v.persistent_volume_claim
                    .as_ref()
                    .is_some_and(|c| c.claim_name == claim)
            })
        })
}

/// The pods that mount the claim, and its usage from each of their nodes' kubelet.
async fn users_and_usage(
    cluster: &Cluster,
    claim: &PersistentVolumeClaim,
    report: &mut VolumeReport,
) -> Result<(), CtlError> {
    let namespace = claim.metadata.namespace.clone().unwrap_or_default();
    let name = claim.metadata.name.clone().unwrap_or_default();
    let mut nodes: Vec<String> = Vec::new();
    for pod in cluster.pods_in(&namespace).await? {
        if !mounts_claim(&pod, &name) {
            continue;
        }
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        report.used_by.push(User {
            pod: format!(
                "{namespace}/{}",
                pod.metadata.name.as_deref().unwrap_or_default()
            ),
            node: node.clone(),
            phase: pod
                .status
                .as_ref()
                .and_then(|s| s.phase.clone())
                .unwrap_or_default(),
        });
        if !node.is_empty() && !nodes.contains(&node) {
            nodes.push(node);
        }
    }
    for node in nodes {
        match cluster.kubelet(&node, "stats/summary").await {
            Reply::Answered { code: 200, body } => {
                let summary: Value = serde_json::from_str(&body).unwrap_or_default();
                report
                    .usage
                    .extend(usage_in(&summary, &node, &namespace, &name));
            }
            Reply::Answered { code, body } => report.problems.push(format!(
                "{node}: kubelet's stats answered {code}: {}",
                crate::status::api_status_message(&body).unwrap_or_else(|| body
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_string())
            )),
            Reply::Unreachable(why) => report
                .problems
                .push(format!("{node}: kubelet's stats unreachable: {why}")),
        }
    }
    Ok(())
}

/// The claim's volume stats in a kubelet Summary (`pods[].volume[]` with a `pvcRef`).
fn usage_in(summary: &Value, node: &str, namespace: &str, claim: &str) -> Vec<Usage> {
    let mut out = Vec::new();
    for pod in summary["pods"].as_array().into_iter().flatten() {
        for volume in pod["volume"].as_array().into_iter().flatten() {
            let pvc = &volume["pvcRef"];
            if pvc["name"] == claim && pvc["namespace"] == namespace {
                out.push(Usage {
                    node: node.to_string(),
                    pod: format!(
                        "{}/{}",
                        pod["podRef"]["namespace"].as_str().unwrap_or_default(),
                        pod["podRef"]["name"].as_str().unwrap_or_default()
                    ),
                    used_bytes: volume["usedBytes"].as_u64(),
                    capacity_bytes: volume["capacityBytes"].as_u64(),
                    inodes_used: volume["inodesUsed"].as_u64(),
                });
            }
        }
    }
    out
}

async fn snapshots_of(cluster: &Cluster, handle: &str) -> Result<Vec<Snapshot>, CtlError> {
    let mut out = Vec::new();
    for content in cluster.snapshot_contents().await? {
        let data = &content.data;
        if data["spec"]["source"]["volumeHandle"] != handle {
            continue;
        }
        let reference = &data["spec"]["volumeSnapshotRef"];
        out.push(Snapshot {
            content: content.metadata.name.clone().unwrap_or_default(),
            snapshot: format!(
                "{}/{}",
                reference["namespace"].as_str().unwrap_or_default(),
                reference["name"].as_str().unwrap_or_default()
            ),
            handle: data["status"]["snapshotHandle"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            ready: data["status"]["readyToUse"] == true,
            restore_size: data["status"]["restoreSize"].as_u64(),
        });
    }
    Ok(out)
}

fn bytes(n: Option<u64>) -> String {
    match n {
        None => "-".into(),
        Some(n) if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / f64::from(1u32 << 30)),
        Some(n) if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / f64::from(1u32 << 20)),
        Some(n) => format!("{n} B"),
    }
}

pub fn render(r: &VolumeReport) -> String {
    let or_dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let mut out = format!(
        "VOLUME  {}  claim {}  {}  capacity {}  class {}  {}  reclaim {}\n",
        or_dash(&r.persistent_volume),
        or_dash(&r.claim),
        r.phase,
        or_dash(&r.capacity),
        or_dash(&r.storage_class),
        if r.access_modes.is_empty() {
            "-".into()
        } else {
            r.access_modes.join(",")
        },
        or_dash(&r.reclaim_policy)
    );
    match &r.location {
        Some(l) => out.push_str(&format!(
            "WHERE   server {}  share {}  directory {}  ({} layout, NFS {})\n        mounted as {}\n",
            l.server, l.share, l.directory, l.layout, l.nfs_version, l.source
        )),
        None => out.push_str("WHERE   - (no tether-csi volume id)\n"),
    }
    out.push_str(&format!("LIMIT   {}\n", r.limit));
    out.push_str("USED BY\n");
    if r.used_by.is_empty() {
        out.push_str("  no pod\n");
    }
    for u in &r.used_by {
        let usage = r.usage.iter().find(|s| s.pod == u.pod);
        out.push_str(&format!(
            "  {}  node {}  {}  used {} of {}  inodes {}\n",
            u.pod,
            if u.node.is_empty() { "-" } else { &u.node },
            u.phase,
            bytes(usage.and_then(|s| s.used_bytes)),
            bytes(usage.and_then(|s| s.capacity_bytes)),
            usage
                .and_then(|s| s.inodes_used)
                .map_or("-".into(), |n| n.to_string())
        ));
    }
    out.push_str("SNAPSHOTS\n");
    if r.snapshots.is_empty() {
        out.push_str("  none\n");
    }
    for s in &r.snapshots {
        out.push_str(&format!(
            "  {}  ({})  {}  size {}\n",
            s.snapshot,
            s.content,
            if s.ready { "ready" } else { "NOT READY" },
            bytes(s.restore_size)
        ));
    }
    if r.problems.is_empty() {
        out.push_str("\nno problems found\n");
    } else {
        out.push_str(&format!("\n{} problem(s):\n", r.problems.len()));
        for p in &r.problems {
            out.push_str(&format!("  - {p}\n"));
        }
    }
    out
}
