//! What the CSI benchmarks send: a controller client on a unix socket, and CreateVolume requests
//! as csi-provisioner builds them for an NFS StorageClass.

use tether_csi_proto::v1::{self as csi, controller_client::ControllerClient, volume_capability};
use tonic::transport::Channel;

pub async fn connect(socket: &str) -> ControllerClient<Channel> {
    let channel = tether_csi::client::channel(socket)
        .await
        .expect("connecting to tether-csi");
    ControllerClient::new(channel)
}

/// A 1 GiB ReadWriteMany filesystem volume on `server`:`share` over NFS version `vers`.
pub fn request(server: &str, share: &str, vers: &str, name: String) -> csi::CreateVolumeRequest {
    csi::CreateVolumeRequest {
        name,
        capacity_range: Some(csi::CapacityRange {
            required_bytes: 1 << 30,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![csi::VolumeCapability {
            access_type: Some(volume_capability::AccessType::Mount(
                volume_capability::MountVolume {
                    mount_flags: vec![format!("nfsvers={vers}")],
                    ..Default::default()
                },
            )),
            access_mode: Some(volume_capability::AccessMode {
                mode: volume_capability::access_mode::Mode::MultiNodeMultiWriter as i32,
            }),
        }],
        parameters: [
            ("server".to_string(), server.to_string()),
            ("share".to_string(), share.to_string()),
        ]
        .into(),
        ..Default::default()
    }
}
