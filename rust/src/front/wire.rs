//! gRPC over HTTP/2, the parts the front speaks itself: the 5-byte message prefix, the
//! `grpc-timeout` header, and responses (a message and trailers, or trailers only).

#![deny(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::fmt::Write as _;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use h2::server::SendResponse;
use http::{HeaderMap, HeaderValue, Response, StatusCode};

use crate::encode::EncodedResponse;
use crate::error::Error;

/// One message's prefix: a compressed flag and a 4-byte big-endian length.
pub const PREFIX_LEN: usize = 5;

/// gRPC status codes.
pub const OK: u32 = 0;
const CANCELLED: u32 = 1;
const INVALID_ARGUMENT: u32 = 3;
const DEADLINE_EXCEEDED: u32 = 4;
pub const RESOURCE_EXHAUSTED: u32 = 8;
const UNIMPLEMENTED: u32 = 12;
pub const INTERNAL: u32 = 13;
pub const UNAVAILABLE: u32 = 14;

/// The status an error answers with: the table `arrowsmith.errors.GRPC_STATUS` keeps for the
/// calls Python answers.
pub fn status_of(error: &Error) -> u32 {
    match error {
        Error::InvalidInput { .. } => INVALID_ARGUMENT,
        Error::Unsupported(_) => UNIMPLEMENTED,
        Error::Internal(_) | Error::Model(_) => INTERNAL,
        Error::QueueFull(_) => RESOURCE_EXHAUSTED,
        Error::DeadlineExceeded(_) => DEADLINE_EXCEEDED,
        Error::Cancelled(_) => CANCELLED,
        Error::Unavailable(_) => UNAVAILABLE,
    }
}

/// What a unary request body holds.
pub enum Message {
    /// One uncompressed message.
    Plain(Bytes),
    /// One message compressed with the request's `grpc-encoding`: for the backend.
    Compressed,
}

/// The body's one message; `Err` names what is wrong with the framing.
pub fn unary_message(mut body: Bytes) -> Result<Message, String> {
    let (compressed, len) = match body.get(..PREFIX_LEN) {
        Some(&[flag, l0, l1, l2, l3]) => (flag != 0, u32::from_be_bytes([l0, l1, l2, l3]) as usize),
        _ => {
            return Err(format!(
                "the request body has {} bytes, less than a gRPC message prefix",
                body.len()
            ))
        }
    };
    let held = body.len().saturating_sub(PREFIX_LEN);
    if held != len {
        return Err(format!(
            "a unary call carries one message: the prefix says {len} bytes, the body holds {held}"
        ));
    }
    if compressed {
        return Ok(Message::Compressed);
    }
    Ok(Message::Plain(body.split_off(PREFIX_LEN)))
}

/// The client's deadline from `grpc-timeout` (e.g. `100m`, `5S`); None when absent or
/// unreadable (gRPC says to ignore a malformed timeout).
pub fn timeout(headers: &HeaderMap) -> Option<Duration> {
    let text = headers.get("grpc-timeout")?.to_str().ok()?;
    if text.len() < 2 || text.len() > 9 {
        return None;
    }
    let (digits, unit) = text.split_at_checked(text.len().checked_sub(1)?)?;
    let value: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(value.saturating_mul(3600)),
        "M" => Duration::from_secs(value.saturating_mul(60)),
        "S" => Duration::from_secs(value),
        "m" => Duration::from_millis(value),
        "u" => Duration::from_micros(value),
        "n" => Duration::from_nanos(value),
        _ => return None,
    })
}

fn grpc_headers() -> Response<()> {
    let mut response = Response::new(());
    *response.status_mut() = StatusCode::OK;
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static("application/grpc"));
    response
}

/// gRPC's percent-encoding of `grpc-message`: printable ASCII except `%` stays.
fn percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for byte in message.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(byte as char);
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// Answers with a status and message and no response message (a trailers-only response).
pub fn send_status(respond: &mut SendResponse<Bytes>, code: u32, message: &str) {
    let mut response = grpc_headers();
    let headers = response.headers_mut();
    headers.insert("grpc-status", HeaderValue::from(code));
    if let Ok(value) = HeaderValue::from_str(&percent_encode(message)) {
        headers.insert("grpc-message", value);
    }
    // A client that left cannot be told anything: nothing to do on failure.
    let _ = respond.send_response(response, true);
}

/// Answers with one response message and an OK status.
pub fn send_message(respond: &mut SendResponse<Bytes>, encoded: &EncodedResponse) {
    let len = encoded.encoded_len();
    let mut body = BytesMut::with_capacity(PREFIX_LEN.saturating_add(len));
    body.put_u8(0);
    body.put_u32(len as u32);
    encoded.write_to(&mut body);
    let Ok(mut stream) = respond.send_response(grpc_headers(), false) else {
        return;
    };
    if stream.send_data(body.freeze(), false).is_err() {
        return;
    }
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from(OK));
    let _ = stream.send_trailers(trailers);
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_in_every_unit() {
        let of = |text: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert("grpc-timeout", HeaderValue::from_static(text));
            timeout(&headers)
        };
        assert_eq!(of("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(of("3M"), Some(Duration::from_secs(180)));
        assert_eq!(of("5S"), Some(Duration::from_secs(5)));
        assert_eq!(of("100m"), Some(Duration::from_millis(100)));
        assert_eq!(of("7u"), Some(Duration::from_micros(7)));
        assert_eq!(of("9n"), Some(Duration::from_nanos(9)));
        assert_eq!(of("5x"), None);
        assert_eq!(of("S"), None);
        assert_eq!(of("1234567890S"), None);
        // The largest a header can say is kept as it is; the caller's deadline arithmetic
        // must not overflow on it.
        assert_eq!(
            of("99999999H"),
            Some(Duration::from_secs(99_999_999 * 3600))
        );
        assert_eq!(of("-5S"), None);
        assert_eq!(timeout(&HeaderMap::new()), None);
    }

    #[test]
    fn one_message_is_unwrapped() {
        let body = Bytes::from_static(&[0, 0, 0, 0, 3, 7, 8, 9]);
        assert!(matches!(unary_message(body), Ok(Message::Plain(m)) if m[..] == [7, 8, 9]));
        let compressed = Bytes::from_static(&[1, 0, 0, 0, 1, 7]);
        assert!(matches!(unary_message(compressed), Ok(Message::Compressed)));
    }

    #[test]
    fn bad_framing_is_refused() {
        assert!(unary_message(Bytes::from_static(&[0, 0])).is_err());
        assert!(unary_message(Bytes::from_static(&[0, 0, 0, 0, 5, 1])).is_err());
        assert!(unary_message(Bytes::from_static(&[0, 0, 0, 0, 1, 1, 2])).is_err());
    }

    #[test]
    fn messages_are_percent_encoded() {
        assert_eq!(percent_encode("50% of é\n"), "50%25 of %C3%A9%0A");
    }
}
