//! The Controller service's volume workflow: volumes carved out of NFS shares, spoken to from user
//! space. It mounts nothing and keeps no state: everything it knows lives on the shares.
//! Deleting, listing, capacity, expansion and conditions are here; creating is in `create`,
//! snapshots in `snapshots`, ControllerModifyVolume in `modify`, background copies in `copies`,
//! the timer that removes what killed requests left in `sweep`, answers and paging in `wire`.

pub mod copies;
pub mod create;
pub mod modify;
pub mod snapshots;
pub mod sweep;
pub mod wire;

use std::collections::HashMap;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};

use tether_csi_proto::v1::{self as csi, VolumeCondition};

use crate::controller::wire::{decode_token, page, volume_message};
use crate::driver::Driver;
use crate::grpc::error::{CsiError, CsiResult, NfsError};
use crate::grpc::validate::{unsupported, wanted_capacity};
use crate::share::ids::{Layout, ShareRef, VolumeId, VolumeName};
use crate::share::nfs::{Kind, Share};
use crate::share::params::{nfs_version, OnDelete, VolumeParams};
use crate::share::store::{self, State, VolumeRecord, IMAGE_FILE};

/// How many records of a ListVolumes page are read at once.
const LIST_READS_AT_ONCE: usize = 16;

pub struct ControllerService {
    pub(crate) driver: Arc<Driver>,
}

impl ControllerService {
    pub fn new(driver: Arc<Driver>) -> ControllerService {
        ControllerService { driver }
    }
}

impl ControllerService {
    /// Deletes a volume as its `onDelete` says. The record is marked `deleting` first and
    /// removed last, so a delete that is killed midway is finished by the retry; an id of a
    /// volume (or share) that does not exist is deleted already.
    pub(crate) async fn delete_volume(
        &self,
        req: &csi::DeleteVolumeRequest,
    ) -> CsiResult<csi::DeleteVolumeResponse> {
        if req.volume_id.is_empty() {
            return Err(CsiError::invalid("volume_id is required"));
        }
        let Some(id) = VolumeId::decode(&req.volume_id) else {
            tracing::info!(volume = %req.volume_id, "not a Tether volume id; nothing to delete");
            return Ok(csi::DeleteVolumeResponse {});
        };
        let _guard = self
            .driver
            .locks
            .acquire(&[format!("volume {}", req.volume_id)])?;
        let share = match self.driver.share(&id.share).await {
            Err(e) if e.is_no_export() => {
                tracing::info!(volume = %req.volume_id, error = %e, "the share is not exported; nothing to delete");
                return Ok(csi::DeleteVolumeResponse {});
            }
            other => other?,
        };
        let Some(mut record) = store::read_volume(&share, &id.path)
            .await?
            .filter(|r| r.volume_id == req.volume_id)
        else {
            tracing::info!(volume = %req.volume_id, "no such volume; nothing to delete");
            return Ok(csi::DeleteVolumeResponse {});
        };
        if self.driver.copies.reads_from(&req.volume_id) {
            return Err(CsiError::WrongState(format!(
                "volume {} is in use: a snapshot or clone is being copied from it; retry later",
                req.volume_id
            )));
        }
        self.driver.copies.cancel(&req.volume_id);
        remove_volume(&share, &id, &mut record).await?;
        tracing::info!(volume = %req.volume_id, on_delete = ?record.settings.mutable.on_delete, "volume deleted");
        Ok(csi::DeleteVolumeResponse {})
    }

    /// The connection to a share for calls that only read: `None` when the server does not
    /// export it (then it holds nothing). Never creates anything on the server.
    pub(crate) async fn readable_share(
        &self,
        share: &crate::share::ids::ShareRef,
    ) -> CsiResult<Option<Arc<Share>>> {
        match self.driver.share(share).await {
            Ok(connected) => Ok(Some(connected)),
            Err(e) if e.is_no_export() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The record of an existing volume, or NOT_FOUND.
    pub(crate) async fn existing(
        &self,
        volume_id: &str,
    ) -> CsiResult<(VolumeId, Arc<Share>, VolumeRecord)> {
        if volume_id.is_empty() {
            return Err(CsiError::invalid("volume_id is required"));
        }
        let missing = || CsiError::NotFound(format!("volume {volume_id} does not exist"));
        let id = VolumeId::decode(volume_id).ok_or_else(missing)?;
        let share = self.readable_share(&id.share).await?.ok_or_else(missing)?;
        let record = store::read_volume(&share, &id.path)
            .await?
            .filter(|r| r.state == State::Ready && r.volume_id == volume_id)
            .ok_or_else(missing)?;
        Ok((id, share, record))
    }

    pub(crate) async fn condition(
        &self,
        share: &Share,
        id: &VolumeId,
    ) -> CsiResult<VolumeCondition> {
        let path = id.path.as_str();
        let entry = match share.stat(path).await {
            Ok(entry) => entry,
            Err(e) if e.is_stale() => {
                return Ok(VolumeCondition {
                    abnormal: true,
                    message: format!(
                        "the volume directory {path} is gone from {} ({e})",
                        id.share
                    ),
                })
            }
            Err(e) => return Err(e.into()),
        };
        let condition = match entry {
            None => VolumeCondition {
                abnormal: true,
                message: format!("the volume directory {path} is gone from {}", id.share),
            },
            Some(entry) if entry.kind != Kind::Dir => VolumeCondition {
                abnormal: true,
                message: format!("{path} on {} is no longer a directory", id.share),
            },
            Some(_)
                if id.layout == Layout::Image
                    && share.stat(&format!("{path}/{IMAGE_FILE}")).await?.is_none() =>
            {
                VolumeCondition {
                    abnormal: true,
                    message: format!("the disk image of {path} is gone from {}", id.share),
                }
            }
            Some(_) => VolumeCondition {
                abnormal: false,
                message: "healthy".into(),
            },
        };
        Ok(condition)
    }

    pub(crate) async fn validate(
        &self,
        req: &csi::ValidateVolumeCapabilitiesRequest,
    ) -> CsiResult<csi::ValidateVolumeCapabilitiesResponse> {
        if req.volume_capabilities.is_empty() {
            if req.volume_id.is_empty() {
                return Err(CsiError::invalid("volume_id is required"));
            }
            return Err(CsiError::invalid("volume_capabilities are required"));
        }
        let (id, _, record) = self.existing(&req.volume_id).await?;
        let refuse = |message: String| csi::ValidateVolumeCapabilitiesResponse {
            confirmed: None,
            message,
        };
        if let Some(why) = req
            .volume_capabilities
            .iter()
            .find_map(|c| unsupported(c, id.layout))
        {
            return Ok(refuse(why));
        }
        if !req.parameters.is_empty() {
            match VolumeParams::parse(&record.name, &req.parameters, &req.volume_capabilities) {
                Ok(params) if params.canonical() == record.parameters => {}
                Ok(_) => return Ok(refuse("the parameters differ from the volume's".into())),
                Err(e) => return Ok(refuse(e.to_string())),
            }
        }
        Ok(csi::ValidateVolumeCapabilitiesResponse {
            confirmed: Some(csi::validate_volume_capabilities_response::Confirmed {
                volume_context: req.volume_context.clone(),
                volume_capabilities: req.volume_capabilities.clone(),
                parameters: req.parameters.clone(),
                mutable_parameters: HashMap::new(),
            }),
            message: String::new(),
        })
    }

    /// ListVolumes, paged by record file name: one directory listing per share for the first
    /// page (reused by the next pages for a minute), and only the page's records are read.
    pub(crate) async fn list_volumes(
        &self,
        req: &csi::ListVolumesRequest,
    ) -> CsiResult<csi::ListVolumesResponse> {
        if !req.starting_token.is_empty() && decode_token(&req.starting_token).is_none() {
            return Err(CsiError::StaleToken(req.starting_token.clone()));
        }
        let mut keys = Vec::new();
        let mut shares = HashMap::new();
        for share_ref in self.driver.known_shares() {
            let Some(share) = self.readable_share(&share_ref).await? else {
                tracing::warn!(share = %share_ref, "not exported by its server; listing the other shares");
                continue;
            };
            let label = share_ref.to_string();
            let names = self
                .driver
                .volume_listing(&share_ref, &share, req.starting_token.is_empty())
                .await?;
            keys.extend(
                names
                    .iter()
                    .map(|name| (format!("{label}\u{0}{name}"), (label.clone(), name.clone()))),
            );
            shares.insert(label, (share_ref, share));
        }
        let (chosen, next_token) = page(keys, req.max_entries, &req.starting_token)?;
        // The page's records are read a few at a time (each is a round trip or two), in order.
        let entries: Vec<_> = futures::stream::iter(chosen)
            .map(|(label, file)| {
                let share = shares.get(&label);
                async move {
                    match share {
                        Some((share_ref, share)) => self.list_entry(share_ref, share, &file).await,
                        None => Ok(None),
                    }
                }
            })
            .buffered(LIST_READS_AT_ONCE)
            .try_collect::<Vec<_>>()
            .await?
            .into_iter()
            .flatten()
            .collect();
        Ok(csi::ListVolumesResponse {
            entries,
            next_token,
        })
    }

    /// One ListVolumes entry: the record in `file` when it is a ready volume.
    async fn list_entry(
        &self,
        share_ref: &ShareRef,
        share: &Share,
        file: &str,
    ) -> CsiResult<Option<csi::list_volumes_response::Entry>> {
        let Some(record) = store::read_volume_file(share, file)
            .await?
            .filter(|r| r.state == State::Ready)
        else {
            return Ok(None);
        };
        let condition = match VolumeId::decode(&record.volume_id) {
            Some(id) => Some(self.condition(share, &id).await?),
            None => None,
        };
        Ok(Some(csi::list_volumes_response::Entry {
            volume: Some(volume_message(&record, share_ref)),
            status: Some(csi::list_volumes_response::VolumeStatus {
                published_node_ids: Vec::new(),
                volume_condition: condition,
            }),
        }))
    }

    pub(crate) async fn get_capacity(
        &self,
        req: &csi::GetCapacityRequest,
    ) -> CsiResult<csi::GetCapacityResponse> {
        let shares =
            if req.parameters.contains_key("server") || req.parameters.contains_key("share") {
                let params = VolumeParams::parse(
                    &VolumeName::parse("capacity-probe")?,
                    &req.parameters,
                    &req.volume_capabilities,
                )?;
                vec![params.share]
            } else {
                nfs_version(&req.volume_capabilities)?;
                self.driver.known_shares()
            };
        let mut available = 0u64;
        let mut largest = 0u64;
        for share_ref in shares {
            let Some(share) = self.readable_share(&share_ref).await? else {
                tracing::warn!(share = %share_ref, "not exported by its server; it offers no capacity");
                continue;
            };
            let space = share.space().await?;
            available += space.available_bytes;
            largest = largest.max(space.available_bytes);
        }
        Ok(csi::GetCapacityResponse {
            available_capacity: available.min(i64::MAX as u64) as i64,
            maximum_volume_size: Some(largest.min(i64::MAX as u64) as i64),
            minimum_volume_size: None,
        })
    }

    pub(crate) async fn expand(
        &self,
        req: &csi::ControllerExpandVolumeRequest,
    ) -> CsiResult<csi::ControllerExpandVolumeResponse> {
        if req.volume_id.is_empty() {
            return Err(CsiError::invalid("volume_id is required"));
        }
        let (wanted, limit) = wanted_capacity(req.capacity_range.as_ref())?;
        if wanted == 0 {
            return Err(CsiError::invalid("capacity_range with a size is required"));
        }
        let _guard = self
            .driver
            .locks
            .acquire(&[format!("volume {}", req.volume_id)])?;
        let (id, share, mut record) = self.existing(&req.volume_id).await?;
        if limit > 0 && record.capacity_bytes > limit {
            return Err(CsiError::Capacity(format!(
                "the volume already holds {} bytes, more than the limit of {limit}",
                record.capacity_bytes
            )));
        }
        let total = self.driver.share_size(&id.share, &share).await?;
        if wanted as u64 > total {
            return Err(CsiError::Capacity(format!(
                "{wanted} bytes is more than the whole share {} holds",
                id.share
            )));
        }
        if wanted > record.capacity_bytes {
            if id.layout == Layout::Image {
                share
                    .truncate(&format!("{}/{IMAGE_FILE}", id.path.as_str()), wanted as u64)
                    .await?;
            }
            if let (true, Some(agent)) = (record.limited, &record.settings.agent) {
                self.driver
                    .agents
                    .set_limit(agent, &id.share.export, id.path.as_str(), wanted as u64)
                    .await?;
            }
            record.capacity_bytes = wanted;
            store::write_volume(&share, &record).await?;
            tracing::info!(volume = %req.volume_id, capacity = wanted, "volume expanded");
        }
        Ok(csi::ControllerExpandVolumeResponse {
            capacity_bytes: record.capacity_bytes,
            // A directory has nothing to grow on the node; an image's filesystem does.
            node_expansion_required: id.layout == Layout::Image,
        })
    }

    pub(crate) async fn get_volume(
        &self,
        req: &csi::ControllerGetVolumeRequest,
    ) -> CsiResult<csi::ControllerGetVolumeResponse> {
        let (id, share, record) = self.existing(&req.volume_id).await?;
        let condition = self.condition(&share, &id).await?;
        Ok(csi::ControllerGetVolumeResponse {
            volume: Some(volume_message(&record, &id.share)),
            status: Some(csi::controller_get_volume_response::VolumeStatus {
                published_node_ids: Vec::new(),
                volume_condition: Some(condition),
            }),
        })
    }
}

/// Deletes a volume as its `onDelete` says: marks the record `deleting` (so that a delete killed
/// midway is finished by whoever comes next: the retry, a CreateVolume of the same name, or the
/// sweep), removes or archives the directory, then the name claim, then the record.
pub(crate) async fn remove_volume(
    share: &Share,
    id: &VolumeId,
    record: &mut VolumeRecord,
) -> Result<(), NfsError> {
    if record.state != State::Deleting {
        record.state = State::Deleting;
        record.touched_unix = store::now_unix();
        store::write_volume(share, record).await?;
    }
    let path = id.path.as_str();
    match record.settings.mutable.on_delete {
        OnDelete::Delete => {
            store::delete_tree(share, path).await?;
            share.remove_empty_parents(path).await;
        }
        OnDelete::Retain => {}
        OnDelete::Archive => {
            if share.stat(path).await?.is_some() {
                let (parent, base) = id.path.split_last();
                let archived = format!("archived-{base}-{}", store::now_unix());
                let to = if parent.is_empty() {
                    archived
                } else {
                    format!("{parent}/{archived}")
                };
                share.rename(path, &to).await?;
                tracing::info!(volume = %record.volume_id, to = %to, "volume archived");
            }
        }
    }
    share.remove_file(&store::claim_path(&record.name)).await?;
    share.remove_file(&store::record_path(&id.path)).await
}
