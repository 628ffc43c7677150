//! The Identity service: name, capabilities, and a health probe that reaches the NFS servers.

use std::sync::Arc;

use tether_csi_proto::v1::{self as csi, plugin_capability};
use tonic::{Request, Response, Status};

use super::traced;
use crate::driver::{Driver, DRIVER_NAME};
use crate::grpc::error::CsiError;

pub struct IdentityService {
    driver: Arc<Driver>,
}

impl IdentityService {
    pub fn new(driver: Arc<Driver>) -> IdentityService {
        IdentityService { driver }
    }

    /// Every NFS server this instance needs answers a NULL call in time. Those are the shares on
    /// the command line, or, without any, the shares used since start.
    async fn probe(&self) -> Result<csi::ProbeResponse, CsiError> {
        let shares = match self.driver.configured_shares() {
            [] => self.driver.known_shares(),
            configured => configured.to_vec(),
        };
        for share in shares {
            let reached = match self.driver.share(&share).await {
                Ok(connection) => connection.ping().await,
                Err(e) => Err(e),
            };
            if let Err(e) = reached {
                return Err(CsiError::WrongState(format!("not ready: {e}")));
            }
        }
        Ok(csi::ProbeResponse { ready: Some(true) })
    }
}

#[tonic::async_trait]
impl csi::identity_server::Identity for IdentityService {
    async fn get_plugin_info(
        &self,
        request: Request<csi::GetPluginInfoRequest>,
    ) -> Result<Response<csi::GetPluginInfoResponse>, Status> {
        let req = request.into_inner();
        traced("GetPluginInfo", "", &req, async {
            Ok(csi::GetPluginInfoResponse {
                name: DRIVER_NAME.into(),
                vendor_version: env!("CARGO_PKG_VERSION").into(),
                manifest: [(
                    "csi-spec".to_string(),
                    tether_csi_proto::CSI_VERSION.to_string(),
                )]
                .into(),
            })
        })
        .await
    }

    async fn get_plugin_capabilities(
        &self,
        request: Request<csi::GetPluginCapabilitiesRequest>,
    ) -> Result<Response<csi::GetPluginCapabilitiesResponse>, Status> {
        let req = request.into_inner();
        traced("GetPluginCapabilities", "", &req, async move {
            let service = |t: plugin_capability::service::Type| csi::PluginCapability {
                r#type: Some(plugin_capability::Type::Service(
                    plugin_capability::Service { r#type: t as i32 },
                )),
            };
            // Every instance reports the same set (the spec asks for it), node instances too:
            // the plugin as a whole offers the controller.
            let capabilities = vec![
                service(plugin_capability::service::Type::ControllerService),
                csi::PluginCapability {
                    r#type: Some(plugin_capability::Type::VolumeExpansion(
                        plugin_capability::VolumeExpansion {
                            r#type: plugin_capability::volume_expansion::Type::Online as i32,
                        },
                    )),
                },
            ];
            Ok(csi::GetPluginCapabilitiesResponse { capabilities })
        })
        .await
    }

    async fn probe(
        &self,
        request: Request<csi::ProbeRequest>,
    ) -> Result<Response<csi::ProbeResponse>, Status> {
        let req = request.into_inner();
        traced("Probe", "", &req, self.probe()).await
    }
}
