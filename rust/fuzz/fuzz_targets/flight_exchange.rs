//! Arbitrary bytes as the messages of a Flight DoExchange: decoded into record batches,
//! turned into requests, admitted against column and tensor signatures and none, answered
//! by an echo model and turned back into record batches.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = arrowsmith_fuzz::harness::flight_exchange_case(data);
});
