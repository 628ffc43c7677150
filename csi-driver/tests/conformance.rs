#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

//! The Controller service against the CSI spec's rules and hostile or killed requests, on a real
//! NFS server (nfs-ganesha), over NFSv3 and NFSv4.1 and in both layouts: long and odd names,
//! failed creates, kills midway, the sweep, shares that are not exported, faithful background
//! copies.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{
    code, create, create_request, from_snapshot, from_volume, mount_capability, snapshot, Driver,
};
use test_support::ganesha::NfsServer;
use tether_csi_proto::v1::{
    self as csi, controller_client::ControllerClient, volume_capability::access_mode::Mode,
};
use tonic::transport::Channel;
use tonic::Code;

const MIB: i64 = 1 << 20;
const VERSIONS: [&str; 2] = ["3", "4.1"];
const LAYOUTS: [&str; 2] = ["directory", "image"];

/// A CreateVolume request over NFS `version` in `layout`.
fn request(nfs: &NfsServer, name: &str, version: &str, layout: &str) -> csi::CreateVolumeRequest {
    let mut r = create_request(nfs, name, 16 * MIB, &[("layout", layout)]);
    let mode = if layout == "image" {
        Mode::SingleNodeWriter
    } else {
        Mode::MultiNodeMultiWriter
    };
    r.volume_capabilities = vec![mount_capability(mode, &[&format!("nfsvers={version}")])];
    r
}

async fn delete(c: &mut ControllerClient<Channel>, id: &str) {
    c.delete_volume(csi::DeleteVolumeRequest {
        volume_id: id.into(),
        ..Default::default()
    })
    .await
    .unwrap();
}

/// Every path under `root`, relative to it.
fn tree(root: &Path) -> BTreeSet<String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            out.insert(path.strip_prefix(root).unwrap().display().to_string());
            if path.is_dir() && !path.is_symlink() {
                walk(root, &path, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(root, root, &mut out);
    out
}

/// What the share holds besides Tether's empty metadata directories.
fn leftovers(nfs: &NfsServer) -> BTreeSet<String> {
    let empty: BTreeSet<String> = [
        ".tether",
        ".tether/volumes",
        ".tether/names",
        ".tether/snapshots",
        ".tether/trash",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    tree(&nfs.export()).difference(&empty).cloned().collect()
}

/// The volume's directory on the server.
fn volume_dir(nfs: &NfsServer, volume_id: &str) -> PathBuf {
    nfs.export().join(volume_id.rsplit('#').next().unwrap())
}

#[tokio::test]
async fn any_legal_name_works_and_names_never_nest() {
    let nfs = NfsServer::start("csln");
    let driver = Driver::start(&nfs, &[]);
    let mut c = driver.controller().await;
    let long = "n".repeat(128);
    let long_slashes = format!("{}/{}", "a".repeat(63), "b".repeat(64));
    let names = [
        long.as_str(),
        long_slashes.as_str(),
        "a/b",
        "../../outside",
        "ünïcode name",
    ];
    for version in VERSIONS {
        for layout in LAYOUTS {
            let mut ids = Vec::new();
            for name in names {
                let r = request(&nfs, name, version, layout);
                let volume = create(&mut c, r.clone()).await;
                assert!(volume.volume_id.len() <= 128, "{}", volume.volume_id);
                // Idempotent: the same request gives the same volume.
                assert_eq!(create(&mut c, r).await.volume_id, volume.volume_id);
                let dir = volume_dir(&nfs, &volume.volume_id);
                let base = dir.file_name().unwrap().to_str().unwrap().to_string();
                assert!(
                    base.starts_with("h-") && base.len() == 34 && dir.is_dir(),
                    "{name:?} -> {}",
                    dir.display()
                );
                assert_eq!(dir.parent().unwrap(), nfs.export(), "never nested");
                ids.push(volume.volume_id);
            }
            // Nothing but the volumes' own directories at the top.
            let top: BTreeSet<String> = std::fs::read_dir(nfs.export())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n != ".tether")
                .collect();
            assert_eq!(top.len(), names.len(), "{top:?}");
            assert!(!nfs.export().join("a").exists());
            for id in &ids {
                delete(&mut c, id).await;
                delete(&mut c, id).await;
            }
            assert_eq!(leftovers(&nfs), BTreeSet::new(), "NFSv{version} {layout}");
            // A later volume named like the first component of an earlier one works.
            let a = create(&mut c, request(&nfs, "a", version, layout)).await;
            assert_eq!(volume_dir(&nfs, &a.volume_id), nfs.export().join("a"));
            delete(&mut c, &a.volume_id).await;
        }
    }

    // A plain name is used as it is while the id has room for it.
    let room = 128 - format!("vd4#{}#{}#", nfs.address, nfs.share()).len();
    let fits = "f".repeat(room);
    let v = create(&mut c, request(&nfs, &fits, "4.1", "directory")).await;
    assert_eq!(v.volume_id.len(), 128);
    assert!(nfs.export().join(&fits).is_dir());
    delete(&mut c, &v.volume_id).await;

    // Snapshot names up to 128 bytes, too.
    let source = create(&mut c, request(&nfs, "snap-source", "4.1", "directory")).await;
    for name in [long.as_str(), "snap/with/slashes"] {
        let snapshot = c
            .create_snapshot(csi::CreateSnapshotRequest {
                source_volume_id: source.volume_id.clone(),
                name: name.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .snapshot
            .unwrap();
        assert!(snapshot.snapshot_id.len() <= 128 && snapshot.ready_to_use);
        c.delete_snapshot(csi::DeleteSnapshotRequest {
            snapshot_id: snapshot.snapshot_id,
            ..Default::default()
        })
        .await
        .unwrap();
    }
    delete(&mut c, &source.volume_id).await;
    assert_eq!(leftovers(&nfs), BTreeSet::new());

    // The limit that remains: server and export path together at most 88 bytes.
    let mut r = request(&nfs, &long, "4.1", "directory");
    let too_long = format!("/{}", "e".repeat(88 - nfs.address.len()));
    r.parameters.insert("share".into(), too_long);
    let status = c.create_volume(r).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("at most 88 bytes"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn ids_of_shares_that_are_not_exported_name_nothing_and_write_nothing() {
    let nfs = NfsServer::start("csne");
    let missing = format!("{}-missing", nfs.share());
    let sibling = nfs.export().parent().unwrap().join("export-sibling");
    std::fs::create_dir(&sibling).unwrap();
    let driver = Driver::start(&nfs, &["--share", &format!("{}:{missing}", nfs.address)]);
    let mut c = driver.controller().await;
    // What the server's directory holds (less the server's own NFSv4 client records).
    let server_files = || -> BTreeSet<String> {
        tree(nfs.export().parent().unwrap())
            .into_iter()
            .filter(|p| !p.starts_with("recovery"))
            .collect()
    };
    let before = server_files();
    for version in ['3', '4'] {
        for share in [missing.as_str(), sibling.to_str().unwrap(), "/"] {
            let volume_id = format!("vd{version}#{}#{share}#pvc-1", nfs.address);
            let snapshot_id = format!("s{version}#{}#{share}#snap-1", nfs.address);
            c.delete_volume(csi::DeleteVolumeRequest {
                volume_id: volume_id.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
            let status = c
                .controller_get_volume(csi::ControllerGetVolumeRequest {
                    volume_id: volume_id.clone(),
                })
                .await
                .unwrap_err();
            assert_eq!(
                status.code(),
                Code::NotFound,
                "{volume_id}: {}",
                status.message()
            );
            let status = c
                .validate_volume_capabilities(csi::ValidateVolumeCapabilitiesRequest {
                    volume_id: volume_id.clone(),
                    volume_capabilities: vec![common::rwx()],
                    ..Default::default()
                })
                .await
                .unwrap_err();
            assert_eq!(status.code(), Code::NotFound, "{}", status.message());
            c.delete_snapshot(csi::DeleteSnapshotRequest {
                snapshot_id: snapshot_id.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
            assert_eq!(
                code(
                    c.get_snapshot(csi::GetSnapshotRequest {
                        snapshot_id: snapshot_id.clone(),
                        ..Default::default()
                    })
                    .await
                ),
                Code::NotFound
            );
            let listed = c
                .list_snapshots(csi::ListSnapshotsRequest {
                    snapshot_id,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            assert!(listed.entries.is_empty());
            let status = c
                .create_snapshot(csi::CreateSnapshotRequest {
                    source_volume_id: volume_id.clone(),
                    name: "snap-forged".into(),
                    ..Default::default()
                })
                .await
                .unwrap_err();
            assert_eq!(
                status.code(),
                Code::NotFound,
                "CreateSnapshot of {volume_id}: {}",
                status.message()
            );
        }
    }
    // ListVolumes goes past the share that is not exported.
    let listed = c
        .list_volumes(csi::ListVolumesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.entries.is_empty());
    // Creating on it says what is wrong.
    let mut r = create_request(&nfs, "pvc-1", MIB, &[]);
    r.parameters.insert("share".into(), missing.clone());
    let status = c.create_volume(r).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{}", status.message());
    assert!(
        status.message().contains("no such export"),
        "{}",
        status.message()
    );
    assert_eq!(server_files(), before, "nothing was written");
}

/// Retries a call while it answers ABORTED (in progress, or busy) or UNAVAILABLE (the server
/// connection failed and is rebuilt), as the sidecars do: both are not final for them.
async fn until_done<T, F, Fut>(what: &str, mut call: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match call().await {
            Ok(r) => return r.into_inner(),
            Err(s)
                if matches!(s.code(), Code::Aborted | Code::Unavailable)
                    && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(s) => panic!("{what}: {s:?}"),
        }
    }
}

#[tokio::test]
async fn a_failed_create_leaves_nothing_behind() {
    let nfs = NfsServer::start("csfc");
    let driver = Driver::start(&nfs, &[]);
    let mut c = driver.controller().await;
    for version in VERSIONS {
        for layout in LAYOUTS {
            let v = version.chars().next().unwrap();
            // A source whose data vanished from the server under its record.
            let broken = create(&mut c, request(&nfs, "broken-source", version, layout)).await;
            std::fs::remove_dir_all(volume_dir(&nfs, &broken.volume_id)).unwrap();
            let base = || request(&nfs, "pvc-failed", version, layout);
            let cases = [
                (
                    from_snapshot(
                        base(),
                        &format!("s{v}#{}#{}#nothing", nfs.address, nfs.share()),
                    ),
                    Code::NotFound,
                ),
                (from_snapshot(base(), "forged-snapshot-id"), Code::NotFound),
                (
                    from_volume(
                        base(),
                        &format!("vd{v}#{}#{}#nothing", nfs.address, nfs.share()),
                    ),
                    Code::NotFound,
                ),
                (from_volume(base(), "forged-volume-id"), Code::NotFound),
                (
                    from_snapshot(base(), &format!("s{v}#10.251.0.77#/gone#snap")),
                    Code::Unavailable,
                ),
                (from_volume(base(), &broken.volume_id), Code::NotFound),
            ];
            for (r, expected) in cases {
                let status = c.create_volume(r.clone()).await.unwrap_err();
                let got = status.code();
                assert!(
                    got == expected
                        || (expected == Code::Unavailable && got == Code::DeadlineExceeded),
                    "NFSv{version} {layout} {:?}: {status:?}",
                    r.volume_content_source
                );
                let left: BTreeSet<String> = leftovers(&nfs)
                    .into_iter()
                    .filter(|p| {
                        !p.contains(
                            &volume_dir(&nfs, &broken.volume_id)
                                .file_name()
                                .unwrap()
                                .to_string_lossy()
                                .to_string(),
                        )
                    })
                    .collect();
                assert_eq!(
                    left,
                    BTreeSet::new(),
                    "NFSv{version} {layout}: {}",
                    status.message()
                );
            }
            // The name is free again: the same name without a source works.
            let ok = create(&mut c, base()).await;
            delete(&mut c, &ok.volume_id).await;
            delete(&mut c, &broken.volume_id).await;
            assert_eq!(leftovers(&nfs), BTreeSet::new());
        }
    }
}

/// Sets owner, mode and mtime of `path` (not following symlinks).
fn own(path: &Path, uid: u32, gid: u32, mode: Option<u32>, mtime: &str) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap();
    if let Some(mode) = mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    test_support::sh("touch", &["-h", "-d", mtime, path.to_str().unwrap()]);
}

/// A tree with what a faithful copy must keep: owners, modes, times, a symlink, hard links, a
/// sparse file.
fn fill_source(dir: &Path) {
    std::fs::write(dir.join("a.txt"), "alpha").unwrap();
    own(
        &dir.join("a.txt"),
        1234,
        5678,
        Some(0o640),
        "2001-02-03 04:05:06",
    );
    std::fs::create_dir(dir.join("sub")).unwrap();
    std::fs::write(dir.join("sub/b.bin"), vec![7u8; 300_000]).unwrap();
    own(
        &dir.join("sub/b.bin"),
        0,
        0,
        Some(0o600),
        "2003-01-01 00:00:00",
    );
    std::fs::write(dir.join("h1"), "linked").unwrap();
    std::fs::hard_link(dir.join("h1"), dir.join("sub/h2")).unwrap();
    own(&dir.join("h1"), 99, 98, Some(0o604), "2004-01-01 00:00:00");
    std::os::unix::fs::symlink("a.txt", dir.join("link")).unwrap();
    own(&dir.join("link"), 77, 78, None, "2005-01-01 00:00:00");
    let sparse = std::fs::File::create(dir.join("sparse.img")).unwrap();
    sparse.set_len(256 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    sparse.write_at(b"in the middle", 100 << 20).unwrap();
    drop(sparse);
    own(
        &dir.join("sparse.img"),
        5,
        6,
        Some(0o644),
        "2006-01-01 00:00:00",
    );
    own(&dir.join("sub"), 42, 43, Some(0o750), "2002-01-01 00:00:00");
    own(dir, 1000, 1000, None, "2000-01-01 00:00:00");
}

/// Checks that `copy` is a faithful copy of `original` (the root's mode aside).
fn assert_faithful(original: &Path, copy: &Path) {
    let names = tree(original);
    assert_eq!(tree(copy), names, "{}", copy.display());
    for name in names.iter().map(String::as_str).chain([""]) {
        let (a, b) = (original.join(name), copy.join(name));
        let (ma, mb) = (
            std::fs::symlink_metadata(&a).unwrap(),
            std::fs::symlink_metadata(&b).unwrap(),
        );
        assert_eq!(ma.file_type(), mb.file_type(), "{name}");
        assert_eq!(
            (ma.uid(), ma.gid()),
            (mb.uid(), mb.gid()),
            "owner of {name:?}"
        );
        // Times are asked for on symlinks too, but nfs-ganesha's VFS backend leaves a new
        // symlink's times as they are (measured here over NFSv3 and v4.1).
        if !ma.file_type().is_symlink() {
            assert_eq!(ma.mtime(), mb.mtime(), "mtime of {name:?}");
        }
        if !name.is_empty() && !ma.file_type().is_symlink() {
            assert_eq!(ma.mode(), mb.mode(), "mode of {name:?}");
        }
        if ma.file_type().is_symlink() {
            assert_eq!(
                std::fs::read_link(&a).unwrap(),
                std::fs::read_link(&b).unwrap()
            );
        } else if ma.is_file() {
            assert_eq!(ma.len(), mb.len(), "{name}");
        }
    }
    assert_eq!(std::fs::read(copy.join("a.txt")).unwrap(), b"alpha");
    assert_eq!(
        std::fs::read(copy.join("sub/b.bin")).unwrap(),
        vec![7u8; 300_000]
    );
    // Hard links stay one file.
    let (h1, h2) = (
        std::fs::metadata(copy.join("h1")).unwrap(),
        std::fs::metadata(copy.join("sub/h2")).unwrap(),
    );
    assert_eq!((h1.ino(), h1.nlink()), (h2.ino(), 2), "hard links");
    // Sparse stays sparse: 256 MiB long, a few KiB allocated.
    let sparse = std::fs::metadata(copy.join("sparse.img")).unwrap();
    assert_eq!(sparse.len(), 256 << 20);
    assert!(
        sparse.blocks() * 512 <= 64 << 10,
        "{} bytes allocated",
        sparse.blocks() * 512
    );
    use std::os::unix::fs::FileExt;
    let mut middle = [0u8; 13];
    std::fs::File::open(copy.join("sparse.img"))
        .unwrap()
        .read_exact_at(&mut middle, 100 << 20)
        .unwrap();
    assert_eq!(&middle, b"in the middle");
}

#[tokio::test]
async fn snapshots_and_clones_are_faithful_copies() {
    let nfs = NfsServer::start("csfa");
    let driver = Driver::start(&nfs, &[]);
    let mut c = driver.controller().await;
    for version in VERSIONS {
        let source = create(
            &mut c,
            request(&nfs, &format!("src-{version}"), version, "directory"),
        )
        .await;
        let source_dir = volume_dir(&nfs, &source.volume_id);
        fill_source(&source_dir);
        let snap = snapshot(&mut c, &source.volume_id, &format!("snap-{version}")).await;
        assert!(snap.ready_to_use);
        let key = snap.snapshot_id.rsplit('#').next().unwrap();
        assert_faithful(
            &source_dir,
            &nfs.export()
                .join(".tether/snapshots")
                .join(key)
                .join("data"),
        );
        let restored = create(
            &mut c,
            from_snapshot(
                request(&nfs, &format!("restored-{version}"), version, "directory"),
                &snap.snapshot_id,
            ),
        )
        .await;
        assert_faithful(&source_dir, &volume_dir(&nfs, &restored.volume_id));
        let clone = create(
            &mut c,
            from_volume(
                request(&nfs, &format!("clone-{version}"), version, "directory"),
                &source.volume_id,
            ),
        )
        .await;
        assert_faithful(&source_dir, &volume_dir(&nfs, &clone.volume_id));
        for id in [&restored.volume_id, &clone.volume_id, &source.volume_id] {
            delete(&mut c, id).await;
        }
        c.delete_snapshot(csi::DeleteSnapshotRequest {
            snapshot_id: snap.snapshot_id,
            ..Default::default()
        })
        .await
        .unwrap();
    }
    assert_eq!(leftovers(&nfs), BTreeSet::new());
}

#[tokio::test]
async fn long_copies_run_in_the_background_and_callers_poll() {
    let nfs = NfsServer::start("csbg");
    // Copies never finish within the call, and one runs at a time.
    let driver = Driver::start(&nfs, &["--copy-wait", "0", "--max-copies", "1"]);
    let mut c = driver.controller().await;
    for version in VERSIONS {
        let source = create(
            &mut c,
            request(&nfs, &format!("big-{version}"), version, "directory"),
        )
        .await;
        let data: Vec<u8> = (0..48u32 << 20)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        std::fs::write(volume_dir(&nfs, &source.volume_id).join("big.bin"), &data).unwrap();
        let snap = snapshot(&mut c, &source.volume_id, &format!("bg-{version}")).await;
        assert!(!snap.ready_to_use, "a 48 MiB copy is not done at once");
        // A second snapshot queues behind the first.
        let second = snapshot(&mut c, &source.volume_id, &format!("bg2-{version}")).await;
        assert!(!second.ready_to_use);
        // While a copy reads from it, the source volume is in use: FAILED_PRECONDITION.
        assert_eq!(
            code(
                c.delete_volume(csi::DeleteVolumeRequest {
                    volume_id: source.volume_id.clone(),
                    ..Default::default()
                })
                .await
            ),
            Code::FailedPrecondition
        );
        // The snapshotter polls ListSnapshots by id (and CreateSnapshot again).
        let listed = |c: &mut ControllerClient<Channel>, id: String| {
            let mut c = c.clone();
            async move {
                c.list_snapshots(csi::ListSnapshotsRequest {
                    snapshot_id: id,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .entries
            }
        };
        let entries = listed(&mut c, snap.snapshot_id.clone()).await;
        assert_eq!(entries.len(), 1, "listed while it is copied");
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let again = snapshot(&mut c, &source.volume_id, &format!("bg-{version}")).await;
            if again.ready_to_use {
                break;
            }
            assert!(Instant::now() < deadline, "the snapshot never became ready");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let entries = listed(&mut c, snap.snapshot_id.clone()).await;
        assert!(entries[0].snapshot.as_ref().unwrap().ready_to_use);
        // Deleting a snapshot that is still copied stops the copy and leaves nothing.
        c.delete_snapshot(csi::DeleteSnapshotRequest {
            snapshot_id: second.snapshot_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
        // Restoring: ABORTED (in progress) until the copy is done, then the volume.
        let r = from_snapshot(
            request(&nfs, &format!("bg-restore-{version}"), version, "directory"),
            &snap.snapshot_id,
        );
        let status = c.create_volume(r.clone()).await.unwrap_err();
        assert_eq!(status.code(), Code::Aborted, "{}", status.message());
        assert!(
            status.message().contains("being filled"),
            "{}",
            status.message()
        );
        // The snapshot a restore reads from is in use too.
        assert_eq!(
            code(
                c.delete_snapshot(csi::DeleteSnapshotRequest {
                    snapshot_id: snap.snapshot_id.clone(),
                    ..Default::default()
                })
                .await
            ),
            Code::FailedPrecondition
        );
        let restored = until_done("restore", || {
            let mut c = c.clone();
            let r = r.clone();
            async move { c.create_volume(r).await }
        })
        .await
        .volume
        .unwrap();
        assert_eq!(
            std::fs::read(volume_dir(&nfs, &restored.volume_id).join("big.bin")).unwrap(),
            data
        );
        delete(&mut c, &restored.volume_id).await;
        c.delete_snapshot(csi::DeleteSnapshotRequest {
            snapshot_id: snap.snapshot_id,
            ..Default::default()
        })
        .await
        .unwrap();
        until_done("delete source", || {
            let mut c = c.clone();
            let id = source.volume_id.clone();
            async move {
                c.delete_volume(csi::DeleteVolumeRequest {
                    volume_id: id,
                    ..Default::default()
                })
                .await
            }
        })
        .await;
    }
    assert_eq!(leftovers(&nfs), BTreeSet::new());
}

/// Whether any metadata file is a temporary one.
fn temporary_files(nfs: &NfsServer) -> Vec<String> {
    tree(&nfs.export().join(".tether"))
        .into_iter()
        .filter(|p| p.contains(".tmp-"))
        .collect()
}

#[tokio::test]
async fn kills_midway_converge_and_leave_no_records_claims_or_temporary_files() {
    let nfs = NfsServer::start("cskl");
    let names: Vec<String> = (0..12).map(|i| format!("pvc-kill-{i}")).collect();
    let keep = |name: &str| name.ends_with(['0', '2', '4', '6', '8']);
    for round in 0..10u64 {
        let mut driver = Driver::start(&nfs, &[]);
        let c = driver.controller().await;
        let mut tasks = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let mut c = c.clone();
            let version = VERSIONS[i % 2];
            let layout = LAYOUTS[(i / 2) % 2];
            let r = request(&nfs, name, version, layout);
            let delete_too = round % 2 == 1 && !keep(name);
            tasks.push(tokio::spawn(async move {
                if let Ok(v) = c.create_volume(r).await {
                    if delete_too {
                        let _ = c
                            .delete_volume(csi::DeleteVolumeRequest {
                                volume_id: v.into_inner().volume.unwrap().volume_id,
                                ..Default::default()
                            })
                            .await;
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(5 + round * 9)).await;
        driver.kill();
        for t in tasks {
            let _ = t.await;
        }
    }
    // The retries converge: every volume to keep exists, the others are deleted.
    let driver = Driver::start(&nfs, &["--sweep-interval", "1", "--leftover-age", "0"]);
    let mut c = driver.controller().await;
    let mut kept = BTreeSet::new();
    for (i, name) in names.iter().enumerate() {
        let r = request(&nfs, name, VERSIONS[i % 2], LAYOUTS[(i / 2) % 2]);
        let volume = until_done(name, || {
            let mut c = c.clone();
            let r = r.clone();
            async move { c.create_volume(r).await }
        })
        .await
        .volume
        .unwrap();
        if keep(name) {
            kept.insert(
                volume_dir(&nfs, &volume.volume_id)
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
            );
        } else {
            delete(&mut c, &volume.volume_id).await;
        }
    }
    // The sweep removes what the kills left in .tether (temporary record files).
    let deadline = Instant::now() + Duration::from_secs(20);
    while !temporary_files(&nfs).is_empty() {
        assert!(Instant::now() < deadline, "{:?}", temporary_files(&nfs));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let claims: BTreeSet<String> = std::fs::read_dir(nfs.export().join(".tether/names"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let wanted: BTreeSet<String> = names.iter().filter(|n| keep(n)).cloned().collect();
    assert_eq!(claims, wanted, "claims of deleted volumes stay behind");
    let records = std::fs::read_dir(nfs.export().join(".tether/volumes"))
        .unwrap()
        .count();
    assert_eq!(records, wanted.len());
    let top: BTreeSet<String> = std::fs::read_dir(nfs.export())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != ".tether")
        .collect();
    assert_eq!(top, kept);
    assert_eq!(
        std::fs::read_dir(nfs.export().join(".tether/trash"))
            .unwrap()
            .count(),
        0
    );
}

#[tokio::test]
async fn the_sweep_removes_old_leftovers_on_a_timer_and_leaves_young_ones() {
    let nfs = NfsServer::start("cssw");
    let meta = nfs.export().join(".tether");
    for dir in ["volumes", "names", "snapshots", "trash"] {
        std::fs::create_dir_all(meta.join(dir)).unwrap();
    }
    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let old = "2020-01-01 00:00:00";
    // Trash of an interrupted delete, old and young.
    std::fs::create_dir_all(meta.join("trash/1000-pvc-old/deep")).unwrap();
    std::fs::write(meta.join("trash/1000-pvc-old/deep/file"), "x").unwrap();
    std::fs::create_dir(meta.join(format!("trash/{now_ns}-pvc-young"))).unwrap();
    // Temporary record files, old and young.
    std::fs::write(meta.join("volumes/.pvc-a.json.tmp-1-1"), "{").unwrap();
    test_support::sh(
        "touch",
        &[
            "-d",
            old,
            meta.join("volumes/.pvc-a.json.tmp-1-1").to_str().unwrap(),
        ],
    );
    std::fs::write(meta.join("volumes/.pvc-b.json.tmp-2-2"), "{").unwrap();
    // A claim whose creation died before its record, with the empty directory it made.
    std::fs::create_dir(nfs.export().join("orphan")).unwrap();
    std::os::unix::fs::symlink("orphan", meta.join("names/orphan")).unwrap();
    test_support::sh(
        "touch",
        &["-h", "-d", old, meta.join("names/orphan").to_str().unwrap()],
    );
    // A claim leading to a directory with data and no record: the claim goes, the data stays.
    std::fs::create_dir(nfs.export().join("precious")).unwrap();
    std::fs::write(nfs.export().join("precious/data"), "keep").unwrap();
    std::os::unix::fs::symlink("precious", meta.join("names/precious")).unwrap();
    test_support::sh(
        "touch",
        &[
            "-h",
            "-d",
            old,
            meta.join("names/precious").to_str().unwrap(),
        ],
    );
    // A young claim (a creation at work).
    std::os::unix::fs::symlink("young", meta.join("names/young")).unwrap();
    // A volume left half made long ago, and one at work.
    for (name, state, touched) in [
        ("half", "creating", 1000u64),
        ("busy", "creating", (now_ns / 1_000_000_000) as u64),
        ("undeleted", "deleting", 1000u64),
    ] {
        std::fs::create_dir(nfs.export().join(name)).unwrap();
        std::fs::write(nfs.export().join(name).join("partial"), "p").unwrap();
        std::os::unix::fs::symlink(name, meta.join("names").join(name)).unwrap();
        let record = serde_json::json!({
            "name": name,
            "volumeId": format!("vd4#{}#{}#{name}", nfs.address, nfs.share()),
            "path": name,
            "capacityBytes": 1,
            "parameters": {},
            "settings": {"onDelete": "delete", "mountPermissions": 511, "layout": "directory"},
            "source": null,
            "state": state,
            "createdUnix": touched,
            "touchedUnix": touched,
        });
        std::fs::write(
            meta.join(format!("volumes/{name}.json")),
            record.to_string(),
        )
        .unwrap();
    }
    let driver = Driver::start(&nfs, &["--sweep-interval", "1", "--leftover-age", "600"]);
    let deadline = Instant::now() + Duration::from_secs(15);
    let gone = [
        meta.join("trash/1000-pvc-old"),
        meta.join("volumes/.pvc-a.json.tmp-1-1"),
        meta.join("names/orphan"),
        nfs.export().join("orphan"),
        meta.join("names/precious"),
        meta.join("names/half"),
        meta.join("volumes/half.json"),
        nfs.export().join("half"),
        meta.join("names/undeleted"),
        meta.join("volumes/undeleted.json"),
        nfs.export().join("undeleted"),
    ];
    while gone.iter().any(|p| p.symlink_metadata().is_ok()) {
        assert!(
            Instant::now() < deadline,
            "still there: {:?}\n{}",
            gone.iter()
                .filter(|p| p.symlink_metadata().is_ok())
                .collect::<Vec<_>>(),
            driver.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for stays in [
        meta.join(format!("trash/{now_ns}-pvc-young")),
        meta.join("volumes/.pvc-b.json.tmp-2-2"),
        nfs.export().join("precious/data"),
        meta.join("names/young"),
        meta.join("names/busy"),
        meta.join("volumes/busy.json"),
        nfs.export().join("busy/partial"),
    ] {
        assert!(
            stays.symlink_metadata().is_ok(),
            "{} was removed",
            stays.display()
        );
    }
    assert!(
        driver.log().contains("sweep removed leftovers"),
        "{}",
        driver.log()
    );
}

/// The CSI spec's error tables, RPC by RPC, for what the other tests do not already cover.
#[tokio::test]
async fn every_rpc_answers_the_spec_error_codes() {
    let nfs = NfsServer::start("csst");
    let driver = Driver::start(&nfs, &[]);
    let mut c = driver.controller().await;
    let unknown_volume = format!("vd4#{}#{}#no-such-volume", nfs.address, nfs.share());
    let unknown_snapshot = format!("s4#{}#{}#no-such-snapshot", nfs.address, nfs.share());

    // ValidateVolumeCapabilities: INVALID_ARGUMENT without id or capabilities, NOT_FOUND for
    // an unknown volume.
    let validate =
        |id: &str, caps: Vec<csi::VolumeCapability>| csi::ValidateVolumeCapabilitiesRequest {
            volume_id: id.into(),
            volume_capabilities: caps,
            ..Default::default()
        };
    assert_eq!(
        code(
            c.validate_volume_capabilities(validate("", vec![common::rwx()]))
                .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            c.validate_volume_capabilities(validate(&unknown_volume, vec![]))
                .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            c.validate_volume_capabilities(validate(&unknown_volume, vec![common::rwx()]))
                .await
        ),
        Code::NotFound
    );
    // ControllerGetVolume, ControllerExpandVolume: INVALID_ARGUMENT without id, NOT_FOUND for
    // an unknown one.
    for id in ["", unknown_volume.as_str(), "forged"] {
        let expected = if id.is_empty() {
            Code::InvalidArgument
        } else {
            Code::NotFound
        };
        assert_eq!(
            code(
                c.controller_get_volume(csi::ControllerGetVolumeRequest {
                    volume_id: id.into()
                })
                .await
            ),
            expected,
            "{id}"
        );
        let expand = csi::ControllerExpandVolumeRequest {
            volume_id: id.into(),
            capacity_range: Some(csi::CapacityRange {
                required_bytes: MIB,
                limit_bytes: 0,
            }),
            ..Default::default()
        };
        assert_eq!(
            code(c.controller_expand_volume(expand).await),
            expected,
            "{id}"
        );
    }
    // ControllerModifyVolume: INVALID_ARGUMENT without id, NOT_FOUND for an unknown one.
    for (id, expected) in [
        ("", Code::InvalidArgument),
        (unknown_volume.as_str(), Code::NotFound),
        ("forged", Code::NotFound),
    ] {
        assert_eq!(
            code(
                c.controller_modify_volume(csi::ControllerModifyVolumeRequest {
                    volume_id: id.into(),
                    ..Default::default()
                })
                .await
            ),
            expected,
            "{id}"
        );
    }
    // RPCs not advertised: UNIMPLEMENTED.
    assert_eq!(
        code(
            c.controller_unpublish_volume(csi::ControllerUnpublishVolumeRequest::default())
                .await
        ),
        Code::Unimplemented
    );
    // DeleteVolume/DeleteSnapshot: INVALID_ARGUMENT without id, OK for unknown ids (twice).
    assert_eq!(
        code(c.delete_volume(csi::DeleteVolumeRequest::default()).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            c.delete_snapshot(csi::DeleteSnapshotRequest::default())
                .await
        ),
        Code::InvalidArgument
    );
    for _ in 0..2 {
        delete(&mut c, &unknown_volume).await;
        c.delete_snapshot(csi::DeleteSnapshotRequest {
            snapshot_id: unknown_snapshot.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    // GetSnapshot: INVALID_ARGUMENT without id, NOT_FOUND for unknown ones.
    assert_eq!(
        code(c.get_snapshot(csi::GetSnapshotRequest::default()).await),
        Code::InvalidArgument
    );
    for id in [unknown_snapshot.as_str(), "forged"] {
        assert_eq!(
            code(
                c.get_snapshot(csi::GetSnapshotRequest {
                    snapshot_id: id.into(),
                    ..Default::default()
                })
                .await
            ),
            Code::NotFound
        );
    }
    // CreateSnapshot: INVALID_ARGUMENT without name or source, NOT_FOUND for an unknown source,
    // ALREADY_EXISTS for a name taken with another source; idempotent otherwise.
    let snap = |name: &str, source: &str| csi::CreateSnapshotRequest {
        name: name.into(),
        source_volume_id: source.into(),
        ..Default::default()
    };
    let a = create(&mut c, request(&nfs, "pvc-a", "4.1", "directory")).await;
    let b = create(&mut c, request(&nfs, "pvc-b", "4.1", "directory")).await;
    assert_eq!(
        code(c.create_snapshot(snap("", &a.volume_id)).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(c.create_snapshot(snap("s", "")).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(c.create_snapshot(snap("s", &unknown_volume)).await),
        Code::NotFound
    );
    let first = snapshot(&mut c, &a.volume_id, "snap-a").await;
    assert_eq!(
        snapshot(&mut c, &a.volume_id, "snap-a").await.snapshot_id,
        first.snapshot_id
    );
    assert_eq!(
        code(c.create_snapshot(snap("snap-a", &b.volume_id)).await),
        Code::AlreadyExists
    );
    for i in 0..4 {
        snapshot(&mut c, &b.volume_id, &format!("snap-b{i}")).await;
    }
    // ListSnapshots: by id (unknown: empty, not an error), by source, and paged; a foreign
    // token is ABORTED, a negative max_entries INVALID_ARGUMENT.
    let lister = c.clone();
    let list = |r: csi::ListSnapshotsRequest| {
        let mut c = lister.clone();
        async move { c.list_snapshots(r).await }
    };
    let by_id = list(csi::ListSnapshotsRequest {
        snapshot_id: first.snapshot_id.clone(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner();
    assert_eq!(by_id.entries.len(), 1);
    let unknown = list(csi::ListSnapshotsRequest {
        snapshot_id: unknown_snapshot.clone(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner();
    assert!(unknown.entries.is_empty());
    let of_b = list(csi::ListSnapshotsRequest {
        source_volume_id: b.volume_id.clone(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner();
    assert_eq!(of_b.entries.len(), 4);
    let mut seen = BTreeSet::new();
    let mut token = String::new();
    loop {
        let page = list(csi::ListSnapshotsRequest {
            max_entries: 2,
            starting_token: token.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
        assert!(page.entries.len() <= 2);
        seen.extend(
            page.entries
                .into_iter()
                .map(|e| e.snapshot.unwrap().snapshot_id),
        );
        if page.next_token.is_empty() {
            break;
        }
        token = page.next_token;
    }
    assert_eq!(seen.len(), 5);
    assert_eq!(
        code(
            list(csi::ListSnapshotsRequest {
                starting_token: "not-ours".into(),
                ..Default::default()
            })
            .await
        ),
        Code::Aborted
    );
    assert_eq!(
        code(
            list(csi::ListSnapshotsRequest {
                max_entries: -1,
                ..Default::default()
            })
            .await
        ),
        Code::InvalidArgument
    );
    // ListVolumes: paged; a foreign token ABORTED, a negative max_entries INVALID_ARGUMENT.
    let page = c
        .list_volumes(csi::ListVolumesRequest {
            max_entries: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.entries.len(), 1);
    let rest = c
        .list_volumes(csi::ListVolumesRequest {
            max_entries: 5,
            starting_token: page.next_token,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.entries.len(), 1);
    assert!(rest.next_token.is_empty());
    assert_eq!(
        code(
            c.list_volumes(csi::ListVolumesRequest {
                max_entries: 0,
                starting_token: "not-ours".into()
            })
            .await
        ),
        Code::Aborted
    );
    assert_eq!(
        code(
            c.list_volumes(csi::ListVolumesRequest {
                max_entries: -1,
                starting_token: String::new()
            })
            .await
        ),
        Code::InvalidArgument
    );
    // Clean up: snapshots, then volumes.
    for entry in list(csi::ListSnapshotsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .entries
    {
        c.delete_snapshot(csi::DeleteSnapshotRequest {
            snapshot_id: entry.snapshot.unwrap().snapshot_id,
            ..Default::default()
        })
        .await
        .unwrap();
    }
    delete(&mut c, &a.volume_id).await;
    delete(&mut c, &b.volume_id).await;
    assert_eq!(leftovers(&nfs), BTreeSet::new());
}

/// `--metrics-addr`: every RPC by method and code, latencies, NFS calls by operation.
#[tokio::test]
async fn metrics_count_rpcs_by_code_and_time_nfs_calls() {
    let nfs = NfsServer::start("csmt");
    let driver = Driver::start(&nfs, &["--metrics-addr", "127.0.0.1:9810"]);
    let mut c = driver.controller().await;
    let v = create(&mut c, request(&nfs, "pvc-metrics", "4.1", "directory")).await;
    assert_eq!(
        code(
            c.controller_get_volume(csi::ControllerGetVolumeRequest {
                volume_id: "forged".into()
            })
            .await
        ),
        Code::NotFound
    );
    delete(&mut c, &v.volume_id).await;
    let out = nfs
        .command(Path::new("/usr/bin/curl"))
        .args(["-sf", "http://127.0.0.1:9810/metrics"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", driver.log());
    for line in [
        "tether_csi_rpcs_total{method=\"CreateVolume\",code=\"Ok\"} 1",
        "tether_csi_rpcs_total{method=\"ControllerGetVolume\",code=\"NotFound\"} 1",
        "tether_csi_rpcs_total{method=\"DeleteVolume\",code=\"Ok\"} 1",
        "tether_csi_rpcs_in_flight{method=\"CreateVolume\"} 0",
        "tether_csi_rpc_duration_seconds_count{method=\"CreateVolume\"} 1",
        "tether_csi_copies 0",
    ] {
        assert!(text.contains(line), "no {line:?} in\n{text}");
    }
    assert!(
        text.contains("tether_csi_nfs_call_duration_seconds_count{operation=\"mkdir\"}"),
        "{text}"
    );
}

/// Storage capacity tracking: csi-provisioner asks GetCapacity with each StorageClass's
/// parameters; the answer is that share's free space, and 0 for a share not exported.
#[tokio::test]
async fn get_capacity_answers_per_storage_class() {
    let nfs = NfsServer::start("cscp");
    let driver = Driver::start(&nfs, &[]);
    let mut c = driver.controller().await;
    let class = create_request(&nfs, "unused", MIB, &[("layout", "directory")]).parameters;
    let answer = c
        .get_capacity(csi::GetCapacityRequest {
            parameters: class.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let vfs = nix::sys::statvfs::statvfs(&nfs.export()).unwrap();
    let free = vfs.blocks_available() as f64 * vfs.fragment_size() as f64;
    let ratio = answer.available_capacity as f64 / free;
    assert!((0.9..1.1).contains(&ratio), "{answer:?} vs {free}");
    assert_eq!(answer.maximum_volume_size, Some(answer.available_capacity));
    let mut missing = class.clone();
    missing.insert("share".into(), format!("{}-missing", nfs.share()));
    let answer = c
        .get_capacity(csi::GetCapacityRequest {
            parameters: missing,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.available_capacity, 0);
}
