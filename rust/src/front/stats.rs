//! What the front did, kept until the metrics side collects it: requests answered by model
//! and status, and each request's decode time (decode, model lookup and signature).

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

fn entry<'a, V: Default>(map: &'a mut HashMap<String, V>, model: &str) -> &'a mut V {
    if !map.contains_key(model) {
        map.insert(model.to_owned(), V::default());
    }
    map.get_mut(model).expect("inserted above")
}

impl Stats {
    /// A request answered with `status` (an `ErrorCode` name, or "OK"); `model` is empty
    /// when the request named no model this front serves.
    pub fn count(&self, model: &str, status: &'static str) {
        let mut kept = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        *entry(&mut kept.requests, model).entry(status).or_default() += 1;
    }

    pub fn observe_decode(&self, model: &str, seconds: f64) {
        let mut kept = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        entry(&mut kept.decode_seconds, model).push(seconds);
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
