#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

//! tether-csi with tether-nfs-agent, seen by the real kernel NFS client. This host's kernel has
//! neither an NFS client nor XFS quotas, so `agent_with_the_kernel_client_in_a_vm` boots
//! Debian's kernel under QEMU (`tests/vm/run.sh`) and runs `guest_agent_suite` inside it: an XFS
//! filesystem mounted with `prjquota`, exported by nfs-ganesha with the agent beside it (both in
//! the guest), the controller driven over its socket, and the volumes mounted by the guest
//! kernel's NFSv4.1 client. A writer on a directory volume stops at its capacity and goes on
//! after an expansion; a snapshot of an image volume taken while a writer sweeps it restores to
//! one instant of it.

mod common;

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::agent::{world, World, AGENT};
use common::{create, create_request, from_snapshot, modify_request, mount_capability, Driver};
use tether_csi::share::store;
use tether_csi_proto::v1::{self as csi, volume_capability::access_mode::Mode};

const MIB: i64 = 1 << 20;
/// The image writer's unit: each chunk holds its pass number, written with O_DIRECT (one
/// synchronous WRITE to the server each).
const CHUNK: usize = 64 << 10;

#[test]
fn agent_with_the_kernel_client_in_a_vm() {
    test_support::require_root();
    let me = std::env::current_exe().unwrap();
    let report = test_support::run_one_test_in_vm(
        900,
        &[
            me.as_os_str(),
            "--exact".as_ref(),
            "guest_agent_suite".as_ref(),
            "--ignored".as_ref(),
            "--nocapture".as_ref(),
        ],
    );
    println!("{report}");
}

/// An NFS mount made by the guest's kernel from the server's namespace (only the network
/// namespace is entered, so the mount is visible to this process); unmounted on drop.
struct NfsMount {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl NfsMount {
    fn new(w: &World, directory: &str) -> NfsMount {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m");
        std::fs::create_dir(&path).unwrap();
        let source = format!("{}:{}/{directory}", w.nfs.address, w.nfs.share());
        let out = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", w.nfs.ns.name))
            .args(["mount", "-t", "nfs4", "-o", "vers=4.1,hard,timeo=50"])
            .arg(&source)
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount {source}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        NfsMount { path, _dir: dir }
    }

    fn statvfs(&self) -> libc::statvfs {
        let c = std::ffi::CString::new(self.path.to_str().unwrap()).unwrap();
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
        st
    }
}

impl Drop for NfsMount {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.path)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount")
                .arg("-f")
                .arg("-l")
                .arg(&self.path)
                .status();
        }
    }
}

fn step(started: Instant, what: &str) {
    println!("[{:>6.1}s] {what}", started.elapsed().as_secs_f64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "runs inside the QEMU guest that agent_with_the_kernel_client_in_a_vm boots"]
async fn guest_agent_suite() {
    assert_eq!(
        std::env::var("TETHER_IN_VM").as_deref(),
        Ok("1"),
        "run me through tests/vm/run.sh"
    );
    let started = Instant::now();
    let w = world("xfs", 512, "prjquota", "ttvq");
    let driver = Driver::start_all(&w.nfs, &["--agent-tls-dir", w.tls.path().to_str().unwrap()]);
    step(started, "ganesha, agent and controller up");
    a_writer_stops_at_the_quota_and_goes_on_after_expansion(&w, &driver).await;
    step(started, "directory volume limited by a project quota");
    a_snapshot_under_a_writer_is_one_instant(&w, &driver).await;
    step(started, "image snapshot under a writer");
}

async fn a_writer_stops_at_the_quota_and_goes_on_after_expansion(w: &World, driver: &Driver) {
    let mut c = driver.controller().await;
    let volume = create(
        &mut c,
        create_request(&w.nfs, "pvc-quota", 8 * MIB, &[("agent", AGENT)]),
    )
    .await;
    assert_eq!(
        volume.volume_context["limit"], "project-quota",
        "{volume:?}"
    );
    let directory = volume.volume_context["path"].clone();
    let mount = NfsMount::new(w, &directory);
    // nfs-ganesha answers statfs for the whole export: an NFS client's df cannot show the
    // quota (NodeGetVolumeStats asks the agent, below).
    let st = mount.statvfs();
    println!(
        "df over NFS of the limited volume: size {} bytes, free {} bytes (the export's)",
        st.f_blocks * st.f_frsize,
        st.f_bavail * st.f_frsize
    );

    // A writer (O_DIRECT, so each write reaches the server) stops at the limit.
    let file = mount.path.join("fill.bin");
    let (written, error) = write_until_refused(&file, 32);
    println!("the writer stopped after {written} MiB: {error}");
    assert!(
        matches!(error.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)),
        "{error}"
    );
    assert!((6..=8).contains(&written), "wrote {written} MiB into 8 MiB");
    let size = std::fs::metadata(&file).unwrap().len();
    assert!(size <= 8 << 20, "{size}");

    // Expansion raises the limit; the writer goes on.
    let expanded = c
        .controller_expand_volume(csi::ControllerExpandVolumeRequest {
            volume_id: volume.volume_id.clone(),
            capacity_range: Some(csi::CapacityRange {
                required_bytes: 16 * MIB,
                limit_bytes: 0,
            }),
            volume_capability: Some(mount_capability(Mode::MultiNodeMultiWriter, &[])),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(expanded.capacity_bytes, 16 * MIB);
    assert!(!expanded.node_expansion_required);
    let more = mount.path.join("more.bin");
    let (written, error) = write_until_refused(&more, 32);
    println!("after expansion the writer wrote {written} MiB more: {error}");
    assert!(written >= 6, "wrote only {written} MiB after the expansion");

    // The node's NodeGetVolumeStats of the staged volume: the quota's numbers, from the agent
    // (no tree walk).
    let mut node = driver.node().await;
    let staging = driver.dir.path().join("staging-quota");
    let capability = mount_capability(Mode::MultiNodeMultiWriter, &[]);
    node.node_stage_volume(csi::NodeStageVolumeRequest {
        volume_id: volume.volume_id.clone(),
        staging_target_path: staging.to_str().unwrap().into(),
        volume_capability: Some(capability),
        volume_context: volume.volume_context.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    let stats = node
        .node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
            volume_id: volume.volume_id.clone(),
            volume_path: staging.to_str().unwrap().into(),
            staging_target_path: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    println!("NodeGetVolumeStats: {stats:?}");
    let bytes = stats
        .usage
        .iter()
        .find(|u| u.unit == csi::volume_usage::Unit::Bytes as i32)
        .unwrap();
    assert_eq!(bytes.total, 16 << 20, "{stats:?}");
    assert!(bytes.used >= 12 << 20, "{stats:?}");
    assert!(stats.volume_condition.unwrap().message == "healthy");
    node.node_unstage_volume(csi::NodeUnstageVolumeRequest {
        volume_id: volume.volume_id.clone(),
        staging_target_path: staging.to_str().unwrap().into(),
    })
    .await
    .unwrap();

    // ControllerModifyVolume (a VolumeAttributesClass with limit: none) lifts the limit; back to
    // limit: capacity, it holds again.
    let modify = |limit: &str| modify_request(&volume.volume_id, &[("limit", limit)]);
    c.controller_modify_volume(modify("none")).await.unwrap();
    let (written, _) = write_until_refused(&mount.path.join("unlimited.bin"), 24);
    println!("without a limit the writer wrote {written} MiB");
    assert_eq!(written, 24, "limit: none still limited the volume");
    std::fs::remove_file(mount.path.join("unlimited.bin")).unwrap();
    c.controller_modify_volume(modify("capacity"))
        .await
        .unwrap();
    let (written, error) = write_until_refused(&mount.path.join("again.bin"), 32);
    println!("limited again, the writer stopped after {written} MiB: {error}");
    assert!(written < 16, "limit: capacity did not limit the volume");
    drop(mount);
    // The other volumes on the share are not limited by this one's quota.
    let other = create(&mut c, create_request(&w.nfs, "pvc-free", 64 * MIB, &[])).await;
    let mount = NfsMount::new(w, &other.volume_context["path"]);
    let (written, _) = write_until_refused(&mount.path.join("free.bin"), 20);
    assert_eq!(written, 20, "an unlimited volume was limited");
}

/// Writes 1 MiB at a time with O_DIRECT until a write fails or `most` MiB are written.
fn write_until_refused(path: &Path, most: usize) -> (usize, std::io::Error) {
    // A full quota may refuse the new file itself.
    let mut f = match OpenOptions::new()
        .create(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
    {
        Ok(f) => f,
        Err(e) => return (0, e),
    };
    let chunk = vec![7u8; 1 << 20];
    for written in 0..most {
        if let Err(e) = f.write_all(&chunk).and_then(|()| f.sync_all()) {
            return (written, e);
        }
    }
    (most, std::io::Error::other("never refused"))
}

/// A writer sweeps an image volume over NFS again and again, each chunk stamped with its
/// pass; the snapshot is taken in the middle of a pass. One instant of the file is a prefix of
/// pass N+1 followed by pass N, with no gap: that is what the restored volume must hold.
async fn a_snapshot_under_a_writer_is_one_instant(w: &World, driver: &Driver) {
    let mut c = driver.controller().await;
    let mut req = create_request(
        &w.nfs,
        "pvc-db",
        16 * MIB,
        &[("layout", "image"), ("agent", AGENT)],
    );
    req.volume_capabilities = vec![mount_capability(Mode::SingleNodeWriter, &[])];
    let volume = create(&mut c, req.clone()).await;
    let mount = NfsMount::new(w, &volume.volume_context["path"]);
    let image = mount.path.join(store::IMAGE_FILE);
    let chunks = std::fs::metadata(&image).unwrap().len() as usize / CHUNK;
    let stop = Arc::new(AtomicBool::new(false));
    let pass = Arc::new(AtomicU32::new(0));
    let writer = {
        let (stop, pass, image) = (stop.clone(), pass.clone(), image.clone());
        std::thread::spawn(move || {
            let mut f = OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_DIRECT)
                .open(&image)
                .unwrap();
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let data: Vec<u8> = n.to_le_bytes().repeat(CHUNK / 4);
                f.seek(SeekFrom::Start(0)).unwrap();
                for _ in 0..chunks {
                    f.write_all(&data).unwrap();
                }
                pass.store(n, Ordering::Relaxed);
            }
        })
    };
    // Into the third pass, somewhere in its middle.
    let deadline = Instant::now() + Duration::from_secs(300);
    while pass.load(Ordering::Relaxed) < 2 {
        assert!(Instant::now() < deadline, "the writer is stuck");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let snapshot = common::snapshot(&mut c, &volume.volume_id, "under-a-writer").await;
    assert!(snapshot.ready_to_use, "{snapshot:?}");
    let during = pass.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    drop(mount);

    req.name = "pvc-db-restored".into();
    let restored = create(&mut c, from_snapshot(req, &snapshot.snapshot_id)).await;
    assert_eq!(restored.volume_context["filledBy"], "agent_reflink");
    let mount = NfsMount::new(w, &restored.volume_context["path"]);
    let passes = passes_of(&mount.path.join(store::IMAGE_FILE), chunks);
    let newest = passes[0];
    let boundary = passes.iter().position(|p| *p != newest).unwrap_or(chunks);
    println!(
        "snapshot taken during pass {}: chunks 0..{boundary} hold pass {newest}, the rest pass {}",
        during + 1,
        passes.get(boundary).copied().unwrap_or(newest)
    );
    assert!(newest >= 2, "{passes:?}");
    assert!(
        passes[boundary..].iter().all(|p| *p + 1 == newest),
        "not one instant of the volume: {passes:?}"
    );
}

/// The pass stamped in each chunk of an image (all four-byte words of a chunk must agree).
fn passes_of(image: &Path, chunks: usize) -> Vec<u32> {
    let mut f = std::fs::File::open(image).unwrap();
    let mut buf = vec![0u8; CHUNK];
    (0..chunks)
        .map(|i| {
            f.read_exact(&mut buf).unwrap();
            let first = u32::from_le_bytes(buf[..4].try_into().unwrap());
            assert!(
                buf.chunks(4)
                    .all(|w| u32::from_le_bytes(w.try_into().unwrap()) == first),
                "chunk {i} is torn"
            );
            first
        })
        .collect()
}
