//! The Controller service's volume workflow: volumes carved out of NFS shares, spoken to from user
//! space. It mounts nothing and keeps no state: everything it knows lives on the shares.
//! Snapshots are in `snapshots`, request checks in `validate`, answers and paging in `wire`.

use std::collections::HashMap;
use std::sync::Arc;

use tether_csi_proto::v1::{self as csi, volume_content_source, VolumeCondition};

use crate::driver::Driver;
use crate::error::{CsiError, CsiResult};
use crate::ids::{validate_name, Layout, SnapshotId, VolumeId};
use crate::nfs::{Kind, Share};
use crate::params::{nfs_version, OnDelete, VolumeParams};
use crate::store::{self, Source, State, VolumeRecord, IMAGE_FILE};
use crate::validate::{check_capabilities, fits, unsupported, wanted_capacity};
use crate::wire::{decode_token, page, volume_message};

pub struct ControllerService {
    pub(crate) driver: Arc<Driver>,
}

impl ControllerService {
    pub fn new(driver: Arc<Driver>) -> ControllerService {
        ControllerService { driver }
    }
}

impl ControllerService {
    pub(crate) async fn create_volume(
        &self,
        req: &csi::CreateVolumeRequest,
    ) -> CsiResult<csi::CreateVolumeResponse> {
        validate_name("volume", &req.name)?;
        let params = VolumeParams::parse(&req.name, &req.parameters, &req.volume_capabilities)?;
        check_capabilities(&req.volume_capabilities, params.layout)?;
        let (capacity, _) = wanted_capacity(req.capacity_range.as_ref())?;
        if params.layout == Layout::Image && capacity == 0 {
            return Err(CsiError::invalid(
                "layout: image needs a capacity (the size of the disk image)",
            ));
        }
        let id = VolumeId {
            share: params.share.clone(),
            layout: params.layout,
            path: params.path.clone(),
        }
        .encode()?;
        let source = self.resolve_source(req.volume_content_source.as_ref())?;
        let _guard = self
            .driver
            .locks
            .acquire(&[format!("volume name {}", req.name), format!("volume {id}")])?;
        let share = self.driver.prepared_share(&params.share).await?;
        let total = self.driver.share_size(&params.share, &share).await?;
        if capacity > 0 && capacity as u64 > total {
            return Err(CsiError::Capacity(format!(
                "{capacity} bytes is more than the whole share {} holds ({total} bytes)",
                params.share
            )));
        }

        // Claim the name: the claim says which path this name owns. A claim that exists already
        // comes from an earlier request for this name.
        let claim = store::claim_path(&req.name);
        let path = params.path.as_str();
        let fresh_claim = share.claim(&claim, path).await?;
        if !fresh_claim {
            match share.read_link(&claim).await? {
                Some(owned) if owned == path => {}
                Some(owned) => {
                    return Err(CsiError::Conflict(format!(
                        "volume {:?} already exists at {owned} with other parameters",
                        req.name
                    )))
                }
                None => {
                    return Err(CsiError::Busy(format!(
                        "volume {:?} is being deleted by another caller",
                        req.name
                    )))
                }
            }
        }
        let result = self
            .create_claimed(req, &params, &share, &id, capacity, source, fresh_claim)
            .await;
        if fresh_claim && matches!(result, Err(CsiError::Conflict(_))) {
            share.remove_file(&claim).await?;
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn create_claimed(
        &self,
        req: &csi::CreateVolumeRequest,
        params: &VolumeParams,
        share: &Share,
        id: &str,
        capacity: i64,
        source: Option<Source>,
        fresh_claim: bool,
    ) -> CsiResult<csi::CreateVolumeResponse> {
        let path = params.path.as_str();
        let canonical = params.canonical();
        // With a fresh claim there was no earlier attempt, so there is no record of this name:
        // mkdir below finds out whether the path is taken.
        let existing = if fresh_claim {
            None
        } else {
            store::read_volume(share, &params.path).await?
        };
        if let Some(record) = &existing {
            if record.name != req.name {
                return Err(CsiError::Conflict(format!(
                    "{path} on {} already belongs to volume {:?}",
                    params.share, record.name
                )));
            }
            let same = record.parameters == canonical && record.source == source;
            if record.state == State::Ready {
                if same && fits(record.capacity_bytes, req.capacity_range.as_ref()) {
                    return Ok(csi::CreateVolumeResponse {
                        volume: Some(volume_message(record, &params.share)),
                    });
                }
                return Err(CsiError::Conflict(format!(
                    "volume {:?} exists with {} bytes and other parameters or source",
                    req.name, record.capacity_bytes
                )));
            }
            if !same {
                return Err(CsiError::Conflict(format!(
                    "volume {:?} is half made with other parameters",
                    req.name
                )));
            }
        }
        if let Some(source) = &source {
            self.check_source_capacity(source, capacity).await?;
        }

        let (parent, _) = params.path.split_last();
        if !parent.is_empty() {
            share.mkdir_all(parent, 0o755).await?;
        }
        // An empty directory volume gets its final mode at once; one that is filled first stays
        // private until it is complete.
        let empty_directory = source.is_none() && params.layout == Layout::Directory;
        let first_mode = if empty_directory {
            params.settings.mount_permissions
        } else {
            0o700
        };
        let made = share.mkdir(path, first_mode).await?;
        if !made && fresh_claim {
            return Err(CsiError::Conflict(
                match store::read_volume(share, &params.path).await? {
                    Some(other) => format!(
                        "{path} on {} already belongs to volume {:?}",
                        params.share, other.name
                    ),
                    None => format!(
                        "{path} already exists on {} and is not a Tether volume; choose another subDir",
                        params.share
                    ),
                },
            ));
        }
        let mut record = VolumeRecord {
            name: req.name.clone(),
            volume_id: id.to_string(),
            path: path.to_string(),
            capacity_bytes: capacity,
            parameters: canonical,
            settings: params.settings.clone(),
            source: source.clone(),
            state: State::Creating,
            created_unix: (store::now_nanos() / 1_000_000_000) as u64,
        };
        if let Some(source) = &source {
            self.populate(source, share, path).await?;
        }
        if params.layout == Layout::Image {
            let image = format!("{path}/{IMAGE_FILE}");
            match share.stat(&image).await? {
                Some(existing) if existing.size >= capacity as u64 => {}
                Some(_) => share.truncate(&image, capacity as u64).await?,
                None => share.create_sparse(&image, capacity as u64, 0o600).await?,
            }
        }
        // The server may apply its own umask to a new directory: set the mode explicitly
        // unless it is right already.
        if !empty_directory
            || share.stat(path).await?.map(|e| e.mode) != Some(params.settings.mount_permissions)
        {
            share.chmod(path, params.settings.mount_permissions).await?;
        }
        record.state = State::Ready;
        store::write_volume(share, &record).await?;
        tracing::info!(volume = %id, name = %req.name, share = %params.share, capacity, "volume created");
        Ok(csi::CreateVolumeResponse {
            volume: Some(volume_message(&record, &params.share)),
        })
    }

    pub(crate) fn resolve_source(
        &self,
        source: Option<&csi::VolumeContentSource>,
    ) -> CsiResult<Option<Source>> {
        let Some(source) = source else {
            return Ok(None);
        };
        match &source.r#type {
            Some(volume_content_source::Type::Snapshot(s)) if !s.snapshot_id.is_empty() => {
                Ok(Some(Source::Snapshot(s.snapshot_id.clone())))
            }
            Some(volume_content_source::Type::Volume(v)) if !v.volume_id.is_empty() => {
                Ok(Some(Source::Volume(v.volume_id.clone())))
            }
            _ => Err(CsiError::invalid(
                "volume_content_source names neither a snapshot nor a volume",
            )),
        }
    }

    /// The source's size; NOT_FOUND if it does not exist, OUT_OF_RANGE if it is bigger than
    /// what was asked for.
    pub(crate) async fn check_source_capacity(
        &self,
        source: &Source,
        capacity: i64,
    ) -> CsiResult<()> {
        let size = match source {
            Source::Snapshot(id) => {
                let parsed = SnapshotId::decode(id).ok_or_else(|| {
                    CsiError::NotFound(format!("source snapshot {id} does not exist"))
                })?;
                let share = self.driver.prepared_share(&parsed.share).await?;
                match store::read_snapshot(&share, &parsed.key).await? {
                    Some(s) if s.state == State::Ready => s.size_bytes,
                    _ => {
                        return Err(CsiError::NotFound(format!(
                            "source snapshot {id} does not exist"
                        )))
                    }
                }
            }
            Source::Volume(id) => {
                let parsed = VolumeId::decode(id).ok_or_else(|| {
                    CsiError::NotFound(format!("source volume {id} does not exist"))
                })?;
                let share = self.driver.prepared_share(&parsed.share).await?;
                match store::read_volume(&share, &parsed.path).await? {
                    Some(v) if v.state == State::Ready => v.capacity_bytes,
                    _ => {
                        return Err(CsiError::NotFound(format!(
                            "source volume {id} does not exist"
                        )))
                    }
                }
            }
        };
        if capacity > 0 && size > capacity {
            return Err(CsiError::Capacity(format!(
                "the source holds {size} bytes, more than the {capacity} bytes asked for"
            )));
        }
        Ok(())
    }

    /// Copies the source's tree into the new volume's directory.
    pub(crate) async fn populate(
        &self,
        source: &Source,
        target: &Share,
        path: &str,
    ) -> CsiResult<()> {
        let (share_ref, from) = match source {
            Source::Snapshot(id) => {
                let parsed = SnapshotId::decode(id).ok_or_else(|| {
                    CsiError::NotFound(format!("source snapshot {id} does not exist"))
                })?;
                let from = format!("{}/data", store::snapshot_dir(&parsed.key));
                (parsed.share, from)
            }
            Source::Volume(id) => {
                let parsed = VolumeId::decode(id).ok_or_else(|| {
                    CsiError::NotFound(format!("source volume {id} does not exist"))
                })?;
                (parsed.share, parsed.path.as_str().to_string())
            }
        };
        let share = self.driver.share(&share_ref).await?;
        let bytes = share.copy_tree(&from, target, path).await?;
        tracing::info!(from = %from, to = %path, bytes, "volume populated");
        Ok(())
    }

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
        let share = self.driver.prepared_share(&id.share).await?;
        let Some(record) = store::read_volume(&share, &id.path).await? else {
            tracing::info!(volume = %req.volume_id, "no such volume; nothing to delete");
            return Ok(csi::DeleteVolumeResponse {});
        };
        let path = id.path.as_str();
        match record.settings.on_delete {
            OnDelete::Delete => store::delete_tree(&share, path).await?,
            OnDelete::Retain => {}
            OnDelete::Archive => {
                if share.stat(path).await?.is_some() {
                    let (parent, base) = id.path.split_last();
                    let stamp = store::now_nanos() / 1_000_000_000;
                    let archived = format!("archived-{base}-{stamp}");
                    let to = if parent.is_empty() {
                        archived
                    } else {
                        format!("{parent}/{archived}")
                    };
                    share.rename(path, &to).await?;
                    tracing::info!(volume = %req.volume_id, to = %to, "volume archived");
                }
            }
        }
        share.remove_file(&store::record_path(&id.path)).await?;
        share.remove_file(&store::claim_path(&record.name)).await?;
        tracing::info!(volume = %req.volume_id, on_delete = ?record.settings.on_delete, "volume deleted");
        self.driver.sweep_if_due(&id.share, &share).await?;
        Ok(csi::DeleteVolumeResponse {})
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
        let share = self.driver.prepared_share(&id.share).await?;
        let record = store::read_volume(&share, &id.path)
            .await?
            .filter(|r| r.state == State::Ready)
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

    pub(crate) async fn list_volumes(
        &self,
        req: &csi::ListVolumesRequest,
    ) -> CsiResult<csi::ListVolumesResponse> {
        if !req.starting_token.is_empty() && decode_token(&req.starting_token).is_none() {
            return Err(CsiError::StaleToken(req.starting_token.clone()));
        }
        let mut all = Vec::new();
        for share_ref in self.driver.known_shares() {
            let share = self.driver.share(&share_ref).await?;
            for record in store::list_volumes(&share).await? {
                if record.state != State::Ready {
                    continue;
                }
                all.push((record.volume_id.clone(), (share_ref.clone(), record)));
            }
        }
        let (chosen, next_token) = page(all, req.max_entries, &req.starting_token)?;
        let mut entries = Vec::new();
        for (share_ref, record) in chosen {
            let condition = match VolumeId::decode(&record.volume_id) {
                Some(id) => {
                    let share = self.driver.share(&share_ref).await?;
                    Some(self.condition(&share, &id).await?)
                }
                None => None,
            };
            entries.push(csi::list_volumes_response::Entry {
                volume: Some(volume_message(&record, &share_ref)),
                status: Some(csi::list_volumes_response::VolumeStatus {
                    published_node_ids: Vec::new(),
                    volume_condition: condition,
                }),
            });
        }
        Ok(csi::ListVolumesResponse {
            entries,
            next_token,
        })
    }

    pub(crate) async fn get_capacity(
        &self,
        req: &csi::GetCapacityRequest,
    ) -> CsiResult<csi::GetCapacityResponse> {
        let shares = if req.parameters.contains_key("server")
            || req.parameters.contains_key("share")
        {
            let params =
                VolumeParams::parse("capacity-probe", &req.parameters, &req.volume_capabilities)?;
            vec![params.share]
        } else {
            nfs_version(&req.volume_capabilities)?;
            self.driver.known_shares()
        };
        let mut available = 0u64;
        let mut largest = 0u64;
        for share_ref in shares {
            let space = self.driver.share(&share_ref).await?.space().await?;
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
