//! ControllerModifyVolume: a VolumeAttributesClass's parameters applied to an existing volume.
//! What changes on the server (the quota) is done first; the record, which the nodes read at
//! their next stage (mount options) and DeleteVolume reads (onDelete), is written last, so a
//! call that fails changes nothing and a retry converges.

use tether_csi_proto::v1 as csi;

use crate::controller::ControllerService;
use crate::grpc::error::{CsiError, CsiResult};
use crate::share::ids::Layout;
use crate::share::mutable::{Changes, Limit};
use crate::share::store;

impl ControllerService {
    pub(crate) async fn modify(
        &self,
        req: &csi::ControllerModifyVolumeRequest,
    ) -> CsiResult<csi::ControllerModifyVolumeResponse> {
        if req.volume_id.is_empty() {
            return Err(CsiError::invalid("volume_id is required"));
        }
        let changes = Changes::parse(&req.mutable_parameters, true)?;
        let _guard = self
            .driver
            .locks
            .acquire(&[format!("volume {}", req.volume_id)])?;
        let (id, share, mut record) = self.existing(&req.volume_id).await?;
        changes.check(id.layout, record.settings.agent.is_some())?;
        let wanted = changes.apply(&record.settings.mutable);
        if wanted == record.settings.mutable {
            return Ok(csi::ControllerModifyVolumeResponse {});
        }
        if let (Layout::Directory, Some(agent)) = (id.layout, &record.settings.agent) {
            let path = id.path.as_str();
            match wanted.limit {
                Limit::None if record.limited => {
                    self.driver
                        .agents
                        .set_limit(agent, &id.share.export, path, 0)
                        .await?;
                    record.limited = false;
                }
                Limit::Capacity if !record.limited && record.capacity_bytes > 0 => {
                    let capacity = record.capacity_bytes as u64;
                    if !self
                        .driver
                        .agents
                        .set_limit(agent, &id.share.export, path, capacity)
                        .await?
                    {
                        return Err(CsiError::invalid(format!(
                            "limit: capacity is not supported by volume {}: the filesystem under {} has no project quota",
                            req.volume_id, id.share
                        )));
                    }
                    record.limited = true;
                }
                _ => {}
            }
        }
        let before = std::mem::replace(&mut record.settings.mutable, wanted);
        record.touched_unix = store::now_unix();
        store::write_volume(&share, &record).await?;
        tracing::info!(
            volume = %req.volume_id,
            before = ?before,
            after = ?record.settings.mutable,
            limited = record.limited,
            "volume modified"
        );
        Ok(csi::ControllerModifyVolumeResponse {})
    }
}
