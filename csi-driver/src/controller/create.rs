//! CreateVolume: claim the name, make the directory, fill it (from a snapshot or a volume, in the
//! background when that takes long), write the record. An attempt that fails undoes what it made
//! (directory, record, name claim); one killed midway is finished by the caller's retry or, if
//! nobody retries, removed by the sweep (`sweep`).

use std::sync::Arc;
use std::time::Duration;

use tether_csi_proto::v1::{self as csi, volume_content_source};

use crate::controller::copies::Outcome;
use crate::controller::wire::volume_message;
use crate::controller::{remove_volume, ControllerService};
use crate::grpc::error::{CsiError, CsiResult};
use crate::grpc::validate::{check_capabilities, fits, wanted_capacity};
use crate::share::ids::{Layout, SharePath, ShareRef, SnapshotId, VolumeId, VolumeName};
use crate::share::mutable::{Changes, Limit};
use crate::share::nfs::Share;
use crate::share::params::{same_volume, VolumeParams};
use crate::share::store::{self, Source, State, VolumeRecord, IMAGE_FILE};

/// One CreateVolume request, checked.
struct Wanted<'a> {
    req: &'a csi::CreateVolumeRequest,
    name: VolumeName,
    params: VolumeParams,
    id: String,
    capacity: i64,
    source: Option<Source>,
}

/// What an earlier request left at the volume's path means for this one.
enum Earlier {
    /// The volume exists as asked: the answer.
    Done(csi::CreateVolumeResponse),
    /// Half made by an earlier attempt of this request: finish it.
    Resume,
    /// An earlier volume of the name, half deleted: now deleted, start afresh.
    Deleted,
}

/// What a failing attempt must remove: its name claim, and the volume it made (directory and
/// record) or took over from an earlier, interrupted attempt.
#[derive(Debug, Default)]
struct Undo {
    claim: bool,
    volume: bool,
}

impl ControllerService {
    pub(crate) async fn create_volume(
        &self,
        req: &csi::CreateVolumeRequest,
    ) -> CsiResult<csi::CreateVolumeResponse> {
        let wanted = self.check_create(req)?;
        let _guard = self.driver.locks.acquire(&[
            format!("volume name {}", req.name),
            format!("volume {}", wanted.id),
            claim_lock(&wanted.name.claim_key()),
        ])?;
        let share_ref = &wanted.params.share;
        let share = self.driver.prepared_share(share_ref).await?;
        let total = self.driver.share_size(share_ref, &share).await?;
        if wanted.capacity > 0 && wanted.capacity as u64 > total {
            return Err(CsiError::Capacity(format!(
                "{} bytes is more than the whole share {share_ref} holds ({total} bytes)",
                wanted.capacity
            )));
        }
        // Claim the name: the claim says which path this name owns. A claim that exists already
        // comes from an earlier request for this name.
        let claim = store::claim_path(&wanted.name);
        let path = wanted.params.path.as_str();
        let fresh = share.claim(&claim, path).await?;
        if !fresh {
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
        let mut undo = Undo {
            claim: fresh,
            volume: false,
        };
        let result = self.create_claimed(&wanted, &share, fresh, &mut undo).await;
        match &result {
            Ok(_) | Err(CsiError::InProgress(_)) => {}
            Err(error) => self.undo(&wanted, &share, &claim, &undo, error).await,
        }
        result
    }

    /// The request's checks that need no server.
    fn check_create<'a>(&self, req: &'a csi::CreateVolumeRequest) -> CsiResult<Wanted<'a>> {
        let name = VolumeName::parse(&req.name)?;
        let mut params = VolumeParams::parse(&name, &req.parameters, &req.volume_capabilities)?;
        check_capabilities(&req.volume_capabilities, params.layout)?;
        // A VolumeAttributesClass's parameters win over the StorageClass's.
        let changes = Changes::parse(&req.mutable_parameters, true)?;
        changes.check(params.layout, params.settings.agent.is_some())?;
        params.settings.mutable = changes.apply(&params.settings.mutable);
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
        let source = resolve_source(req.volume_content_source.as_ref())?;
        Ok(Wanted {
            req,
            name,
            params,
            id,
            capacity,
            source,
        })
    }

    async fn create_claimed(
        &self,
        wanted: &Wanted<'_>,
        share: &Arc<Share>,
        fresh: bool,
        undo: &mut Undo,
    ) -> CsiResult<csi::CreateVolumeResponse> {
        let (req, params) = (wanted.req, &wanted.params);
        let path = params.path.as_str();
        // Read also with a fresh claim: an earlier attempt may have lost its claim to the sweep.
        let existing = store::read_volume(share, &params.path).await?;
        if let Some(record) = &existing {
            match self.judge_existing(wanted, share, record, undo).await? {
                Earlier::Done(response) => return Ok(response),
                Earlier::Resume => {}
                Earlier::Deleted => {
                    return Box::pin(self.create_claimed(wanted, share, true, undo)).await
                }
            }
        }
        if let Some(source) = &wanted.source {
            self.check_source_capacity(source, wanted.capacity).await?;
        }
        let empty_directory = wanted.source.is_none() && params.layout == Layout::Directory;
        if existing.is_none() {
            self.make_directory(params, share, fresh, empty_directory, undo)
                .await?;
        }
        let mut record = VolumeRecord {
            name: wanted.name.clone(),
            volume_id: wanted.id.clone(),
            path: path.to_string(),
            capacity_bytes: wanted.capacity,
            parameters: params.canonical(),
            settings: params.settings.clone(),
            source: wanted.source.clone(),
            state: State::Creating,
            created_unix: existing
                .as_ref()
                .map_or_else(store::now_unix, |r| r.created_unix),
            touched_unix: store::now_unix(),
            filled_by: None,
            limited: false,
        };
        store::write_volume(share, &record).await?;
        if let Some(source) = &wanted.source {
            let agent = params.settings.agent.as_deref();
            self.fill(
                source,
                (share, &params.share),
                &wanted.id,
                path,
                existing.is_some(),
                agent,
            )
            .await?;
            record.filled_by = Some(self.how_filled_from(source, agent, params).await.into());
        }
        // A directory volume of a share with tether-nfs-agent is limited to its capacity where
        // the server's filesystem has project quotas.
        if let (Layout::Directory, Some(agent)) = (params.layout, &params.settings.agent) {
            if wanted.capacity > 0 && params.settings.mutable.limit == Limit::Capacity {
                record.limited = self
                    .driver
                    .agents
                    .set_limit(agent, &params.share.export, path, wanted.capacity as u64)
                    .await?;
            }
        }
        if params.layout == Layout::Image {
            let image = format!("{path}/{IMAGE_FILE}");
            match share.stat(&image).await? {
                Some(found) if found.size >= wanted.capacity as u64 => {}
                Some(_) => share.truncate(&image, wanted.capacity as u64).await?,
                None => {
                    share
                        .create_sparse(&image, wanted.capacity as u64, 0o600)
                        .await?
                }
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
        tracing::info!(volume = %wanted.id, name = %req.name, share = %params.share, capacity = wanted.capacity, "volume created");
        Ok(csi::CreateVolumeResponse {
            volume: Some(volume_message(&record, &params.share)),
        })
    }

    /// What to make of the record an earlier request left at the volume's path.
    async fn judge_existing(
        &self,
        wanted: &Wanted<'_>,
        share: &Share,
        record: &VolumeRecord,
        undo: &mut Undo,
    ) -> CsiResult<Earlier> {
        let (req, params) = (wanted.req, &wanted.params);
        let path = params.path.as_str();
        if record.name != wanted.name {
            undo.claim = true;
            return Err(CsiError::Conflict(format!(
                "{path} on {} already belongs to volume {:?}",
                params.share, record.name
            )));
        }
        let same =
            same_volume(&record.parameters, &params.canonical()) && record.source == wanted.source;
        match record.state {
            State::Ready if same && fits(record.capacity_bytes, req.capacity_range.as_ref()) => {
                Ok(Earlier::Done(csi::CreateVolumeResponse {
                    volume: Some(volume_message(record, &params.share)),
                }))
            }
            State::Ready => Err(CsiError::Conflict(format!(
                "volume {:?} exists with {} bytes and other parameters or source",
                req.name, record.capacity_bytes
            ))),
            State::Deleting => {
                // An earlier volume of this name whose delete was interrupted: finish the delete
                // (as its onDelete says), then make the volume afresh.
                let mut old = record.clone();
                let id = VolumeId::decode(&old.volume_id).ok_or_else(|| {
                    CsiError::Internal(format!("unreadable volume id {:?}", old.volume_id))
                })?;
                remove_volume(share, &id, &mut old).await?;
                tracing::info!(volume = %old.volume_id, name = %req.name, "finished an interrupted delete before creating the name again");
                if !share.claim(&store::claim_path(&wanted.name), path).await? {
                    return Err(CsiError::Busy(format!(
                        "volume {:?} is being created by another caller; retry later",
                        req.name
                    )));
                }
                undo.claim = true;
                Ok(Earlier::Deleted)
            }
            State::Creating if !same => Err(CsiError::Conflict(format!(
                "volume {:?} is half made with other parameters",
                req.name
            ))),
            State::Creating => {
                // An earlier attempt's: this one finishes it, or removes it on failure.
                undo.claim = true;
                undo.volume = true;
                Ok(Earlier::Resume)
            }
        }
    }

    /// Makes the volume's directory. A directory that exists already is taken over only when
    /// an earlier attempt of this request made it (the claim is not fresh) and it is empty.
    async fn make_directory(
        &self,
        params: &VolumeParams,
        share: &Share,
        fresh: bool,
        empty_directory: bool,
        undo: &mut Undo,
    ) -> CsiResult<()> {
        let path = params.path.as_str();
        let (parent, _) = params.path.split_last();
        if !parent.is_empty() {
            share.mkdir_all(parent, 0o755).await?;
        }
        // An empty directory volume gets its final mode at once; one that is filled first stays
        // private until it is complete.
        let first_mode = if empty_directory {
            params.settings.mount_permissions
        } else {
            0o700
        };
        if share.mkdir(path, first_mode).await? {
            undo.claim = true;
            undo.volume = true;
            return Ok(());
        }
        if !fresh && share.list(path).await?.is_empty() {
            // Made by an attempt that was killed before it wrote the record.
            undo.claim = true;
            undo.volume = true;
            return Ok(());
        }
        undo.claim = true;
        Err(CsiError::Conflict(
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
        ))
    }

    /// Removes what a failed attempt made, so that nothing of it stays on the share. What cannot
    /// be removed now (the server is gone) is left to the sweep.
    async fn undo(
        &self,
        wanted: &Wanted<'_>,
        share: &Share,
        claim: &str,
        undo: &Undo,
        error: &CsiError,
    ) {
        if share.is_broken() {
            tracing::info!(volume = %wanted.id, "the share is unreachable; the sweep removes what this attempt made");
            return;
        }
        let path = wanted.params.path.as_str();
        let mut result = Ok(());
        if undo.volume {
            self.driver.copies.cancel(&wanted.id);
            result = store::delete_tree(share, path).await;
            if result.is_ok() {
                result = share
                    .remove_file(&store::record_path(&wanted.params.path))
                    .await;
            }
        }
        if result.is_ok() && (undo.claim || undo.volume) {
            result = share.remove_file(claim).await;
        }
        match result {
            Ok(()) => {
                tracing::info!(volume = %wanted.id, name = %wanted.req.name, error = %error, "creation failed; removed what it made")
            }
            Err(e) => {
                tracing::warn!(volume = %wanted.id, error = %e, "could not remove what a failed creation made; the sweep will")
            }
        }
    }

    /// The source's size; NOT_FOUND if it does not exist, OUT_OF_RANGE if it is bigger than
    /// what was asked for, ABORTED while a source snapshot is still being copied.
    pub(crate) async fn check_source_capacity(
        &self,
        source: &Source,
        capacity: i64,
    ) -> CsiResult<()> {
        let size = match source {
            Source::Snapshot(id) => {
                let missing = || CsiError::NotFound(format!("source snapshot {id} does not exist"));
                let parsed = SnapshotId::decode(id).ok_or_else(missing)?;
                let share = self.driver.share(&parsed.share).await?;
                match store::read_snapshot(&share, &parsed.key).await? {
                    Some(s) if s.snapshot_id != *id => return Err(missing()),
                    Some(s) if s.state == State::Ready => s.size_bytes,
                    Some(_) => {
                        return Err(CsiError::InProgress(format!(
                            "source snapshot {id} is still being copied; retry later"
                        )))
                    }
                    None => return Err(missing()),
                }
            }
            Source::Volume(id) => {
                let missing = || CsiError::NotFound(format!("source volume {id} does not exist"));
                let parsed = VolumeId::decode(id).ok_or_else(missing)?;
                let share = self.driver.share(&parsed.share).await?;
                match store::read_volume(&share, &parsed.path).await? {
                    Some(v) if v.state == State::Ready && v.volume_id == *id => v.capacity_bytes,
                    _ => return Err(missing()),
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

    /// Copies the source's tree into the new volume's directory, in the background; ABORTED
    /// (retry later) while the copy runs. `resume` empties what an interrupted attempt copied.
    async fn fill(
        &self,
        source: &Source,
        (target, target_ref): (&Arc<Share>, &ShareRef),
        volume_id: &str,
        path: &str,
        resume: bool,
        agent: Option<&str>,
    ) -> CsiResult<()> {
        let (share_ref, from, source_id) = match source {
            Source::Snapshot(id) => {
                let parsed = SnapshotId::decode(id).ok_or_else(|| {
                    CsiError::NotFound(format!("source snapshot {id} does not exist"))
                })?;
                let from = format!("{}/data", store::snapshot_dir(&parsed.key));
                (parsed.share, from, id.as_str())
            }
            Source::Volume(id) => {
                let parsed = VolumeId::decode(id).ok_or_else(|| {
                    CsiError::NotFound(format!("source volume {id} does not exist"))
                })?;
                (parsed.share, parsed.path.as_str().to_string(), id.as_str())
            }
        };
        let source_share = self.driver.share(&share_ref).await?;
        // tether-nfs-agent clones within one share (one filesystem) only.
        let agent = agent.filter(|_| share_ref == *target_ref).map(|a| {
            (
                a.to_string(),
                target_ref.export.clone(),
                self.driver.clone(),
            )
        });
        let (target, to) = (target.clone(), path.to_string());
        let label = from.clone();
        // While the copy runs, the record is touched now and then, so that no sweep (of this
        // replica or another) takes a long copy for an abandoned one.
        let heartbeat = (self.driver.tuning.leftover_age / 4).max(Duration::from_secs(30));
        let outcome = self
            .driver
            .copies
            .run(volume_id, Some(source_id), move |progress| async move {
                if resume {
                    target.clear_dir(&to).await?;
                }
                if let Some((address, export, driver)) = agent {
                    let done = driver
                        .agents
                        .clone_tree(&address, &export, &from, &to, true)
                        .await?;
                    return Ok(done.bytes);
                }
                crate::metrics::metrics().nfs_fill();
                let copy = source_share.copy_tree(&from, &target, &to, &progress);
                tokio::pin!(copy);
                let mut ticker = tokio::time::interval(heartbeat);
                ticker.tick().await;
                loop {
                    tokio::select! {
                        copied = &mut copy => return Ok(copied?),
                        _ = ticker.tick() => touch(&target, &to).await,
                    }
                }
            })
            .await;
        match outcome {
            Outcome::Done(bytes) => {
                tracing::info!(from = %label, to = %path, bytes, "volume populated");
                Ok(())
            }
            Outcome::Failed(e) => Err(e),
            Outcome::Running { bytes, files } => Err(CsiError::InProgress(format!(
                "volume {volume_id} is being filled from {label}: {bytes} bytes in {files} \
                 entries so far; retry later"
            ))),
        }
    }
}

impl ControllerService {
    /// How a snapshot or volume got its data: through `agent` (a clone where its filesystem
    /// can, else a copy on the server) or copied over NFS.
    pub(crate) async fn how_filled(&self, agent: Option<&str>, export: &str) -> &'static str {
        let Some(address) = agent else {
            return "nfs_copy";
        };
        match self.driver.agents.capabilities(address, export).await {
            Ok(caps) if caps.reflink => "agent_reflink",
            _ => "agent_copy",
        }
    }

    /// [`Self::how_filled`] for a volume made from `source` with `params`.
    async fn how_filled_from(
        &self,
        source: &Source,
        agent: Option<&str>,
        params: &VolumeParams,
    ) -> &'static str {
        let source_share = match source {
            Source::Snapshot(id) => SnapshotId::decode(id).map(|s| s.share),
            Source::Volume(id) => VolumeId::decode(id).map(|v| v.share),
        };
        if source_share.as_ref() != Some(&params.share) {
            return "nfs_copy";
        }
        self.how_filled(agent, &params.share.export).await
    }
}

/// The content source of a request, if any.
fn resolve_source(source: Option<&csi::VolumeContentSource>) -> CsiResult<Option<Source>> {
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

/// Marks the half-made volume at `path` as worked on now.
async fn touch(share: &Share, path: &str) {
    let Ok(path) = SharePath::parse(path) else {
        return;
    };
    if let Ok(Some(mut record)) = store::read_volume(share, &path).await {
        if record.state == State::Creating {
            record.touched_unix = store::now_unix();
            if let Err(e) = store::write_volume(share, &record).await {
                tracing::warn!(volume = %record.volume_id, error = %e, "could not mark a copy as alive");
            }
        }
    }
}

/// The lock a request holds while it works on the name claim `key` (the sweep leaves a claim
/// whose lock it cannot take to that request).
pub(crate) fn claim_lock(key: &str) -> String {
    format!("volume claim {key}")
}
