//! What the front did, kept until the metrics side collects it: requests answered by model
//! and status, and each request's decode time (decode, model lookup and signature).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

/// Counts and timings since the last `take`.
#[derive(Debug, Default)]
pub struct Stats {
    inner: Mutex<Collected>,
}

/// One collection: `(model, status) -> requests`, and `model -> decode seconds`.
#[derive(Debug, Default, PartialEq)]
pub struct Collected {
    pub requests: HashMap<(String, &'static str), u64>,
    pub decode_seconds: HashMap<String, Vec<f64>>,
}

impl Stats {
    /// A request answered with `status` (an `ErrorCode` name, or "OK"); `model` is empty
    /// when the request named no model this front serves.
    pub fn count(&self, model: &str, status: &'static str) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        match inner.requests.get_mut(&(model.to_owned(), status)) {
            Some(n) => *n += 1,
            None => {
                inner.requests.insert((model.to_owned(), status), 1);
            }
        }
    }

    pub fn observe_decode(&self, model: &str, seconds: f64) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        match inner.decode_seconds.get_mut(model) {
            Some(times) => times.push(seconds),
            None => {
                inner.decode_seconds.insert(model.to_owned(), vec![seconds]);
            }
        }
    }

    /// Everything since the last call.
    pub fn take(&self) -> Collected {
        std::mem::take(&mut *self.inner.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

#[cfg(test)]
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
