#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

//! tether-nfs-agent as tether-csi's controller meets it: the binary serving loop-mounted XFS,
//! btrfs and ext4 filesystems over mutual TLS. A file clone is point-in-time under a running
//! writer and shares its blocks; a tree clone keeps every kind of entry and attribute; no path
//! reaches outside an export; only clients of the configured CA are served; and a directory
//! limit stops a writer (ENOSPC/EDQUOT) and counts usage (inside the QEMU guest, whose kernel has
//! project quotas; this machine's kernel has none, where the agent must say so).

mod common;

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use common::{write, Agent, LoopFs};
use test_support::tls::Certs;
use tether_csi_proto::agent::{
    CapabilitiesRequest, CloneRequest, Method, QuotaKind, SetLimitRequest, UsageRequest,
};
use tonic::Code;

const EXPORT: &str = "/srv/k8s";

fn clone_request(source: &str, target: &str) -> CloneRequest {
    CloneRequest {
        export: EXPORT.into(),
        source: source.into(),
        target: target.into(),
        into_empty: false,
    }
}

fn start(fs: &LoopFs) -> (Certs, Agent) {
    let certs = Certs::new();
    let agent = Agent::start(&certs, &[format!("{EXPORT}={}", fs.mnt.display())]);
    (certs, agent)
}

const BLOCK: usize = 4096;
const BLOCKS: usize = 4096; // 16 MiB

/// The pass number each block of a file holds.
fn passes(path: &Path) -> Vec<u32> {
    let mut file = std::fs::File::open(path).unwrap();
    let mut data = Vec::new();
    file.read_to_end(&mut data).unwrap();
    data.chunks(BLOCK)
        .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_clone_is_point_in_time_under_a_writer_and_shares_its_blocks() {
    let fs = LoopFs::new("xfs", 512, "");
    let (certs, agent) = start(&fs);
    let mut client = agent.client(&certs, Some("client")).await.unwrap();
    let caps = client
        .capabilities(CapabilitiesRequest {
            export: EXPORT.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(caps.filesystem, "xfs");
    assert!(caps.reflink, "{caps:?}");

    // A volume image rewritten block by block, pass after pass, by a writer that never stops.
    let image = fs.mnt.join("pvc-1/disk.img");
    write(&image, &vec![0u8; BLOCK * BLOCKS]);
    std::fs::create_dir_all(fs.mnt.join(".tether/snapshots")).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let pass = Arc::new(AtomicU32::new(0));
    let writer = {
        let (stop, pass, image) = (stop.clone(), pass.clone(), image.clone());
        std::thread::spawn(move || {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(&image)
                .unwrap();
            let mut p = 0u32;
            while !stop.load(Ordering::Relaxed) {
                p += 1;
                let block = [p.to_ne_bytes().repeat(BLOCK / 4)].concat();
                for i in 0..BLOCKS {
                    file.write_all_at(&block, (i * BLOCK) as u64).unwrap();
                }
                pass.store(p, Ordering::Relaxed);
            }
        })
    };
    while pass.load(Ordering::Relaxed) < 2 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    for n in 0..8 {
        let target = format!(".tether/snapshots/s{n}.img");
        let done = client
            .clone_file(clone_request("pvc-1/disk.img", &target))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(done.method(), Method::Reflink);
        assert_eq!(done.bytes, (BLOCK * BLOCKS) as u64);
        // A sequential writer's file at one instant: the first k blocks at pass p, the rest at
        // p - 1. A copy made while the writer moves would show blocks of later passes after
        // earlier ones.
        let seen = passes(&fs.mnt.join(&target));
        let (first, last) = (seen[0], seen[BLOCKS - 1]);
        assert!(
            seen.windows(2).all(|w| w[0] >= w[1]) && first - last <= 1,
            "clone {n} is not one instant of the file: passes {first}..{last}, {:?}",
            seen.iter()
                .enumerate()
                .filter(|(i, v)| *i > 0 && **v > seen[i - 1])
                .take(3)
                .collect::<Vec<_>>()
        );
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();

    // Shared blocks: eight more clones of 16 MiB take (almost) no space.
    let before = fs.free();
    for n in 0..8 {
        client
            .clone_file(clone_request(
                "pvc-1/disk.img",
                &format!(".tether/snapshots/t{n}.img"),
            ))
            .await
            .unwrap();
    }
    let used = before.saturating_sub(fs.free());
    assert!(used < 4 << 20, "8 clones of 16 MiB took {used} bytes");

    // The clone stays what it was when the source changes; a clone never replaces a file.
    let kept = passes(&fs.mnt.join(".tether/snapshots/t0.img"));
    std::fs::write(&image, b"rewritten").unwrap();
    assert_eq!(passes(&fs.mnt.join(".tether/snapshots/t0.img")), kept);
    let again = client
        .clone_file(clone_request("pvc-1/disk.img", ".tether/snapshots/t0.img"))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::AlreadyExists, "{again:?}");
    assert_eq!(passes(&fs.mnt.join(".tether/snapshots/t0.img")), kept);
    // Nothing half-made is left beside the targets.
    let names: Vec<String> = std::fs::read_dir(fs.mnt.join(".tether/snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(names.iter().all(|n| !n.contains(".agent-")), "{names:?}");
    println!("{}", agent.log());
}

/// Every entry below `dir`: relative path, kind, mode, owner, mtime, size, link target, data.
fn inventory(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for path in entries {
            let m = std::fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(dir).unwrap().display().to_string();
            let detail = if m.file_type().is_symlink() {
                format!("-> {}", std::fs::read_link(&path).unwrap().display())
            } else if m.is_file() {
                let mut data = Vec::new();
                std::fs::File::open(&path)
                    .unwrap()
                    .read_to_end(&mut data)
                    .unwrap();
                format!(
                    "{} bytes, sum {}",
                    data.len(),
                    data.iter().map(|b| *b as u64).sum::<u64>()
                )
            } else {
                String::new()
            };
            if m.is_dir() {
                stack.push(path.clone());
            }
            out.push(format!(
                "{rel} mode {:o} owner {}:{} mtime {}.{} {detail}",
                m.mode(),
                m.uid(),
                m.gid(),
                m.mtime(),
                m.mtime_nsec()
            ));
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_clone_keeps_every_entry_and_attribute() {
    for (kind, method) in [
        ("xfs", Method::Reflink),
        ("btrfs", Method::Reflink),
        ("ext4", Method::Copy),
    ] {
        let fs = LoopFs::new(kind, 512, "");
        let (certs, agent) = start(&fs);
        let mut client = agent.client(&certs, Some("client")).await.unwrap();
        let vol = fs.mnt.join("pvc-2");
        write(&vol.join("data/a.bin"), &vec![7u8; 1 << 20]);
        write(&vol.join("data/deep/er/b.txt"), b"hello");
        write(&vol.join("empty"), b"");
        std::fs::create_dir_all(vol.join("emptydir")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", vol.join("outside-link")).unwrap();
        std::os::unix::fs::symlink("data/a.bin", vol.join("inside-link")).unwrap();
        common::run("mkfifo", &[vol.join("fifo").to_str().unwrap()]);
        std::fs::set_permissions(
            vol.join("data/deep/er/b.txt"),
            std::fs::Permissions::from_mode(0o640),
        )
        .unwrap();
        common::run(
            "chown",
            &["-h", "1234:5678", vol.join("data/a.bin").to_str().unwrap()],
        );
        common::run(
            "chown",
            &["-h", "42:42", vol.join("outside-link").to_str().unwrap()],
        );
        common::run(
            "touch",
            &[
                "-h",
                "-d",
                "2001-02-03 04:05:06.789",
                vol.join("inside-link").to_str().unwrap(),
            ],
        );
        common::run(
            "touch",
            &[
                "-d",
                "2002-03-04 05:06:07",
                vol.join("data/deep").to_str().unwrap(),
            ],
        );
        std::fs::create_dir_all(fs.mnt.join(".tether/snapshots/k1")).unwrap();

        let done = client
            .clone_tree(clone_request("pvc-2", ".tether/snapshots/k1/data"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(done.method(), method, "{kind}");
        assert_eq!(done.files, 3, "{kind}");
        assert_eq!(done.bytes, (1 << 20) + 5, "{kind}");
        assert_eq!(
            inventory(&vol),
            inventory(&fs.mnt.join(".tether/snapshots/k1/data")),
            "{kind}"
        );
        // The clone is independent of its source.
        std::fs::write(vol.join("data/deep/er/b.txt"), b"changed").unwrap();
        assert_eq!(
            std::fs::read(fs.mnt.join(".tether/snapshots/k1/data/data/deep/er/b.txt")).unwrap(),
            b"hello"
        );
        let again = client
            .clone_tree(clone_request("pvc-2", ".tether/snapshots/k1/data"))
            .await
            .unwrap_err();
        assert_eq!(again.code(), Code::AlreadyExists, "{kind}: {again:?}");
        // A volume made before it is filled: an empty directory, replaced by the clone; one
        // that holds anything is not.
        std::fs::create_dir_all(fs.mnt.join("pvc-2b")).unwrap();
        let mut into = clone_request("pvc-2", "pvc-2b");
        into.into_empty = true;
        client.clone_tree(into.clone()).await.unwrap();
        assert_eq!(inventory(&vol), inventory(&fs.mnt.join("pvc-2b")), "{kind}");
        let again = client.clone_tree(into).await.unwrap_err();
        assert_eq!(again.code(), Code::AlreadyExists, "{kind}: {again:?}");
        drop(client);
        drop(agent);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_path_reaches_outside_the_export() {
    let fs = LoopFs::new("xfs", 300, "");
    let (certs, agent) = start(&fs);
    let mut client = agent.client(&certs, Some("client")).await.unwrap();
    write(&fs.mnt.join("pvc-3/disk.img"), b"image");
    // What an NFS client could plant: links out of the export, and a link to a directory in it.
    std::os::unix::fs::symlink("/etc", fs.mnt.join("evil-dir")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", fs.mnt.join("evil-file")).unwrap();
    std::os::unix::fs::symlink("pvc-3", fs.mnt.join("alias")).unwrap();
    let outside = tempfile::tempdir().unwrap();
    let before: Vec<_> = std::fs::read_dir("/etc")
        .unwrap()
        .count()
        .to_string()
        .into_bytes();

    let cases: Vec<(&str, &str, Code)> = vec![
        ("../x", "copy", Code::InvalidArgument),
        ("/etc/passwd", "copy", Code::InvalidArgument),
        ("pvc-3/../../etc/passwd", "copy", Code::InvalidArgument),
        ("evil-file", "copy", Code::InvalidArgument),
        ("evil-dir/passwd", "copy", Code::InvalidArgument),
        ("alias/disk.img", "copy", Code::InvalidArgument),
        ("pvc-3/disk.img", "evil-dir/stolen", Code::InvalidArgument),
        ("pvc-3/disk.img", "../escaped", Code::InvalidArgument),
        ("pvc-3/disk.img", "", Code::InvalidArgument),
        ("pvc-3/missing.img", "copy", Code::NotFound),
        ("pvc-3/disk.img", "no/such/dir/copy", Code::NotFound),
        ("pvc-3", "copy", Code::InvalidArgument),
    ];
    for (source, target, code) in cases {
        let err = client
            .clone_file(clone_request(source, target))
            .await
            .unwrap_err();
        assert_eq!(err.code(), code, "{source} -> {target}: {err:?}");
    }
    let err = client
        .clone_tree(clone_request("evil-dir", "copy"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let err = client
        .clone_file(CloneRequest {
            export: "/srv/other".into(),
            source: "pvc-3/disk.img".into(),
            target: "copy".into(),
            into_empty: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().contains("/srv/other"), "{err:?}");
    // Nothing was written anywhere: not outside, not in the export.
    assert!(!fs.mnt.join("copy").exists());
    assert!(!Path::new("/etc/stolen").exists());
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    assert_eq!(
        std::fs::read_dir("/etc")
            .unwrap()
            .count()
            .to_string()
            .into_bytes(),
        before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_clients_with_a_certificate_of_the_ca_are_served() {
    let fs = LoopFs::new("xfs", 300, "");
    let (certs, agent) = start(&fs);
    let request = || CapabilitiesRequest {
        export: EXPORT.into(),
    };
    let mut trusted = agent.client(&certs, Some("client")).await.unwrap();
    assert!(trusted.capabilities(request()).await.is_ok());
    for identity in [None, Some("stranger")] {
        // Refused at the handshake, or at the first call.
        let refused = match agent.client(&certs, identity).await {
            Err(_) => true,
            Ok(mut c) => c.capabilities(request()).await.is_err(),
        };
        assert!(refused, "{identity:?} was served");
    }
}

/// Limits and usage, where the kernel has project quotas (the guest's); elsewhere the agent
/// must refuse clearly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_limit_stops_a_writer_and_counts_its_usage() {
    let required = std::env::var_os("TETHER_REQUIRE_QUOTA").is_some();
    let fs = match std::panic::catch_unwind(|| LoopFs::new("xfs", 300, "prjquota")) {
        Ok(fs) => fs,
        Err(_) if !required => {
            // This kernel cannot mount XFS with project quotas: the agent must say there is none.
            let fs = LoopFs::new("xfs", 300, "");
            let (certs, agent) = start(&fs);
            let mut client = agent.client(&certs, Some("client")).await.unwrap();
            std::fs::create_dir_all(fs.mnt.join("pvc-4")).unwrap();
            let caps = client
                .capabilities(CapabilitiesRequest {
                    export: EXPORT.into(),
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(caps.quota(), QuotaKind::None);
            assert!(!caps.quota_unavailable.is_empty());
            let err = client
                .set_limit(SetLimitRequest {
                    export: EXPORT.into(),
                    path: "pvc-4".into(),
                    bytes: 1 << 20,
                })
                .await
                .unwrap_err();
            assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
            println!("no project quota here: {}", err.message());
            return;
        }
        Err(e) => std::panic::resume_unwind(e),
    };
    let (certs, agent) = start(&fs);
    let mut client = agent.client(&certs, Some("client")).await.unwrap();
    let caps = client
        .capabilities(CapabilitiesRequest {
            export: EXPORT.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(caps.quota(), QuotaKind::Project, "{caps:?}");
    // A volume that already holds 1 MiB gets a 4 MiB limit.
    write(&fs.mnt.join("pvc-4/old.bin"), &vec![1u8; 1 << 20]);
    let limited = client
        .set_limit(SetLimitRequest {
            export: EXPORT.into(),
            path: "pvc-4".into(),
            bytes: 4 << 20,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(limited.project > 0);
    let usage = client
        .usage(UsageRequest {
            export: EXPORT.into(),
            path: "pvc-4".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(usage.limit_bytes, 4 << 20, "{usage:?}");
    assert!(
        usage.used_bytes >= 1 << 20 && usage.used_bytes < 2 << 20,
        "{usage:?}"
    );
    assert_eq!(usage.used_files, 2, "{usage:?}"); // the directory and its file
                                                  // A writer stops at the limit (XFS says ENOSPC for a project's limit, as a full disk would;
                                                  // ext4 says EDQUOT); other volumes are not limited.
    let mut big = std::fs::File::create(fs.mnt.join("pvc-4/new.bin")).unwrap();
    let chunk = vec![2u8; 1 << 20];
    let mut written = 0;
    let error = loop {
        match std::io::Write::write_all(&mut big, &chunk).and_then(|()| big.sync_all()) {
            Ok(()) => written += 1,
            Err(e) => break e,
        }
        assert!(written < 16, "wrote {written} MiB past a 4 MiB limit");
    };
    assert!(
        matches!(error.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)),
        "{error}"
    );
    assert!(
        written <= 3,
        "wrote {written} MiB into a 4 MiB limit holding 1 MiB"
    );
    write(&fs.mnt.join("pvc-5/free.bin"), &vec![3u8; 8 << 20]);
    // An NFS client's df of the volume: the limit is the size.
    let c = std::ffi::CString::new(fs.mnt.join("pvc-4").to_str().unwrap()).unwrap();
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    assert_eq!(st.f_blocks * st.f_frsize, 4 << 20);
    // Expansion raises the limit, and the writer goes on.
    client
        .set_limit(SetLimitRequest {
            export: EXPORT.into(),
            path: "pvc-4".into(),
            bytes: 16 << 20,
        })
        .await
        .unwrap();
    big.seek(SeekFrom::End(0)).unwrap();
    std::io::Write::write_all(&mut big, &chunk).unwrap();
    big.sync_all().unwrap();
    let usage = client
        .usage(UsageRequest {
            export: EXPORT.into(),
            path: "pvc-4".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(usage.limit_bytes, 16 << 20, "{usage:?}");
    assert!(usage.used_bytes > 4 << 20, "{usage:?}");
    println!("limited: {usage:?}");
}

#[test]
fn quota_in_a_vm() {
    test_support::require_root();
    let me = std::env::current_exe().unwrap();
    test_support::run_one_test_in_vm(
        600,
        &[
            "env".as_ref(),
            "TETHER_REQUIRE_QUOTA=1".as_ref(),
            me.as_os_str(),
            "--exact".as_ref(),
            "a_directory_limit_stops_a_writer_and_counts_its_usage".as_ref(),
            "--nocapture".as_ref(),
        ],
    );
}
