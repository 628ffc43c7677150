//! The Controller service: volumes and snapshots carved out of NFS shares, spoken to from user
//! space. It mounts nothing and keeps no state: everything it knows lives on the shares.

use std::collections::HashMap;
use std::sync::Arc;

use tether_csi_proto::v1::{
    self as csi, controller_service_capability::rpc::Type as Rpc, volume_capability,
    volume_content_source, ControllerServiceCapability, VolumeCapability, VolumeCondition,
};
use tonic::{Request, Response, Status};

use crate::driver::Driver;
use crate::error::{CsiError, CsiResult};
use crate::ids::{name_key, validate_name, Layout, ShareRef, SnapshotId, VolumeId, MAX_ID_BYTES};
use crate::nfs::{Kind, Share};
use crate::params::{nfs_version, OnDelete, VolumeParams};
use crate::redact::Redact;
use crate::store::{self, Source, State, VolumeRecord, IMAGE_FILE};

pub struct ControllerService {
    driver: Arc<Driver>,
}

impl ControllerService {
    pub fn new(driver: Arc<Driver>) -> ControllerService {
        ControllerService { driver }
    }
}

/// Logs the call (method, ids, redacted request at debug level) and runs it, logging failures.
pub(crate) async fn traced<Req: Redact, T>(
    method: &'static str,
    subject: &str,
    request: &Req,
    work: impl std::future::Future<Output = CsiResult<T>>,
) -> Result<Response<T>, Status> {
    tracing::info!(method, subject, "request");
    tracing::debug!(method, request = %request.redacted(), "request body");
    let started = std::time::Instant::now();
    match work.await {
        Ok(response) => {
            tracing::info!(method, subject, took = ?started.elapsed(), "ok");
            Ok(Response::new(response))
        }
        Err(error) => {
            let status = Status::from(error);
            tracing::warn!(method, subject, code = ?status.code(), message = status.message(), took = ?started.elapsed(), "failed");
            Err(status)
        }
    }
}

const CAPABILITIES: [Rpc; 11] = [
    Rpc::CreateDeleteVolume,
    Rpc::ListVolumes,
    Rpc::GetCapacity,
    Rpc::CreateDeleteSnapshot,
    Rpc::ListSnapshots,
    Rpc::CloneVolume,
    Rpc::ExpandVolume,
    Rpc::VolumeCondition,
    Rpc::GetVolume,
    Rpc::SingleNodeMultiWriter,
    Rpc::GetSnapshot,
];

/// Bytes wanted from a capacity range: required if given, else limit, else 0 (unknown).
fn wanted_capacity(range: Option<&csi::CapacityRange>) -> CsiResult<(i64, i64)> {
    let Some(range) = range else {
        return Ok((0, 0));
    };
    if range.required_bytes < 0 || range.limit_bytes < 0 {
        return Err(CsiError::invalid("capacity must not be negative"));
    }
    if range.limit_bytes > 0 && range.required_bytes > range.limit_bytes {
        return Err(CsiError::OutOfRange(format!(
            "required {} bytes exceeds the limit of {} bytes",
            range.required_bytes, range.limit_bytes
        )));
    }
    let want = if range.required_bytes > 0 {
        range.required_bytes
    } else {
        range.limit_bytes
    };
    Ok((want, range.limit_bytes))
}

fn fits(capacity: i64, range: Option<&csi::CapacityRange>) -> bool {
    range.is_none_or(|r| {
        capacity >= r.required_bytes && (r.limit_bytes == 0 || capacity <= r.limit_bytes)
    })
}

fn is_multi_node(capability: &VolumeCapability) -> bool {
    use volume_capability::access_mode::Mode;
    capability
        .access_mode
        .as_ref()
        .and_then(|m| Mode::try_from(m.mode).ok())
        .is_some_and(|m| {
            matches!(
                m,
                Mode::MultiNodeReaderOnly
                    | Mode::MultiNodeSingleWriter
                    | Mode::MultiNodeMultiWriter
            )
        })
}

/// Why `capability` cannot be served by `layout`, if it cannot.
fn unsupported(capability: &VolumeCapability, layout: Layout) -> Option<String> {
    use volume_capability::access_mode::Mode;
    let mode = capability
        .access_mode
        .as_ref()
        .and_then(|m| Mode::try_from(m.mode).ok());
    if mode.is_none_or(|m| m == Mode::Unknown) {
        return Some("a volume capability has no access mode".into());
    }
    match (&capability.access_type, layout) {
        (None, _) => Some("a volume capability has neither mount nor block access".into()),
        (Some(volume_capability::AccessType::Block(_)), Layout::Directory) => Some(
            "raw block access needs layout: image (a directory volume is a filesystem)".into(),
        ),
        (Some(volume_capability::AccessType::Mount(m)), Layout::Directory)
            if !matches!(m.fs_type.as_str(), "" | "nfs" | "nfs4") =>
        {
            Some(format!(
                "fsType {:?} does not apply to a directory volume on NFS",
                m.fs_type
            ))
        }
        (_, Layout::Image) if is_multi_node(capability) => Some(
            "layout: image serves single-node access modes only (use layout: directory for ReadWriteMany)"
                .into(),
        ),
        (Some(volume_capability::AccessType::Mount(m)), Layout::Image)
            if !matches!(m.fs_type.as_str(), "" | "ext4" | "xfs") =>
        {
            Some(format!("fsType {:?} is not one of ext4, xfs", m.fs_type))
        }
        _ => None,
    }
}

fn check_capabilities(capabilities: &[VolumeCapability], layout: Layout) -> CsiResult<()> {
    if capabilities.is_empty() {
        return Err(CsiError::invalid("volume_capabilities are required"));
    }
    match capabilities.iter().find_map(|c| unsupported(c, layout)) {
        Some(why) => Err(CsiError::InvalidArgument(why)),
        None => Ok(()),
    }
}

fn volume_message(record: &VolumeRecord, share: &ShareRef) -> csi::Volume {
    let content_source = record.source.as_ref().map(|s| csi::VolumeContentSource {
        r#type: Some(match s {
            Source::Snapshot(id) => {
                volume_content_source::Type::Snapshot(volume_content_source::SnapshotSource {
                    snapshot_id: id.clone(),
                })
            }
            Source::Volume(id) => {
                volume_content_source::Type::Volume(volume_content_source::VolumeSource {
                    volume_id: id.clone(),
                })
            }
        }),
    });
    csi::Volume {
        capacity_bytes: record.capacity_bytes,
        volume_id: record.volume_id.clone(),
        volume_context: HashMap::from([
            ("server".to_string(), share.server.clone()),
            ("share".to_string(), share.export.clone()),
            ("path".to_string(), record.path.clone()),
            ("nfsvers".to_string(), share.version.as_option().to_string()),
            ("layout".to_string(), record.settings.layout.clone()),
        ])
        .into_iter()
        .chain(
            (!record.settings.fs_type.is_empty())
                .then(|| ("fsType".to_string(), record.settings.fs_type.clone())),
        )
        .collect(),
        content_source,
        accessible_topology: Vec::new(),
    }
}

fn snapshot_message(record: &store::SnapshotRecord) -> csi::Snapshot {
    let nanos = record.created_unix_nanos;
    csi::Snapshot {
        size_bytes: record.size_bytes,
        snapshot_id: record.snapshot_id.clone(),
        source_volume_id: record.source_volume_id.clone(),
        creation_time: Some(prost_types::Timestamp {
            seconds: (nanos / 1_000_000_000) as i64,
            nanos: (nanos % 1_000_000_000) as i32,
        }),
        ready_to_use: record.state == State::Ready,
        group_snapshot_id: String::new(),
    }
}

/// A page of `items` (sorted by key) after `token`; `ABORTED` for a token this driver did not make.
fn page<T>(
    mut items: Vec<(String, T)>,
    max_entries: i32,
    token: &str,
) -> CsiResult<(Vec<T>, String)> {
    if max_entries < 0 {
        return Err(CsiError::invalid("max_entries must not be negative"));
    }
    items.sort_by(|a, b| a.0.cmp(&b.0));
    let start = if token.is_empty() {
        0
    } else {
        let after = decode_token(token).ok_or_else(|| {
            CsiError::Aborted(format!(
                "starting_token {token:?} was not issued by this driver"
            ))
        })?;
        items.partition_point(|(key, _)| key.as_str() <= after.as_str())
    };
    let take = if max_entries == 0 {
        usize::MAX
    } else {
        max_entries as usize
    };
    let rest: Vec<(String, T)> = items.into_iter().skip(start).collect();
    let more = rest.len() > take;
    let chosen: Vec<(String, T)> = rest.into_iter().take(take).collect();
    let next = match (more, chosen.last()) {
        (true, Some((key, _))) => encode_token(key),
        _ => String::new(),
    };
    Ok((chosen.into_iter().map(|(_, v)| v).collect(), next))
}

fn encode_token(key: &str) -> String {
    let hex: String = key.bytes().map(|b| format!("{b:02x}")).collect();
    format!("t1.{hex}")
}

fn decode_token(token: &str) -> Option<String> {
    let hex = token.strip_prefix("t1.")?;
    if hex.len() % 2 != 0 || hex.len() > MAX_ID_BYTES * 2 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

impl ControllerService {
    async fn create_volume(
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
            return Err(CsiError::OutOfRange(format!(
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
                    return Err(CsiError::AlreadyExists(format!(
                        "volume {:?} already exists at {owned} with other parameters",
                        req.name
                    )))
                }
                None => {
                    return Err(CsiError::Aborted(format!(
                        "volume {:?} is being deleted by another caller",
                        req.name
                    )))
                }
            }
        }
        let result = self
            .create_claimed(req, &params, &share, &id, capacity, source, fresh_claim)
            .await;
        if fresh_claim && matches!(result, Err(CsiError::AlreadyExists(_))) {
            share.remove_file(&claim).await?;
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    async fn create_claimed(
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
                return Err(CsiError::AlreadyExists(format!(
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
                return Err(CsiError::AlreadyExists(format!(
                    "volume {:?} exists with {} bytes and other parameters or source",
                    req.name, record.capacity_bytes
                )));
            }
            if !same {
                return Err(CsiError::AlreadyExists(format!(
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
            return Err(CsiError::AlreadyExists(
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

    fn resolve_source(
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
    async fn check_source_capacity(&self, source: &Source, capacity: i64) -> CsiResult<()> {
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
            return Err(CsiError::OutOfRange(format!(
                "the source holds {size} bytes, more than the {capacity} bytes asked for"
            )));
        }
        Ok(())
    }

    /// Copies the source's tree into the new volume's directory.
    async fn populate(&self, source: &Source, target: &Share, path: &str) -> CsiResult<()> {
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

    async fn delete_volume(
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
    async fn existing(&self, volume_id: &str) -> CsiResult<(VolumeId, Arc<Share>, VolumeRecord)> {
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

    async fn condition(&self, share: &Share, id: &VolumeId) -> CsiResult<VolumeCondition> {
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

    async fn validate(
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

    async fn list_volumes(
        &self,
        req: &csi::ListVolumesRequest,
    ) -> CsiResult<csi::ListVolumesResponse> {
        if !req.starting_token.is_empty() && decode_token(&req.starting_token).is_none() {
            return Err(CsiError::Aborted(format!(
                "starting_token {:?} was not issued by this driver",
                req.starting_token
            )));
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

    async fn get_capacity(
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

    async fn create_snapshot(
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
                return Err(CsiError::AlreadyExists(format!(
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

    async fn delete_snapshot(
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

    async fn list_snapshots(
        &self,
        req: &csi::ListSnapshotsRequest,
    ) -> CsiResult<csi::ListSnapshotsResponse> {
        if !req.starting_token.is_empty() && decode_token(&req.starting_token).is_none() {
            return Err(CsiError::Aborted(format!(
                "starting_token {:?} was not issued by this driver",
                req.starting_token
            )));
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

    async fn get_snapshot(
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

    async fn expand(
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
            return Err(CsiError::OutOfRange(format!(
                "the volume already holds {} bytes, more than the limit of {limit}",
                record.capacity_bytes
            )));
        }
        let total = self.driver.share_size(&id.share, &share).await?;
        if wanted as u64 > total {
            return Err(CsiError::OutOfRange(format!(
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

    async fn get_volume(
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

#[tonic::async_trait]
impl csi::controller_server::Controller for ControllerService {
    async fn create_volume(
        &self,
        request: Request<csi::CreateVolumeRequest>,
    ) -> Result<Response<csi::CreateVolumeResponse>, Status> {
        let req = request.into_inner();
        traced("CreateVolume", &req.name, &req, self.create_volume(&req)).await
    }

    async fn delete_volume(
        &self,
        request: Request<csi::DeleteVolumeRequest>,
    ) -> Result<Response<csi::DeleteVolumeResponse>, Status> {
        let req = request.into_inner();
        traced(
            "DeleteVolume",
            &req.volume_id,
            &req,
            self.delete_volume(&req),
        )
        .await
    }

    async fn controller_publish_volume(
        &self,
        request: Request<csi::ControllerPublishVolumeRequest>,
    ) -> Result<Response<csi::ControllerPublishVolumeResponse>, Status> {
        let req = request.into_inner();
        traced("ControllerPublishVolume", &req.volume_id, &req, async {
            Err(CsiError::Unimplemented(
                "NFS volumes need no attach step (no PUBLISH_UNPUBLISH_VOLUME capability)".into(),
            ))
        })
        .await
    }

    async fn controller_unpublish_volume(
        &self,
        request: Request<csi::ControllerUnpublishVolumeRequest>,
    ) -> Result<Response<csi::ControllerUnpublishVolumeResponse>, Status> {
        let req = request.into_inner();
        traced("ControllerUnpublishVolume", &req.volume_id, &req, async {
            Err(CsiError::Unimplemented(
                "NFS volumes need no detach step (no PUBLISH_UNPUBLISH_VOLUME capability)".into(),
            ))
        })
        .await
    }

    async fn validate_volume_capabilities(
        &self,
        request: Request<csi::ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<csi::ValidateVolumeCapabilitiesResponse>, Status> {
        let req = request.into_inner();
        traced(
            "ValidateVolumeCapabilities",
            &req.volume_id,
            &req,
            self.validate(&req),
        )
        .await
    }

    async fn list_volumes(
        &self,
        request: Request<csi::ListVolumesRequest>,
    ) -> Result<Response<csi::ListVolumesResponse>, Status> {
        let req = request.into_inner();
        traced("ListVolumes", "", &req, self.list_volumes(&req)).await
    }

    async fn get_capacity(
        &self,
        request: Request<csi::GetCapacityRequest>,
    ) -> Result<Response<csi::GetCapacityResponse>, Status> {
        let req = request.into_inner();
        traced("GetCapacity", "", &req, self.get_capacity(&req)).await
    }

    async fn controller_get_capabilities(
        &self,
        request: Request<csi::ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<csi::ControllerGetCapabilitiesResponse>, Status> {
        let req = request.into_inner();
        traced("ControllerGetCapabilities", "", &req, async {
            Ok(csi::ControllerGetCapabilitiesResponse {
                capabilities: CAPABILITIES
                    .iter()
                    .map(|rpc| ControllerServiceCapability {
                        r#type: Some(csi::controller_service_capability::Type::Rpc(
                            csi::controller_service_capability::Rpc {
                                r#type: *rpc as i32,
                            },
                        )),
                    })
                    .collect(),
            })
        })
        .await
    }

    async fn create_snapshot(
        &self,
        request: Request<csi::CreateSnapshotRequest>,
    ) -> Result<Response<csi::CreateSnapshotResponse>, Status> {
        let req = request.into_inner();
        traced(
            "CreateSnapshot",
            &req.name,
            &req,
            self.create_snapshot(&req),
        )
        .await
    }

    async fn delete_snapshot(
        &self,
        request: Request<csi::DeleteSnapshotRequest>,
    ) -> Result<Response<csi::DeleteSnapshotResponse>, Status> {
        let req = request.into_inner();
        traced(
            "DeleteSnapshot",
            &req.snapshot_id,
            &req,
            self.delete_snapshot(&req),
        )
        .await
    }

    async fn list_snapshots(
        &self,
        request: Request<csi::ListSnapshotsRequest>,
    ) -> Result<Response<csi::ListSnapshotsResponse>, Status> {
        let req = request.into_inner();
        traced(
            "ListSnapshots",
            &req.snapshot_id,
            &req,
            self.list_snapshots(&req),
        )
        .await
    }

    async fn get_snapshot(
        &self,
        request: Request<csi::GetSnapshotRequest>,
    ) -> Result<Response<csi::GetSnapshotResponse>, Status> {
        let req = request.into_inner();
        traced(
            "GetSnapshot",
            &req.snapshot_id,
            &req,
            self.get_snapshot(&req),
        )
        .await
    }

    async fn controller_expand_volume(
        &self,
        request: Request<csi::ControllerExpandVolumeRequest>,
    ) -> Result<Response<csi::ControllerExpandVolumeResponse>, Status> {
        let req = request.into_inner();
        traced(
            "ControllerExpandVolume",
            &req.volume_id,
            &req,
            self.expand(&req),
        )
        .await
    }

    async fn controller_get_volume(
        &self,
        request: Request<csi::ControllerGetVolumeRequest>,
    ) -> Result<Response<csi::ControllerGetVolumeResponse>, Status> {
        let req = request.into_inner();
        traced(
            "ControllerGetVolume",
            &req.volume_id,
            &req,
            self.get_volume(&req),
        )
        .await
    }

    async fn controller_modify_volume(
        &self,
        request: Request<csi::ControllerModifyVolumeRequest>,
    ) -> Result<Response<csi::ControllerModifyVolumeResponse>, Status> {
        let req = request.into_inner();
        traced("ControllerModifyVolume", &req.volume_id, &req, async {
            Err(CsiError::Unimplemented(
                "no mutable parameters are defined (no MODIFY_VOLUME capability)".into(),
            ))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_follow_tokens_and_refuse_foreign_ones() {
        let items: Vec<(String, u32)> = (0..5).map(|i| (format!("id-{i}"), i)).collect();
        let (first, token) = page(items.clone(), 2, "").unwrap();
        assert_eq!(first, [0, 1]);
        let (second, token) = page(items.clone(), 2, &token).unwrap();
        assert_eq!(second, [2, 3]);
        let (third, token) = page(items.clone(), 2, &token).unwrap();
        assert_eq!((third, token.as_str()), (vec![4], ""));
        assert!(matches!(
            page(items.clone(), 2, "garbage"),
            Err(CsiError::Aborted(_))
        ));
        assert!(matches!(
            page(items.clone(), -1, ""),
            Err(CsiError::InvalidArgument(_))
        ));
        let (all, token) = page(items, 0, "").unwrap();
        assert_eq!((all.len(), token.as_str()), (5, ""));
    }

    #[test]
    fn capacity_ranges() {
        let r = |req, lim| csi::CapacityRange {
            required_bytes: req,
            limit_bytes: lim,
        };
        assert_eq!(wanted_capacity(None).unwrap(), (0, 0));
        assert_eq!(wanted_capacity(Some(&r(10, 0))).unwrap(), (10, 0));
        assert_eq!(wanted_capacity(Some(&r(0, 20))).unwrap(), (20, 20));
        assert!(matches!(
            wanted_capacity(Some(&r(30, 20))),
            Err(CsiError::OutOfRange(_))
        ));
        assert!(matches!(
            wanted_capacity(Some(&r(-1, 0))),
            Err(CsiError::InvalidArgument(_))
        ));
        assert!(fits(10, Some(&r(10, 10))));
        assert!(!fits(10, Some(&r(11, 0))));
        assert!(!fits(30, Some(&r(10, 20))));
    }
}
