//! The snapshot workflow: a snapshot is a copy of the volume's tree under
//! `.tether/snapshots/<key>/data`, with its record beside it.

use tether_csi_proto::v1 as csi;

use crate::controller::ControllerService;
use crate::error::{CsiError, CsiResult};
use crate::ids::{name_key, validate_name, SnapshotId, VolumeId};
use crate::store::{self, State};
use crate::wire::{decode_token, page, snapshot_message};

impl ControllerService {
    pub(crate) async fn create_snapshot(
        &self,
        req: &csi::CreateSnapshotRequest,
    ) -> CsiResult<csi::CreateSnapshotResponse> {
        validate_name("snapshot", &req.name)?;
        if req.source_volume_id.is_empty() {
            return Err(CsiError::invalid("source_volume_id is required"));
        }
        let mut unknown: Vec<&str> = req
            .parameters
            .keys()
            .map(String::as_str)
            .filter(|k| !k.starts_with("csi.storage.k8s.io/"))
            .collect();
        if !unknown.is_empty() {
            unknown.sort_unstable();
            return Err(CsiError::invalid(format!(
                "unknown VolumeSnapshotClass parameter(s): {} (none are defined)",
                unknown.join(", ")
            )));
        }
        let source = VolumeId::decode(&req.source_volume_id).ok_or_else(|| {
            CsiError::NotFound(format!(
                "source volume {} does not exist",
                req.source_volume_id
            ))
        })?;
        let key = name_key(&req.name);
        let id = SnapshotId {
            share: source.share.clone(),
            key: key.clone(),
        }
        .encode()?;
        let _guard = self.driver.locks.acquire(&[
            format!("snapshot name {}", req.name),
            format!("volume {}", req.source_volume_id),
        ])?;
        let share = self.driver.prepared_share(&source.share).await?;
        let volume = store::read_volume(&share, &source.path)
            .await?
            .filter(|v| v.state == State::Ready)
            .ok_or_else(|| {
                CsiError::NotFound(format!(
                    "source volume {} does not exist",
                    req.source_volume_id
                ))
            })?;
        let dir = store::snapshot_dir(&key);
        share.mkdir(&dir, 0o700).await?;
        if let Some(existing) = store::read_snapshot(&share, &key).await? {
            if existing.name != req.name || existing.source_volume_id != req.source_volume_id {
                return Err(CsiError::Conflict(format!(
                    "snapshot {:?} already exists for volume {}",
                    req.name, existing.source_volume_id
                )));
            }
            if existing.state == State::Ready {
                return Ok(csi::CreateSnapshotResponse {
                    snapshot: Some(snapshot_message(&existing)),
                });
            }
        }
        let mut record = store::SnapshotRecord {
            name: req.name.clone(),
            snapshot_id: id.clone(),
            source_volume_id: req.source_volume_id.clone(),
            size_bytes: volume.capacity_bytes,
            created_unix_nanos: store::now_nanos(),
            state: State::Creating,
        };
        store::write_snapshot(&share, &key, &record).await?;
        let data = format!("{dir}/data");
        share.remove_tree(&data).await?;
        share.mkdir(&data, 0o700).await?;
        let bytes = share.copy_tree(source.path.as_str(), &share, &data).await?;
        record.state = State::Ready;
        store::write_snapshot(&share, &key, &record).await?;
        tracing::info!(snapshot = %id, source = %req.source_volume_id, bytes, "snapshot taken");
        Ok(csi::CreateSnapshotResponse {
            snapshot: Some(snapshot_message(&record)),
        })
    }

    pub(crate) async fn delete_snapshot(
        &self,
        req: &csi::DeleteSnapshotRequest,
    ) -> CsiResult<csi::DeleteSnapshotResponse> {
        if req.snapshot_id.is_empty() {
            return Err(CsiError::invalid("snapshot_id is required"));
        }
        let Some(id) = SnapshotId::decode(&req.snapshot_id) else {
            tracing::info!(snapshot = %req.snapshot_id, "not a Tether snapshot id; nothing to delete");
            return Ok(csi::DeleteSnapshotResponse {});
        };
        let _guard = self
            .driver
            .locks
            .acquire(&[format!("snapshot {}", req.snapshot_id)])?;
        let share = self.driver.prepared_share(&id.share).await?;
        store::delete_tree(&share, &store::snapshot_dir(&id.key)).await?;
        Ok(csi::DeleteSnapshotResponse {})
    }

    pub(crate) async fn list_snapshots(
        &self,
        req: &csi::ListSnapshotsRequest,
    ) -> CsiResult<csi::ListSnapshotsResponse> {
        if !req.starting_token.is_empty() && decode_token(&req.starting_token).is_none() {
            return Err(CsiError::StaleToken(req.starting_token.clone()));
        }
        let mut records = Vec::new();
        if !req.snapshot_id.is_empty() {
            if let Some(id) = SnapshotId::decode(&req.snapshot_id) {
                let share = self.driver.prepared_share(&id.share).await?;
                records.extend(store::read_snapshot(&share, &id.key).await?);
            }
        } else if !req.source_volume_id.is_empty() {
            if let Some(id) = VolumeId::decode(&req.source_volume_id) {
                let share = self.driver.prepared_share(&id.share).await?;
                records.extend(store::list_snapshots(&share).await?);
            }
        } else {
            for share_ref in self.driver.known_shares() {
                let share = self.driver.share(&share_ref).await?;
                records.extend(store::list_snapshots(&share).await?);
            }
        }
        let chosen: Vec<(String, store::SnapshotRecord)> = records
            .into_iter()
            .filter(|r| r.state == State::Ready)
            .filter(|r| {
                req.source_volume_id.is_empty() || r.source_volume_id == req.source_volume_id
            })
            .filter(|r| req.snapshot_id.is_empty() || r.snapshot_id == req.snapshot_id)
            .map(|r| (r.snapshot_id.clone(), r))
            .collect();
        let (chosen, next_token) = page(chosen, req.max_entries, &req.starting_token)?;
        Ok(csi::ListSnapshotsResponse {
            entries: chosen
                .iter()
                .map(|r| csi::list_snapshots_response::Entry {
                    snapshot: Some(snapshot_message(r)),
                })
                .collect(),
            next_token,
        })
    }

    pub(crate) async fn get_snapshot(
        &self,
        req: &csi::GetSnapshotRequest,
    ) -> CsiResult<csi::GetSnapshotResponse> {
        if req.snapshot_id.is_empty() {
            return Err(CsiError::invalid("snapshot_id is required"));
        }
        let missing = || CsiError::NotFound(format!("snapshot {} does not exist", req.snapshot_id));
        let id = SnapshotId::decode(&req.snapshot_id).ok_or_else(missing)?;
        let share = self.driver.prepared_share(&id.share).await?;
        let record = store::read_snapshot(&share, &id.key)
            .await?
            .filter(|r| r.state == State::Ready)
            .ok_or_else(missing)?;
        Ok(csi::GetSnapshotResponse {
            snapshot: Some(snapshot_message(&record)),
        })
    }
}
