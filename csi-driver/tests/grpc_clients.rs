#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

//! Clients that are not Go: a gRPC C-core client (Python `grpcio` from PyPI), which sends the
//! unix socket's path as `:authority`, calls tether-csi over its socket with no override.

mod common;

use std::path::Path;

use common::Driver;
use test_support::ganesha::NfsServer;

#[tokio::test]
async fn a_grpc_c_core_client_is_served_over_the_unix_socket() {
    let has_grpcio = std::process::Command::new("python3")
        .args(["-c", "import grpc"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(has_grpcio, "Python grpcio is missing: run scripts/setup.sh");
    let nfs = NfsServer::start("csgp");
    let driver = Driver::start(&nfs, &[]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/grpcio_client.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(&driver.socket)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        driver.log()
    );
    assert!(stdout.contains("50 more calls ok"), "{stdout}");
}
