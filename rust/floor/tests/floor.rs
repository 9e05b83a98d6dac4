//! The floor as a process: started on a free loopback port, then called over HTTP/2 as a
//! gRPC client calls it.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use bytes::{BufMut, Bytes, BytesMut};
use h2::client::SendRequest;
use http::{HeaderMap, Request, Response};
use tokio::net::TcpStream;

const UNARY: &str = "/inference.GRPCInferenceService/ModelInfer";
const STREAM: &str = "/inference.GRPCInferenceService/ModelStreamInfer";
const ANSWER: &[u8] = b"a canned ModelInferResponse";
const STREAM_ANSWER: &[u8] = b"a canned ModelStreamInferResponse";

fn frame(message: &[u8]) -> Bytes {
    let mut framed = BytesMut::new();
    framed.put_u8(0);
    framed.put_u32(message.len() as u32);
    framed.put_slice(message);
    framed.freeze()
}

/// The floor's process, killed when dropped.
struct Floor {
    child: Child,
    port: u16,
}

impl Floor {
    /// Started with `--port 0` on canned answers written to files; `stream` also gives it a
    /// stream answer.
    fn start(name: &str, stream: bool) -> Floor {
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let (unary, streamed) = (dir.join("answer.pb"), dir.join("stream-answer.pb"));
        std::fs::write(&unary, ANSWER).unwrap();
        std::fs::write(&streamed, STREAM_ANSWER).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_arrowsmith-floor"));
        command.args(["--port", "0", "--response"]).arg(&unary);
        if stream {
            command.arg("--stream-response").arg(&streamed);
        }
        let mut child = command.stdout(Stdio::piped()).spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .strip_prefix("listening on ")
            .and_then(|p| p.trim_end().parse().ok())
            .unwrap_or_else(|| panic!("not a start line: {line:?}"));
        Floor { child, port }
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap()
}

async fn connect(port: u16) -> SendRequest<Bytes> {
    let socket = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (sender, connection) = h2::client::handshake(socket).await.unwrap();
    tokio::spawn(async move { connection.await.unwrap() });
    sender.ready().await.unwrap()
}

fn grpc_request(path: &str) -> Request<()> {
    Request::post(format!("http://127.0.0.1{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap()
}

/// An answer's body, whole, and its trailers.
async fn read(response: Response<h2::RecvStream>) -> (Vec<u8>, HeaderMap) {
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/grpc");
    let mut body = response.into_body();
    let mut data = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    (data, body.trailers().await.unwrap().unwrap())
}

#[test]
fn model_infer_is_answered_with_the_canned_bytes_and_an_ok_status() {
    let floor = Floor::start("unary", false);
    runtime().block_on(async {
        let mut sender = connect(floor.port).await;
        for _ in 0..3 {
            let (response, mut body) = sender.send_request(grpc_request(UNARY), false).unwrap();
            body.send_data(frame(b"any request, not parsed"), true)
                .unwrap();
            let (data, trailers) = read(response.await.unwrap()).await;
            assert_eq!(data, frame(ANSWER));
            assert_eq!(trailers["grpc-status"], "0");
        }
    });
}

#[test]
fn each_streamed_message_is_answered_in_turn() {
    let floor = Floor::start("stream", true);
    runtime().block_on(async {
        let mut sender = connect(floor.port).await;
        let (response, mut body) = sender.send_request(grpc_request(STREAM), false).unwrap();
        // Two messages in one chunk, then a third split across two.
        let third = frame(b"three");
        body.send_data([frame(b"one"), frame(b"")].concat().into(), false)
            .unwrap();
        body.send_data(third.slice(..3), false).unwrap();
        let mut response = response.await.unwrap();
        let two = [frame(STREAM_ANSWER), frame(STREAM_ANSWER)].concat();
        let mut answered = Vec::new();
        while answered.len() < two.len() {
            let chunk = response.body_mut().data().await.unwrap().unwrap();
            answered.extend_from_slice(&chunk);
        }
        assert_eq!(
            answered, two,
            "two answers before the third message is whole"
        );
        body.send_data(third.slice(3..), true).unwrap();
        let (rest, trailers) = read(response).await;
        assert_eq!(rest, frame(STREAM_ANSWER));
        assert_eq!(trailers["grpc-status"], "0");
    });
}

#[test]
fn other_methods_are_unimplemented() {
    let floor = Floor::start("unimplemented", false);
    runtime().block_on(async {
        let mut sender = connect(floor.port).await;
        for path in [STREAM, "/inference.GRPCInferenceService/ServerLive"] {
            let (response, _body) = sender.send_request(grpc_request(path), false).unwrap();
            let response = response.await.unwrap();
            assert_eq!(response.headers()["grpc-status"], "12", "{path}");
            assert!(response.body().is_end_stream());
        }
    });
}
