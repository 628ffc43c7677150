//! Runs the built tether-csi next to a real NFS server (nfs-ganesha in its own namespace) and
//! talks to it over its unix socket with a tonic client, as kubelet and the CSI sidecars do.

#![allow(dead_code)] // Each test binary uses a different part.

pub mod agent;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use test_support::ganesha::NfsServer;
use tether_csi_proto::v1::{
    self as csi, controller_client::ControllerClient, identity_client::IdentityClient,
    node_client::NodeClient, volume_capability, volume_content_source, VolumeCapability,
};
use tonic::transport::Channel;

pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tether-csi"))
}

pub struct Driver {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
}

impl Driver {
    /// Starts `tether-csi --mode controller` in the server's namespace with `extra` flags.
    pub fn start(nfs: &NfsServer, extra: &[&str]) -> Driver {
        Self::start_as(nfs, "controller", extra)
    }

    /// Starts `tether-csi --mode all` (controller and node; its mounts are in the mount
    /// namespace `ip netns exec` gives it) in the server's namespace.
    pub fn start_all(nfs: &NfsServer, extra: &[&str]) -> Driver {
        Self::start_as(nfs, "all", extra)
    }

    fn start_as(nfs: &NfsServer, mode: &str, extra: &[&str]) -> Driver {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("csi.sock");
        let share = format!("{}:{}", nfs.address, nfs.share());
        let log = std::fs::File::create(dir.path().join("driver.log")).unwrap();
        let child = nfs
            .command(&binary())
            .args(["--mode", mode, "--node-id", "test-node"])
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--endpoint")
            .arg(format!("unix://{}", socket.display()))
            .args(["--share", &share, "--nfs-timeout", "3"])
            .args(extra)
            .env("TETHER_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let driver = Driver {
            child: Some(child),
            dir,
            socket,
        };
        driver.wait_for_socket();
        driver
    }

    fn wait_for_socket(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.socket.exists() {
            assert!(Instant::now() < deadline, "no socket:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("driver.log")).unwrap_or_default()
    }

    /// SIGTERM and the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        let _ = std::process::Command::new("kill")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "tether-csi ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, as a node losing power or the OOM killer would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub async fn channel(&self) -> Channel {
        channel(&self.socket).await
    }

    pub async fn controller(&self) -> ControllerClient<Channel> {
        ControllerClient::new(self.channel().await)
    }

    pub async fn node(&self) -> NodeClient<Channel> {
        NodeClient::new(self.channel().await)
    }

    pub async fn identity(&self) -> IdentityClient<Channel> {
        IdentityClient::new(self.channel().await)
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub async fn channel(socket: &Path) -> Channel {
    tether_csi::client::channel(&socket.display().to_string())
        .await
        .unwrap()
}

pub fn mount_capability(
    mode: volume_capability::access_mode::Mode,
    flags: &[&str],
) -> VolumeCapability {
    VolumeCapability {
        access_type: Some(volume_capability::AccessType::Mount(
            volume_capability::MountVolume {
                fs_type: String::new(),
                mount_flags: flags.iter().map(|f| f.to_string()).collect(),
                volume_mount_group: String::new(),
            },
        )),
        access_mode: Some(volume_capability::AccessMode { mode: mode as i32 }),
    }
}

pub fn block_capability(mode: volume_capability::access_mode::Mode) -> VolumeCapability {
    VolumeCapability {
        access_type: Some(volume_capability::AccessType::Block(
            volume_capability::BlockVolume {},
        )),
        access_mode: Some(volume_capability::AccessMode { mode: mode as i32 }),
    }
}

pub fn rwx() -> VolumeCapability {
    mount_capability(
        volume_capability::access_mode::Mode::MultiNodeMultiWriter,
        &[],
    )
}

/// A CreateVolume request for `nfs`'s share with `extra` StorageClass parameters.
pub fn create_request(
    nfs: &NfsServer,
    name: &str,
    bytes: i64,
    extra: &[(&str, &str)],
) -> csi::CreateVolumeRequest {
    let mut parameters: std::collections::HashMap<String, String> = [
        ("server".to_string(), nfs.address.clone()),
        ("share".to_string(), nfs.share()),
    ]
    .into();
    for (k, v) in extra {
        parameters.insert(k.to_string(), v.to_string());
    }
    csi::CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(csi::CapacityRange {
            required_bytes: bytes,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![rwx()],
        parameters,
        ..Default::default()
    }
}

/// Key/value pairs as a protobuf map.
pub fn pairs(pairs: &[(&str, &str)]) -> std::collections::HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// ControllerModifyVolume as csi-resizer sends it: a VolumeAttributesClass's parameters.
pub fn modify_request(
    volume_id: &str,
    parameters: &[(&str, &str)],
) -> csi::ControllerModifyVolumeRequest {
    csi::ControllerModifyVolumeRequest {
        volume_id: volume_id.to_string(),
        mutable_parameters: pairs(parameters),
        ..Default::default()
    }
}

/// The gRPC code of a failed call.
pub fn code<T: std::fmt::Debug>(result: Result<tonic::Response<T>, tonic::Status>) -> tonic::Code {
    match result {
        Ok(r) => panic!("expected an error, got {r:?}"),
        Err(status) => status.code(),
    }
}

/// `r` restoring the snapshot `id`.
pub fn from_snapshot(mut r: csi::CreateVolumeRequest, id: &str) -> csi::CreateVolumeRequest {
    r.volume_content_source = Some(csi::VolumeContentSource {
        r#type: Some(volume_content_source::Type::Snapshot(
            volume_content_source::SnapshotSource {
                snapshot_id: id.into(),
            },
        )),
    });
    r
}

/// `r` cloning the volume `id`.
pub fn from_volume(mut r: csi::CreateVolumeRequest, id: &str) -> csi::CreateVolumeRequest {
    r.volume_content_source = Some(csi::VolumeContentSource {
        r#type: Some(volume_content_source::Type::Volume(
            volume_content_source::VolumeSource {
                volume_id: id.into(),
            },
        )),
    });
    r
}

/// CreateVolume that must succeed: the volume.
pub async fn create(c: &mut ControllerClient<Channel>, r: csi::CreateVolumeRequest) -> csi::Volume {
    c.create_volume(r)
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap()
}

/// CreateSnapshot of `source` named `name` that must succeed: the snapshot.
pub async fn snapshot(
    c: &mut ControllerClient<Channel>,
    source: &str,
    name: &str,
) -> csi::Snapshot {
    c.create_snapshot(csi::CreateSnapshotRequest {
        source_volume_id: source.into(),
        name: name.into(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .snapshot
    .unwrap()
}
