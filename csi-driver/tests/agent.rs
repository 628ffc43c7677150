#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

//! tether-csi with tether-nfs-agent beside the NFS server: nfs-ganesha exports a loop-mounted
//! XFS filesystem, the agent serves the same directory (both in the server's namespace), and
//! the controller is driven over its socket as the sidecars drive it. A snapshot of an image
//! volume is one clone on the server (ready at once, its blocks shared, one instant of the
//! volume), restores and clones are clones too, a directory volume's snapshot clones its tree;
//! without the certificates, or with the agent gone, the calls fail with what to do and leave
//! nothing behind.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use common::agent::{world, World, AGENT};
use common::{create, create_request, from_snapshot, from_volume, mount_capability, Driver};
use tether_csi::share::ids::SnapshotId;
use tether_csi::share::store;
use tether_csi_proto::v1::{self as csi, volume_capability::access_mode::Mode};
use tonic::Code;

fn image_request(w: &World, name: &str) -> csi::CreateVolumeRequest {
    let mut req = create_request(
        &w.nfs,
        name,
        64 << 20,
        &[("layout", "image"), ("agent", AGENT)],
    );
    req.volume_capabilities = vec![mount_capability(Mode::SingleNodeWriter, &[])];
    req
}

fn image_of(w: &World, volume: &csi::Volume) -> PathBuf {
    w.fs.mnt
        .join(&volume.volume_context["path"])
        .join(store::IMAGE_FILE)
}

fn snapshot_dir(w: &World, id: &str) -> PathBuf {
    let key = SnapshotId::decode(id).unwrap().key;
    w.fs.mnt.join(store::snapshot_dir(&key))
}

fn snapshot_names(w: &World) -> BTreeSet<String> {
    std::fs::read_dir(w.fs.mnt.join(".tether/snapshots"))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect()
        })
        .unwrap_or_default()
}

fn same_bytes(a: &Path, b: &Path) -> bool {
    std::fs::read(a).unwrap() == std::fs::read(b).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_restores_and_clones_are_clones_on_the_server() {
    let mut w = world("xfs", 1024, "", "ttcag");
    let driver = Driver::start(&w.nfs, &["--agent-tls-dir", w.tls.path().to_str().unwrap()]);
    let mut c = driver.controller().await;

    // An image volume full of data (written on the server, as a pod's writes would land).
    let volume = create(&mut c, image_request(&w, "pvc-img")).await;
    assert_eq!(volume.volume_context["limit"], "none", "{volume:?}"); // an image limits itself
    let image = image_of(&w, &volume);
    let pattern: Vec<u8> = (0..64u32 << 20).map(|i| (i / 4096) as u8).collect();
    std::fs::write(&image, &pattern).unwrap();

    // The snapshot: ready at once, one clone, its blocks shared.
    let free = w.fs.free();
    let snapshot = common::snapshot(&mut c, &volume.volume_id, "snapshot-1").await;
    assert!(snapshot.ready_to_use, "{snapshot:?}");
    let used = free.saturating_sub(w.fs.free());
    assert!(
        used < 8 << 20,
        "a 64 MiB snapshot took {used} bytes: copied, not cloned"
    );
    let dir = snapshot_dir(&w, &snapshot.snapshot_id);
    assert!(same_bytes(
        &dir.join("data").join(store::IMAGE_FILE),
        &image
    ));
    let record = std::fs::read_to_string(dir.join("snapshot.json")).unwrap();
    assert!(record.contains("\"madeBy\": \"agent_reflink\""), "{record}");

    // The volume changes after the snapshot; a restore is the snapshot, cloned again.
    std::fs::write(&image, b"changed after the snapshot").unwrap();
    let restored = create(
        &mut c,
        from_snapshot(image_request(&w, "pvc-restored"), &snapshot.snapshot_id),
    )
    .await;
    assert_eq!(
        restored.volume_context["filledBy"], "agent_reflink",
        "{restored:?}"
    );
    assert_eq!(std::fs::read(image_of(&w, &restored)).unwrap(), pattern);

    // A clone of a volume.
    let cloned = create(
        &mut c,
        from_volume(image_request(&w, "pvc-cloned"), &restored.volume_id),
    )
    .await;
    assert_eq!(cloned.volume_context["filledBy"], "agent_reflink");
    assert_eq!(std::fs::read(image_of(&w, &cloned)).unwrap(), pattern);

    // A directory volume: its snapshot clones the tree. This kernel has no project quota, so
    // the volume is not limited, and says so.
    let dir_volume = create(
        &mut c,
        create_request(&w.nfs, "pvc-dir", 16 << 20, &[("agent", AGENT)]),
    )
    .await;
    assert_eq!(dir_volume.volume_context["limit"], "none");
    let root = w.fs.mnt.join(&dir_volume.volume_context["path"]);
    std::fs::create_dir_all(root.join("a/b")).unwrap();
    std::fs::write(root.join("a/b/c.txt"), b"tree").unwrap();
    let tree_snapshot = common::snapshot(&mut c, &dir_volume.volume_id, "snapshot-2").await;
    assert!(tree_snapshot.ready_to_use);
    let data = snapshot_dir(&w, &tree_snapshot.snapshot_id).join("data");
    assert_eq!(std::fs::read(data.join("a/b/c.txt")).unwrap(), b"tree");

    // The agent gone: UNAVAILABLE, naming it; no snapshot left half made.
    let before = snapshot_names(&w);
    w.agent.kill();
    let err = c
        .create_snapshot(csi::CreateSnapshotRequest {
            source_volume_id: volume.volume_id.clone(),
            name: "snapshot-3".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains(AGENT), "{err:?}");
    assert_eq!(snapshot_names(&w), before);
    let log = driver.log();
    assert!(log.contains("agent capabilities"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_without_certificates_is_refused_with_what_to_do() {
    let w = world("xfs", 1024, "", "ttcag");
    let driver = Driver::start(&w.nfs, &[]);
    let mut c = driver.controller().await;
    let err = c
        .create_volume(create_request(
            &w.nfs,
            "pvc-x",
            16 << 20,
            &[("agent", AGENT)],
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("--agent-tls-dir"), "{err:?}");
    // Nothing of it stays on the share.
    let left: Vec<_> = std::fs::read_dir(&w.fs.mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != ".tether")
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let err = c
        .create_volume(create_request(
            &w.nfs,
            "pvc-y",
            16 << 20,
            &[("agent", "no port")],
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
}
