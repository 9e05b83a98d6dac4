//! Arbitrary bytes as a ModelInfer request: decoded, admitted against column and tensor
//! signatures and none, built into a batch and answered by an echo model.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    arrowsmith_fuzz::harness::decode_request_case(data);
});
