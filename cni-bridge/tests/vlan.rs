#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

//! This machine's kernel lacks bridge VLAN filtering, so the VLAN test of `kernel.rs` runs again
//! inside a QEMU guest with Debian's kernel (tests/vm/run.sh), where it must pass for real: pods in
//! one VLAN reach each other, pods of another VLAN do not.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn vlan_in_a_vm() {
    test_support::require_root();
    let kernel_tests = test_binary("kernel", "vlan_isolates_pods_or_fails_cleanly");
    test_support::run_one_test_in_vm(
        600,
        &[
            "env".as_ref(),
            "TETHER_REQUIRE_VLAN=1".as_ref(),
            kernel_tests.as_os_str(),
            "--exact".as_ref(),
            "vlan_isolates_pods_or_fails_cleanly".as_ref(),
            "--nocapture".as_ref(),
        ],
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
