//! Unary ModelInfer calls over HTTP/2: the pre-framed request goes out as the whole body;
//! the answer's status comes from the trailers (or a trailers-only answer's headers), and
//! its one message is checked. A connection the server closes (a worker replaced, draining
//! with GOAWAY) is opened again, and a call it refused unsent goes once more on the new
//! one, as gRPC clients do: what is counted is what the server answered.

use std::rc::Rc;

use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use prost::Message;

use arrowsmith_native::front::unsent::never_taken;
use arrowsmith_native::proto::ModelInferResponse;

use crate::connect;
use crate::grpc::{self, Messages};
use crate::outcome::{self, Answer, Checks, Outcome};

pub const PATH: &str = "/inference.GRPCInferenceService/ModelInfer";

/// The unary side of a run: HTTP/2 connections shared by the calls, and the one request.
pub struct Unary {
    /// Each connection, replaced when it closes.
    connections: Vec<tokio::sync::Mutex<SendRequest<Full<Bytes>>>>,
    target: String,
    uri: Uri,
    /// The request, framed.
    body: Bytes,
    checks: Rc<Checks>,
}

impl Unary {
    pub fn new(
        connections: Vec<SendRequest<Full<Bytes>>>,
        target: String,
        uri: Uri,
        body: Bytes,
        checks: Rc<Checks>,
    ) -> Self {
        Unary {
            connections: connections
                .into_iter()
                .map(tokio::sync::Mutex::new)
                .collect(),
            target,
            uri,
            body,
            checks,
        }
    }

    /// The sender of connection `slot`, opened again first if it closed.
    async fn connection(&self, slot: usize) -> Result<SendRequest<Full<Bytes>>, String> {
        let mut connection = self.connections[slot % self.connections.len()].lock().await;
        if connection.is_closed() {
            *connection = connect::http2(&self.target).await?;
        }
        Ok(connection.clone())
    }

    /// One call on connection `slot` (modulo their number).
    pub async fn call(&self, slot: usize) -> Answer {
        let request = || grpc::request(&self.uri, Full::new(self.body.clone()));
        let mut exchanged = match self.connection(slot).await {
            Ok(mut connection) => exchange(&mut connection, request()).await,
            Err(error) => Err(Failed::Unsent(error)),
        };
        if matches!(exchanged, Err(Failed::Unsent(_))) {
            exchanged = match self.connection(slot).await {
                Ok(mut connection) => exchange(&mut connection, request()).await,
                Err(error) => Err(Failed::Broken(error)),
            };
        }
        let exchanged = exchanged.map_err(|(Failed::Unsent(error) | Failed::Broken(error))| error);
        match exchanged {
            Ok((0, mut messages)) => match (messages.next(), messages.leftover()) {
                (Ok(Some(answer)), 0) => match ModelInferResponse::decode(answer) {
                    Ok(response) => Answer {
                        outcome: outcome::check(&response, &self.checks),
                        version: Some(response.model_version),
                    },
                    Err(e) => Outcome::BadAnswer(format!("not a ModelInferResponse: {e}")).into(),
                },
                (Err(e), _) => Outcome::BadAnswer(e).into(),
                _ => Outcome::BadAnswer("an OK status without exactly one answer".into()).into(),
            },
            Ok((status, _)) => Outcome::Status(status).into(),
            Err(error) => Outcome::Transport(error).into(),
        }
    }
}

/// Why a call got no answer.
enum Failed {
    /// The server never took it: its connection refused it or was going away.
    Unsent(String),
    Broken(String),
}

/// The call's gRPC status and the messages its answer held.
async fn exchange(
    connection: &mut SendRequest<Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> Result<(u32, Messages), Failed> {
    let response = connection.send_request(request).await.map_err(|e| {
        if never_taken(&e) {
            Failed::Unsent(e.to_string())
        } else {
            Failed::Broken(e.to_string())
        }
    })?;
    exchanged(response).await.map_err(Failed::Broken)
}

async fn exchanged(
    response: http::Response<hyper::body::Incoming>,
) -> Result<(u32, Messages), String> {
    if response.status() != http::StatusCode::OK {
        return Err(format!("HTTP status {}", response.status()));
    }
    let mut messages = Messages::default();
    if let Some(status) = grpc::status(response.headers()) {
        return Ok((status, messages));
    }
    let mut body = response.into_body();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        match frame.map_err(|e| e.to_string())?.into_data() {
            Ok(data) => messages.push(&data),
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    let status = trailers
        .as_ref()
        .and_then(grpc::status)
        .ok_or("no grpc-status")?;
    Ok((status, messages))
}
