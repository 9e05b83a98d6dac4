//! Generates the V2 protocol's message types from `protos/grpc_service.proto` with a pure-Rust
//! protobuf compiler (protox), so building needs no `protoc` binary and no network; the
//! encoded descriptors are kept too, for server reflection.

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = "../protos";
    let proto_file = "../protos/grpc_service.proto";
    println!("cargo:rerun-if-changed={proto_file}");
    let descriptors = protox::compile([proto_file], [proto_dir])?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("inference_descriptors.bin"),
        descriptors.encode_to_vec(),
    )?;
    prost_build::Config::new()
        // Every `bytes` field becomes `bytes::Bytes`, so raw tensor contents are slices of the
        // request buffer instead of copies.
        .bytes(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
