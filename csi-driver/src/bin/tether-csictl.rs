//! `tether-csictl`: a small CSI client for operators and the demo. Talks to a tether-csi (or any
//! CSI driver) over its unix socket and prints JSON.
//!
//! ```text
//! tether-csictl --endpoint unix:///csi/csi.sock info
//! tether-csictl create-volume pvc-1 --capacity 1Gi --param server=10.0.0.5 --param share=/srv/k8s
//! tether-csictl create-snapshot snap-1 --source <volume id>
//! ```

use std::collections::HashMap;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde_json::{json, Value};
use tether_csi_proto::v1::{
    self as csi, controller_client::ControllerClient, identity_client::IdentityClient,
    volume_capability, volume_content_source,
};
use tonic::transport::Channel;

#[derive(Debug, Parser)]
#[command(
    name = "tether-csictl",
    version,
    about = "Talk to a CSI driver over its unix socket"
)]
struct Args {
    /// The driver's gRPC endpoint: unix:///path/to/csi.sock (or a plain path).
    #[arg(long, env = "CSI_ENDPOINT", default_value = "unix:///csi/csi.sock")]
    endpoint: String,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// GetPluginInfo, GetPluginCapabilities and Probe.
    Info,
    /// CreateVolume.
    CreateVolume {
        /// The volume's name (as csi-provisioner names it: pvc-<uid>).
        name: String,
        /// Size, in bytes or with a Ki/Mi/Gi/Ti suffix.
        #[arg(long, default_value = "1Gi")]
        capacity: String,
        /// A StorageClass parameter, KEY=VALUE (repeatable).
        #[arg(long = "param")]
        params: Vec<String>,
        /// A mount option, e.g. nfsvers=3 (repeatable).
        #[arg(long = "mount-option")]
        mount_options: Vec<String>,
        /// rwx (MULTI_NODE_MULTI_WRITER), rwo (SINGLE_NODE_WRITER) or rox (MULTI_NODE_READER_ONLY).
        #[arg(long, default_value = "rwx")]
        access: String,
        /// Raw block access instead of a filesystem.
        #[arg(long)]
        block: bool,
        /// Restore this snapshot id into the new volume.
        #[arg(long, conflicts_with = "from_volume")]
        from_snapshot: Option<String>,
        /// Clone this volume id into the new volume.
        #[arg(long)]
        from_volume: Option<String>,
    },
    /// DeleteVolume.
    DeleteVolume {
        /// The volume id CreateVolume returned.
        volume_id: String,
    },
    /// ListVolumes (all pages).
    ListVolumes,
    /// ControllerExpandVolume.
    ExpandVolume {
        /// The volume id CreateVolume returned.
        volume_id: String,
        /// The new size, in bytes or with a Ki/Mi/Gi/Ti suffix.
        #[arg(long)]
        capacity: String,
    },
    /// CreateSnapshot.
    CreateSnapshot {
        /// The snapshot's name (as csi-snapshotter names it: snapshot-<uid>).
        name: String,
        /// The id of the volume to snapshot.
        #[arg(long)]
        source: String,
    },
    /// DeleteSnapshot.
    DeleteSnapshot {
        /// The snapshot id CreateSnapshot returned.
        snapshot_id: String,
    },
    /// ListSnapshots (all pages), optionally of one source volume.
    ListSnapshots {
        /// Only the snapshots of this volume id.
        #[arg(long)]
        source: Option<String>,
    },
}

fn bytes(text: &str) -> Result<i64, String> {
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, ""),
    };
    let n: i64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size"))?;
    let shift = match unit {
        "" => 0,
        "Ki" => 10,
        "Mi" => 20,
        "Gi" => 30,
        "Ti" => 40,
        other => return Err(format!("unknown size unit {other:?} (use Ki, Mi, Gi, Ti)")),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{text} is too big"))
}

async fn channel(endpoint: &str) -> Result<Channel, String> {
    tether_csi::client::channel(endpoint)
        .await
        .map_err(|e| format!("connecting to {endpoint}: {e}"))
}

fn volume_json(v: &csi::Volume) -> Value {
    json!({
        "volumeId": v.volume_id,
        "capacityBytes": v.capacity_bytes,
        "volumeContext": v.volume_context,
    })
}

fn snapshot_json(s: &csi::Snapshot) -> Value {
    json!({
        "snapshotId": s.snapshot_id,
        "sourceVolumeId": s.source_volume_id,
        "sizeBytes": s.size_bytes,
        "readyToUse": s.ready_to_use,
        "creationTime": s.creation_time.as_ref().map(|t| t.seconds),
    })
}

fn status(e: tonic::Status) -> String {
    format!("{:?}: {}", e.code(), e.message())
}

async fn run(args: Args) -> Result<Value, String> {
    let channel = channel(&args.endpoint).await?;
    let mut controller = ControllerClient::new(channel.clone());
    match args.command {
        Cmd::Info => {
            let mut identity = IdentityClient::new(channel);
            let info = identity
                .get_plugin_info(csi::GetPluginInfoRequest {})
                .await
                .map_err(status)?
                .into_inner();
            let probe = identity.probe(csi::ProbeRequest {}).await;
            Ok(json!({
                "name": info.name,
                "vendorVersion": info.vendor_version,
                "ready": probe.as_ref().map(|p| p.get_ref().ready.unwrap_or(true)).unwrap_or(false),
                "probe": probe.err().map(status),
            }))
        }
        Cmd::CreateVolume {
            name,
            capacity,
            params,
            mount_options,
            access,
            block,
            from_snapshot,
            from_volume,
        } => {
            let request = CreateRequest {
                name,
                capacity,
                params,
                mount_options,
                access,
                block,
                from_snapshot,
                from_volume,
            }
            .build()?;
            let volume = controller
                .create_volume(request)
                .await
                .map_err(status)?
                .into_inner()
                .volume
                .ok_or("no volume in the answer")?;
            Ok(volume_json(&volume))
        }
        Cmd::DeleteVolume { volume_id } => {
            controller
                .delete_volume(csi::DeleteVolumeRequest {
                    volume_id: volume_id.clone(),
                    ..Default::default()
                })
                .await
                .map_err(status)?;
            Ok(json!({"deleted": volume_id}))
        }
        Cmd::ListVolumes => list_volumes(&mut controller).await,
        Cmd::ExpandVolume {
            volume_id,
            capacity,
        } => {
            let answer = controller
                .controller_expand_volume(csi::ControllerExpandVolumeRequest {
                    volume_id,
                    capacity_range: Some(csi::CapacityRange {
                        required_bytes: bytes(&capacity)?,
                        limit_bytes: 0,
                    }),
                    ..Default::default()
                })
                .await
                .map_err(status)?
                .into_inner();
            Ok(
                json!({"capacityBytes": answer.capacity_bytes, "nodeExpansionRequired": answer.node_expansion_required}),
            )
        }
        Cmd::CreateSnapshot { name, source } => {
            let snapshot = controller
                .create_snapshot(csi::CreateSnapshotRequest {
                    source_volume_id: source,
                    name,
                    ..Default::default()
                })
                .await
                .map_err(status)?
                .into_inner()
                .snapshot
                .ok_or("no snapshot in the answer")?;
            Ok(snapshot_json(&snapshot))
        }
        Cmd::DeleteSnapshot { snapshot_id } => {
            controller
                .delete_snapshot(csi::DeleteSnapshotRequest {
                    snapshot_id: snapshot_id.clone(),
                    ..Default::default()
                })
                .await
                .map_err(status)?;
            Ok(json!({"deleted": snapshot_id}))
        }
        Cmd::ListSnapshots { source } => list_snapshots(&mut controller, source).await,
    }
}

/// `create-volume`'s arguments.
struct CreateRequest {
    name: String,
    capacity: String,
    params: Vec<String>,
    mount_options: Vec<String>,
    access: String,
    block: bool,
    from_snapshot: Option<String>,
    from_volume: Option<String>,
}

impl CreateRequest {
    fn build(self) -> Result<csi::CreateVolumeRequest, String> {
        let mode = match self.access.as_str() {
            "rwx" => volume_capability::access_mode::Mode::MultiNodeMultiWriter,
            "rwo" => volume_capability::access_mode::Mode::SingleNodeWriter,
            "rox" => volume_capability::access_mode::Mode::MultiNodeReaderOnly,
            other => return Err(format!("--access {other}: use rwx, rwo or rox")),
        };
        let access_type = if self.block {
            volume_capability::AccessType::Block(volume_capability::BlockVolume {})
        } else {
            volume_capability::AccessType::Mount(volume_capability::MountVolume {
                mount_flags: self.mount_options,
                ..Default::default()
            })
        };
        let mut parameters = HashMap::new();
        for p in self.params {
            let (k, v) = p
                .split_once('=')
                .ok_or_else(|| format!("--param {p}: use KEY=VALUE"))?;
            parameters.insert(k.to_string(), v.to_string());
        }
        let source = match (self.from_snapshot, self.from_volume) {
            (Some(snapshot_id), _) => Some(volume_content_source::Type::Snapshot(
                volume_content_source::SnapshotSource { snapshot_id },
            )),
            (None, Some(volume_id)) => Some(volume_content_source::Type::Volume(
                volume_content_source::VolumeSource { volume_id },
            )),
            (None, None) => None,
        };
        Ok(csi::CreateVolumeRequest {
            name: self.name,
            capacity_range: Some(csi::CapacityRange {
                required_bytes: bytes(&self.capacity)?,
                limit_bytes: 0,
            }),
            volume_capabilities: vec![csi::VolumeCapability {
                access_type: Some(access_type),
                access_mode: Some(volume_capability::AccessMode { mode: mode as i32 }),
            }],
            parameters,
            volume_content_source: source.map(|t| csi::VolumeContentSource { r#type: Some(t) }),
            ..Default::default()
        })
    }
}

/// Every entry of a paged listing: `page(token)` gives one page's entries and the next token.
async fn all_pages<F, Fut>(mut page: F) -> Result<Value, String>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Result<(Vec<Value>, String), String>>,
{
    let mut all = Vec::new();
    let mut token = String::new();
    loop {
        let (entries, next) = page(token).await?;
        all.extend(entries);
        if next.is_empty() {
            return Ok(Value::Array(all));
        }
        token = next;
    }
}

/// Every volume, page by page.
async fn list_volumes(controller: &mut ControllerClient<Channel>) -> Result<Value, String> {
    all_pages(|starting_token| {
        let mut controller = controller.clone();
        async move {
            let page = controller
                .list_volumes(csi::ListVolumesRequest {
                    max_entries: 100,
                    starting_token,
                })
                .await
                .map_err(status)?
                .into_inner();
            let entries = page.entries.iter().filter_map(|e| e.volume.as_ref());
            Ok((entries.map(volume_json).collect(), page.next_token))
        }
    })
    .await
}

/// Every snapshot (of `source`, if given), page by page.
async fn list_snapshots(
    controller: &mut ControllerClient<Channel>,
    source: Option<String>,
) -> Result<Value, String> {
    all_pages(|starting_token| {
        let mut controller = controller.clone();
        let source_volume_id = source.clone().unwrap_or_default();
        async move {
            let page = controller
                .list_snapshots(csi::ListSnapshotsRequest {
                    max_entries: 100,
                    starting_token,
                    source_volume_id,
                    ..Default::default()
                })
                .await
                .map_err(status)?
                .into_inner();
            let entries = page.entries.iter().filter_map(|e| e.snapshot.as_ref());
            Ok((entries.map(snapshot_json).collect(), page.next_token))
        }
    })
    .await
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tether-csictl: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(value) => {
            println!("{value}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tether-csictl: {e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(bytes("1Gi").unwrap(), 1 << 30);
        assert_eq!(bytes("512").unwrap(), 512);
        assert!(bytes("1GB").is_err());
        assert!(bytes("x").is_err());
    }

    #[test]
    fn the_configuration_reference_is_what_the_arguments_say() {
        test_support::reference::check(&<Args as clap::CommandFactory>::command());
    }
}
