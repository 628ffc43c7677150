//! The Controller service's gRPC adapter: each RPC traced and handed to the workflow.

use std::sync::Arc;

use tether_csi_proto::v1::{
    self as csi, controller_service_capability::rpc::Type as Rpc, ControllerServiceCapability,
};
use tonic::{Request, Response, Status};

use super::traced;
use crate::controller::ControllerService;
use crate::grpc::error::CsiError;

/// The tonic service: a cheap handle around the shared controller.
pub struct ControllerServer(pub Arc<ControllerService>);

const CAPABILITIES: [Rpc; 12] = [
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
    Rpc::ModifyVolume,
];

#[tonic::async_trait]
impl csi::controller_server::Controller for ControllerServer {
    async fn create_volume(
        &self,
        request: Request<csi::CreateVolumeRequest>,
    ) -> Result<Response<csi::CreateVolumeResponse>, Status> {
        let req = request.into_inner();
        traced("CreateVolume", &req.name, &req, self.0.create_volume(&req)).await
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
            self.0.delete_volume(&req),
        )
        .await
    }

    async fn controller_publish_volume(
        &self,
        request: Request<csi::ControllerPublishVolumeRequest>,
    ) -> Result<Response<csi::ControllerPublishVolumeResponse>, Status> {
        let req = request.into_inner();
        traced("ControllerPublishVolume", &req.volume_id, &req, async {
            Err(CsiError::NotOffered(
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
            Err(CsiError::NotOffered(
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
            self.0.validate(&req),
        )
        .await
    }

    async fn list_volumes(
        &self,
        request: Request<csi::ListVolumesRequest>,
    ) -> Result<Response<csi::ListVolumesResponse>, Status> {
        let req = request.into_inner();
        traced("ListVolumes", "", &req, self.0.list_volumes(&req)).await
    }

    async fn get_capacity(
        &self,
        request: Request<csi::GetCapacityRequest>,
    ) -> Result<Response<csi::GetCapacityResponse>, Status> {
        let req = request.into_inner();
        traced("GetCapacity", "", &req, self.0.get_capacity(&req)).await
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
            self.0.create_snapshot(&req),
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
            self.0.delete_snapshot(&req),
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
            self.0.list_snapshots(&req),
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
            self.0.get_snapshot(&req),
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
            self.0.expand(&req),
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
            self.0.get_volume(&req),
        )
        .await
    }

    async fn controller_modify_volume(
        &self,
        request: Request<csi::ControllerModifyVolumeRequest>,
    ) -> Result<Response<csi::ControllerModifyVolumeResponse>, Status> {
        let req = request.into_inner();
        traced(
            "ControllerModifyVolume",
            &req.volume_id,
            &req,
            self.0.modify(&req),
        )
        .await
    }
}
