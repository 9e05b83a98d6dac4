//! Request bodies read against the process's budget of bytes in flight. tonic buffers a
//! message whole before handing it on, so the budget is taken here, as the body arrives:
//! each message's 5-byte gRPC prefix declares its length, and that many bytes are reserved
//! the moment the prefix is seen, before the rest is buffered. A message larger than the
//! server reads, or one the budget cannot hold, fails the body with RESOURCE_EXHAUSTED,
//! and the call is answered with it at once.
//!
//! The bytes stay reserved until the call ends (`CallBudget` is dropped); a stream gives
//! back each message's bytes once it is answered (`CallBudget::message_done`).

#![deny(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tonic::Status;

use super::budget::{ByteBudget, OverBudget};
use super::{Shared, RESOURCE_EXHAUSTED};

/// One message's prefix: a compressed flag and a 4-byte big-endian length.
const PREFIX_LEN: usize = 5;

/// The bytes one call holds, message by message, in the order they arrived.
#[derive(Debug)]
pub(super) struct CallBudget {
    budget: Arc<ByteBudget>,
    held: Mutex<VecDeque<usize>>,
}

impl CallBudget {
    pub(super) fn new(budget: Arc<ByteBudget>) -> Arc<CallBudget> {
        Arc::new(CallBudget {
            budget,
            held: Mutex::new(VecDeque::new()),
        })
    }

    fn reserve(&self, bytes: usize) -> Result<(), OverBudget> {
        self.budget.take(bytes)?;
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back(bytes);
        Ok(())
    }

    /// The oldest message still held was answered: its bytes go back.
    pub(super) fn message_done(&self) {
        let done = self
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop_front();
        if let Some(bytes) = done {
            self.budget.give_back(bytes);
        }
    }
}

impl Drop for CallBudget {
    fn drop(&mut self) {
        let held = self.held.get_mut().unwrap_or_else(PoisonError::into_inner);
        let total = held.drain(..).fold(0usize, usize::saturating_add);
        self.budget.give_back(total);
    }
}

/// Where a body is in its stream of messages.
#[derive(Debug)]
enum Position {
    /// Reading a prefix: the bytes of it seen so far.
    Prefix { seen: [u8; PREFIX_LEN], have: usize },
    /// Inside a message's body: bytes of it still to come.
    Message { left: usize },
}

/// Follows the message boundaries of a gRPC body through its chunks, however they are cut,
/// and reports each message's declared length the moment its prefix is whole.
#[derive(Debug)]
pub struct MessageMeter {
    position: Position,
}

impl Default for MessageMeter {
    fn default() -> Self {
        MessageMeter {
            position: Position::Prefix {
                seen: [0; PREFIX_LEN],
                have: 0,
            },
        }
    }
}

impl MessageMeter {
    /// Reads one chunk; `message(declared)` is told of each new message, and its error
    /// stops the reading.
    pub fn feed<E>(
        &mut self,
        mut chunk: &[u8],
        mut message: impl FnMut(usize) -> Result<(), E>,
    ) -> Result<(), E> {
        while !chunk.is_empty() {
            match &mut self.position {
                Position::Prefix { seen, have } => {
                    let want = PREFIX_LEN.saturating_sub(*have).min(chunk.len());
                    if let (Some(to), Some(from)) = (
                        seen.get_mut(*have..have.saturating_add(want)),
                        chunk.get(..want),
                    ) {
                        to.copy_from_slice(from);
                    }
                    *have = have.saturating_add(want);
                    chunk.advance(want);
                    if *have == PREFIX_LEN {
                        let [_, l0, l1, l2, l3] = *seen;
                        let declared = u32::from_be_bytes([l0, l1, l2, l3]) as usize;
                        message(declared)?;
                        self.position = Position::Message { left: declared };
                    }
                }
                Position::Message { left } => {
                    let taken = (*left).min(chunk.len());
                    *left = left.saturating_sub(taken);
                    chunk.advance(taken);
                }
            }
            if matches!(self.position, Position::Message { left: 0 }) {
                self.position = Position::Prefix {
                    seen: [0; PREFIX_LEN],
                    have: 0,
                };
            }
        }
        Ok(())
    }
}

/// A request body whose messages are reserved against the budget as they arrive.
pub(super) struct MeteredBody {
    body: Incoming,
    call: Arc<CallBudget>,
    shared: Arc<Shared>,
    meter: MessageMeter,
    /// Set once the body failed; nothing more is read.
    failed: bool,
}

impl MeteredBody {
    pub(super) fn new(body: Incoming, call: Arc<CallBudget>, shared: Arc<Shared>) -> Self {
        MeteredBody {
            body,
            call,
            shared,
            meter: MessageMeter::default(),
            failed: false,
        }
    }

    /// Reserves a message of `declared` bytes, or says why it cannot be read.
    fn admit(call: &CallBudget, shared: &Shared, declared: usize) -> Result<(), Status> {
        let limits = &shared.limits;
        if declared > limits.max_message_size {
            shared.stats.count("", RESOURCE_EXHAUSTED);
            return Err(Status::resource_exhausted(format!(
                "Received message larger than max ({declared} vs. {})",
                limits.max_message_size
            )));
        }
        call.reserve(declared.saturating_add(PREFIX_LEN))
            .map_err(|over| {
                shared.stats.count("", RESOURCE_EXHAUSTED);
                Status::resource_exhausted(format!(
                    "the server is holding {} bytes of requests in flight; {} more would pass \
                     its budget of {} (--max-inflight-bytes): try again later",
                    over.held, over.wanted, over.limit
                ))
            })
    }
}

impl Body for MeteredBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.failed {
            return Poll::Ready(None);
        }
        let frame = match Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            Poll::Ready(Some(Err(error))) => {
                return Poll::Ready(Some(Err(Status::from_error(Box::new(error)))))
            }
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => return Poll::Pending,
        };
        if let Some(data) = frame.data_ref() {
            let this = &mut *self;
            let (call, shared) = (&this.call, &this.shared);
            let metered = this
                .meter
                .feed(data, |declared| Self::admit(call, shared, declared));
            if let Err(status) = metered {
                self.failed = true;
                return Poll::Ready(Some(Err(status)));
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
