//! Generates the V2 protocol's message types from `protos/grpc_service.proto` with a pure-Rust
//! protobuf compiler (protox), so building needs no `protoc` binary and no network.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = "../protos";
    let proto_file = "../protos/grpc_service.proto";
    println!("cargo:rerun-if-changed={proto_file}");
    let descriptors = protox::compile([proto_file], [proto_dir])?;
    prost_build::Config::new()
        // Every `bytes` field becomes `bytes::Bytes`, so raw tensor contents are slices of the
        // request buffer instead of copies.
        .bytes(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
