//! Arbitrary bytes as a gRPC request body, whose messages the front meters by their
//! prefixes as chunks arrive, and as a `grpc-timeout` header value.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    arrowsmith_fuzz::harness::grpc_wire_case(data);
});
