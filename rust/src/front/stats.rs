//! What the front did, kept until the metrics side collects it: requests answered by model
//! and status, and each request's decode time (decode, model lookup and signature).

#![deny(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

/// Counts and timings since the last `take`.
#[derive(Debug, Default)]
pub struct Stats {
    inner: Mutex<Kept>,
}

/// One collection: `(model, status) -> requests`, and `model -> decode seconds`.
#[derive(Debug, Default, PartialEq)]
pub struct Collected {
    pub requests: HashMap<(String, &'static str), u64>,
    pub decode_seconds: HashMap<String, Vec<f64>>,
}

/// What is kept per model, looked up by the name a request already holds (no allocation
/// per request).
#[derive(Debug, Default)]
struct Kept {
    requests: HashMap<String, HashMap<&'static str, u64>>,
    decode_seconds: HashMap<String, Vec<f64>>,
}

impl Stats {
    /// A request answered with `status` (an `ErrorCode` name, "OK", or a transport limit's
    /// refusal); `model` is empty when the request named no model this front serves.
    pub fn count(&self, model: &str, status: &'static str) {
        let mut kept = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(statuses) = kept.requests.get_mut(model) {
            let n = statuses.entry(status).or_default();
            *n = n.saturating_add(1);
        } else {
            kept.requests
                .insert(model.to_owned(), HashMap::from([(status, 1)]));
        }
    }

    pub fn observe_decode(&self, model: &str, seconds: f64) {
        let mut kept = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(times) = kept.decode_seconds.get_mut(model) {
            times.push(seconds);
        } else {
            kept.decode_seconds.insert(model.to_owned(), vec![seconds]);
        }
    }

    /// Everything since the last call.
    pub fn take(&self) -> Collected {
        let kept = std::mem::take(&mut *self.inner.lock().unwrap_or_else(PoisonError::into_inner));
        let requests = kept
            .requests
            .into_iter()
            .flat_map(|(model, statuses)| {
                statuses
                    .into_iter()
                    .map(move |(status, n)| ((model.clone(), status), n))
            })
            .collect();
        Collected {
            requests,
            decode_seconds: kept.decode_seconds,
        }
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn counts_until_taken() {
        let stats = Stats::default();
        stats.count("wine", "OK");
        stats.count("wine", "OK");
        stats.count("", "INVALID_INPUT");
        stats.observe_decode("wine", 0.5);
        let taken = stats.take();
        assert_eq!(taken.requests[&("wine".to_owned(), "OK")], 2);
        assert_eq!(taken.requests[&(String::new(), "INVALID_INPUT")], 1);
        assert_eq!(taken.decode_seconds["wine"], vec![0.5]);
        assert_eq!(stats.take(), Collected::default());
    }
}
