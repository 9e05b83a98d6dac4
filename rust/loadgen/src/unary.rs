//! Unary ModelInfer calls over HTTP/2: the pre-framed request goes out as the whole body;
//! the answer's status comes from the trailers (or a trailers-only answer's headers), and
//! its one message is checked.

use std::rc::Rc;

use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use prost::Message;

use arrowsmith_native::proto::ModelInferResponse;

use crate::grpc::{self, Messages};
use crate::outcome::{self, Answer, Checks, Outcome};

pub const PATH: &str = "/inference.GRPCInferenceService/ModelInfer";

/// The unary side of a run: HTTP/2 connections shared by the calls, and the one request.
pub struct Unary {
    connections: Vec<SendRequest<Full<Bytes>>>,
    uri: Uri,
    /// The request, framed.
    body: Bytes,
    checks: Rc<Checks>,
}

impl Unary {
    pub fn new(
        connections: Vec<SendRequest<Full<Bytes>>>,
        uri: Uri,
        body: Bytes,
        checks: Rc<Checks>,
    ) -> Self {
        Unary {
            connections,
            uri,
            body,
            checks,
        }
    }

    /// One call on connection `slot` (modulo their number).
    pub async fn call(&self, slot: usize) -> Answer {
        let mut connection = self.connections[slot % self.connections.len()].clone();
        let request = grpc::request(&self.uri, Full::new(self.body.clone()));
        match exchange(&mut connection, request).await {
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

/// The call's gRPC status and the messages its answer held.
async fn exchange(
    connection: &mut SendRequest<Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> Result<(u32, Messages), String> {
    let response = connection
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
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
