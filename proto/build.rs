//! Generates the CSI, CRI and agent messages and gRPC services from `proto/csi.proto`,
//! `proto/cri.proto` and `proto/agent.proto` with Debian's `protoc` (package protobuf-compiler; `PROTOC` may point
//! elsewhere).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/csi.proto");
    println!("cargo:rerun-if-changed=proto/cri.proto");
    println!("cargo:rerun-if-changed=proto/agent.proto");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(&["proto/csi.proto"], &["proto"])?;
    // Tether is only ever a CRI client (its tests drive a real runtime).
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .compile_protos(&["proto/cri.proto"], &["proto"])?;
    // tether-nfs-agent (server) and tether-csi's controller (client).
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(&["proto/agent.proto"], &["proto"])?;
    Ok(())
}
