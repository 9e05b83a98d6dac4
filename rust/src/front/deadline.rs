//! A call's deadline, from the `grpc-timeout` header it arrived with (e.g. `100m`, `5S`).
//! tonic's own timeout answers CANCELLED; gRPC and Triton say DEADLINE_EXCEEDED, so the
//! front keeps the deadline itself, on the job, where the batcher honours it.

#![deny(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::time::{Duration, Instant};

use http::HeaderMap;

/// When a call's answer is due; kept in the request's extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline(pub Instant);

impl Deadline {
    /// The deadline of a call that `arrived` with `headers`; None without a usable
    /// `grpc-timeout`, or when the deadline is too far to represent (then there is none).
    pub fn of(headers: &HeaderMap, arrived: Instant) -> Option<Deadline> {
        arrived.checked_add(timeout(headers)?).map(Deadline)
    }
}

/// The client's timeout; None when absent or unreadable (gRPC says to ignore a malformed
/// timeout).
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn of(text: &'static str) -> Option<Duration> {
        let mut headers = HeaderMap::new();
        headers.insert("grpc-timeout", HeaderValue::from_static(text));
        timeout(&headers)
    }

    #[test]
    fn timeouts_in_every_unit() {
        assert_eq!(of("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(of("3M"), Some(Duration::from_secs(180)));
        assert_eq!(of("5S"), Some(Duration::from_secs(5)));
        assert_eq!(of("100m"), Some(Duration::from_millis(100)));
        assert_eq!(of("7u"), Some(Duration::from_micros(7)));
        assert_eq!(of("9n"), Some(Duration::from_nanos(9)));
        assert_eq!(of("5x"), None);
        assert_eq!(of("S"), None);
        assert_eq!(of("1234567890S"), None);
        assert_eq!(of("-5S"), None);
        assert_eq!(timeout(&HeaderMap::new()), None);
    }

    #[test]
    fn the_largest_timeout_is_no_deadline_rather_than_an_overflow() {
        let mut headers = HeaderMap::new();
        headers.insert("grpc-timeout", HeaderValue::from_static("99999999H"));
        assert_eq!(
            timeout(&headers),
            Some(Duration::from_secs(99_999_999 * 3600))
        );
        let now = Instant::now();
        assert!(Deadline::of(&headers, now).is_none_or(|d| d.0 > now));
    }
}
