//! One gRPC unary call over HTTP/2: the pre-serialized request goes out with gRPC's 5-byte
//! frame; the answer's status comes from the trailers, and its outputs are checked.

use bytes::{BufMut, Bytes, BytesMut};
use h2::client::SendRequest;
use http::{HeaderMap, Request};
use prost::Message;
use tokio::net::TcpStream;

use arrowsmith_native::proto::ModelInferResponse;

pub const PATH: &str = "/inference.GRPCInferenceService/ModelInfer";

/// What one call ended with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// A gRPC status other than OK (its number).
    Status(u32),
    /// An OK status whose answer is not a valid response of the expected shape.
    BadAnswer(String),
    /// The connection or stream failed.
    Transport(String),
    /// An HTTP answer (--http), whatever its status: 2xx is OK, any other an error.
    Http(u16),
}

/// The gRPC side of a run: HTTP/2 connections shared by the requests, and the one request.
pub struct Grpc {
    pub clients: Vec<SendRequest<Bytes>>,
    pub authority: String,
    /// The request, framed.
    pub body: Bytes,
    pub expect_rows: Option<i64>,
}

impl Grpc {
    /// One call on connection `slot` (modulo their number).
    pub async fn call(&self, slot: usize) -> Outcome {
        let client = &self.clients[slot % self.clients.len()];
        call(client, &self.authority, &self.body, self.expect_rows).await
    }
}

/// A request body framed for gRPC once, shared by every call.
pub fn frame(message: &[u8]) -> Bytes {
    let mut framed = BytesMut::with_capacity(message.len() + 5);
    framed.put_u8(0);
    framed.put_u32(message.len() as u32);
    framed.put_slice(message);
    framed.freeze()
}

pub async fn connect(target: &str) -> Result<SendRequest<Bytes>, String> {
    let tcp = TcpStream::connect(target)
        .await
        .map_err(|e| format!("connect {target}: {e}"))?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let (client, connection) = h2::client::Builder::new()
        .initial_window_size(1 << 24)
        .initial_connection_window_size(1 << 26)
        .max_frame_size(1 << 20)
        .handshake(tcp)
        .await
        .map_err(|e| format!("HTTP/2 handshake with {target}: {e}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

pub async fn call(
    client: &SendRequest<Bytes>,
    authority: &str,
    body: &Bytes,
    expect_rows: Option<i64>,
) -> Outcome {
    match exchange(client, authority, body).await {
        Ok((0, answer)) => check(&answer, expect_rows),
        Ok((status, _)) => Outcome::Status(status),
        Err(error) => Outcome::Transport(error),
    }
}

async fn exchange(
    client: &SendRequest<Bytes>,
    authority: &str,
    body: &Bytes,
) -> Result<(u32, BytesMut), String> {
    let request = Request::post(format!("http://{authority}{PATH}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .map_err(|e| e.to_string())?;
    let mut client = client.clone().ready().await.map_err(|e| e.to_string())?;
    let (response, mut stream) = client
        .send_request(request, false)
        .map_err(|e| e.to_string())?;
    stream
        .send_data(body.clone(), true)
        .map_err(|e| e.to_string())?;
    let response = response.await.map_err(|e| e.to_string())?;
    let trailers_only = grpc_status(response.headers());
    let mut body = response.into_body();
    let mut answer = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        let _ = body.flow_control().release_capacity(chunk.len());
        answer.extend_from_slice(&chunk);
    }
    let trailers = body.trailers().await.map_err(|e| e.to_string())?;
    let status = trailers
        .as_ref()
        .and_then(grpc_status)
        .or(trailers_only)
        .ok_or("no grpc-status")?;
    Ok((status, answer))
}

/// The answer must be one framed ModelInferResponse whose raw outputs fill their shapes.
fn check(answer: &[u8], expect_rows: Option<i64>) -> Outcome {
    let Some(message) = answer.get(5..) else {
        return Outcome::BadAnswer("answer shorter than a gRPC frame".into());
    };
    let response = match ModelInferResponse::decode(message) {
        Ok(r) => r,
        Err(e) => return Outcome::BadAnswer(format!("not a ModelInferResponse: {e}")),
    };
    if response.outputs.is_empty() {
        return Outcome::BadAnswer("no outputs".into());
    }
    for (i, output) in response.outputs.iter().enumerate() {
        if let Some(rows) = expect_rows {
            if output.shape.first() != Some(&rows) {
                return Outcome::BadAnswer(format!(
                    "output {} has shape {:?}, expected {rows} rows",
                    output.name, output.shape
                ));
            }
        }
        let elements: i64 = output.shape.iter().product();
        let size = arrowsmith_native::DataType::parse(&output.datatype)
            .and_then(arrowsmith_native::DataType::element_size);
        if let (Some(size), Some(raw)) = (size, response.raw_output_contents.get(i)) {
            if usize::try_from(elements)
                .ok()
                .and_then(|n| n.checked_mul(size))
                != Some(raw.len())
            {
                return Outcome::BadAnswer(format!(
                    "output {} holds {} bytes for shape {:?}",
                    output.name,
                    raw.len(),
                    output.shape
                ));
            }
        }
    }
    Outcome::Ok
}
