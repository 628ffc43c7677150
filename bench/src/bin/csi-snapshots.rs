//! Snapshot and restore times of tether-csi with and without tether-nfs-agent, beside
//! csi-driver-nfs's method (a tar.gz of the volume directory, and untar to restore), for an image
//! volume and a directory volume of many small files. Drives a running controller over its
//! socket; writes the volumes' contents directly into the exported directory (as pods' writes
//! would land there); the reference's tar runs on the server's filesystem directly (faster than
//! through the NFS mount csi-driver-nfs really uses: a lower bound for it).
//!
//! `csi-snapshots SOCKET SERVER SHARE EXPORT_DIR AGENT [image_mib] [files] [reps]`

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tether_bench::csi::connect;
use tether_bench::{ms, print_table};
use tether_csi_proto::v1::{
    self as csi, controller_client::ControllerClient, volume_capability, volume_content_source,
};
use tonic::transport::Channel;

struct Target {
    server: String,
    share: String,
    export: PathBuf,
    agent: String,
}

fn request(
    t: &Target,
    name: &str,
    bytes: i64,
    image: bool,
    agent: bool,
) -> csi::CreateVolumeRequest {
    let mut parameters: std::collections::HashMap<String, String> = [
        ("server".to_string(), t.server.clone()),
        ("share".to_string(), t.share.clone()),
    ]
    .into();
    if image {
        parameters.insert("layout".into(), "image".into());
    }
    if agent {
        parameters.insert("agent".into(), t.agent.clone());
    }
    let mode = if image {
        volume_capability::access_mode::Mode::SingleNodeWriter
    } else {
        volume_capability::access_mode::Mode::MultiNodeMultiWriter
    };
    csi::CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(csi::CapacityRange {
            required_bytes: bytes,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![csi::VolumeCapability {
            access_type: Some(volume_capability::AccessType::Mount(
                volume_capability::MountVolume::default(),
            )),
            access_mode: Some(volume_capability::AccessMode { mode: mode as i32 }),
        }],
        parameters,
        ..Default::default()
    }
}

/// CreateSnapshot, asked again until the snapshot is ready; its id and the time it took.
async fn snapshot(
    c: &mut ControllerClient<Channel>,
    source: &str,
    name: &str,
) -> (String, Duration) {
    let started = Instant::now();
    loop {
        let s = c
            .create_snapshot(csi::CreateSnapshotRequest {
                source_volume_id: source.into(),
                name: name.into(),
                ..Default::default()
            })
            .await
            .expect("CreateSnapshot")
            .into_inner()
            .snapshot
            .expect("a snapshot");
        if s.ready_to_use {
            return (s.snapshot_id, started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// CreateVolume with a content source (a snapshot or a volume), asked again while it is being
/// filled (ABORTED): the new volume's id and the time until it was ready.
async fn create_from(
    c: &mut ControllerClient<Channel>,
    mut req: csi::CreateVolumeRequest,
    source: volume_content_source::Type,
) -> (String, Duration) {
    req.volume_content_source = Some(csi::VolumeContentSource {
        r#type: Some(source),
    });
    let started = Instant::now();
    loop {
        match c.create_volume(req.clone()).await {
            Ok(r) => {
                return (
                    r.into_inner().volume.expect("a volume").volume_id,
                    started.elapsed(),
                )
            }
            Err(s) if s.code() == tonic::Code::Aborted => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(s) => panic!("CreateVolume from a content source: {s:?}"),
        }
    }
}

fn from_snapshot(id: &str) -> volume_content_source::Type {
    volume_content_source::Type::Snapshot(volume_content_source::SnapshotSource {
        snapshot_id: id.into(),
    })
}

fn from_volume(id: &str) -> volume_content_source::Type {
    volume_content_source::Type::Volume(volume_content_source::VolumeSource {
        volume_id: id.into(),
    })
}

async fn delete_volume(c: &mut ControllerClient<Channel>, id: String) {
    c.delete_volume(csi::DeleteVolumeRequest {
        volume_id: id,
        ..Default::default()
    })
    .await
    .expect("DeleteVolume");
}

async fn delete_snapshot(c: &mut ControllerClient<Channel>, id: String) {
    c.delete_snapshot(csi::DeleteSnapshotRequest {
        snapshot_id: id,
        ..Default::default()
    })
    .await
    .expect("DeleteSnapshot");
}

/// Fills a volume's directory on the server: an image of `mib` MiB of data, or `files` files
/// of 1 KiB in directories of 1,000.
fn fill(dir: &Path, image: bool, mib: usize, files: usize) {
    if image {
        let block: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
        let data = block.repeat(mib);
        std::fs::write(dir.join("disk.img"), data).expect("writing the image");
    } else {
        let content = vec![b'x'; 1024];
        for i in 0..files {
            let sub = dir.join(format!("d{}", i / 1000));
            if i % 1000 == 0 {
                std::fs::create_dir_all(&sub).expect("mkdir");
            }
            std::fs::write(sub.join(format!("f{i}")), &content).expect("writing a file");
        }
    }
    let _ = Command::new("sync").status();
}

fn timed(program: &str, args: &[&str]) -> Duration {
    let started = Instant::now();
    let status = Command::new(program).args(args).status().expect(program);
    assert!(status.success(), "{program} {args:?}");
    started.elapsed()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The times of one operation: with the agent, over NFS without it, and by the reference's method.
#[derive(Default)]
struct Times {
    agent: Vec<Duration>,
    nfs: Vec<Duration>,
    reference: Vec<Duration>,
}

impl Times {
    fn push(&mut self, with_agent: bool, took: Duration) {
        if with_agent {
            self.agent.push(took)
        } else {
            self.nfs.push(took)
        }
    }

    fn row(&self, volume: &str, operation: &str) -> Vec<String> {
        let (a, n, r) = (
            median(self.agent.clone()),
            median(self.nfs.clone()),
            median(self.reference.clone()),
        );
        vec![
            volume.to_string(),
            operation.to_string(),
            ms(a),
            ms(n),
            ms(r),
            ratio(n, a),
            ratio(r, a),
        ]
    }
}

/// How many times faster `fast` is than `slow` (below 1: slower).
fn ratio(slow: Duration, fast: Duration) -> String {
    let r = slow.as_secs_f64() / fast.as_secs_f64();
    if r >= 10.0 {
        format!("{r:.0}x")
    } else {
        format!("{r:.2}x")
    }
}

/// csi-driver-nfs's methods on the server's filesystem: a snapshot is a tar.gz of the volume's
/// directory, a restore untars it, a clone is `cp -a` of the directory.
fn reference_rounds(export: &Path, name: &str, dir: &Path, rounds: usize, times: &mut [Times; 3]) {
    let archive = export.join(format!("{name}.tar.gz"));
    let into = export.join(format!("{name}-untar"));
    let copy = export.join(format!("{name}-cp"));
    let path = |p: &Path| p.to_str().expect("a UTF-8 path").to_string();
    for _ in 0..rounds {
        let _ = std::fs::remove_file(&archive);
        let _ = std::fs::remove_dir_all(&into);
        let _ = std::fs::remove_dir_all(&copy);
        std::fs::create_dir_all(&into).expect("mkdir");
        std::fs::create_dir_all(&copy).expect("mkdir");
        times[0].reference.push(timed(
            "tar",
            &["-czf", &path(&archive), "-C", &path(dir), "."],
        ));
        times[1]
            .reference
            .push(timed("tar", &["-xzf", &path(&archive), "-C", &path(&into)]));
        times[2].reference.push(timed(
            "cp",
            &[
                "-a",
                "--reflink=never",
                &format!("{}/.", path(dir)),
                &path(&copy),
            ],
        ));
    }
    let _ = std::fs::remove_file(&archive);
    let _ = std::fs::remove_dir_all(&into);
    let _ = std::fs::remove_dir_all(&copy);
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 6 {
        eprintln!(
            "usage: csi-snapshots SOCKET SERVER SHARE EXPORT_DIR AGENT [image_mib] [files] [reps]"
        );
        std::process::exit(2);
    }
    let t = Target {
        server: args[2].clone(),
        share: args[3].clone(),
        export: PathBuf::from(&args[4]),
        agent: args[5].clone(),
    };
    let mib: usize = args.get(6).and_then(|n| n.parse().ok()).unwrap_or(1024);
    let files: usize = args.get(7).and_then(|n| n.parse().ok()).unwrap_or(100_000);
    let reps: usize = args.get(8).and_then(|n| n.parse().ok()).unwrap_or(5);
    let mut c = connect(&args[1]).await;
    let mut rows = Vec::new();
    for (label, image) in [
        (format!("image volume, {mib} MiB"), true),
        (format!("directory volume, {files} files of 1 KiB"), false),
    ] {
        let bytes = if image { (mib as i64) << 20 } else { 1 << 30 };
        // snapshot, restore, clone
        let mut times: [Times; 3] = Default::default();
        for with_agent in [true, false] {
            let tag = if with_agent { "agent" } else { "nfs" };
            let name = format!("bench-{}-{tag}", if image { "img" } else { "dir" });
            let volume = c
                .create_volume(request(&t, &name, bytes, image, with_agent))
                .await
                .expect("CreateVolume")
                .into_inner()
                .volume
                .expect("a volume");
            let dir = t.export.join(&volume.volume_context["path"]);
            fill(&dir, image, mib, files);
            // The copy path is slow on many files: fewer rounds there.
            let rounds = if with_agent || image {
                reps
            } else {
                1.max(reps / 5)
            };
            for i in 0..rounds {
                let (snap, took) =
                    snapshot(&mut c, &volume.volume_id, &format!("{name}-s{i}")).await;
                let new = request(&t, &format!("{name}-r{i}"), bytes, image, with_agent);
                let (restored, took_restore) = create_from(&mut c, new, from_snapshot(&snap)).await;
                let new = request(&t, &format!("{name}-c{i}"), bytes, image, with_agent);
                let (cloned, took_clone) =
                    create_from(&mut c, new, from_volume(&volume.volume_id)).await;
                eprintln!(
                    "{label}, {tag}, round {i}: snapshot {took:?}, restore {took_restore:?}, clone {took_clone:?}"
                );
                times[0].push(with_agent, took);
                times[1].push(with_agent, took_restore);
                times[2].push(with_agent, took_clone);
                delete_volume(&mut c, restored).await;
                delete_volume(&mut c, cloned).await;
                delete_snapshot(&mut c, snap).await;
            }
            if !with_agent {
                reference_rounds(&t.export, &name, &dir, rounds, &mut times);
            }
            delete_volume(&mut c, volume.volume_id).await;
        }
        for (operation, times) in ["snapshot", "restore", "clone"].iter().zip(&times) {
            rows.push(times.row(&label, operation));
        }
    }
    print_table(
        &[
            "volume",
            "operation",
            "Tether + agent p50 ms",
            "Tether over NFS p50 ms",
            "csi-driver-nfs method (local) p50 ms",
            "agent vs NFS copy",
            "agent vs reference",
        ],
        &rows,
    );
    println!(
        "reference: snapshot = tar -czf of the directory, restore = tar -xzf, clone = cp -a --reflink=never (an NFS mount cannot reflink); run on the server's filesystem, not through an NFS mount"
    );
}
