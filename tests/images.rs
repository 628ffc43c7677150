#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

//! The container image that deploy/ uses: built by images/build.sh without a Docker daemon,
//! imported into a real containerd, and run there: every binary and tool the manifests call is in
//! it and works, and the CNI installer does its job from inside the image.

mod support;

use std::path::Path;

use support::Containerd;
use test_support::{require_root, sh};

const IMAGE: &str = "tether.local/tether:e2e";

fn run(ctrd: &Containerd, name: &str, extra: &[&str], command: &[&str]) -> std::process::Output {
    let mut args = vec!["run", "--rm"];
    args.extend_from_slice(extra);
    args.push(IMAGE);
    args.push(name);
    args.extend_from_slice(command);
    let full = ctrd.ctr_args(&args);
    std::process::Command::new("ctr")
        .args(full)
        .output()
        .unwrap()
}

#[test]
fn the_image_imports_into_containerd_and_every_binary_runs() {
    require_root();
    let ctrd = Containerd::start();
    let mut ctrd = ctrd;
    let out_dir = ctrd.dir.path().join("images");
    let build = Path::new(env!("CARGO_MANIFEST_DIR")).join("../images/build.sh");
    let built = sh(
        "bash",
        &[
            &build.display().to_string(),
            "--profile",
            "debug",
            "--tag",
            "e2e",
            "--out",
            &out_dir.display().to_string(),
        ],
    );
    assert!(built.contains("tether.local/tether:e2e"), "{built}");
    let archive = out_dir.join("tether-e2e.oci.tar");
    ctrd.ctr(&["images", "import", &archive.display().to_string()]);
    ctrd.images.push(IMAGE.into());
    assert!(ctrd.ctr(&["images", "ls", "-q"]).contains(IMAGE));

    for (i, command) in [
        vec!["/opt/tether/bin/tether-overlayd", "--version"],
        vec!["/opt/tether/bin/tether-csi", "--version"],
        vec!["/opt/tether/bin/tether-csictl", "--version"],
        vec!["/opt/tether/bin/tether-nfs-agent", "--version"],
        vec!["/opt/tether/bin/tether-cni-install", "--version"],
        vec!["nft", "--version"],
        vec!["mkfs.ext4", "-V"],
        vec!["mkfs.xfs", "-V"],
        vec!["xfs_growfs", "-V"],
        vec!["blkid", "-V"],
    ]
    .into_iter()
    .enumerate()
    {
        let out = run(&ctrd, &format!("v{i}"), &[], &command);
        assert!(
            out.status.success(),
            "{command:?} in the image: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // The CNI DaemonSet's init step, from the image, onto "host" directories.
    let host = ctrd.dir.path().join("host");
    for dir in ["opt/cni/bin", "etc/cni/net.d", "config"] {
        std::fs::create_dir_all(host.join(dir)).unwrap();
    }
    let conflist = serde_json::json!({
        "cniVersion": "1.1.0", "name": "tether",
        "plugins": [{"type": "cni-overlay"}]
    });
    std::fs::write(host.join("config/10-tether.conflist"), conflist.to_string()).unwrap();
    let mount = |src: &Path, dst: &str| {
        format!("type=bind,src={},dst={dst},options=rbind:rw", src.display())
    };
    let mounts = [
        mount(&host.join("opt/cni/bin"), "/host/opt/cni/bin"),
        mount(&host.join("etc/cni/net.d"), "/host/etc/cni/net.d"),
        mount(&host.join("config"), "/etc/tether"),
    ];
    let mut extra = Vec::new();
    for m in &mounts {
        extra.push("--mount");
        extra.push(m.as_str());
    }
    for round in 0..2 {
        let out = run(
            &ctrd,
            &format!("install{round}"),
            &extra,
            &[
                "/opt/tether/bin/tether-cni-install",
                "--conflist",
                "/etc/tether/10-tether.conflist",
            ],
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let expected = if round == 0 { "installed" } else { "unchanged" };
        assert_eq!(
            stdout.matches(expected).count(),
            6,
            "round {round}: {stdout}"
        );
    }
    for plugin in [
        "cni-overlay",
        "cni-bridge",
        "cni-ipam",
        "cni-portmap",
        "cni-bandwidth",
    ] {
        let installed = host.join("opt/cni/bin").join(plugin);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&installed).unwrap().permissions().mode() & 0o777,
            0o755
        );
    }
    let written: serde_json::Value = serde_json::from_slice(
        &std::fs::read(host.join("etc/cni/net.d/10-tether.conflist")).unwrap(),
    )
    .unwrap();
    assert_eq!(written, conflist);
}
