#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

//! The Identity and Controller services against a real NFS server (nfs-ganesha), checked through
//! the gRPC answers and the export's real contents on disk.

mod common;

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::{
    block_capability, code, create, create_request, modify_request, mount_capability, pairs, rwx,
    Driver,
};
use test_support::ganesha::NfsServer;
use tether_csi_proto::v1::{
    self as csi, volume_capability::access_mode::Mode, volume_content_source,
};
use tonic::Code;

const GIB: i64 = 1 << 30;

fn volume_dir(nfs: &NfsServer, volume_id: &str) -> std::path::PathBuf {
    let path = volume_id.rsplit('#').next().unwrap();
    nfs.export().join(path)
}

#[tokio::test]
async fn identity_socket_and_shutdown() {
    let nfs = NfsServer::start("csid");
    // A socket file left by a crashed run is replaced.
    let dir = tempfile::tempdir().unwrap();
    let stale = dir.path().join("csi.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    let log = std::fs::File::create(dir.path().join("log")).unwrap();
    // CSI_ENDPOINT is honoured (no --endpoint flag).
    let mut child = nfs
        .command(&common::binary())
        .args(["--mode", "controller"])
        .env("CSI_ENDPOINT", format!("unix://{}", stale.display()))
        .stderr(log)
        .spawn()
        .unwrap();
    let mut identity = {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(stream) = std::os::unix::net::UnixStream::connect(&stale) {
                drop(stream);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "tether-csi did not replace the stale socket"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        tether_csi_proto::v1::identity_client::IdentityClient::new(common::channel(&stale).await)
    };
    let info = identity
        .get_plugin_info(csi::GetPluginInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.name, "nfs.tether.dev");
    assert!(!info.vendor_version.is_empty());
    let caps = identity
        .get_plugin_capabilities(csi::GetPluginCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        caps.capabilities.iter().any(|c| matches!(
            &c.r#type,
            Some(csi::plugin_capability::Type::Service(s))
                if s.r#type == csi::plugin_capability::service::Type::ControllerService as i32
        )),
        "{caps:?}"
    );
    assert_eq!(
        identity
            .probe(csi::ProbeRequest {})
            .await
            .unwrap()
            .into_inner()
            .ready,
        Some(true)
    );
    // SIGTERM: a clean exit that removes the socket, although this client keeps its
    // connection open (as kubelet does).
    let _ = std::process::Command::new("kill")
        .arg(child.id().to_string())
        .status();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(!stale.exists());

    // Anything at the socket path that is not a socket is left alone, with a clear error.
    std::fs::write(&stale, "precious").unwrap();
    let out = nfs
        .command(&common::binary())
        .args(["--mode", "controller", "--endpoint"])
        .arg(stale.display().to_string())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a socket"));
    assert_eq!(std::fs::read_to_string(&stale).unwrap(), "precious");

    let driver = Driver::start(&nfs, &[]);
    let mut controller = driver.controller().await;
    let caps = controller
        .controller_get_capabilities(csi::ControllerGetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    let types: HashSet<i32> = caps
        .capabilities
        .iter()
        .filter_map(|c| {
            c.r#type
                .as_ref()
                .map(|csi::controller_service_capability::Type::Rpc(rpc)| rpc.r#type)
        })
        .collect();
    // CREATE_DELETE_VOLUME, LIST_VOLUMES, GET_CAPACITY, CREATE_DELETE_SNAPSHOT, LIST_SNAPSHOTS,
    // CLONE_VOLUME, EXPAND_VOLUME, VOLUME_CONDITION, GET_VOLUME, SINGLE_NODE_MULTI_WRITER,
    // GET_SNAPSHOT, MODIFY_VOLUME; no PUBLISH_UNPUBLISH_VOLUME.
    assert_eq!(
        types,
        HashSet::from([1, 3, 4, 5, 6, 7, 9, 11, 12, 13, 14, 15])
    );
    assert_eq!(
        code(
            controller
                .controller_publish_volume(csi::ControllerPublishVolumeRequest::default())
                .await
        ),
        Code::Unimplemented
    );
}

#[tokio::test]
async fn create_and_delete_are_idempotent_and_checked() {
    let nfs = NfsServer::start("csic");
    let driver = Driver::start(&nfs, &[]);
    let mut c = driver.controller().await;

    let request = create_request(&nfs, "pvc-aaa", GIB, &[("mountPermissions", "0770")]);
    let mut ids = HashSet::new();
    for _ in 0..10 {
        let volume = c
            .create_volume(request.clone())
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap();
        assert_eq!(volume.capacity_bytes, GIB);
        assert_eq!(volume.volume_context["nfsvers"], "4.1");
        ids.insert(volume.volume_id);
    }
    assert_eq!(ids.len(), 1, "one volume for ten identical requests");
    let id = ids.into_iter().next().unwrap();
    assert!(id.starts_with("vd4#") && id.len() <= 128, "{id}");
    let dir = volume_dir(&nfs, &id);
    assert!(dir.is_dir());
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o7777,
        0o770
    );
    // The record lives on the share, next to the volume.
    let record = nfs.export().join(".tether/volumes/pvc-aaa.json");
    let text = std::fs::read_to_string(&record).unwrap();
    assert!(
        text.contains("\"name\": \"pvc-aaa\"") && text.contains("\"state\": \"ready\""),
        "{text}"
    );

    // A smaller compatible request is the same volume; a bigger one or other parameters are not.
    let mut smaller = request.clone();
    smaller.capacity_range = Some(csi::CapacityRange {
        required_bytes: GIB / 2,
        limit_bytes: 0,
    });
    assert_eq!(
        c.create_volume(smaller)
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap()
            .volume_id,
        id
    );
    let mut bigger = request.clone();
    bigger.capacity_range = Some(csi::CapacityRange {
        required_bytes: 2 * GIB,
        limit_bytes: 0,
    });
    assert_eq!(code(c.create_volume(bigger).await), Code::AlreadyExists);
    let other = create_request(&nfs, "pvc-aaa", GIB, &[("onDelete", "retain")]);
    assert_eq!(code(c.create_volume(other).await), Code::AlreadyExists);
    let moved = create_request(&nfs, "pvc-aaa", GIB, &[("subDir", "elsewhere")]);
    assert_eq!(code(c.create_volume(moved).await), Code::AlreadyExists);
    assert!(
        !nfs.export().join("elsewhere").exists(),
        "nothing made for a refused request"
    );

    // Another name may not take a directory that exists and is not a Tether volume, nor one
    // that is another volume.
    std::fs::create_dir(nfs.export().join("precious")).unwrap();
    std::fs::write(nfs.export().join("precious/data"), "keep").unwrap();
    let squat = create_request(&nfs, "pvc-bbb", GIB, &[("subDir", "precious")]);
    assert_eq!(
        code(c.create_volume(squat.clone()).await),
        Code::AlreadyExists
    );
    let steal = create_request(&nfs, "pvc-bbb", GIB, &[("subDir", "pvc-aaa")]);
    assert_eq!(code(c.create_volume(steal).await), Code::AlreadyExists);
    assert_eq!(
        std::fs::read_to_string(nfs.export().join("precious/data")).unwrap(),
        "keep"
    );
    // The refused name is free again for a good request.
    let good = create_request(&nfs, "pvc-bbb", GIB, &[]);
    let bbb = c
        .create_volume(good)
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap()
        .volume_id;

    // Names of exactly 128 bytes work (with a subDir, the id must stay within 128 bytes).
    let long = "n".repeat(128);
    let long_request = create_request(&nfs, &long, GIB, &[("subDir", "long-one")]);
    let long_id = c
        .create_volume(long_request.clone())
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap()
        .volume_id;
    assert_eq!(
        c.create_volume(long_request)
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap()
            .volume_id,
        long_id
    );
    let too_long = create_request(&nfs, &"n".repeat(129), GIB, &[("subDir", "x")]);
    assert_eq!(code(c.create_volume(too_long).await), Code::InvalidArgument);

    // Delete, ten times; unknown and foreign ids are not an error.
    for _ in 0..10 {
        c.delete_volume(csi::DeleteVolumeRequest {
            volume_id: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    assert!(!dir.exists());
    assert!(!record.exists());
    assert!(std::fs::read_dir(nfs.export().join(".tether/trash"))
        .unwrap()
        .next()
        .is_none());
    for unknown in [
        format!("vd4#{}#{}#pvc-never", nfs.address, nfs.share()),
        "some-volume-id".to_string(),
    ] {
        c.delete_volume(csi::DeleteVolumeRequest {
            volume_id: unknown,
            ..Default::default()
        })
        .await
        .unwrap();
    }
    assert_eq!(
        code(c.delete_volume(csi::DeleteVolumeRequest::default()).await),
        Code::InvalidArgument
    );
    // After deletion the name can be used again.
    let again = c
        .create_volume(request)
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap()
        .volume_id;
    assert_eq!(again, id);
    for v in [again, bbb, long_id] {
        c.delete_volume(csi::DeleteVolumeRequest {
            volume_id: v,
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let left: Vec<String> = std::fs::read_dir(nfs.export())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let mut left = left;
    left.sort();
    assert_eq!(left, [".tether", "precious"]);
}

#[tokio::test]
async fn nfsv3_and_the_on_delete_policies() {
    let nfs = NfsServer::start("csiv");
    let driver = Driver::start(&nfs, &[]);
    let mut c = driver.controller().await;

    let mut v3 = create_request(&nfs, "pvc-v3", GIB, &[]);
    v3.volume_capabilities = vec![mount_capability(
        Mode::MultiNodeMultiWriter,
        &["nfsvers=3", "hard"],
    )];
    let v3 = c
        .create_volume(v3)
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert!(v3.volume_id.starts_with("vd3#"), "{}", v3.volume_id);
    assert_eq!(v3.volume_context["nfsvers"], "3");
    assert!(volume_dir(&nfs, &v3.volume_id).is_dir());
    c.delete_volume(csi::DeleteVolumeRequest {
        volume_id: v3.volume_id.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(!volume_dir(&nfs, &v3.volume_id).exists());

    // Templates from the provisioner's extra metadata.
    let templated = create_request(
        &nfs,
        "pvc-t",
        GIB,
        &[
            ("subDir", "${pvc.metadata.namespace}/${pvc.metadata.name}"),
            ("csi.storage.k8s.io/pvc/name", "db"),
            ("csi.storage.k8s.io/pvc/namespace", "shop"),
            ("csi.storage.k8s.io/pv/name", "pvc-t"),
            ("onDelete", "retain"),
        ],
    );
    let retained = c
        .create_volume(templated)
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert!(retained.volume_id.ends_with("#shop/db"));
    std::fs::write(nfs.export().join("shop/db/file"), "data").unwrap();
    c.delete_volume(csi::DeleteVolumeRequest {
        volume_id: retained.volume_id.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(
        std::fs::read_to_string(nfs.export().join("shop/db/file")).unwrap(),
        "data"
    );
    assert_eq!(
        code(
            c.controller_get_volume(csi::ControllerGetVolumeRequest {
                volume_id: retained.volume_id
            })
            .await
        ),
        Code::NotFound,
        "a retained directory is no longer a volume"
    );

    let archive = create_request(&nfs, "pvc-arch", GIB, &[("onDelete", "archive")]);
    let archived = c
        .create_volume(archive)
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    std::fs::write(volume_dir(&nfs, &archived.volume_id).join("file"), "old").unwrap();
    c.delete_volume(csi::DeleteVolumeRequest {
        volume_id: archived.volume_id.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(!volume_dir(&nfs, &archived.volume_id).exists());
    let kept: Vec<_> = std::fs::read_dir(nfs.export())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("archived-pvc-arch-"))
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(
        std::fs::read_to_string(nfs.export().join(&kept[0]).join("file")).unwrap(),
        "old"
    );
}

#[tokio::test]
async fn snapshots_clones_and_listing() {
    let nfs = NfsServer::start("csis");
    let driver = Driver::start(&nfs, &[]);
    let mut c = driver.controller().await;

    let source = c
        .create_volume(create_request(&nfs, "pvc-src", GIB, &[]))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let dir = volume_dir(&nfs, &source.volume_id);
    std::fs::create_dir(dir.join("sub")).unwrap();
    std::fs::write(dir.join("sub/a.txt"), "alpha").unwrap();
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(dir.join("big.bin"), &big).unwrap();
    std::os::unix::fs::symlink("sub/a.txt", dir.join("link")).unwrap();
    std::fs::set_permissions(
        dir.join("sub/a.txt"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();

    let snap_request = csi::CreateSnapshotRequest {
        source_volume_id: source.volume_id.clone(),
        name: "snapshot-1".into(),
        ..Default::default()
    };
    let mut ids = HashSet::new();
    for _ in 0..10 {
        let s = c
            .create_snapshot(snap_request.clone())
            .await
            .unwrap()
            .into_inner()
            .snapshot
            .unwrap();
        assert!(s.ready_to_use);
        assert_eq!(s.source_volume_id, source.volume_id);
        assert_eq!(s.size_bytes, GIB);
        ids.insert(s.snapshot_id);
    }
    assert_eq!(ids.len(), 1);
    let snap = ids.into_iter().next().unwrap();
    // The snapshot is a copy: changing the volume afterwards does not change it.
    std::fs::write(dir.join("sub/a.txt"), "changed").unwrap();

    // The same name for another volume is a conflict.
    let other = c
        .create_volume(create_request(&nfs, "pvc-other", GIB, &[]))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let mut clash = snap_request.clone();
    clash.source_volume_id = other.volume_id.clone();
    assert_eq!(code(c.create_snapshot(clash).await), Code::AlreadyExists);
    // Snapshot names of exactly 128 bytes work too.
    let mut long = snap_request.clone();
    long.name = "s".repeat(128);
    let long_id = c
        .create_snapshot(long.clone())
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap()
        .snapshot_id;
    assert!(long_id.len() <= 128);
    assert_eq!(
        c.create_snapshot(long)
            .await
            .unwrap()
            .into_inner()
            .snapshot
            .unwrap()
            .snapshot_id,
        long_id
    );
    c.delete_snapshot(csi::DeleteSnapshotRequest {
        snapshot_id: long_id,
        ..Default::default()
    })
    .await
    .unwrap();
    let mut missing_source = snap_request.clone();
    missing_source.name = "snapshot-x".into();
    missing_source.source_volume_id = format!("vd4#{}#{}#pvc-gone", nfs.address, nfs.share());
    assert_eq!(
        code(c.create_snapshot(missing_source).await),
        Code::NotFound
    );

    // Restore from the snapshot: the old contents, modes and links.
    let mut restore = create_request(&nfs, "pvc-restored", GIB, &[]);
    restore.volume_content_source = Some(csi::VolumeContentSource {
        r#type: Some(volume_content_source::Type::Snapshot(
            volume_content_source::SnapshotSource {
                snapshot_id: snap.clone(),
            },
        )),
    });
    let restored = c
        .create_volume(restore.clone())
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert!(restored.content_source.is_some());
    let rdir = volume_dir(&nfs, &restored.volume_id);
    assert_eq!(
        std::fs::read_to_string(rdir.join("sub/a.txt")).unwrap(),
        "alpha"
    );
    assert_eq!(std::fs::read(rdir.join("big.bin")).unwrap(), big);
    assert_eq!(
        std::fs::read_link(rdir.join("link")).unwrap().to_str(),
        Some("sub/a.txt")
    );
    assert_eq!(
        std::fs::metadata(rdir.join("sub/a.txt"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    assert_eq!(
        c.create_volume(restore)
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap()
            .volume_id,
        restored.volume_id
    );

    // Clone a volume: its current contents.
    let mut clone = create_request(&nfs, "pvc-clone", 2 * GIB, &[]);
    clone.volume_content_source = Some(csi::VolumeContentSource {
        r#type: Some(volume_content_source::Type::Volume(
            volume_content_source::VolumeSource {
                volume_id: source.volume_id.clone(),
            },
        )),
    });
    let cloned = c
        .create_volume(clone)
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(volume_dir(&nfs, &cloned.volume_id).join("sub/a.txt")).unwrap(),
        "changed"
    );
    // Sources that do not exist, and sources bigger than the request.
    let mut ghost = create_request(&nfs, "pvc-ghost", GIB, &[]);
    ghost.volume_content_source = Some(csi::VolumeContentSource {
        r#type: Some(volume_content_source::Type::Snapshot(
            volume_content_source::SnapshotSource {
                snapshot_id: format!("s4#{}#{}#snapshot-none", nfs.address, nfs.share()),
            },
        )),
    });
    assert_eq!(code(c.create_volume(ghost.clone()).await), Code::NotFound);
    ghost.volume_content_source = Some(csi::VolumeContentSource {
        r#type: Some(volume_content_source::Type::Volume(
            volume_content_source::VolumeSource {
                volume_id: "not-an-id".into(),
            },
        )),
    });
    assert_eq!(code(c.create_volume(ghost).await), Code::NotFound);
    let mut small = create_request(&nfs, "pvc-small", GIB / 2, &[]);
    small.volume_content_source = Some(csi::VolumeContentSource {
        r#type: Some(volume_content_source::Type::Snapshot(
            volume_content_source::SnapshotSource {
                snapshot_id: snap.clone(),
            },
        )),
    });
    assert_eq!(code(c.create_volume(small).await), Code::OutOfRange);
    assert!(!nfs.export().join("pvc-ghost").exists() && !nfs.export().join("pvc-small").exists());

    // Listing: by id, by source, everything with paging.
    for name in ["snapshot-2", "snapshot-3"] {
        let mut r = snap_request.clone();
        r.name = name.into();
        c.create_snapshot(r).await.unwrap();
    }
    let mut r = snap_request.clone();
    r.name = "snapshot-o".into();
    r.source_volume_id = other.volume_id.clone();
    c.create_snapshot(r).await.unwrap();
    let by_id = c
        .list_snapshots(csi::ListSnapshotsRequest {
            snapshot_id: snap.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_id.entries.len(), 1);
    let by_source = c
        .list_snapshots(csi::ListSnapshotsRequest {
            source_volume_id: source.volume_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_source.entries.len(), 3);
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .list_snapshots(csi::ListSnapshotsRequest {
                max_entries: 3,
                starting_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.entries.len() <= 3);
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
    assert_eq!(seen.len(), 4);
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 4);
    assert_eq!(
        code(
            c.list_snapshots(csi::ListSnapshotsRequest {
                starting_token: "bogus".into(),
                ..Default::default()
            })
            .await
        ),
        Code::Aborted
    );
    let none = c
        .list_snapshots(csi::ListSnapshotsRequest {
            snapshot_id: "nonsense".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(none.entries.is_empty());
    let got = c
        .get_snapshot(csi::GetSnapshotRequest {
            snapshot_id: snap.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.snapshot.unwrap().snapshot_id, snap);

    // Delete, ten times; then it is gone.
    for _ in 0..10 {
        c.delete_snapshot(csi::DeleteSnapshotRequest {
            snapshot_id: snap.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    assert_eq!(
        code(
            c.get_snapshot(csi::GetSnapshotRequest {
                snapshot_id: snap,
                ..Default::default()
            })
            .await
        ),
        Code::NotFound
    );
    assert!(!nfs.export().join(".tether/snapshots/snapshot-1").exists());
    c.delete_snapshot(csi::DeleteSnapshotRequest {
        snapshot_id: "whatever".into(),
        ..Default::default()
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn expand_validate_list_capacity_and_condition() {
    let nfs = NfsServer::start("csie");
    let driver = Driver::start(&nfs, &[]);
    let mut c = driver.controller().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let v = c
            .create_volume(create_request(&nfs, &format!("pvc-{i}"), GIB, &[]))
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap();
        ids.push(v.volume_id);
    }

    let expand = csi::ControllerExpandVolumeRequest {
        volume_id: ids[0].clone(),
        capacity_range: Some(csi::CapacityRange {
            required_bytes: 3 * GIB,
            limit_bytes: 0,
        }),
        ..Default::default()
    };
    let mut expanded = Default::default();
    for _ in 0..10 {
        expanded = c
            .controller_expand_volume(expand.clone())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(expanded.capacity_bytes, 3 * GIB);
    }
    // Asking for less than it has is fine: volumes do not shrink.
    let mut smaller = expand.clone();
    smaller.capacity_range = Some(csi::CapacityRange {
        required_bytes: GIB,
        limit_bytes: 0,
    });
    let kept = c
        .controller_expand_volume(smaller)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(kept.capacity_bytes, 3 * GIB);
    let expanded: csi::ControllerExpandVolumeResponse = expanded;
    assert!(
        !expanded.node_expansion_required,
        "a directory has nothing to grow on the node"
    );
    let got = c
        .controller_get_volume(csi::ControllerGetVolumeRequest {
            volume_id: ids[0].clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.volume.unwrap().capacity_bytes, 3 * GIB);
    assert!(!got.status.unwrap().volume_condition.unwrap().abnormal);
    assert_eq!(
        code(
            c.controller_expand_volume(csi::ControllerExpandVolumeRequest {
                volume_id: format!("vd4#{}#{}#pvc-none", nfs.address, nfs.share()),
                capacity_range: Some(csi::CapacityRange {
                    required_bytes: GIB,
                    limit_bytes: 0
                }),
                ..Default::default()
            })
            .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(
            c.controller_expand_volume(csi::ControllerExpandVolumeRequest {
                volume_id: ids[0].clone(),
                capacity_range: Some(csi::CapacityRange {
                    required_bytes: 1 << 62,
                    limit_bytes: 0
                }),
                ..Default::default()
            })
            .await
        ),
        Code::OutOfRange
    );

    let validate =
        |caps: Vec<csi::VolumeCapability>, id: &str| csi::ValidateVolumeCapabilitiesRequest {
            volume_id: id.to_string(),
            volume_capabilities: caps,
            ..Default::default()
        };
    let ok = c
        .validate_volume_capabilities(validate(vec![rwx()], &ids[1]))
        .await
        .unwrap()
        .into_inner();
    assert!(ok.confirmed.is_some());
    let block = c
        .validate_volume_capabilities(validate(
            vec![block_capability(Mode::SingleNodeWriter)],
            &ids[1],
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(
        block.confirmed.is_none() && block.message.contains("block"),
        "{block:?}"
    );
    assert_eq!(
        code(
            c.validate_volume_capabilities(validate(vec![], &ids[1]))
                .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            c.validate_volume_capabilities(validate(vec![rwx()], "x"))
                .await
        ),
        Code::NotFound
    );

    // ListVolumes pages through all five.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .list_volumes(csi::ListVolumesRequest {
                max_entries: 2,
                starting_token: token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.entries.len() <= 2);
        seen.extend(
            page.entries
                .into_iter()
                .map(|e| e.volume.unwrap().volume_id),
        );
        if page.next_token.is_empty() {
            break;
        }
        token = page.next_token;
    }
    seen.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(seen, expected);
    assert_eq!(
        code(
            c.list_volumes(csi::ListVolumesRequest {
                max_entries: 2,
                starting_token: "t9.zz".into()
            })
            .await
        ),
        Code::Aborted
    );

    // Capacity from the server's FSSTAT.
    let capacity = c
        .get_capacity(csi::GetCapacityRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(capacity.available_capacity > 0);
    let stat = nix_statvfs(&nfs.export());
    let ratio = capacity.available_capacity as f64 / stat as f64;
    assert!(
        (0.9..1.1).contains(&ratio),
        "{} vs {stat}",
        capacity.available_capacity
    );

    // A directory removed behind the driver's back shows up as an abnormal condition.
    std::fs::remove_dir_all(volume_dir(&nfs, &ids[2])).unwrap();
    let got = c
        .controller_get_volume(csi::ControllerGetVolumeRequest {
            volume_id: ids[2].clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let condition = got.status.unwrap().volume_condition.unwrap();
    assert!(
        condition.abnormal && condition.message.contains("gone"),
        "{condition:?}"
    );
}

fn nix_statvfs(path: &std::path::Path) -> u64 {
    let out = std::process::Command::new("df")
        .args(["-B1", "--output=avail"])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn bad_requests_and_path_traversal_change_nothing() {
    let nfs = NfsServer::start("csib");
    // Something next to the export that no request may touch.
    let outside = nfs.export().parent().unwrap().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret"), "x").unwrap();
    let driver = Driver::start(&nfs, &[]);
    let mut c = driver.controller().await;

    let invalid = [
        create_request(&nfs, "pvc-1", GIB, &[("subDir", "../outside")]),
        create_request(&nfs, "pvc-1", GIB, &[("subDir", "/etc")]),
        create_request(&nfs, "pvc-1", GIB, &[("subDir", "a/./b")]),
        create_request(&nfs, "pvc-1", GIB, &[("subDir", ".tether/volumes")]),
        create_request(&nfs, "pvc-\u{0}1", GIB, &[]),
        create_request(&nfs, "", GIB, &[]),
        create_request(&nfs, "pvc-1", GIB, &[("colour", "blue")]),
        create_request(&nfs, "pvc-1", GIB, &[("share", "relative/path")]),
        create_request(&nfs, "pvc-1", GIB, &[("subDir", &"d".repeat(120))]),
        create_request(&nfs, "pvc-1", 0, &[("layout", "image")]),
    ];
    for request in invalid {
        let status = c.create_volume(request.clone()).await.unwrap_err();
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{:?}: {}",
            request.name,
            status.message()
        );
    }
    let status = c
        .create_volume(create_request(&nfs, "pvc-1", GIB, &[("colour", "blue")]))
        .await
        .unwrap_err();
    assert!(status.message().contains("colour"), "{}", status.message());
    let mut no_caps = create_request(&nfs, "pvc-1", GIB, &[]);
    no_caps.volume_capabilities.clear();
    assert_eq!(code(c.create_volume(no_caps).await), Code::InvalidArgument);
    let mut block = create_request(&nfs, "pvc-1", GIB, &[]);
    block.volume_capabilities = vec![block_capability(Mode::SingleNodeWriter)];
    assert_eq!(code(c.create_volume(block).await), Code::InvalidArgument);
    let mut range = create_request(&nfs, "pvc-1", GIB, &[]);
    range.capacity_range = Some(csi::CapacityRange {
        required_bytes: 2 * GIB,
        limit_bytes: GIB,
    });
    assert_eq!(code(c.create_volume(range).await), Code::OutOfRange);
    assert_eq!(
        code(
            c.create_volume(create_request(&nfs, "pvc-1", 1 << 62, &[]))
                .await
        ),
        Code::OutOfRange
    );

    for id in [
        format!("vd4#{}#{}#../outside", nfs.address, nfs.share()),
        format!("vd4#{}#{}/..#outside", nfs.address, nfs.share()),
        format!("vd4#{}#{}#.tether", nfs.address, nfs.share()),
        format!("vd4#{}#/#{}", nfs.address, outside.display()),
    ] {
        c.delete_volume(csi::DeleteVolumeRequest {
            volume_id: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
        assert_eq!(
            code(
                c.controller_get_volume(csi::ControllerGetVolumeRequest { volume_id: id })
                    .await
            ),
            Code::NotFound
        );
    }
    assert_eq!(
        std::fs::read_to_string(outside.join("secret")).unwrap(),
        "x"
    );
    assert!(nfs.export().join(".tether/volumes").is_dir());
    let made: Vec<_> = std::fs::read_dir(nfs.export())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        made,
        [std::ffi::OsString::from(".tether")],
        "no request made anything"
    );
}

#[tokio::test]
async fn ten_concurrent_creates_of_one_name_make_one_volume() {
    let nfs = NfsServer::start("csik");
    let driver = Driver::start(&nfs, &[]);
    let request = create_request(&nfs, "pvc-race", GIB, &[]);
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let mut c = driver.controller().await;
        let request = request.clone();
        tasks.push(tokio::spawn(async move { c.create_volume(request).await }));
    }
    let mut ids = HashSet::new();
    for task in tasks {
        match task.await.unwrap() {
            Ok(r) => {
                ids.insert(r.into_inner().volume.unwrap().volume_id);
            }
            Err(status) => assert_eq!(status.code(), Code::Aborted, "{}", status.message()),
        }
    }
    assert!(ids.len() <= 1);
    // The orchestrator retries the aborted ones: all get the one volume.
    let mut c = driver.controller().await;
    for _ in 0..10 {
        ids.insert(
            c.create_volume(request.clone())
                .await
                .unwrap()
                .into_inner()
                .volume
                .unwrap()
                .volume_id,
        );
    }
    assert_eq!(ids.len(), 1);
    let volumes: Vec<_> = std::fs::read_dir(nfs.export())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != ".tether")
        .collect();
    assert_eq!(volumes, ["pvc-race"]);
}

#[tokio::test]
async fn a_dead_server_gives_a_clear_error_in_time_and_recovery_follows() {
    let mut nfs = NfsServer::start("csix");
    let driver = Driver::start(&nfs, &[]);
    let mut c = driver.controller().await;
    let mut identity = driver.identity().await;
    c.create_volume(create_request(&nfs, "pvc-before", GIB, &[]))
        .await
        .unwrap();

    // A hung server: DEADLINE_EXCEEDED after the 3 s timeout, naming the server.
    nfs.freeze();
    let started = Instant::now();
    let status = c
        .create_volume(create_request(&nfs, "pvc-hung", GIB, &[]))
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert_eq!(
        status.code(),
        Code::DeadlineExceeded,
        "{}",
        status.message()
    );
    assert!(
        status.message().contains(&nfs.address) && status.message().contains("3s"),
        "{}",
        status.message()
    );
    println!("the hung CreateVolume answered after {took:?}");
    // 3 s alone; one full-suite run on 2 cores (QEMU guests beside it) took 9 s. The point is
    // an answer, not a hang: a kernel hard mount would wait forever.
    assert!(took < Duration::from_secs(15), "{took:?}\n{}", driver.log());
    assert_eq!(
        code(identity.probe(csi::ProbeRequest {}).await),
        Code::FailedPrecondition
    );
    nfs.thaw();
    c.create_volume(create_request(&nfs, "pvc-hung", GIB, &[]))
        .await
        .unwrap();
    identity.probe(csi::ProbeRequest {}).await.unwrap();

    // A stopped server: UNAVAILABLE at once.
    nfs.stop();
    let started = Instant::now();
    let status = c
        .create_volume(create_request(&nfs, "pvc-down", GIB, &[]))
        .await
        .unwrap_err();
    assert!(
        matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded),
        "{:?} {}",
        status.code(),
        status.message()
    );
    assert!(started.elapsed() < Duration::from_secs(8));
    let status = c
        .delete_volume(csi::DeleteVolumeRequest {
            volume_id: format!("vd4#{}#{}#pvc-before", nfs.address, nfs.share()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(matches!(
        status.code(),
        Code::Unavailable | Code::DeadlineExceeded
    ));
    // Back again: the driver reconnects by itself.
    nfs.restart();
    c.create_volume(create_request(&nfs, "pvc-down", GIB, &[]))
        .await
        .unwrap();
    c.delete_volume(csi::DeleteVolumeRequest {
        volume_id: format!("vd4#{}#{}#pvc-before", nfs.address, nfs.share()),
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(!nfs.export().join("pvc-before").exists());
}

#[tokio::test]
async fn logs_name_methods_and_volumes_but_never_secrets() {
    let nfs = NfsServer::start("csil");
    let driver = Driver::start(&nfs, &[]);
    let mut c = driver.controller().await;
    let mut request = create_request(&nfs, "pvc-secret", GIB, &[]);
    request.secrets = [("password".to_string(), "hunter2-top-secret".to_string())].into();
    request.volume_capabilities = vec![mount_capability(
        Mode::MultiNodeMultiWriter,
        &["nfsvers=4.1,sec=sys,token=flag-secret"],
    )];
    let volume = c
        .create_volume(request)
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    c.delete_volume(csi::DeleteVolumeRequest {
        volume_id: volume.volume_id.clone(),
        secrets: [("password".to_string(), "hunter2-top-secret".to_string())].into(),
    })
    .await
    .unwrap();
    c.create_snapshot(csi::CreateSnapshotRequest {
        source_volume_id: "x".into(),
        name: "snap".into(),
        secrets: [("key".to_string(), "hunter3-secret".to_string())].into(),
        parameters: Default::default(),
    })
    .await
    .unwrap_err();
    let log = driver.log();
    assert!(
        log.contains("CreateVolume") && log.contains("pvc-secret"),
        "{log}"
    );
    assert!(
        log.contains("DeleteVolume") && log.contains(&volume.volume_id),
        "{log}"
    );
    assert!(log.contains("request body"), "debug logging was on: {log}");
    for secret in ["hunter2", "hunter3", "flag-secret"] {
        assert!(!log.contains(secret), "{secret} leaked:\n{log}");
    }
}

#[tokio::test]
async fn image_volumes_are_sparse_files_that_snapshot_clone_and_grow() {
    use std::os::unix::fs::MetadataExt;
    let nfs = NfsServer::start("csii");
    let driver = Driver::start(&nfs, &[]);
    let mut c = driver.controller().await;
    let single = mount_capability(Mode::SingleNodeWriter, &[]);
    let mut request = create_request(
        &nfs,
        "pvc-img",
        64 << 20,
        &[("layout", "image"), ("fsType", "xfs")],
    );
    request.volume_capabilities = vec![single.clone(), block_capability(Mode::SingleNodeWriter)];
    let volume = c
        .create_volume(request.clone())
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert!(volume.volume_id.starts_with("vi4#"), "{}", volume.volume_id);
    assert_eq!(volume.volume_context["fsType"], "xfs");
    let image = volume_dir(&nfs, &volume.volume_id).join("disk.img");
    let meta = std::fs::metadata(&image).unwrap();
    assert_eq!(meta.len(), 64 << 20);
    assert!(
        meta.blocks() * 512 < 1 << 20,
        "sparse: {} blocks",
        meta.blocks()
    );
    assert_eq!(
        c.create_volume(request)
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap()
            .volume_id,
        volume.volume_id
    );

    // Multi-node access and foreign filesystems do not fit an image.
    let mut multi = create_request(&nfs, "pvc-img2", 64 << 20, &[("layout", "image")]);
    multi.volume_capabilities = vec![rwx()];
    assert_eq!(code(c.create_volume(multi).await), Code::InvalidArgument);
    let mut btrfs = create_request(
        &nfs,
        "pvc-img3",
        64 << 20,
        &[("layout", "image"), ("fsType", "btrfs")],
    );
    btrfs.volume_capabilities = vec![single.clone()];
    assert_eq!(code(c.create_volume(btrfs).await), Code::InvalidArgument);

    // Some data in the image; a snapshot and a clone copy it, still sparse.
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&image)
            .unwrap();
        f.seek(SeekFrom::Start(10 << 20)).unwrap();
        f.write_all(b"inside the image").unwrap();
    }
    let snap = c
        .create_snapshot(csi::CreateSnapshotRequest {
            source_volume_id: volume.volume_id.clone(),
            name: "snap-img".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    let mut restore = create_request(
        &nfs,
        "pvc-img-restored",
        64 << 20,
        &[("layout", "image"), ("fsType", "xfs")],
    );
    restore.volume_capabilities = vec![single.clone()];
    restore.volume_content_source = Some(csi::VolumeContentSource {
        r#type: Some(volume_content_source::Type::Snapshot(
            volume_content_source::SnapshotSource {
                snapshot_id: snap.snapshot_id,
            },
        )),
    });
    let restored = c
        .create_volume(restore)
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let copy = volume_dir(&nfs, &restored.volume_id).join("disk.img");
    let copied = std::fs::read(&copy).unwrap();
    assert_eq!(copied.len(), 64 << 20);
    assert_eq!(&copied[10 << 20..(10 << 20) + 16], b"inside the image");
    assert!(
        std::fs::metadata(&copy).unwrap().blocks() * 512 < 4 << 20,
        "the copy stays sparse"
    );

    // Expansion grows the file and asks for node expansion.
    let grown = c
        .controller_expand_volume(csi::ControllerExpandVolumeRequest {
            volume_id: volume.volume_id.clone(),
            capacity_range: Some(csi::CapacityRange {
                required_bytes: 128 << 20,
                limit_bytes: 0,
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(grown.node_expansion_required);
    assert_eq!(std::fs::metadata(&image).unwrap().len(), 128 << 20);
    let validated = c
        .validate_volume_capabilities(csi::ValidateVolumeCapabilitiesRequest {
            volume_id: volume.volume_id.clone(),
            volume_capabilities: vec![rwx()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        validated.confirmed.is_none(),
        "an image is not ReadWriteMany"
    );
}

/// A DeleteVolume cut short after it moved the volume into the trash (killed, or its connection
/// lost) is finished by the retry, which answers OK having freed the space itself; deleting
/// volumes nested in a subDir removes the parents they leave empty, and no others.
#[tokio::test]
async fn a_retried_delete_frees_the_trash_and_nested_volumes_leave_no_empty_parents() {
    let nfs = NfsServer::start("csdt");
    let driver = Driver::start(&nfs, &[]);
    let mut c = driver.controller().await;
    let create =
        |name: &str, sub_dir: &str| create_request(&nfs, name, GIB, &[("subDir", sub_dir)]);
    let mut ids = Vec::new();
    for (name, sub_dir) in [
        ("pvc-1", "team/one"),
        ("pvc-2", "team/two"),
        ("pvc-3", "lone"),
    ] {
        let volume = c
            .create_volume(create(name, sub_dir))
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap();
        std::fs::write(
            volume_dir(&nfs, &volume.volume_id).join("data"),
            "x".repeat(4096),
        )
        .unwrap();
        ids.push(volume.volume_id);
    }

    // pvc-3's delete was killed right after its rename into the trash (its record says
    // Deleting); the retry removes the tree from the trash.
    let trash = nfs.export().join(".tether/trash");
    std::fs::create_dir_all(&trash).unwrap();
    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    std::fs::rename(
        volume_dir(&nfs, &ids[2]),
        trash.join(format!("{now_ns}-lone")),
    )
    .unwrap();
    std::fs::create_dir(trash.join(format!("{now_ns}-someone-else"))).unwrap();
    c.delete_volume(csi::DeleteVolumeRequest {
        volume_id: ids[2].clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    let left: Vec<String> = std::fs::read_dir(&trash)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        left,
        [format!("{now_ns}-someone-else")],
        "the retry left its trash"
    );

    // team/ holds two volumes: it stays until the last one goes.
    for (i, id) in ids[..2].iter().enumerate() {
        c.delete_volume(csi::DeleteVolumeRequest {
            volume_id: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
        assert_eq!(nfs.export().join("team").exists(), i == 0, "after {id}");
    }
    assert!(!nfs.export().join("lone").exists());
}

/// ControllerModifyVolume as csi-resizer sends it (a VolumeAttributesClass's parameters) and as
/// csi-sanity checks it: what can change changes and is kept in the record, what cannot is
/// INVALID_ARGUMENT and changes nothing.
#[tokio::test]
async fn modify_volume_changes_what_is_mutable_and_refuses_the_rest() {
    let nfs = NfsServer::start("csimv");
    let driver = Driver::start(&nfs, &[]);
    let mut c = driver.controller().await;
    // Created with a VolumeAttributesClass: its parameters win over the StorageClass's.
    let mut request = create_request(&nfs, "pvc-mod", GIB, &[("onDelete", "delete")]);
    request.mutable_parameters = pairs(&[("onDelete", "retain"), ("nconnect", "2")]);
    let volume = create(&mut c, request.clone()).await;
    // The same request again is the same volume (mutable parameters are not its identity).
    let again = create(&mut c, request).await;
    assert_eq!(again.volume_id, volume.volume_id);

    // Unknown keys, immutable keys and bad values: INVALID_ARGUMENT, naming them.
    for (pairs, says) in [
        (vec![("XXX_FakeKey", "XXX_FakeValue")], "XXX_FakeKey"),
        (vec![("server", "elsewhere")], "server"),
        (vec![("layout", "image")], "layout"),
        (vec![("nconnect", "64")], "1 to 16"),
        (vec![("limit", "capacity")], "agent"),
    ] {
        let err = c
            .controller_modify_volume(modify_request(&volume.volume_id, &pairs))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{pairs:?}: {err:?}");
        assert!(err.message().contains(says), "{pairs:?}: {err:?}");
    }
    // Creating with a bad class is refused too, and leaves nothing.
    let mut bad = create_request(&nfs, "pvc-bad", GIB, &[]);
    bad.mutable_parameters = pairs(&[("XXX_FakeKey", "XXX_FakeValue")]);
    assert_eq!(code(c.create_volume(bad).await), Code::InvalidArgument);
    assert!(!nfs.export().join("pvc-bad").exists());

    // No id: INVALID_ARGUMENT; an id of nothing: NOT_FOUND.
    assert_eq!(
        code(c.controller_modify_volume(modify_request("", &[])).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            c.controller_modify_volume(modify_request("non-existing-volume-id", &[]))
                .await
        ),
        Code::NotFound
    );
    // No parameters (a class without any): nothing to do.
    c.controller_modify_volume(modify_request(&volume.volume_id, &[]))
        .await
        .unwrap();

    // onDelete: retain from the class at creation; modified to delete, then the volume goes.
    std::fs::write(volume_dir(&nfs, &volume.volume_id).join("data"), "x").unwrap();
    for _ in 0..2 {
        c.controller_modify_volume(modify_request(
            &volume.volume_id,
            &[("onDelete", "delete"), ("rsize", "65536")],
        ))
        .await
        .unwrap();
    }
    c.delete_volume(csi::DeleteVolumeRequest {
        volume_id: volume.volume_id.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(!volume_dir(&nfs, &volume.volume_id).exists());

    // The other way: created to be deleted, modified to be kept.
    let kept = create(&mut c, create_request(&nfs, "pvc-keep", GIB, &[])).await;
    std::fs::write(volume_dir(&nfs, &kept.volume_id).join("data"), "keep me").unwrap();
    c.controller_modify_volume(modify_request(&kept.volume_id, &[("onDelete", "retain")]))
        .await
        .unwrap();
    c.delete_volume(csi::DeleteVolumeRequest {
        volume_id: kept.volume_id.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(
        std::fs::read_to_string(volume_dir(&nfs, &kept.volume_id).join("data")).unwrap(),
        "keep me"
    );
    let log = driver.log();
    assert!(log.contains("volume modified"), "{log}");
}
