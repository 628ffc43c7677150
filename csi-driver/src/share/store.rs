//! What Tether keeps on each share, next to the volumes, so that the controller is stateless:
//!
//! ```text
//! <export>/<path>                           a volume (directory, or directory holding disk.img)
//! <export>/.tether/volumes/<path key>.json  its record: name, capacity, parameters, source, state
//! <export>/.tether/names/<name key>         symlink -> <path>: the claim that makes names unique
//! <export>/.tether/snapshots/<key>/         snapshot.json + data/ (a copy of the volume's tree)
//! <export>/.tether/trash/<...>              trees being deleted (renamed here first, atomically)
//! ```

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::grpc::error::NfsError;
use crate::share::ids::{SharePath, VolumeName, META_DIR};
use crate::share::nfs::Share;
use crate::share::params::VolumeSettings;

pub const VOLUMES: &str = ".tether/volumes";
pub const NAMES: &str = ".tether/names";
pub const SNAPSHOTS: &str = ".tether/snapshots";
pub const TRASH: &str = ".tether/trash";

/// The file holding an image volume's filesystem, inside the volume's directory.
pub const IMAGE_FILE: &str = "disk.img";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Being made; a repeated request finishes the job.
    Creating,
    Ready,
    /// Being deleted; a repeated DeleteVolume finishes the job.
    Deleting,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Source {
    Snapshot(String),
    Volume(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeRecord {
    pub name: VolumeName,
    pub volume_id: String,
    pub path: String,
    pub capacity_bytes: i64,
    /// The parameters that define the volume (see `VolumeParams::canonical`).
    pub parameters: BTreeMap<String, String>,
    pub settings: VolumeSettings,
    pub source: Option<Source>,
    pub state: State,
    pub created_unix: u64,
    /// When a request last worked on the volume (the sweep leaves recent half-made ones alone).
    #[serde(default)]
    pub touched_unix: u64,
    /// How its data got there, when it came from a source: `agent_reflink`, `agent_copy` or
    /// `nfs_copy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filled_by: Option<String>,
    /// Whether tether-nfs-agent limits the directory to the capacity (project quota).
    #[serde(default)]
    pub limited: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotRecord {
    pub name: String,
    pub snapshot_id: String,
    pub source_volume_id: String,
    pub size_bytes: i64,
    pub created_unix_nanos: u128,
    pub state: State,
    /// How its data got there: `agent_reflink` (one instant of the volume), `agent_copy` or
    /// `nfs_copy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub made_by: Option<String>,
}

pub fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

pub fn now_unix() -> u64 {
    (now_nanos() / 1_000_000_000) as u64
}

pub fn record_path(path: &SharePath) -> String {
    format!("{VOLUMES}/{}.json", path.key())
}

/// Where the claim of a volume's name lives.
pub fn claim_path(name: &VolumeName) -> String {
    format!("{NAMES}/{}", name.claim_key())
}

pub fn snapshot_dir(key: &str) -> String {
    format!("{SNAPSHOTS}/{key}")
}

/// Creates the metadata directories (owner-only: they are not for pods).
pub async fn prepare(share: &Share) -> Result<(), NfsError> {
    share.mkdir(META_DIR, 0o700).await?;
    for dir in [VOLUMES, NAMES, SNAPSHOTS, TRASH] {
        share.mkdir(dir, 0o700).await?;
    }
    Ok(())
}

fn parse<T: for<'de> Deserialize<'de>>(share: &Share, path: &str, data: &[u8]) -> Option<T> {
    match serde_json::from_slice(data) {
        Ok(value) => Some(value),
        Err(e) => {
            tracing::warn!(share = %share.label(), %path, error = %e, "ignoring an unreadable record");
            None
        }
    }
}

pub async fn read_volume(
    share: &Share,
    path: &SharePath,
) -> Result<Option<VolumeRecord>, NfsError> {
    let file = record_path(path);
    Ok(share
        .read_file(&file)
        .await?
        .and_then(|data| parse(share, &file, &data)))
}

pub async fn write_volume(share: &Share, record: &VolumeRecord) -> Result<(), NfsError> {
    let path = SharePath::parse(&record.path).map_err(|e| NfsError::Failed {
        share: share.label().to_string(),
        what: "writing a volume record".into(),
        detail: e.to_string(),
    })?;
    let data = serde_json::to_vec_pretty(record).unwrap_or_default();
    share.write_file_atomic(&record_path(&path), &data).await
}

/// The file names of the share's volume records (not their content: one directory listing).
pub async fn volume_files(share: &Share) -> Result<Vec<String>, NfsError> {
    Ok(share
        .list_or_empty(VOLUMES)
        .await?
        .into_iter()
        .map(|entry| entry.name)
        .filter(|name| name.ends_with(".json") && !name.starts_with('.'))
        .collect())
}

/// The record in `file` (a name [`volume_files`] gave), if it is still there and readable.
pub async fn read_volume_file(share: &Share, file: &str) -> Result<Option<VolumeRecord>, NfsError> {
    let path = format!("{VOLUMES}/{file}");
    Ok(share
        .read_file(&path)
        .await?
        .and_then(|data| parse::<VolumeRecord>(share, &path, &data)))
}

/// Every volume record on the share.
pub async fn list_volumes(share: &Share) -> Result<Vec<VolumeRecord>, NfsError> {
    let mut records = Vec::new();
    for file in volume_files(share).await? {
        records.extend(read_volume_file(share, &file).await?);
    }
    Ok(records)
}

pub async fn read_snapshot(share: &Share, key: &str) -> Result<Option<SnapshotRecord>, NfsError> {
    let file = format!("{}/snapshot.json", snapshot_dir(key));
    Ok(share
        .read_file(&file)
        .await?
        .and_then(|data| parse(share, &file, &data)))
}

pub async fn write_snapshot(
    share: &Share,
    key: &str,
    record: &SnapshotRecord,
) -> Result<(), NfsError> {
    let data = serde_json::to_vec_pretty(record).unwrap_or_default();
    share
        .write_file_atomic(&format!("{}/snapshot.json", snapshot_dir(key)), &data)
        .await
}

pub async fn list_snapshots(share: &Share) -> Result<Vec<SnapshotRecord>, NfsError> {
    let mut records = Vec::new();
    for entry in share.list_or_empty(SNAPSHOTS).await? {
        if let Some(record) = read_snapshot(share, &entry.name).await? {
            records.push(record);
        }
    }
    Ok(records)
}

/// Moves `path` into the trash (one atomic rename) and deletes it there, so an interrupted delete
/// never leaves a half-deleted volume where a volume was. Trash a crash left behind is removed
/// by [`sweep_trash`].
pub async fn delete_tree(share: &Share, path: &str) -> Result<(), NfsError> {
    let escaped = path.replace('/', "%2F");
    let trash = format!("{TRASH}/{}-{escaped}", now_nanos());
    match share.rename(path, &trash).await {
        Err(e) if e.is_not_found() => {
            // A delete of this path cut short after its rename left the tree in the trash: the
            // retry finishes it, rather than leaving the space taken until the sweep.
            for entry in share.list_or_empty(TRASH).await? {
                let ours = entry
                    .name
                    .split_once('-')
                    .is_some_and(|(stamp, rest)| rest == escaped && stamp.parse::<u128>().is_ok());
                if ours {
                    share
                        .remove_tree(&format!("{TRASH}/{}", entry.name))
                        .await?;
                }
            }
            return Ok(());
        }
        other => other?,
    }
    share.remove_tree(&trash).await
}

/// Removes trash entries older than an hour: what deletes interrupted by a crash left behind.
/// Younger entries may belong to deletes still at work.
pub async fn sweep_trash(share: &Share) -> Result<(), NfsError> {
    const HOUR: u128 = 3_600_000_000_000;
    let now = now_nanos();
    for entry in share.list_or_empty(TRASH).await? {
        let stamp = entry
            .name
            .split('-')
            .next()
            .and_then(|s| s.parse::<u128>().ok());
        if stamp.is_some_and(|t| t + HOUR < now) {
            tracing::info!(share = %share.label(), entry = %entry.name, "removing trash left by an interrupted delete");
            share
                .remove_tree(&format!("{TRASH}/{}", entry.name))
                .await?;
        }
    }
    Ok(())
}
