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

use common::{code, create_request, mount_capability, Driver};
use test_support::ganesha::NfsServer;
use tether_csi_proto::v1::{
    self as csi, controller_client::ControllerClient, volume_capability::access_mode::Mode,
    volume_content_source,
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

fn from_snapshot(mut r: csi::CreateVolumeRequest, id: &str) -> csi::CreateVolumeRequest {
    r.volume_content_source = Some(csi::VolumeContentSource {
        r#type: Some(volume_content_source::Type::Snapshot(
            volume_content_source::SnapshotSource {
                snapshot_id: id.into(),
            },
        )),
    });
    r
}

fn from_volume(mut r: csi::CreateVolumeRequest, id: &str) -> csi::CreateVolumeRequest {
    r.volume_content_source = Some(csi::VolumeContentSource {
        r#type: Some(volume_content_source::Type::Volume(
            volume_content_source::VolumeSource {
                volume_id: id.into(),
            },
        )),
    });
    r
}

async fn create(c: &mut ControllerClient<Channel>, r: csi::CreateVolumeRequest) -> csi::Volume {
    c.create_volume(r)
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap()
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
