#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

//! containerd (Debian's 1.6, started here with private root, state and socket) runs two busybox
//! containers whose network comes from cni-bridge + cni-ipam through a conflist, and they reach
//! each other. `ctr run --cni` reads the fixed paths /etc/cni/net.d, /opt/cni/bin and /var/lib/cni,
//! so ctr runs inside a simulated node (its own netns, so cni0 is the node's) with overlay mounts
//! over those paths in a private mount namespace: the host's directories are never touched.

mod support;

use std::path::Path;

use support::Containerd;
use test_support::{require_root, sh, workspace_binary};

#[test]
fn containerd_runs_two_containers_that_reach_each_other() {
    require_root();
    let debug_dir = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let bridge = workspace_binary(&debug_dir.join("x"), "cni-bridge");
    let ipam = workspace_binary(&debug_dir.join("x"), "cni-ipam");
    let mut ctrd = Containerd::start();
    let d = ctrd.dir.path().to_path_buf();

    let image = d.join("busybox.tar");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e/busybox-image.sh");
    sh(
        "bash",
        &[&script.display().to_string(), &image.display().to_string()],
    );
    ctrd.ctr(&["images", "import", &image.display().to_string()]);
    ctrd.images.push("docker.io/tether/busybox:e2e".into());

    let cni = ctrd.cni_dir();
    std::fs::create_dir_all(cni.join("bin")).unwrap();
    std::fs::create_dir_all(cni.join("net.d")).unwrap();
    std::fs::copy(&bridge, cni.join("bin/cni-bridge")).unwrap();
    std::fs::copy(&ipam, cni.join("bin/cni-ipam")).unwrap();
    let leases = d.join("leases");
    let conflist = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "tether-e2e",
        "plugins": [{
            "type": "cni-bridge", "bridge": "cni0", "isGateway": true, "isDefaultGateway": true,
            "ipam": {"type": "cni-ipam", "dataDir": leases, "ranges": [[{"subnet": "10.66.0.0/24"}]]}
        }]
    });
    std::fs::write(cni.join("net.d/10-tether.conflist"), conflist.to_string()).unwrap();
    let mut script = String::from("set -e\n");
    for (target, name) in [("/etc", "etc"), ("/opt", "opt"), ("/var/lib", "varlib")] {
        let (up, work) = (
            d.join(format!("ov/{name}/up")),
            d.join(format!("ov/{name}/work")),
        );
        std::fs::create_dir_all(&up).unwrap();
        std::fs::create_dir_all(&work).unwrap();
        script.push_str(&format!(
            "mount -t overlay overlay -o lowerdir={target},upperdir={},workdir={} {target}\n",
            up.display(),
            work.display()
        ));
    }
    script.push_str(&format!(
        "mkdir -p /etc/cni/net.d /opt/cni/bin /var/lib/cni\n\
         mount --bind {0}/net.d /etc/cni/net.d\nmount --bind {0}/bin /opt/cni/bin\n\"$@\"\n",
        cni.display()
    ));
    std::fs::write(d.join("in-node.sh"), script).unwrap();

    ctrd.containers.push("c1".into());
    let out = ctrd.ctr_in_node(&[
        "run",
        "--cni",
        "-d",
        "docker.io/tether/busybox:e2e",
        "c1",
        "sleep",
        "600",
    ]);
    assert!(
        out.status.success(),
        "ctr run c1: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // c1's address, from the lease cni-ipam wrote for it.
    let net_dir = leases.join("tether-e2e");
    let c1_id = format!("{}-c1", ctrd.namespace);
    let c1_ip = std::fs::read_dir(&net_dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .find(|n| {
            n.parse::<std::net::IpAddr>().is_ok()
                && std::fs::read_to_string(net_dir.join(n))
                    .unwrap()
                    .starts_with(&c1_id)
        })
        .expect("c1 holds a lease");

    ctrd.containers.push("c2".into());
    let out = ctrd.ctr_in_node(&[
        "run",
        "--cni",
        "--rm",
        "docker.io/tether/busybox:e2e",
        "c2",
        "sh",
        "-c",
        &format!("ip -4 addr show eth0 && ping -c 3 -W 2 {c1_ip}"),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "c2 cannot reach c1 at {c1_ip}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("inet 10.66.0."),
        "c2 has an address from cni-ipam: {stdout}"
    );
    assert!(stdout.contains("3 packets received"), "{stdout}");

    // ctr never DELs detached containers (it DELs --rm ones itself): DEL c1 as the runtime would,
    // with an empty CNI_NETNS, and check that both leases are gone.
    ctrd.ctr(&["task", "kill", "-s", "KILL", "c1"]);
    let plugin_conf = serde_json::json!({
        "cniVersion": "1.0.0", "name": "tether-e2e", "type": "cni-bridge", "bridge": "cni0",
        "isGateway": true, "isDefaultGateway": true,
        "ipam": {"type": "cni-ipam", "dataDir": leases, "ranges": [[{"subnet": "10.66.0.0/24"}]]}
    });
    let cni_path = cni.join("bin").display().to_string();
    test_support::run_plugin_in(
        Some(&ctrd.node),
        &cni.join("bin/cni-bridge"),
        &[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", &c1_id),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", ""),
            ("CNI_PATH", &cni_path),
        ],
        &plugin_conf,
    )
    .ok();
    let left: Vec<String> = std::fs::read_dir(&net_dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
        .collect();
    assert!(left.is_empty(), "leases left: {left:?}");
}
