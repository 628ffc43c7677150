#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

//! The Node service with a real kernel NFS client. This machine's kernel has none, so
//! `node_service_in_a_vm` boots Debian's kernel under QEMU with `tests/vm/run.sh` (nfs-ganesha on
//! the host side, in its own namespace) and runs `guest_node_suite` from this very test binary
//! inside the guest, where tether-csi (controller and node) mounts volumes for real.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{block_capability, code, mount_capability};
use tether_csi::node::mounts;
use tether_csi_proto::v1::{
    self as csi, controller_client::ControllerClient, node_client::NodeClient,
    volume_capability::access_mode::Mode, VolumeCapability,
};
use tonic::transport::Channel;
use tonic::Code;

const MIB: i64 = 1 << 20;

#[test]
fn node_service_in_a_vm() {
    test_support::require_root();
    let me = std::env::current_exe().unwrap();
    test_support::run_one_test_in_vm(
        1500,
        &[
            me.as_os_str(),
            "--exact".as_ref(),
            "guest_node_suite".as_ref(),
            "--ignored".as_ref(),
            "--nocapture".as_ref(),
            "--test-threads".as_ref(),
            "1".as_ref(),
        ],
    );
}

/// Runs inside the VM only (see `node_service_in_a_vm`).
#[tokio::test]
#[ignore = "runs inside the QEMU guest that node_service_in_a_vm boots"]
async fn guest_node_suite() {
    assert_eq!(
        std::env::var("TETHER_IN_VM").as_deref(),
        Ok("1"),
        "run me through tests/vm/run.sh"
    );
    let mut guest = Guest::start();
    let started = Instant::now();
    directory_volume_lifecycle(&mut guest, "4.1").await;
    step(started, "NFSv4.1 directory volume");
    directory_volume_lifecycle(&mut guest, "3").await;
    step(started, "NFSv3 directory volume");
    image_volume_lifecycle(&mut guest, "ext4").await;
    step(started, "ext4 image volume");
    image_volume_lifecycle(&mut guest, "xfs").await;
    step(started, "xfs image volume");
    block_volume(&mut guest).await;
    step(started, "block volume");
    block_single_writer_and_foreign_signatures(&mut guest).await;
    step(started, "block: single writer, never formatted over");
    large_volume_stats(&mut guest).await;
    step(started, "stats of a large directory volume");
    stale_handle_recovery(&mut guest).await;
    step(started, "stale file handle");
    server_stopped_while_mounted(&mut guest).await;
    step(started, "server stopped while mounted");
}

fn step(started: Instant, what: &str) {
    println!(
        "guest: ok: {what} ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
}

struct Guest {
    driver: Child,
    socket: PathBuf,
    dir: PathBuf,
    server: String,
    share: String,
    controller: Option<ControllerClient<Channel>>,
    node: Option<NodeClient<Channel>>,
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Guest {
    fn start() -> Guest {
        let dir = PathBuf::from("/tmp/guest");
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("csi.sock");
        let server = std::env::var("NFS_SERVER").unwrap();
        let share = std::env::var("NFS_SHARE").unwrap();
        let log = std::fs::File::create(dir.join("driver.log")).unwrap();
        let driver = Command::new(common::binary())
            .args([
                "--mode",
                "all",
                "--node-id",
                "vm-node",
                "--nfs-timeout",
                "5",
            ])
            .arg("--endpoint")
            .arg(format!("unix://{}", socket.display()))
            .arg("--share")
            .arg(format!("{server}:{share}"))
            .arg("--state-dir")
            .arg(dir.join("state"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "tether-csi did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Guest {
            driver,
            socket,
            dir,
            server,
            share,
            controller: None,
            node: None,
        }
    }

    async fn controller(&mut self) -> ControllerClient<Channel> {
        if self.controller.is_none() {
            self.controller = Some(ControllerClient::new(common::channel(&self.socket).await));
        }
        self.controller.clone().unwrap()
    }

    async fn node(&mut self) -> NodeClient<Channel> {
        if self.node.is_none() {
            self.node = Some(NodeClient::new(common::channel(&self.socket).await));
        }
        self.node.clone().unwrap()
    }

    async fn create(
        &mut self,
        name: &str,
        bytes: i64,
        extra: &[(&str, &str)],
        caps: Vec<VolumeCapability>,
    ) -> csi::Volume {
        let mut parameters: std::collections::HashMap<String, String> = [
            ("server".to_string(), self.server.clone()),
            ("share".to_string(), self.share.clone()),
        ]
        .into();
        for (k, v) in extra {
            parameters.insert(k.to_string(), v.to_string());
        }
        let request = csi::CreateVolumeRequest {
            name: name.into(),
            capacity_range: Some(csi::CapacityRange {
                required_bytes: bytes,
                limit_bytes: 0,
            }),
            volume_capabilities: caps,
            parameters,
            ..Default::default()
        };
        self.controller()
            .await
            .create_volume(request)
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("driver.log")).unwrap_or_default()
    }
}

fn stage_request(
    volume: &csi::Volume,
    staging: &Path,
    cap: &VolumeCapability,
) -> csi::NodeStageVolumeRequest {
    csi::NodeStageVolumeRequest {
        volume_id: volume.volume_id.clone(),
        staging_target_path: staging.display().to_string(),
        volume_capability: Some(cap.clone()),
        volume_context: volume.volume_context.clone(),
        ..Default::default()
    }
}

fn publish_request(
    volume: &csi::Volume,
    staging: &Path,
    target: &Path,
    cap: &VolumeCapability,
    readonly: bool,
) -> csi::NodePublishVolumeRequest {
    csi::NodePublishVolumeRequest {
        volume_id: volume.volume_id.clone(),
        staging_target_path: staging.display().to_string(),
        target_path: target.display().to_string(),
        volume_capability: Some(cap.clone()),
        readonly,
        volume_context: volume.volume_context.clone(),
        ..Default::default()
    }
}

fn unpublish_request(volume: &csi::Volume, target: &Path) -> csi::NodeUnpublishVolumeRequest {
    csi::NodeUnpublishVolumeRequest {
        volume_id: volume.volume_id.clone(),
        target_path: target.display().to_string(),
    }
}

fn unstage_request(volume: &csi::Volume, staging: &Path) -> csi::NodeUnstageVolumeRequest {
    csi::NodeUnstageVolumeRequest {
        volume_id: volume.volume_id.clone(),
        staging_target_path: staging.display().to_string(),
    }
}

fn stats_request(volume: &csi::Volume, path: &Path) -> csi::NodeGetVolumeStatsRequest {
    csi::NodeGetVolumeStatsRequest {
        volume_id: volume.volume_id.clone(),
        volume_path: path.display().to_string(),
        staging_target_path: String::new(),
    }
}

fn mounted(path: &Path) -> Option<mounts::MountInfo> {
    mounts::mounted_at(path).unwrap()
}

fn usage(
    stats: &csi::NodeGetVolumeStatsResponse,
    unit: csi::volume_usage::Unit,
) -> &csi::VolumeUsage {
    stats.usage.iter().find(|u| u.unit == unit as i32).unwrap()
}

/// Asks the host (tests/vm/run.sh) to stop or start the NFS server.
fn host_request(request: &str) {
    let reply = Path::new("/tmp/scratch/host-reply");
    let _ = std::fs::remove_file(reply);
    // Written whole, then renamed: the host polls for the file and must never read it empty.
    std::fs::write("/tmp/scratch/host-request.tmp", request).unwrap();
    std::fs::rename("/tmp/scratch/host-request.tmp", "/tmp/scratch/host-request").unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !reply.exists() {
        assert!(
            Instant::now() < deadline,
            "the host did not answer {request}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(std::fs::read_to_string(reply).unwrap().trim(), "ok");
    std::fs::remove_file(reply).unwrap();
}

async fn directory_volume_lifecycle(guest: &mut Guest, vers: &str) {
    let flags = [format!("nfsvers={vers}")];
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let rwx = mount_capability(Mode::MultiNodeMultiWriter, &flags);
    let name = format!("pvc-dir-v{}", vers.replace('.', ""));
    let volume = guest.create(&name, 64 * MIB, &[], vec![rwx.clone()]).await;
    let other = guest
        .create(&format!("{name}-other"), MIB, &[], vec![rwx.clone()])
        .await;
    let mut node = guest.node().await;
    let staging = guest.path(&format!("{name}-staging"));
    let target = guest.path(&format!("{name}-target"));
    let target_ro = guest.path(&format!("{name}-target-ro"));

    // A VolumeAttributesClass's mount options, changed before the volume is staged, are what
    // the node mounts with.
    guest
        .controller()
        .await
        .controller_modify_volume(common::modify_request(
            &volume.volume_id,
            &[("nconnect", "2"), ("rsize", "65536")],
        ))
        .await
        .unwrap();

    // Stage: a kernel NFS mount of exactly this volume's directory; again is OK; another volume
    // at the same path is not.
    for _ in 0..3 {
        node.node_stage_volume(stage_request(&volume, &staging, &rwx))
            .await
            .unwrap();
    }
    let staged = mounted(&staging).expect("staged");
    assert!(staged.fs_type.starts_with("nfs"), "{staged:?}");
    assert!(staged.source.ends_with(&format!("/{name}")), "{staged:?}");
    let expected_vers = if vers == "3" { "vers=3" } else { "vers=4.1" };
    assert!(
        staged.super_options.iter().any(|o| o == expected_vers),
        "{staged:?}"
    );
    for option in ["nconnect=2", "rsize=65536"] {
        assert!(
            staged.super_options.iter().any(|o| o == option),
            "{option}: {staged:?}"
        );
    }
    assert_eq!(
        code(
            node.node_stage_volume(stage_request(&other, &staging, &rwx))
                .await
        ),
        Code::AlreadyExists
    );

    // Publish read-write, twice; then read-only elsewhere, which refuses writes.
    for _ in 0..2 {
        node.node_publish_volume(publish_request(&volume, &staging, &target, &rwx, false))
            .await
            .unwrap();
    }
    std::fs::write(target.join("hello"), b"from the pod").unwrap();
    assert_eq!(
        std::fs::read(staging.join("hello")).unwrap(),
        b"from the pod"
    );
    assert_eq!(
        code(
            node.node_publish_volume(publish_request(&volume, &staging, &target, &rwx, true))
                .await
        ),
        Code::AlreadyExists,
        "same target, other arguments"
    );
    node.node_publish_volume(publish_request(&volume, &staging, &target_ro, &rwx, true))
        .await
        .unwrap();
    assert!(mounted(&target_ro).unwrap().read_only());
    let refused = std::fs::write(target_ro.join("nope"), b"x").unwrap_err();
    assert_eq!(refused.raw_os_error(), Some(libc::EROFS), "{refused}");
    assert_eq!(
        std::fs::read(target_ro.join("hello")).unwrap(),
        b"from the pod"
    );

    // SINGLE_NODE_SINGLE_WRITER may be published once only.
    let single = mount_capability(Mode::SingleNodeSingleWriter, &flags);
    let lone = guest
        .create(&format!("{name}-single"), MIB, &[], vec![single.clone()])
        .await;
    let lone_staging = guest.path(&format!("{name}-single-staging"));
    node.node_stage_volume(stage_request(&lone, &lone_staging, &single))
        .await
        .unwrap();
    let first = guest.path(&format!("{name}-single-a"));
    let second = guest.path(&format!("{name}-single-b"));
    node.node_publish_volume(publish_request(
        &lone,
        &lone_staging,
        &first,
        &single,
        false,
    ))
    .await
    .unwrap();
    assert_eq!(
        code(
            node.node_publish_volume(publish_request(
                &lone,
                &lone_staging,
                &second,
                &single,
                false
            ))
            .await
        ),
        Code::FailedPrecondition
    );

    // Stats count this volume, not the share.
    std::fs::write(target.join("five-mib"), vec![7u8; 5 * MIB as usize]).unwrap();
    let stats = node
        .node_get_volume_stats(stats_request(&volume, &target))
        .await
        .unwrap()
        .into_inner();
    let bytes = usage(&stats, csi::volume_usage::Unit::Bytes);
    assert_eq!(bytes.total, 64 * MIB, "{stats:?}");
    assert!(bytes.used >= 5 * MIB && bytes.used < 8 * MIB, "{stats:?}");
    assert!(bytes.available <= 64 * MIB - 5 * MIB, "{stats:?}");
    let inodes = usage(&stats, csi::volume_usage::Unit::Inodes);
    assert_eq!(inodes.used, 2, "{stats:?}");
    assert!(!stats.volume_condition.unwrap().abnormal);
    assert_eq!(
        code(
            node.node_get_volume_stats(stats_request(&volume, &guest.path("nowhere")))
                .await
        ),
        Code::NotFound
    );

    // Unpublish and unstage remove what they made; again is OK.
    for (v, s, targets) in [
        (&volume, &staging, vec![&target, &target_ro]),
        (&lone, &lone_staging, vec![&first]),
    ] {
        for t in targets {
            for _ in 0..2 {
                node.node_unpublish_volume(unpublish_request(v, t))
                    .await
                    .unwrap();
            }
            assert!(mounted(t).is_none() && !t.exists());
        }
        for _ in 0..2 {
            node.node_unstage_volume(unstage_request(v, s))
                .await
                .unwrap();
        }
        assert!(mounted(s).is_none());
    }
    let mut controller = guest.controller().await;
    for v in [volume, other, lone] {
        controller
            .delete_volume(csi::DeleteVolumeRequest {
                volume_id: v.volume_id,
                ..Default::default()
            })
            .await
            .unwrap();
    }
}

async fn image_volume_lifecycle(guest: &mut Guest, fs_type: &str) {
    let cap = common_mount(fs_type);
    let name = format!("pvc-img-{fs_type}");
    let size = if fs_type == "xfs" {
        320 * MIB
    } else {
        64 * MIB
    };
    let volume = guest
        .create(
            &name,
            size,
            &[("layout", "image"), ("fsType", fs_type)],
            vec![cap.clone()],
        )
        .await;
    assert_eq!(volume.volume_context["fsType"], fs_type);
    let mut node = guest.node().await;
    let staging = guest.path(&format!("{name}-staging"));
    let target = guest.path(&format!("{name}-target"));
    for _ in 0..2 {
        node.node_stage_volume(stage_request(&volume, &staging, &cap))
            .await
            .unwrap();
    }
    let staged = mounted(&staging).unwrap();
    assert_eq!(staged.fs_type, fs_type);
    assert!(staged.source.starts_with("/dev/loop"), "{staged:?}");
    node.node_publish_volume(publish_request(&volume, &staging, &target, &cap, false))
        .await
        .unwrap();
    std::fs::write(target.join("data"), vec![1u8; 3 * MIB as usize]).unwrap();

    // Capacity is the filesystem's; stats are exact.
    let stats = node
        .node_get_volume_stats(stats_request(&volume, &target))
        .await
        .unwrap()
        .into_inner();
    let bytes = usage(&stats, csi::volume_usage::Unit::Bytes);
    assert!(bytes.total <= size && bytes.total > size / 2, "{stats:?}");
    assert!(bytes.used >= 3 * MIB, "{stats:?}");
    let vfs = nix::sys::statvfs::statvfs(&target).unwrap();
    assert_eq!(
        bytes.total as u64,
        vfs.blocks() as u64 * vfs.fragment_size() as u64
    );

    // Expansion while mounted: the controller grows the image, the node the device and the
    // filesystem, online.
    let grown = guest
        .controller()
        .await
        .controller_expand_volume(csi::ControllerExpandVolumeRequest {
            volume_id: volume.volume_id.clone(),
            capacity_range: Some(csi::CapacityRange {
                required_bytes: size * 2,
                limit_bytes: 0,
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(grown.node_expansion_required);
    let expanded = node
        .node_expand_volume(csi::NodeExpandVolumeRequest {
            volume_id: volume.volume_id.clone(),
            volume_path: target.display().to_string(),
            capacity_range: Some(csi::CapacityRange {
                required_bytes: size * 2,
                limit_bytes: 0,
            }),
            volume_capability: Some(cap.clone()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(expanded.capacity_bytes, size * 2);
    let after = node
        .node_get_volume_stats(stats_request(&volume, &target))
        .await
        .unwrap()
        .into_inner();
    assert!(
        usage(&after, csi::volume_usage::Unit::Bytes).total > bytes.total * 3 / 2,
        "{after:?}"
    );
    assert_eq!(
        std::fs::read(target.join("data")).unwrap().len(),
        3 * MIB as usize
    );

    // Unpublish + unstage detach the loop device; staging again finds the data (no reformat).
    node.node_unpublish_volume(unpublish_request(&volume, &target))
        .await
        .unwrap();
    node.node_unstage_volume(unstage_request(&volume, &staging))
        .await
        .unwrap();
    assert!(mounted(&staging).is_none());
    assert!(
        loop_devices_in_use().is_empty(),
        "{:?}",
        loop_devices_in_use()
    );
    node.node_stage_volume(stage_request(&volume, &staging, &cap))
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(staging.join("data")).unwrap().len(),
        3 * MIB as usize
    );
    node.node_unstage_volume(unstage_request(&volume, &staging))
        .await
        .unwrap();
    node.node_unstage_volume(unstage_request(&volume, &staging))
        .await
        .unwrap();
    assert!(loop_devices_in_use().is_empty());
    guest
        .controller()
        .await
        .delete_volume(csi::DeleteVolumeRequest {
            volume_id: volume.volume_id,
            ..Default::default()
        })
        .await
        .unwrap();
}

fn common_mount(fs_type: &str) -> VolumeCapability {
    let mut cap = mount_capability(Mode::SingleNodeWriter, &[]);
    if let Some(tether_csi_proto::v1::volume_capability::AccessType::Mount(m)) =
        &mut cap.access_type
    {
        m.fs_type = fs_type.into();
    }
    cap
}

fn loop_devices_in_use() -> Vec<String> {
    std::fs::read_dir("/sys/block")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("loop"))
        .filter(|e| e.path().join("loop/backing_file").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

async fn block_volume(guest: &mut Guest) {
    let cap = block_capability(Mode::SingleNodeWriter);
    let volume = guest
        .create(
            "pvc-block",
            16 * MIB,
            &[("layout", "image")],
            vec![cap.clone()],
        )
        .await;
    let mut node = guest.node().await;
    let staging = guest.path("block-staging");
    let target = guest.path("block-dev/pod-device");
    node.node_stage_volume(stage_request(&volume, &staging, &cap))
        .await
        .unwrap();
    for _ in 0..2 {
        node.node_publish_volume(publish_request(&volume, &staging, &target, &cap, false))
            .await
            .unwrap();
    }
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::metadata(&target)
        .unwrap()
        .file_type()
        .is_block_device());
    assert_eq!(
        tether_csi::node::image::device_size(&target).unwrap(),
        16 * MIB as u64
    );
    // Raw bytes through the published device reach the image.
    {
        use std::io::{Read, Seek, SeekFrom, Write};
        let mut device = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&target)
            .unwrap();
        device.seek(SeekFrom::Start(MIB as u64)).unwrap();
        device.write_all(b"raw block data").unwrap();
        device.sync_all().unwrap();
        let mut back = [0u8; 14];
        device.seek(SeekFrom::Start(MIB as u64)).unwrap();
        device.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"raw block data");
    }
    let stats = node
        .node_get_volume_stats(stats_request(&volume, &target))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        usage(&stats, csi::volume_usage::Unit::Bytes).total,
        16 * MIB
    );
    for _ in 0..2 {
        node.node_unpublish_volume(unpublish_request(&volume, &target))
            .await
            .unwrap();
    }
    assert!(!target.exists());
    node.node_unstage_volume(unstage_request(&volume, &staging))
        .await
        .unwrap();
    assert!(loop_devices_in_use().is_empty());
    guest
        .controller()
        .await
        .delete_volume(csi::DeleteVolumeRequest {
            volume_id: volume.volume_id,
            ..Default::default()
        })
        .await
        .unwrap();
}

/// A SINGLE_NODE_SINGLE_WRITER block volume is published at one target only; what a pod wrote
/// to it (a partition table) is never formatted over when it is later staged as a filesystem.
async fn block_single_writer_and_foreign_signatures(guest: &mut Guest) {
    let cap = block_capability(Mode::SingleNodeSingleWriter);
    let volume = guest
        .create(
            "pvc-block-snsw",
            16 * MIB,
            &[("layout", "image")],
            vec![cap.clone()],
        )
        .await;
    let mut node = guest.node().await;
    let staging = guest.path("snsw-staging");
    let first = guest.path("snsw-dev/first");
    let second = guest.path("snsw-dev/second");
    node.node_stage_volume(stage_request(&volume, &staging, &cap))
        .await
        .unwrap();
    node.node_publish_volume(publish_request(&volume, &staging, &first, &cap, false))
        .await
        .unwrap();
    // Again at the same target: fine. At a second target: FAILED_PRECONDITION, nothing left.
    node.node_publish_volume(publish_request(&volume, &staging, &first, &cap, false))
        .await
        .unwrap();
    let status = node
        .node_publish_volume(publish_request(&volume, &staging, &second, &cap, false))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        mounted(&second).is_none(),
        "a mount was left at the second target"
    );
    // The pod writes a partition table (as `sfdisk` or a database on raw disks would).
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut mbr = vec![0u8; 512];
        mbr[446 + 4] = 0x83;
        mbr[446 + 8..446 + 12].copy_from_slice(&2048u32.to_le_bytes());
        mbr[446 + 12..446 + 16].copy_from_slice(&20_000u32.to_le_bytes());
        mbr[510..].copy_from_slice(&[0x55, 0xAA]);
        let mut device = std::fs::OpenOptions::new()
            .write(true)
            .open(&first)
            .unwrap();
        device.seek(SeekFrom::Start(0)).unwrap();
        device.write_all(&mbr).unwrap();
        device.sync_all().unwrap();
    }
    node.node_unpublish_volume(unpublish_request(&volume, &first))
        .await
        .unwrap();
    node.node_unstage_volume(unstage_request(&volume, &staging))
        .await
        .unwrap();
    // Staged as a filesystem later (a clone, or a changed claim): refused, the data kept.
    let fs = common_mount("ext4");
    let status = node
        .node_stage_volume(stage_request(&volume, &staging, &fs))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("dos partition table"),
        "{}",
        status.message()
    );
    assert!(mounted(&staging).is_none());
    assert!(
        loop_devices_in_use().is_empty(),
        "a failed stage left its loop device"
    );
    // The partition table is still there: publish raw again and read it back.
    node.node_stage_volume(stage_request(&volume, &staging, &cap))
        .await
        .unwrap();
    node.node_publish_volume(publish_request(&volume, &staging, &first, &cap, false))
        .await
        .unwrap();
    {
        use std::io::Read;
        let mut head = vec![0u8; 512];
        std::fs::File::open(&first)
            .unwrap()
            .read_exact(&mut head)
            .unwrap();
        assert_eq!(&head[510..], &[0x55, 0xAA], "the data was kept");
    }
    node.node_unpublish_volume(unpublish_request(&volume, &first))
        .await
        .unwrap();
    node.node_unstage_volume(unstage_request(&volume, &staging))
        .await
        .unwrap();
    assert!(loop_devices_in_use().is_empty());
    guest
        .controller()
        .await
        .delete_volume(csi::DeleteVolumeRequest {
            volume_id: volume.volume_id,
            ..Default::default()
        })
        .await
        .unwrap();
}

/// kubelet polls NodeGetVolumeStats every minute: a volume with many files answers at once
/// (counted in the background) and is never reported abnormal for being large.
async fn large_volume_stats(guest: &mut Guest) {
    let rwx = mount_capability(Mode::MultiNodeMultiWriter, &[]);
    let volume = guest
        .create("pvc-large", 64 * MIB, &[], vec![rwx.clone()])
        .await;
    let dir = volume.volume_id.rsplit('#').next().unwrap().to_string();
    host_request(&format!("fill {dir} 100000"));
    let mut node = guest.node().await;
    let staging = guest.path("large-staging");
    let target = guest.path("large-target");
    node.node_stage_volume(stage_request(&volume, &staging, &rwx))
        .await
        .unwrap();
    node.node_publish_volume(publish_request(&volume, &staging, &target, &rwx, false))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut polls = 0;
    loop {
        let asked = Instant::now();
        let stats = node
            .node_get_volume_stats(stats_request(&volume, &target))
            .await
            .unwrap()
            .into_inner();
        let took = asked.elapsed();
        polls += 1;
        let condition = stats.volume_condition.clone().unwrap();
        assert!(!condition.abnormal, "{condition:?}");
        assert!(took < Duration::from_secs(5), "a poll took {took:?}");
        let inodes = usage(&stats, csi::volume_usage::Unit::Inodes).used;
        println!("guest: stats poll {polls}: {inodes} entries counted, answered in {took:?}");
        if inodes >= 100_001 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the count never finished: {stats:?}"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    node.node_unpublish_volume(unpublish_request(&volume, &target))
        .await
        .unwrap();
    node.node_unstage_volume(unstage_request(&volume, &staging))
        .await
        .unwrap();
    // Removing 100000 files from user space inside the emulated guest would take minutes.
    host_request(&format!("unfill {dir}"));
    guest
        .controller()
        .await
        .delete_volume(csi::DeleteVolumeRequest {
            volume_id: volume.volume_id,
            ..Default::default()
        })
        .await
        .unwrap();
}

async fn stale_handle_recovery(guest: &mut Guest) {
    let rwx = mount_capability(Mode::MultiNodeMultiWriter, &[]);
    let volume = guest
        .create("pvc-stale", 8 * MIB, &[], vec![rwx.clone()])
        .await;
    let mut node = guest.node().await;
    let staging = guest.path("stale-staging");
    let target = guest.path("stale-target");
    node.node_stage_volume(stage_request(&volume, &staging, &rwx))
        .await
        .unwrap();
    node.node_publish_volume(publish_request(&volume, &staging, &target, &rwx, false))
        .await
        .unwrap();
    std::fs::write(target.join("old"), b"old").unwrap();

    // The volume's directory is replaced behind the mount's back (deleted and created again).
    let mut controller = guest.controller().await;
    controller
        .delete_volume(csi::DeleteVolumeRequest {
            volume_id: volume.volume_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let again = guest
        .create("pvc-stale", 8 * MIB, &[], vec![rwx.clone()])
        .await;
    assert_eq!(again.volume_id, volume.volume_id);
    let stats = node
        .node_get_volume_stats(stats_request(&volume, &target))
        .await
        .unwrap()
        .into_inner();
    let condition = stats.volume_condition.unwrap();
    assert!(
        condition.abnormal && condition.message.contains("stale"),
        "{condition:?}"
    );

    // The next stage and publish remount; the new (empty) directory is what the pod sees.
    node.node_stage_volume(stage_request(&volume, &staging, &rwx))
        .await
        .unwrap();
    node.node_publish_volume(publish_request(&volume, &staging, &target, &rwx, false))
        .await
        .unwrap();
    assert!(std::fs::read_dir(&target).unwrap().next().is_none());
    std::fs::write(target.join("new"), b"new").unwrap();
    let stats = node
        .node_get_volume_stats(stats_request(&volume, &target))
        .await
        .unwrap()
        .into_inner();
    assert!(!stats.volume_condition.unwrap().abnormal);
    node.node_unpublish_volume(unpublish_request(&volume, &target))
        .await
        .unwrap();
    node.node_unstage_volume(unstage_request(&volume, &staging))
        .await
        .unwrap();
    controller
        .delete_volume(csi::DeleteVolumeRequest {
            volume_id: volume.volume_id,
            ..Default::default()
        })
        .await
        .unwrap();
}

async fn server_stopped_while_mounted(guest: &mut Guest) {
    let rwx = mount_capability(
        Mode::MultiNodeMultiWriter,
        &["soft", "timeo=20", "retrans=1"],
    );
    let volume = guest
        .create("pvc-dead", 8 * MIB, &[], vec![rwx.clone()])
        .await;
    let mut node = guest.node().await;
    let staging = guest.path("dead-staging");
    let target = guest.path("dead-target");
    node.node_stage_volume(stage_request(&volume, &staging, &rwx))
        .await
        .unwrap();
    node.node_publish_volume(publish_request(&volume, &staging, &target, &rwx, false))
        .await
        .unwrap();

    host_request("nfs-stop");
    let started = Instant::now();
    let stats = node
        .node_get_volume_stats(stats_request(&volume, &target))
        .await
        .unwrap()
        .into_inner();
    let condition = stats.volume_condition.unwrap();
    assert!(condition.abnormal, "{condition:?}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );

    // A new mount against the dead server fails clearly and in time.
    let other_staging = guest.path("dead-staging-2");
    let started = Instant::now();
    let status = node
        .node_stage_volume(stage_request(&volume, &other_staging, &rwx))
        .await
        .unwrap_err();
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Unavailable),
        "{:?} {}",
        status.code(),
        status.message()
    );
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "{:?}",
        started.elapsed()
    );

    // Unpublish and unstage complete although the server is gone.
    let started = Instant::now();
    node.node_unpublish_volume(unpublish_request(&volume, &target))
        .await
        .unwrap();
    node.node_unstage_volume(unstage_request(&volume, &staging))
        .await
        .unwrap();
    node.node_unstage_volume(unstage_request(&volume, &other_staging))
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
    assert!(mounted(&target).is_none() && mounted(&staging).is_none());

    // The server is back: a later call succeeds.
    host_request("nfs-start");
    node.node_stage_volume(stage_request(&volume, &staging, &rwx))
        .await
        .unwrap();
    assert!(mounted(&staging).is_some());
    node.node_unstage_volume(unstage_request(&volume, &staging))
        .await
        .unwrap();
    let log = guest.log();
    assert!(log.contains("NodeStageVolume"), "{log}");
}

/// `bench/csi-node.sh`: NodeStage+NodePublish latency for both layouts and write throughput of
/// an image volume vs a directory volume, inside the (emulated) VM. Prints Markdown tables.
#[tokio::test]
#[ignore = "a benchmark; bench/csi-node.sh runs it inside the QEMU guest"]
async fn guest_node_bench() {
    assert_eq!(std::env::var("TETHER_IN_VM").as_deref(), Ok("1"));
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(10);
    let mut guest = Guest::start();
    let mut node = guest.node().await;
    let mut rows = Vec::new();
    let mut throughput = Vec::new();
    for layout in ["directory", "image"] {
        let cap = if layout == "image" {
            common_mount("ext4")
        } else {
            mount_capability(Mode::MultiNodeMultiWriter, &[])
        };
        let mut samples = Vec::new();
        for i in 0..rounds {
            let name = format!("bench-{layout}-{i}");
            let volume = guest
                .create(&name, 256 * MIB, &[("layout", layout)], vec![cap.clone()])
                .await;
            let staging = guest.path(&format!("{name}-s"));
            let target = guest.path(&format!("{name}-t"));
            let started = Instant::now();
            node.node_stage_volume(stage_request(&volume, &staging, &cap))
                .await
                .unwrap();
            node.node_publish_volume(publish_request(&volume, &staging, &target, &cap, false))
                .await
                .unwrap();
            samples.push(started.elapsed());
            if i == 0 {
                let out = Command::new("dd")
                    .args(["if=/dev/zero", "bs=1M", "count=128", "conv=fsync"])
                    .arg(format!("of={}", target.join("dd").display()))
                    .output()
                    .unwrap();
                let text = String::from_utf8_lossy(&out.stderr).into_owned();
                let rate = text
                    .lines()
                    .last()
                    .unwrap_or("")
                    .rsplit(", ")
                    .next()
                    .unwrap_or("?")
                    .to_string();
                throughput.push(format!("| {layout} | {rate} |"));
            }
            node.node_unpublish_volume(unpublish_request(&volume, &target))
                .await
                .unwrap();
            node.node_unstage_volume(unstage_request(&volume, &staging))
                .await
                .unwrap();
            guest
                .controller()
                .await
                .delete_volume(csi::DeleteVolumeRequest {
                    volume_id: volume.volume_id,
                    ..Default::default()
                })
                .await
                .unwrap();
        }
        samples.sort();
        let ms = |d: Duration| format!("{:.0}", d.as_secs_f64() * 1000.0);
        rows.push(format!(
            "| {layout} | {} | {} | {} |",
            ms(samples[samples.len() / 2]),
            ms(samples[samples.len() * 9 / 10]),
            rounds
        ));
    }
    println!("\n| layout | NodeStage+NodePublish p50 ms | p90 ms | rounds |\n|---|---|---|---|");
    for row in rows {
        println!("{row}");
    }
    println!("\n| layout | dd 128 MiB, conv=fsync |\n|---|---|");
    for row in throughput {
        println!("{row}");
    }
}
