#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

//! The README's first command, run as a test: the sandbox demo must pass and leave nothing behind.

use std::path::Path;
use std::process::Command;

use test_support::require_root;

fn leftovers() -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let mut left: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with("td-"))
        .map(str::to_string)
        .collect();
    if Path::new("/tmp/tether-demo").exists() {
        left.push("/tmp/tether-demo".into());
    }
    left
}

#[test]
fn the_sandbox_demo_runs_and_leaves_nothing_behind() {
    require_root();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/demo.sh");
    let out = Command::new("bash")
        .arg(&script)
        .env("TETHER_DEMO_PROFILE", "debug")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for expected in [
        "cross-node pings: 6 of 6 answered",
        "its own address, no NAT",
        "egress to 203.0.113.1",
        "hello.txt says \"written before the snapshot\"",
        "0 volume directories left on the share",
        "leases left: 0",
    ] {
        assert!(stdout.contains(expected), "missing {expected:?}:\n{stdout}");
    }
    // scripts/setup.sh installs containerd, runc and busybox-static, so the demo's container
    // part must have run (the demo skips it only where those are missing).
    assert!(
        stdout.contains("reached pod3b"),
        "the container part of the demo did not run:\n{stdout}"
    );
    assert_eq!(leftovers(), Vec::<String>::new());
}
