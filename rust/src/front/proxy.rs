//! Every call the front does not answer itself goes to the backend, the process's grpcio
//! server on a Unix socket: headers, messages and trailers are passed through as they are,
//! in both directions at once, so unary and streaming calls (health `Watch`, reflection)
//! behave exactly as the backend makes them.

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
    let mut body = match body {
        Body::Buffered(bytes) => {
            let _ = upload.send_data(bytes, true);
            return;
        }
        Body::Streaming(body) => body,
    };
    while let Some(chunk) = body.data().await {
        let Ok(chunk) = chunk else {
            upload.send_reset(h2::Reason::CANCEL);
            return;
        };
        let _ = body.flow_control().release_capacity(chunk.len());
        if upload.send_data(chunk, false).is_err() {
            return;
        }
    }
    let _ = match body.trailers().await {
        Ok(Some(trailers)) => upload.send_trailers(trailers),
        _ => upload.send_data(Bytes::new(), true),
    };
}

/// Backend -> client: the response's headers, messages and trailers.
async fn download(response: Response<RecvStream>, mut respond: SendResponse<Bytes>) {
    let (parts, mut body) = response.into_parts();
    let ends_here = body.is_end_stream();
    let Ok(mut stream) = respond.send_response(Response::from_parts(parts, ()), ends_here) else {
        return;
    };
    if ends_here {
        return;
    }
    loop {
        let chunk = tokio::select! {
            chunk = body.data() => chunk,
            // The client left: dropping `body` cancels the backend's side too.
            _ = poll_fn(|cx| stream.poll_reset(cx)) => return,
        };
        let Some(Ok(chunk)) = chunk else {
            if chunk.is_some() {
                stream.send_reset(h2::Reason::INTERNAL_ERROR);
                return;
            }
            break;
        };
        let _ = body.flow_control().release_capacity(chunk.len());
        if stream.send_data(chunk, false).is_err() {
            return;
        }
    }
    let _ = match body.trailers().await {
        Ok(Some(trailers)) => stream.send_trailers(trailers),
        Ok(None) => stream.send_data(Bytes::new(), true),
        Err(_) => {
            stream.send_reset(h2::Reason::INTERNAL_ERROR);
            Ok(())
        }
    };
}
