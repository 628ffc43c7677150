#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

//! This machine's kernel lacks bridge VLAN filtering, so the VLAN test of `kernel.rs` runs again
//! inside a QEMU guest with Debian's kernel (tests/vm/run.sh), where it must pass for real: pods in
//! one VLAN reach each other, pods of another VLAN do not.

use std::path::{Path, PathBuf};
use std::process::Command;

#[test]
fn vlan_in_a_vm() {
    test_support::require_root();
    let kernel_tests = test_binary("kernel", "vlan_isolates_pods_or_fails_cleanly");
    let run = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/vm/run.sh");
    let out = Command::new("bash")
        .arg(run)
        .args(["--timeout", "600", "--", "env", "TETHER_REQUIRE_VLAN=1"])
        .arg(kernel_tests)
        .args([
            "--exact",
            "vlan_isolates_pods_or_fails_cleanly",
            "--nocapture",
        ])
        .output()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "the VLAN test inside the VM failed: {}\n{report}",
        out.status
    );
    // A renamed inner test would run nothing and still exit 0.
    assert!(
        report.contains("test result: ok. 1 passed"),
        "the VLAN test did not run inside the VM:\n{report}"
    );
}

/// The compiled test binary `name` of this package that holds `test` (cargo puts it next to this
/// one; other packages' test binaries of the same name sit there too, so each is asked).
fn test_binary(name: &str, test: &str) -> PathBuf {
    let me = std::env::current_exe().unwrap();
    let dir = me.parent().unwrap();
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{name}-")) && !n.contains('.'))
        })
        .filter(|p| {
            Command::new(p)
                .args(["--list", "--exact", test])
                .output()
                .is_ok_and(|o| {
                    String::from_utf8_lossy(&o.stdout).contains(&format!("{test}: test"))
                })
        })
        .collect();
    found.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    found.pop().unwrap_or_else(|| {
        panic!("no {name} test binary holds {test} (cargo builds all tests of a package)")
    })
}
