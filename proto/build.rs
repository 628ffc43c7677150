//! Generates the CSI messages and gRPC services from `proto/csi.proto` with Debian's `protoc`
//! (package protobuf-compiler; `PROTOC` may point elsewhere).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/csi.proto");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(&["proto/csi.proto"], &["proto"])?;
    Ok(())
}
