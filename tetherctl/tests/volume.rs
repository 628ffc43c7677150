#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

//! `tetherctl volume` on a real volume: tether-csi makes a volume and a snapshot on nfs-ganesha;
//! the objects csi-provisioner and csi-snapshotter would write (PV, claim, snapshot content)
//! and a pod using the claim go into the API stand-in; a node's kubelet Summary API is served
//! by a stand-in file behind the node proxy (no kubelet runs here). The report must name where
//! the volume lives, who uses it with its usage, and its snapshots; then faults: a claim still
//! Pending, a snapshot not ready, a node whose kubelet does not answer, a volume that does not
//! exist.

use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use test_support::apiserver::{
    ApiServer, NAMESPACES, NODES, PERSISTENT_VOLUMES, PERSISTENT_VOLUME_CLAIMS, PODS,
    VOLUME_SNAPSHOT_CONTENTS,
};
use test_support::ganesha::NfsServer;
use test_support::workspace_binary;

fn tetherctl() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tetherctl"))
}

struct Setup {
    nfs: NfsServer,
    api: ApiServer,
    dir: tempfile::TempDir,
    _children: Vec<Killed>,
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Setup {
    fn run(&self, args: &[&str]) -> Output {
        self.nfs
            .command(&tetherctl())
            .arg("--kubeconfig")
            .arg(self.dir.path().join("kubeconfig"))
            .args(args)
            .output()
            .unwrap()
    }

    fn csictl(&self, args: &[&str]) -> Value {
        let out = self
            .nfs
            .command(&workspace_binary(&tetherctl(), "tether-csictl"))
            .arg("--endpoint")
            .arg(self.socket())
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("csi.sock")
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn wait_for_file(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn start() -> Setup {
    let nfs = NfsServer::start("ttvol");
    let dir = tempfile::tempdir().unwrap();
    let api = ApiServer::start_in(&nfs.ns, "127.0.0.1:6443");
    api.write_kubeconfig(&dir.path().join("kubeconfig"));
    let driver = nfs
        .command(&workspace_binary(&tetherctl(), "tether-csi"))
        .args(["--mode", "controller", "--endpoint"])
        .arg(dir.path().join("csi.sock"))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // nodeA's kubelet: its Summary API from a file, on the node's InternalIP.
    let kubelet_dir = dir.path().join("kubelet");
    std::fs::create_dir_all(kubelet_dir.join("stats")).unwrap();
    let kubelet = nfs
        .command(Path::new("/usr/bin/python3"))
        .args(["-m", "http.server", "--bind", "127.0.0.2", "--directory"])
        .arg(&kubelet_dir)
        .arg("10250")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let setup = Setup {
        nfs,
        api,
        dir,
        _children: vec![Killed(driver), Killed(kubelet)],
    };
    wait_for_file(&setup.socket());
    setup
}

fn node(name: &str, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
           "status": {"addresses": [{"type": "InternalIP", "address": ip}],
                      "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}}}})
}

fn pod_using(name: &str, node: &str, claim: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": "default"},
           "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i"}],
                    "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]},
           "status": {"phase": "Running"}})
}

#[test]
fn volume_says_where_a_volume_lives_who_uses_it_and_its_snapshots() {
    let setup = start();
    let share = setup.nfs.share();
    let volume = setup.csictl(&[
        "create-volume",
        "pvc-1a2b",
        "--capacity",
        "1Gi",
        "--param",
        &format!("server={}", setup.nfs.address),
        "--param",
        &format!("share={share}"),
    ]);
    let id = volume["volumeId"].as_str().unwrap().to_string();
    std::fs::write(
        setup.nfs.export().join("pvc-1a2b/data.bin"),
        vec![7u8; 4096],
    )
    .unwrap();
    let snapshot = setup.csictl(&["create-snapshot", "snapshot-3c4d", "--source", &id]);
    let snapshot_id = snapshot["snapshotId"].as_str().unwrap().to_string();

    let api = &setup.api;
    api.put(
        NAMESPACES,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}}),
    );
    api.put(NODES, node("nodea", "127.0.0.2"));
    api.put(
        PERSISTENT_VOLUMES,
        json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "pvc-1a2b"},
               "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany"],
                        "persistentVolumeReclaimPolicy": "Delete", "storageClassName": "tether-nfs",
                        "claimRef": {"namespace": "default", "name": "data"},
                        "csi": {"driver": "nfs.tether.dev", "volumeHandle": id}},
               "status": {"phase": "Bound"}}),
    );
    api.put(
        PERSISTENT_VOLUME_CLAIMS,
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
               "metadata": {"name": "data", "namespace": "default"},
               "spec": {"volumeName": "pvc-1a2b", "storageClassName": "tether-nfs",
                        "accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}},
               "status": {"phase": "Bound"}}),
    );
    api.put(PODS, pod_using("app", "nodea", "data"));
    api.put(
        VOLUME_SNAPSHOT_CONTENTS,
        json!({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotContent",
               "metadata": {"name": "snapcontent-5e6f"},
               "spec": {"driver": "nfs.tether.dev", "deletionPolicy": "Delete",
                        "source": {"volumeHandle": id},
                        "volumeSnapshotRef": {"namespace": "default", "name": "nightly"}},
               "status": {"snapshotHandle": snapshot_id, "readyToUse": true, "restoreSize": 1073741824}}),
    );
    std::fs::write(
        setup.dir.path().join("kubelet/stats/summary"),
        json!({"node": {"nodeName": "nodea"},
               "pods": [{"podRef": {"name": "app", "namespace": "default", "uid": "u1"},
                         "volume": [{"name": "data", "pvcRef": {"name": "data", "namespace": "default"},
                                     "usedBytes": 4194304u64, "capacityBytes": 1073741824u64,
                                     "inodesUsed": 2}]}]})
        .to_string(),
    )
    .unwrap();

    // By claim, by PersistentVolume and by volume id: the same volume.
    let out = setup.run(&["volume", "data"]);
    let report = text(&out);
    println!("{report}");
    assert!(out.status.success(), "{report}");
    let source = format!("{}:{share}/pvc-1a2b", setup.nfs.address);
    for wanted in [
        "VOLUME  pvc-1a2b  claim default/data  Bound  capacity 1Gi  class tether-nfs  ReadWriteMany  reclaim Delete",
        &format!("server {}  share {share}  directory pvc-1a2b  (directory layout, NFS 4.1)", setup.nfs.address),
        &format!("mounted as {source}"),
        "LIMIT   none: a directory volume can fill its share",
        "default/app  node nodea  Running  used 4.0 MiB of 1.0 GiB  inodes 2",
        "default/nightly  (snapcontent-5e6f)  ready  size 1.0 GiB",
        "no problems found",
    ] {
        assert!(report.contains(wanted), "{wanted:?} missing:\n{report}");
    }
    for other in ["pvc-1a2b", id.as_str(), "default/data"] {
        let out = setup.run(&["volume", other, "-o", "json"]);
        assert!(out.status.success(), "{other}: {}", text(&out));
        let json: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(json["claim"], "default/data", "{other}: {json}");
        assert_eq!(json["location"]["source"], source, "{other}: {json}");
        assert_eq!(json["usage"][0]["usedBytes"], 4194304, "{other}: {json}");
    }

    // A snapshot whose copy has not finished, and a second user on a node whose kubelet is
    // unreachable.
    api.patch(
        VOLUME_SNAPSHOT_CONTENTS,
        "",
        "snapcontent-5e6f",
        &json!({"status": {"readyToUse": false}}),
    );
    api.put(NODES, node("nodeb", "127.0.0.3"));
    api.put(PODS, pod_using("app2", "nodeb", "data"));
    let out = setup.run(&["volume", "data"]);
    let report = text(&out);
    println!("{report}");
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(
        report.contains("snapshot default/nightly is not ready"),
        "{report}"
    );
    assert!(report.contains("nodeb: kubelet's stats"), "{report}");
    assert!(
        report.contains("default/app2  node nodeb  Running  used -"),
        "{report}"
    );

    // A claim csi-provisioner has not served yet.
    api.put(
        PERSISTENT_VOLUME_CLAIMS,
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
               "metadata": {"name": "waiting", "namespace": "default"},
               "spec": {"storageClassName": "tether-nfs", "accessModes": ["ReadWriteOnce"],
                        "resources": {"requests": {"storage": "1Gi"}}},
               "status": {"phase": "Pending"}}),
    );
    let out = setup.run(&["volume", "default/waiting"]);
    let report = text(&out);
    println!("{report}");
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(report.contains("the claim is Pending"), "{report}");

    let out = setup.run(&["volume", "nothing"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("no claim, PersistentVolume or tether-csi volume nothing"),
        "{}",
        text(&out)
    );
}
