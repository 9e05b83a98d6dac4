//! Calls for models served by another process of the same server (a model whose own Python
//! environment runs in a process of its own, on a Unix socket): the front reads the model's
//! name from the message and hands the message on as it came, over one HTTP/2 connection
//! per process (hyper's client), and the answer back as it came. Only the name is read
//! (`Target`: the first two fields, the same in every message that names a model); the
//! rest of the message is neither decoded nor copied.
//!
//! The process on the other end applies the signature, batches and answers; its statuses
//! come back unchanged. A process that cannot be reached is UNAVAILABLE; the call's deadline
//! goes along (`grpc-timeout`), and one already past is DEADLINE_EXCEEDED here.

#![deny(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderValue, Request};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prost::Message;
use tonic::{Code, Status};

use super::observe::TraceHeaders;
use super::unsent::never_taken;

/// The field that names a model, as ModelInferRequest, ModelMetadataRequest,
/// ModelReadyRequest and ModelConfigRequest all number it (the others are skipped).
#[derive(Clone, PartialEq, Message)]
struct Target {
    #[prost(string, tag = "1")]
    name: String,
}

/// The model a message names; None when it does not parse (the local path then refuses it
/// as it would any other).
pub(super) fn target_of(message: &[u8]) -> Option<String> {
    Target::decode(message).ok().map(|target| target.name)
}

/// The gRPC frame header: uncompressed, then the length.
const FRAME_HEADER: usize = 5;
/// How long the other process has to take a new connection (it is local: a process that
/// takes longer is stuck).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// PINGs on a connection to the other process, and how long one may wait for its answer: a
/// process that stops answering fails its calls in flight (UNAVAILABLE) within ~2 s
/// instead of holding them for ever.
const KEEPALIVE: Duration = Duration::from_secs(1);

/// One process models are routed to.
pub(super) struct Remote {
    socket: PathBuf,
    /// The open connection, if any; replaced when it closes.
    connection: tokio::sync::Mutex<Option<SendRequest<Full<Bytes>>>>,
}

impl Remote {
    fn new(socket: PathBuf) -> Remote {
        Remote {
            socket,
            connection: tokio::sync::Mutex::new(None),
        }
    }

    fn unreachable(&self, why: impl std::fmt::Display) -> Status {
        Status::unavailable(format!(
            "the process serving this model at {} cannot be reached: {why}",
            self.socket.display()
        ))
    }

    /// A sender on the connection, opened (again) when there is none.
    async fn sender(&self) -> Result<SendRequest<Full<Bytes>>, Status> {
        let mut connection = self.connection.lock().await;
        if let Some(sender) = connection.as_ref().filter(|sender| !sender.is_closed()) {
            return Ok(sender.clone());
        }
        let opening = async {
            let stream = tokio::net::UnixStream::connect(&self.socket)
                .await
                .map_err(|error| self.unreachable(error))?;
            hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .keep_alive_interval(KEEPALIVE)
                .keep_alive_timeout(KEEPALIVE)
                .keep_alive_while_idle(true)
                .handshake(TokioIo::new(stream))
                .await
                .map_err(|error| self.unreachable(error))
        };
        let (sender, driver) = tokio::time::timeout(CONNECT_TIMEOUT, opening)
            .await
            .map_err(|_| self.unreachable("it did not take the connection in time"))??;
        tokio::spawn(driver);
        *connection = Some(sender.clone());
        Ok(sender)
    }

    /// Calls `path` with `message`, within `deadline`; the answer's message bytes, or the
    /// status the other process answered with. A call its connection refused unsent (the
    /// process is draining, or was replaced and its connection closed) is sent once more on
    /// a new connection: a replaced process's socket then leads to its successor.
    pub(super) async fn unary(
        self: Arc<Self>,
        path: &'static str,
        message: Bytes,
        deadline: Option<Instant>,
        trace: TraceHeaders,
    ) -> Result<Bytes, Status> {
        let timeout = match deadline {
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(Status::deadline_exceeded("the deadline passed"));
                }
                Some(format!("{}u", left.as_micros().clamp(1, 99_999_999)))
            }
            None => None,
        };
        let length = u32::try_from(message.len())
            .map_err(|_| Status::resource_exhausted("message too large to forward"))?;
        let mut framed = BytesMut::with_capacity(message.len().saturating_add(FRAME_HEADER));
        framed.put_u8(0);
        framed.put_u32(length);
        framed.extend_from_slice(&message);
        let framed = framed.freeze();
        let request = || {
            let mut request = Request::post(format!("http://arrowsmith{path}"))
                .header("content-type", "application/grpc")
                .header("te", "trailers");
            if let Some(timeout) = &timeout {
                request = request.header("grpc-timeout", timeout.as_str());
            }
            for (name, value) in [
                ("traceparent", &trace.traceparent),
                ("tracestate", &trace.tracestate),
            ] {
                if let Some(value) = value {
                    request = request.header(name, value.clone());
                }
            }
            request
                .body(Full::new(framed.clone()))
                .map_err(|error| Status::internal(format!("forwarding: {error}")))
        };
        let mut sender = self.sender().await?;
        let response = match sender.send_request(request()?).await {
            Ok(response) => response,
            Err(error) if never_taken(&error) => {
                let mut sender = self.sender().await?;
                sender
                    .send_request(request()?)
                    .await
                    .map_err(|error| self.unreachable(error))?
            }
            Err(error) => return Err(self.unreachable(error)),
        };
        let (parts, body) = response.into_parts();
        if let Some(status) = failure(parts.headers.get("grpc-status"), &parts.headers) {
            return Err(status);
        }
        let collected = body
            .collect()
            .await
            .map_err(|error| self.unreachable(error))?;
        if let Some(trailers) = collected.trailers() {
            if let Some(status) = failure(trailers.get("grpc-status"), trailers) {
                return Err(status);
            }
        }
        unframe(collected.to_bytes())
    }
}

/// The status a non-OK `grpc-status` stands for (None for OK or none).
fn failure(code: Option<&HeaderValue>, headers: &http::HeaderMap) -> Option<Status> {
    code?;
    Status::from_header_map(headers).filter(|status| status.code() != Code::Ok)
}

/// The message of one uncompressed gRPC frame.
fn unframe(mut body: Bytes) -> Result<Bytes, Status> {
    let malformed = || Status::internal("the model's process answered with a malformed message");
    if body.len() < FRAME_HEADER || body.first() != Some(&0) {
        return Err(malformed());
    }
    body.advance(1);
    let length = body.get_u32() as usize;
    if body.len() != length {
        return Err(malformed());
    }
    Ok(body)
}

/// The models routed to other processes, by name.
#[derive(Default)]
pub(super) struct Routes {
    /// Whether any model is routed: the only cost every call pays.
    any: AtomicBool,
    table: RwLock<HashMap<String, Route>>,
}

struct Route {
    remote: Arc<Remote>,
    ready: Arc<AtomicBool>,
}

impl Routes {
    /// Routes `name` to the process on `socket` (not ready until said); None stops it.
    pub(super) fn set(&self, name: &str, socket: Option<PathBuf>) {
        let mut table = self.table.write().unwrap_or_else(PoisonError::into_inner);
        match socket {
            Some(socket) => {
                // Models of one process share its connection.
                let remote = table
                    .values()
                    .find(|route| route.remote.socket == socket)
                    .map_or_else(|| Arc::new(Remote::new(socket)), |r| Arc::clone(&r.remote));
                table.insert(
                    name.to_owned(),
                    Route {
                        remote,
                        ready: Arc::new(AtomicBool::new(false)),
                    },
                );
            }
            None => {
                table.remove(name);
            }
        }
        self.any.store(!table.is_empty(), Ordering::Release);
    }

    /// Sets a routed model's readiness; false when `name` is not routed.
    pub(super) fn set_ready(&self, name: &str, ready: bool) -> bool {
        let table = self.table.read().unwrap_or_else(PoisonError::into_inner);
        table
            .get(name)
            .map(|route| route.ready.store(ready, Ordering::Release))
            .is_some()
    }

    /// Whether any model is routed.
    pub(super) fn any(&self) -> bool {
        self.any.load(Ordering::Acquire)
    }

    /// Whether model `name` is routed to another process.
    pub(super) fn routes(&self, name: &str) -> bool {
        self.any.load(Ordering::Acquire)
            && self
                .table
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .contains_key(name)
    }

    /// Every routed model is ready.
    pub(super) fn all_ready(&self) -> bool {
        if !self.any.load(Ordering::Acquire) {
            return true;
        }
        let table = self.table.read().unwrap_or_else(PoisonError::into_inner);
        table
            .values()
            .all(|route| route.ready.load(Ordering::Acquire))
    }

    /// The process a message's model is routed to, if it is.
    pub(super) fn remote_for(&self, message: &[u8]) -> Option<Arc<Remote>> {
        if !self.any.load(Ordering::Acquire) {
            return None;
        }
        let name = target_of(message)?;
        let table = self.table.read().unwrap_or_else(PoisonError::into_inner);
        table.get(&name).map(|route| Arc::clone(&route.remote))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_is_read_from_every_message_naming_a_model() {
        let infer = crate::proto::ModelInferRequest {
            model_name: "wine".into(),
            model_version: "2".into(),
            id: "x".into(),
            raw_input_contents: vec![Bytes::from(vec![0; 64])],
            ..Default::default()
        };
        assert_eq!(target_of(&infer.encode_to_vec()).as_deref(), Some("wine"));
        let metadata = crate::proto::ModelMetadataRequest {
            name: "forest".into(),
            version: String::new(),
        };
        assert_eq!(
            target_of(&metadata.encode_to_vec()).as_deref(),
            Some("forest")
        );
        assert_eq!(target_of(&[0xff, 0xff]), None);
    }

    #[test]
    fn frames_are_checked_before_they_are_trusted() {
        assert!(unframe(Bytes::from_static(&[0, 0, 0, 0, 2, 8, 1])).is_ok());
        assert!(unframe(Bytes::from_static(&[0, 0, 0, 0, 3, 8, 1])).is_err());
        assert!(unframe(Bytes::from_static(&[1, 0, 0, 0, 2, 8, 1])).is_err());
        assert!(unframe(Bytes::from_static(&[0, 0])).is_err());
    }

    #[test]
    fn routes_share_a_process_and_readiness_is_per_model() {
        let routes = Routes::default();
        assert!(routes.all_ready());
        routes.set("a", Some(PathBuf::from("/s")));
        routes.set("b", Some(PathBuf::from("/s")));
        assert!(!routes.all_ready());
        assert!(routes.set_ready("a", true));
        assert!(!routes.all_ready());
        assert!(routes.set_ready("b", true));
        assert!(routes.all_ready());
        assert!(!routes.set_ready("c", true));
        let message = crate::proto::ModelReadyRequest {
            name: "b".into(),
            version: String::new(),
        }
        .encode_to_vec();
        let a = routes
            .table
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get("a")
            .map(|route| Arc::clone(&route.remote));
        let b = routes.remote_for(&message);
        assert!(a.zip(b).is_some_and(|(a, b)| Arc::ptr_eq(&a, &b)));
        routes.set("a", None);
        routes.set("b", None);
        assert!(routes.remote_for(&message).is_none());
    }
}
