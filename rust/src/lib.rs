//! Arrowsmith's native data path: V2 inference requests decoded into Arrow, coerced to the
//! model's MLflow signature, and predictions encoded back into V2 responses.
//!
//! The core is plain Rust (testable with `cargo test --no-default-features`); the PyO3
//! binding lives in `py/` behind the `python` feature.

pub mod access_log;
pub mod admit;
pub mod batch;
pub mod batch_key;
pub mod client_codec;
pub mod coerce;
pub mod datatype;
pub mod decode;
pub mod encode;
pub mod error;
pub mod flight_data;
pub mod front;
pub mod observe;
mod raw;
pub mod shm;
pub mod signature;
pub mod table;
pub mod telemetry;
pub mod tensor;

/// The V2 protocol's messages, generated from `protos/grpc_service.proto` at build time.
#[allow(clippy::all, clippy::pedantic)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/inference.rs"));
}

#[cfg(feature = "python")]
mod py;

pub use datatype::DataType;
pub use decode::{decode_request, InferRequest};
pub use error::{Error, Result};
pub use tensor::{ParamValue, Parameters, Tensor};
