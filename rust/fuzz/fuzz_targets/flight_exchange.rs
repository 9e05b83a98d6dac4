//! Arbitrary bytes as the messages of a Flight DoExchange: decoded into record batches as
//! the Flight service decodes them, turned into requests, admitted against column and tensor
//! signatures and none, answered by an echo model and turned back into record batches.
//!
//! The service contains a panic in Arrow's IPC reader (the exchange ends refused), so this
//! target does too: libfuzzer-sys's panic hook would abort on any panic, contained or not,
//! and is replaced by one that only reports it. A panic that is not contained still unwinds
//! out of the input and is a crash.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: {
        std::panic::set_hook(Box::new(|info| eprintln!("{info}")));
    },
    |data: &[u8]| {
        let _ = arrowsmith_fuzz::harness::flight_exchange_case(data);
    }
);
