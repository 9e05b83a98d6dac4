"""Python message classes for the V2 protocol, generated from `protos/grpc_service.proto`
by `make protos` (grpcio-tools). The hot path never uses them: ModelInfer is decoded in
Rust. They serve the small RPCs and server reflection."""
