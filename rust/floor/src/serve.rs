//! The server: h2's HTTP/2 on each accepted connection, a task per call. A ModelInfer call's
//! request body is read to its end and dropped, then the canned answer goes out with an OK
//! status in the trailers; a ModelStreamInfer call answers each whole message of its
//! request body, as it comes, with the canned stream answer. Any other method is answered
//! UNIMPLEMENTED.

use std::sync::Arc;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::RecvStream;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use tokio::net::{TcpListener, TcpStream};

use crate::grpc::{self, MessageCounter};

pub const UNARY_PATH: &str = "/inference.GRPCInferenceService/ModelInfer";
pub const STREAM_PATH: &str = "/inference.GRPCInferenceService/ModelStreamInfer";
const UNIMPLEMENTED: &str = "12";

/// Flow control windows large enough never to hold a benchmark's calls back.
const STREAM_WINDOW: u32 = 1 << 24;
const CONNECTION_WINDOW: u32 = 1 << 26;
const MAX_FRAME: u32 = 1 << 20;

/// The canned answers, framed.
pub struct Answers {
    unary: Bytes,
    stream: Option<Bytes>,
}

impl Answers {
    pub fn new(unary: &[u8], stream: Option<&[u8]>) -> Self {
        Answers {
            unary: grpc::frame(unary),
            stream: stream.map(grpc::frame),
        }
    }
}

/// Serves every connection `listener` accepts, each as a task of its own, until accepting
/// fails.
pub async fn serve(listener: TcpListener, answers: Answers) -> std::io::Result<()> {
    let answers = Arc::new(answers);
    loop {
        let (socket, _) = listener.accept().await?;
        socket.set_nodelay(true)?;
        tokio::spawn(connection(socket, Arc::clone(&answers)));
    }
}

/// One connection's calls, until it closes; a connection that fails is dropped.
async fn connection(socket: TcpStream, answers: Arc<Answers>) {
    let handshake = h2::server::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_concurrent_streams(1024)
        .handshake(socket);
    let Ok(mut connection) = handshake.await else {
        return;
    };
    while let Some(Ok((request, respond))) = connection.accept().await {
        tokio::spawn(call(request, respond, Arc::clone(&answers)));
    }
}

/// One call; a call the client resets or the connection drops just ends.
async fn call(request: Request<RecvStream>, respond: SendResponse<Bytes>, answers: Arc<Answers>) {
    let (head, body) = request.into_parts();
    let _ = match (head.uri.path(), &answers.stream) {
        (UNARY_PATH, _) => answer_unary(body, respond, answers.unary.clone()).await,
        (STREAM_PATH, Some(answer)) => answer_stream(body, respond, answer.clone()).await,
        _ => answer_unimplemented(respond),
    };
}

async fn answer_unary(
    mut body: RecvStream,
    mut respond: SendResponse<Bytes>,
    answer: Bytes,
) -> Result<(), h2::Error> {
    while let Some(data) = body.data().await {
        release(&mut body, &data?);
    }
    let mut send = respond.send_response(head(None), false)?;
    send.send_data(answer, false)?;
    send.send_trailers(ok())
}

async fn answer_stream(
    mut body: RecvStream,
    mut respond: SendResponse<Bytes>,
    answer: Bytes,
) -> Result<(), h2::Error> {
    let mut send = respond.send_response(head(None), false)?;
    let mut messages = MessageCounter::default();
    while let Some(data) = body.data().await {
        let data = data?;
        release(&mut body, &data);
        for _ in 0..messages.push(&data) {
            send.send_data(answer.clone(), false)?;
        }
    }
    send.send_trailers(ok())
}

/// A trailers-only answer: UNIMPLEMENTED in the head, which ends the call.
fn answer_unimplemented(mut respond: SendResponse<Bytes>) -> Result<(), h2::Error> {
    respond.send_response(head(Some(UNIMPLEMENTED)), true)?;
    Ok(())
}

/// Gives the flow control window back for `data`, read and dropped.
fn release(body: &mut RecvStream, data: &Bytes) {
    let _ = body.flow_control().release_capacity(data.len());
}

/// An answer's head: 200, gRPC's content type, and for a trailers-only answer its status.
fn head(status: Option<&'static str>) -> Response<()> {
    let mut response = Response::new(());
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    if let Some(status) = status {
        headers.insert("grpc-status", HeaderValue::from_static(status));
    }
    response
}

/// An OK call's trailers.
fn ok() -> HeaderMap {
    let mut trailers = HeaderMap::with_capacity(1);
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    trailers
}
