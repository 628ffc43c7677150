//! The snapshot workflow: a snapshot is a copy of the volume's tree under
//! `.tether/snapshots/<key>/data`, with its record beside it.

use tether_csi_proto::v1 as csi;

use std::sync::Arc;

use crate::controller::copies::Outcome;
use crate::controller::wire::{decode_token, page, snapshot_message};
use crate::controller::ControllerService;
use crate::grpc::error::{CsiError, CsiResult};
use crate::share::ids::{snapshot_key, validate_name, SnapshotId, VolumeId};
use crate::share::nfs::Share;
use crate::share::store::{self, State};

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
        let key = snapshot_key(&source.share, &req.name)?;
        let id = SnapshotId {
            share: source.share.clone(),
            key: key.clone(),
        }
        .encode()?;
        let _guard = self.driver.locks.acquire(&[
            format!("snapshot name {}", req.name),
            format!("volume {}", req.source_volume_id),
        ])?;
        // The source is read before anything is written: an id naming a share the server does
        // not export (or a volume that is not there) is NOT_FOUND and changes nothing.
        let (_, _, volume) = self
            .existing(&req.source_volume_id)
            .await
            .map_err(|e| match e {
                CsiError::NotFound(_) => CsiError::NotFound(format!(
                    "source volume {} does not exist",
                    req.source_volume_id
                )),
                other => other,
            })?;
        let share = self.driver.prepared_share(&source.share).await?;
        let dir = store::snapshot_dir(&key);
        let made = share.mkdir(&dir, 0o700).await?;
        let existing = if made {
            None
        } else {
            store::read_snapshot(&share, &key).await?
        };
        let record = match existing {
            Some(existing)
                if existing.name != req.name
                    || existing.source_volume_id != req.source_volume_id =>
            {
                return Err(CsiError::Conflict(format!(
                    "snapshot {:?} already exists for volume {}",
                    req.name, existing.source_volume_id
                )));
            }
            Some(existing) if existing.state == State::Ready => {
                return Ok(csi::CreateSnapshotResponse {
                    snapshot: Some(snapshot_message(&existing)),
                });
            }
            Some(existing) => existing,
            None => {
                let record = store::SnapshotRecord {
                    name: req.name.clone(),
                    snapshot_id: id.clone(),
                    source_volume_id: req.source_volume_id.clone(),
                    size_bytes: volume.capacity_bytes,
                    created_unix_nanos: store::now_nanos(),
                    state: State::Creating,
                    made_by: None,
                };
                store::write_snapshot(&share, &key, &record).await?;
                record
            }
        };
        let agent = volume.settings.agent.clone();
        let record = self
            .copy_snapshot(&share, &source, &key, record, agent)
            .await?;
        Ok(csi::CreateSnapshotResponse {
            snapshot: Some(snapshot_message(&record)),
        })
    }

    /// Copies the source volume into the snapshot's `data/`, in the background: the record
    /// comes back `ready_to_use: false` while the copy runs and the snapshotter asks again. A
    /// failed copy removes the snapshot. With the volume's tether-nfs-agent, the server clones
    /// it instead (an image volume: one copy-on-write clone, one instant of it).
    pub(crate) async fn copy_snapshot(
        &self,
        share: &Arc<Share>,
        source: &VolumeId,
        key: &str,
        mut record: store::SnapshotRecord,
        agent: Option<String>,
    ) -> CsiResult<store::SnapshotRecord> {
        let data = format!("{}/data", store::snapshot_dir(key));
        let (target, from) = (share.clone(), source.path.as_str().to_string());
        let driver = self.driver.clone();
        let export = source.share.export.clone();
        let agent_address = agent.clone();
        let outcome = self
            .driver
            .copies
            .run(
                &record.snapshot_id,
                Some(&record.source_volume_id),
                move |progress| async move {
                    target.remove_tree(&data).await?;
                    match agent {
                        Some(address) => {
                            let done = driver
                                .agents
                                .clone_tree(&address, &export, &from, &data, false)
                                .await?;
                            Ok(done.bytes)
                        }
                        None => {
                            target.mkdir(&data, 0o700).await?;
                            crate::metrics::metrics().nfs_fill();
                            Ok(target.copy_tree(&from, &target, &data, &progress).await?)
                        }
                    }
                },
            )
            .await;
        match outcome {
            Outcome::Done(bytes) => {
                let how = self
                    .how_filled(agent_address.as_deref(), &source.share.export)
                    .await;
                record.state = State::Ready;
                record.made_by = Some(how.to_string());
                store::write_snapshot(share, key, &record).await?;
                tracing::info!(snapshot = %record.snapshot_id, source = %record.source_volume_id, bytes, how, "snapshot taken");
                Ok(record)
            }
            Outcome::Running { bytes, files } => {
                tracing::info!(snapshot = %record.snapshot_id, bytes, files, "snapshot still copying");
                Ok(record)
            }
            Outcome::Failed(error) => {
                if let Err(e) = store::delete_tree(share, &store::snapshot_dir(key)).await {
                    tracing::warn!(snapshot = %record.snapshot_id, error = %e, "could not remove a failed snapshot; the sweep will");
                }
                Err(error)
            }
        }
    }

    /// A snapshot still being copied whose copy is not running here (the driver restarted):
    /// starts the copy again, so that polling callers see it become ready.
    async fn resume_snapshot(&self, share: &Arc<Share>, record: &store::SnapshotRecord) {
        if record.state != State::Creating || self.driver.copies.has(&record.snapshot_id) {
            return;
        }
        let (Some(id), Some(source)) = (
            SnapshotId::decode(&record.snapshot_id),
            VolumeId::decode(&record.source_volume_id),
        ) else {
            return;
        };
        tracing::info!(snapshot = %record.snapshot_id, "resuming an interrupted snapshot copy");
        let agent = match store::read_volume(share, &source.path).await {
            Ok(Some(volume)) => volume.settings.agent,
            _ => None,
        };
        if let Err(e) = self
            .copy_snapshot(share, &source, &id.key, record.clone(), agent)
            .await
        {
            tracing::warn!(snapshot = %record.snapshot_id, error = %e, "resumed snapshot copy failed");
        }
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
        let share = match self.driver.share(&id.share).await {
            Err(e) if e.is_no_export() => {
                tracing::info!(snapshot = %req.snapshot_id, error = %e, "the share is not exported; nothing to delete");
                return Ok(csi::DeleteSnapshotResponse {});
            }
            other => other?,
        };
        match store::read_snapshot(&share, &id.key).await? {
            Some(record) if record.snapshot_id != req.snapshot_id => {
                tracing::info!(snapshot = %req.snapshot_id, "no such snapshot; nothing to delete");
                return Ok(csi::DeleteSnapshotResponse {});
            }
            _ => {}
        }
        if self.driver.copies.reads_from(&req.snapshot_id) {
            return Err(CsiError::WrongState(format!(
                "snapshot {} is in use: a volume is being restored from it; retry later",
                req.snapshot_id
            )));
        }
        self.driver.copies.cancel(&req.snapshot_id);
        store::delete_tree(&share, &store::snapshot_dir(&id.key)).await?;
        tracing::info!(snapshot = %req.snapshot_id, "snapshot deleted");
        Ok(csi::DeleteSnapshotResponse {})
    }

    pub(crate) async fn list_snapshots(
        &self,
        req: &csi::ListSnapshotsRequest,
    ) -> CsiResult<csi::ListSnapshotsResponse> {
        if !req.starting_token.is_empty() && decode_token(&req.starting_token).is_none() {
            return Err(CsiError::StaleToken(req.starting_token.clone()));
        }
        // Snapshots still being copied are listed too, with ready_to_use: false.
        let mut records = Vec::new();
        if !req.snapshot_id.is_empty() {
            if let Some(id) = SnapshotId::decode(&req.snapshot_id) {
                if let Some(share) = self.readable_share(&id.share).await? {
                    if let Some(record) = store::read_snapshot(&share, &id.key).await? {
                        self.resume_snapshot(&share, &record).await;
                        records.push(record);
                    }
                }
            }
        } else if !req.source_volume_id.is_empty() {
            if let Some(id) = VolumeId::decode(&req.source_volume_id) {
                if let Some(share) = self.readable_share(&id.share).await? {
                    records.extend(store::list_snapshots(&share).await?);
                }
            }
        } else {
            for share_ref in self.driver.known_shares() {
                if let Some(share) = self.readable_share(&share_ref).await? {
                    records.extend(store::list_snapshots(&share).await?);
                }
            }
        }
        let chosen: Vec<(String, store::SnapshotRecord)> = records
            .into_iter()
            .filter(|r| r.state != State::Deleting)
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
        let share = match self.driver.share(&id.share).await {
            Err(e) if e.is_no_export() => return Err(missing()),
            other => other?,
        };
        let record = store::read_snapshot(&share, &id.key)
            .await?
            .filter(|r| r.snapshot_id == req.snapshot_id && r.state != State::Deleting)
            .ok_or_else(missing)?;
        self.resume_snapshot(&share, &record).await;
        Ok(csi::GetSnapshotResponse {
            snapshot: Some(snapshot_message(&record)),
        })
    }
}
