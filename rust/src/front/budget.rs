//! The process's budget of request bytes held in memory: a call reserves the size its
//! message prefix declares before the message is read, and gives it back when the call is
//! over, so however many clients send at once the front holds at most the budget.

#![deny(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// At most `limit` bytes reserved at once.
#[derive(Debug)]
pub struct ByteBudget {
    limit: usize,
    used: AtomicUsize,
}

/// Bytes taken from a budget, given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<ByteBudget>,
    bytes: usize,
}

/// A reservation refused: what was asked, and what others held then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverBudget {
    pub wanted: usize,
    pub held: usize,
    pub limit: usize,
}

impl ByteBudget {
    pub fn new(limit: usize) -> Arc<ByteBudget> {
        Arc::new(ByteBudget {
            limit,
            used: AtomicUsize::new(0),
        })
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes reserved now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// Takes `bytes` more, unless that would pass the limit. Who takes without a
    /// `Reservation` (a front in another language) gives back exactly what it took.
    pub fn take(&self, bytes: usize) -> Result<(), OverBudget> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&total| total <= self.limit)
            })
            .map(|_| ())
            .map_err(|held| OverBudget {
                wanted: bytes,
                held,
                limit: self.limit,
            })
    }

    pub fn give_back(&self, bytes: usize) {
        // Never below zero, whatever happens: a reservation gives back what it took.
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                Some(used.saturating_sub(bytes))
            });
    }

    /// A reservation of `bytes`, held until dropped.
    pub fn reserve(self: &Arc<Self>, bytes: usize) -> Result<Reservation, OverBudget> {
        self.take(bytes)?;
        Ok(Reservation {
            budget: Arc::clone(self),
            bytes,
        })
    }
}

impl Reservation {
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Holds `more` bytes too, unless that would pass the limit.
    pub fn grow(&mut self, more: usize) -> Result<(), OverBudget> {
        self.budget.take(more)?;
        self.bytes = self.bytes.saturating_add(more);
        Ok(())
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.give_back(self.bytes);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn reservations_are_bounded_and_given_back() {
        let budget = ByteBudget::new(100);
        let first = budget.reserve(60).unwrap();
        assert_eq!(budget.used(), 60);
        assert_eq!(
            budget.reserve(41).unwrap_err(),
            OverBudget {
                wanted: 41,
                held: 60,
                limit: 100
            }
        );
        let mut second = budget.reserve(40).unwrap();
        assert!(second.grow(1).is_err());
        drop(first);
        second.grow(50).unwrap();
        assert_eq!((second.bytes(), budget.used()), (90, 90));
        drop(second);
        assert_eq!(budget.used(), 0);
        assert!(budget.reserve(usize::MAX).is_err());
    }
}
