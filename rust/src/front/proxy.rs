//! Every call the front does not answer itself goes to the backend, the process's grpcio
//! server on a Unix socket: headers, messages and trailers are passed through as they are,
//! in both directions at once, so unary and streaming calls (health `Watch`, reflection)
//! behave exactly as the backend makes them. Each side's window is given back only once
//! what came from it has been sent on, so a call passed on holds at most one window of its
//! bytes here, whatever the other side's pace.

#![deny(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::future::poll_fn;
use std::path::PathBuf;

use bytes::Bytes;
use h2::client::SendRequest;
use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use http::{request, Request, Response};
use tokio::net::UnixStream;
use tokio::sync::Mutex;

use super::wire;

/// The backend's address and one shared HTTP/2 connection to it, made on first use and
/// again whenever it broke.
pub struct Backend {
    socket: PathBuf,
    connection: Mutex<Option<SendRequest<Bytes>>>,
}

/// A request body still streaming from the client, or already read whole.
pub enum Body {
    Streaming(RecvStream),
    Buffered(Bytes),
}

impl Backend {
    pub fn new(socket: PathBuf) -> Self {
        Backend {
            socket,
            connection: Mutex::new(None),
        }
    }

    async fn connect(&self) -> Result<SendRequest<Bytes>, String> {
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|e| format!("connecting to {}: {e}", self.socket.display()))?;
        let (sender, connection) = h2::client::handshake(stream)
            .await
            .map_err(|e| format!("HTTP/2 handshake with the backend: {e}"))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(sender)
    }

    /// A sender ready for one more stream.
    async fn ready(&self) -> Result<SendRequest<Bytes>, String> {
        let mut connection = self.connection.lock().await;
        if let Some(sender) = connection.clone() {
            if let Ok(ready) = sender.ready().await {
                return Ok(ready);
            }
        }
        let sender = self.connect().await?;
        *connection = Some(sender.clone());
        sender
            .ready()
            .await
            .map_err(|e| format!("the backend refused a stream: {e}"))
    }
}

/// Passes one call to the backend and its answer back.
pub async fn forward(
    parts: request::Parts,
    body: Body,
    mut respond: SendResponse<Bytes>,
    backend: &Backend,
) {
    let mut sender = match backend.ready().await {
        Ok(sender) => sender,
        Err(problem) => {
            wire::send_status(&mut respond, wire::UNAVAILABLE, &problem);
            return;
        }
    };
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut outgoing = Request::builder()
        .method(parts.method.clone())
        .uri(format!("http://arrowsmith{path}"));
    for (name, value) in &parts.headers {
        outgoing = outgoing.header(name, value);
    }
    let Ok(outgoing) = outgoing.body(()) else {
        wire::send_status(&mut respond, wire::INTERNAL, "the call cannot be forwarded");
        return;
    };
    let (response, upload) = match sender.send_request(outgoing, false) {
        Ok(sent) => sent,
        Err(e) => {
            let problem = format!("the backend refused the call: {e}");
            wire::send_status(&mut respond, wire::UNAVAILABLE, &problem);
            return;
        }
    };
    tokio::spawn(upload_body(body, upload));
    match response.await {
        Ok(response) => download(response, respond).await,
        Err(e) => {
            let problem = format!("the backend failed the call: {e}");
            wire::send_status(&mut respond, wire::UNAVAILABLE, &problem);
        }
    }
}

/// Client -> backend: the request's messages, then its end (or trailers).
async fn upload_body(body: Body, mut upload: SendStream<Bytes>) {
    match body {
        Body::Buffered(bytes) => {
            let _ = upload.send_data(bytes, true);
        }
        Body::Streaming(body) => relay(body, upload, h2::Reason::CANCEL).await,
    }
}

/// Backend -> client: the response's headers, messages and trailers.
async fn download(response: Response<RecvStream>, mut respond: SendResponse<Bytes>) {
    let (parts, body) = response.into_parts();
    let ends_here = body.is_end_stream();
    if let Ok(stream) = respond.send_response(Response::from_parts(parts, ()), ends_here) {
        if !ends_here {
            relay(body, stream, h2::Reason::INTERNAL_ERROR).await;
        }
    }
}

/// Moves one side's messages, then its end or trailers, to the other side. Stops when the
/// receiving side resets (dropping `from` then cancels the sending side too); when `from`
/// fails, resets the receiving side with `failed`.
async fn relay(mut from: RecvStream, mut to: SendStream<Bytes>, failed: h2::Reason) {
    loop {
        let chunk = tokio::select! {
            chunk = from.data() => chunk,
            _ = poll_fn(|cx| to.poll_reset(cx)) => return,
        };
        match chunk {
            None => break,
            Some(Ok(chunk)) => {
                let len = chunk.len();
                if !send_within_window(&mut to, chunk).await {
                    return;
                }
                // Only now may the sender send more.
                let _ = from.flow_control().release_capacity(len);
            }
            Some(Err(_)) => return to.send_reset(failed),
        }
    }
    match from.trailers().await {
        Ok(Some(trailers)) => {
            let _ = to.send_trailers(trailers);
        }
        Ok(None) => {
            let _ = to.send_data(Bytes::new(), true);
        }
        Err(_) => to.send_reset(failed),
    }
}

/// Sends `chunk` in pieces the receiver's window has room for, so that h2 never queues more
/// than that; false when the stream ended first.
async fn send_within_window(to: &mut SendStream<Bytes>, mut chunk: Bytes) -> bool {
    while !chunk.is_empty() {
        to.reserve_capacity(chunk.len());
        let Some(Ok(room)) = poll_fn(|cx| to.poll_capacity(cx)).await else {
            return false;
        };
        if room == 0 {
            continue;
        }
        let piece = chunk.split_to(room.min(chunk.len()));
        if to.send_data(piece, false).is_err() {
            return false;
        }
    }
    true
}
