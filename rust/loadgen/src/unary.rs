//! Unary ModelInfer calls over HTTP/2: the request's head and its pre-framed body are queued
//! together by the caller (so the connection's next write carries both, with every other
//! call queued meanwhile); the answer's status comes from the trailers (or a trailers-only
//! answer's headers), and its one message is checked. A connection the server closes (a
//! worker replaced, draining with GOAWAY) is opened again, and a call it refused unsent goes
//! once more on the new one, as gRPC clients do: what is counted is what the server
//! answered.

use std::cell::RefCell;
use std::future::poll_fn;
use std::rc::Rc;

use bytes::Bytes;
use http::Uri;
use prost::Message;

use arrowsmith_native::proto::ModelInferResponse;

use crate::connect::{self, Http2};
use crate::grpc::{self, Messages};
use crate::outcome::{self, Answer, Checks, LastAnswer, Outcome};

pub const PATH: &str = "/inference.GRPCInferenceService/ModelInfer";

/// The unary side of a run: HTTP/2 connections shared by the calls, and the one request.
pub struct Unary {
    slots: Vec<Slot>,
    target: String,
    uri: Uri,
    /// The request, framed.
    body: Bytes,
    checks: Rc<Checks>,
    last: LastAnswer,
}

/// A connection, replaced when it closes, by one caller at a time.
struct Slot {
    connection: RefCell<Rc<Http2>>,
    reopening: tokio::sync::Mutex<()>,
}

impl Unary {
    pub fn new(
        connections: Vec<Http2>,
        target: String,
        uri: Uri,
        body: Bytes,
        checks: Rc<Checks>,
    ) -> Self {
        let slots = connections
            .into_iter()
            .map(|connection| Slot {
                connection: RefCell::new(Rc::new(connection)),
                reopening: tokio::sync::Mutex::new(()),
            })
            .collect();
        Unary {
            slots,
            target,
            uri,
            body,
            checks,
            last: LastAnswer::default(),
        }
    }

    /// Connection `slot`, opened again first if it closed.
    async fn connection(&self, slot: usize) -> Result<Rc<Http2>, String> {
        let slot = &self.slots[slot % self.slots.len()];
        let current = Rc::clone(&slot.connection.borrow());
        if !current.is_closed() {
            return Ok(current);
        }
        let _reopening = slot.reopening.lock().await;
        // Another caller may have opened it while this one waited.
        let current = Rc::clone(&slot.connection.borrow());
        if !current.is_closed() {
            return Ok(current);
        }
        let opened = Rc::new(connect::http2(&self.target).await?);
        *slot.connection.borrow_mut() = Rc::clone(&opened);
        Ok(opened)
    }

    /// One call on connection `slot` (modulo their number).
    pub async fn call(&self, slot: usize) -> Answer {
        let mut exchanged = match self.connection(slot).await {
            Ok(connection) => self.exchange(&connection).await,
            Err(error) => Err(Failed::Unsent(error)),
        };
        if matches!(exchanged, Err(Failed::Unsent(_))) {
            exchanged = match self.connection(slot).await {
                Ok(connection) => self.exchange(&connection).await,
                Err(error) => Err(Failed::Broken(error)),
            };
        }
        let exchanged = exchanged.map_err(|(Failed::Unsent(error) | Failed::Broken(error))| error);
        match exchanged {
            Ok((0, mut messages)) => match (messages.next(), messages.leftover()) {
                (Ok(Some(answer)), 0) => self.last.check(answer, |answer| {
                    match ModelInferResponse::decode(answer.clone()) {
                        Ok(response) => Answer {
                            outcome: outcome::check(&response, &self.checks),
                            version: Some(response.model_version),
                        },
                        Err(e) => {
                            Outcome::BadAnswer(format!("not a ModelInferResponse: {e}")).into()
                        }
                    }
                }),
                (Err(e), _) => Outcome::BadAnswer(e).into(),
                _ => Outcome::BadAnswer("an OK status without exactly one answer".into()).into(),
            },
            Ok((status, _)) => Outcome::Status(status).into(),
            Err(error) => Outcome::Transport(error).into(),
        }
    }

    /// The call's gRPC status and the messages its answer held. A connection that cannot
    /// take the call, or fails it for reasons of its own, is closed, so that the next call
    /// opens another.
    async fn exchange(&self, connection: &Http2) -> Result<(u32, Messages), Failed> {
        let mut sender = connection.sender.clone();
        let queued = poll_fn(|cx| sender.poll_ready(cx))
            .await
            .and_then(|()| sender.send_request(grpc::request(&self.uri), false));
        let (response, mut body) = queued.map_err(|e| {
            connection.close();
            Failed::Unsent(e.to_string())
        })?;
        let head = match body.send_data(self.body.clone(), true) {
            Ok(()) => response.await,
            Err(e) => Err(e),
        };
        match head {
            Ok(response) => answered(response).await.map_err(Failed::Broken),
            Err(e) => {
                if !e.is_reset() {
                    connection.close();
                }
                if never_taken(&e) {
                    Err(Failed::Unsent(e.to_string()))
                } else {
                    Err(Failed::Broken(e.to_string()))
                }
            }
        }
    }
}

/// Whether h2 failed a request the server never took: refused (REFUSED_STREAM), or beyond
/// the last stream a closing connection still serves (GOAWAY without an error).
fn never_taken(error: &h2::Error) -> bool {
    error.reason() == Some(h2::Reason::REFUSED_STREAM)
        || (error.is_go_away() && error.reason() == Some(h2::Reason::NO_ERROR))
}

/// Why a call got no answer.
enum Failed {
    /// The server never took it: its connection refused it or was going away.
    Unsent(String),
    Broken(String),
}

async fn answered(response: http::Response<h2::RecvStream>) -> Result<(u32, Messages), String> {
    if response.status() != http::StatusCode::OK {
        return Err(format!("HTTP status {}", response.status()));
    }
    let mut messages = Messages::default();
    if let Some(status) = grpc::status(response.headers()) {
        return Ok((status, messages));
    }
    let mut body = response.into_body();
    while let Some(data) = grpc::data(&mut body).await {
        messages.push(&data.map_err(|e| e.to_string())?);
    }
    let trailers = body.trailers().await.map_err(|e| e.to_string())?;
    let status = trailers
        .as_ref()
        .and_then(grpc::status)
        .ok_or("no grpc-status")?;
    Ok((status, messages))
}
