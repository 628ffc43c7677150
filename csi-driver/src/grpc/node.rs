//! The Node service's gRPC adapter: blocking work runs off the async runtime.

use std::sync::Arc;

use tether_csi_proto::v1::{
    self as csi, node_service_capability::rpc::Type as Rpc, NodeServiceCapability,
};
use tonic::{Request, Response, Status};

use super::{blocking, traced};
use crate::node::{NodeService, TOPOLOGY_KEY};

const CAPABILITIES: [Rpc; 5] = [
    Rpc::StageUnstageVolume,
    Rpc::GetVolumeStats,
    Rpc::VolumeCondition,
    Rpc::ExpandVolume,
    Rpc::SingleNodeMultiWriter,
];

/// The tonic service: a cheap handle around the shared node state.
pub struct NodeServer(pub Arc<NodeService>);

#[tonic::async_trait]
impl csi::node_server::Node for NodeServer {
    async fn node_stage_volume(
        &self,
        request: Request<csi::NodeStageVolumeRequest>,
    ) -> Result<Response<csi::NodeStageVolumeResponse>, Status> {
        let req = request.into_inner();
        let owned = req.clone();
        let service = self.0.clone();
        traced("NodeStageVolume", &req.volume_id, &req, async move {
            let tuning = service.mount_tuning(&owned.volume_id).await;
            blocking(&service, move |s| s.stage(&owned, &tuning)).await
        })
        .await
    }

    async fn node_unstage_volume(
        &self,
        request: Request<csi::NodeUnstageVolumeRequest>,
    ) -> Result<Response<csi::NodeUnstageVolumeResponse>, Status> {
        let req = request.into_inner();
        let owned = req.clone();
        traced(
            "NodeUnstageVolume",
            &req.volume_id,
            &req,
            blocking(&self.0, move |s| s.unstage(&owned)),
        )
        .await
    }

    async fn node_publish_volume(
        &self,
        request: Request<csi::NodePublishVolumeRequest>,
    ) -> Result<Response<csi::NodePublishVolumeResponse>, Status> {
        let req = request.into_inner();
        let owned = req.clone();
        let service = self.0.clone();
        traced("NodePublishVolume", &req.volume_id, &req, async move {
            let runtime = tokio::runtime::Handle::current();
            blocking(&service, move |s| {
                // Read from the share only if publishing has to mount (a block volume, or a
                // stale staging mount staged again): most publishes are a bind mount.
                let tuning = || runtime.block_on(s.mount_tuning(&owned.volume_id));
                s.publish(&owned, &tuning)
            })
            .await
        })
        .await
    }

    async fn node_unpublish_volume(
        &self,
        request: Request<csi::NodeUnpublishVolumeRequest>,
    ) -> Result<Response<csi::NodeUnpublishVolumeResponse>, Status> {
        let req = request.into_inner();
        let owned = req.clone();
        traced(
            "NodeUnpublishVolume",
            &req.volume_id,
            &req,
            blocking(&self.0, move |s| s.unpublish(&owned)),
        )
        .await
    }

    async fn node_get_volume_stats(
        &self,
        request: Request<csi::NodeGetVolumeStatsRequest>,
    ) -> Result<Response<csi::NodeGetVolumeStatsResponse>, Status> {
        let req = request.into_inner();
        traced(
            "NodeGetVolumeStats",
            &req.volume_id,
            &req,
            self.0.stats(&req),
        )
        .await
    }

    async fn node_expand_volume(
        &self,
        request: Request<csi::NodeExpandVolumeRequest>,
    ) -> Result<Response<csi::NodeExpandVolumeResponse>, Status> {
        let req = request.into_inner();
        let owned = req.clone();
        traced(
            "NodeExpandVolume",
            &req.volume_id,
            &req,
            blocking(&self.0, move |s| s.expand(&owned)),
        )
        .await
    }

    async fn node_get_capabilities(
        &self,
        request: Request<csi::NodeGetCapabilitiesRequest>,
    ) -> Result<Response<csi::NodeGetCapabilitiesResponse>, Status> {
        let req = request.into_inner();
        traced("NodeGetCapabilities", "", &req, async {
            Ok(csi::NodeGetCapabilitiesResponse {
                capabilities: CAPABILITIES
                    .iter()
                    .map(|rpc| NodeServiceCapability {
                        r#type: Some(csi::node_service_capability::Type::Rpc(
                            csi::node_service_capability::Rpc {
                                r#type: *rpc as i32,
                            },
                        )),
                    })
                    .collect(),
            })
        })
        .await
    }

    async fn node_get_info(
        &self,
        request: Request<csi::NodeGetInfoRequest>,
    ) -> Result<Response<csi::NodeGetInfoResponse>, Status> {
        let req = request.into_inner();
        let node_id = self.0.driver.node_id.clone();
        traced("NodeGetInfo", "", &req, async move {
            Ok(csi::NodeGetInfoResponse {
                node_id: node_id.clone(),
                max_volumes_per_node: 0,
                accessible_topology: Some(csi::Topology {
                    segments: [(TOPOLOGY_KEY.to_string(), node_id)].into(),
                }),
            })
        })
        .await
    }
}
