//! The native gRPC front end to end, in one process: a real TCP listener on 127.0.0.1, an
//! HTTP/2 gRPC client, a runner thread standing in for the model (it echoes its first input,
//! or fails a batch holding the poison value), and a fake backend on a Unix socket standing
//! in for the grpcio server that gets every call the front does not answer itself.
//!
//! Each test starts its own front. The client side of a test runs on a runtime of its own
//! (`block_on`) that is dropped before the front stops, so the client's connections are gone
//! by then and `stop` has nothing to wait for.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrowsmith_native::batch::{BatchConfig, Batcher};
use arrowsmith_native::encode::OutputTensor;
use arrowsmith_native::front::stats::Collected;
use arrowsmith_native::front::{self, Front, Limits, ServedModel};
use arrowsmith_native::proto::model_infer_request::InferInputTensor;
use arrowsmith_native::proto::{ModelInferRequest, ModelInferResponse};
use arrowsmith_native::{Error, Parameters};
use bytes::{BufMut, Bytes, BytesMut};
use h2::server::SendResponse;
use h2::RecvStream;
use http::{HeaderMap, HeaderValue, Request, Response};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

const MODEL: &str = "echo";
const VERSION: &str = "1";
const INFER: &str = "/inference.GRPCInferenceService/ModelInfer";
const SERVER_LIVE: &str = "/inference.GRPCInferenceService/ServerLive";
const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";
/// The fake backend's health answer: `HealthCheckResponse { status: SERVING }`.
const SERVING: &[u8] = &[0x08, 0x01];
/// An INT64 value the stand-in model refuses, failing its whole batch.
const POISON: i64 = -666;
/// How long one call may take before a test gives up on it: generous, for busy machines.
const CALL_LIMIT: Duration = Duration::from_secs(30);
/// The default `max_message_size`, large enough for every test but the oversized one.
const LARGE: usize = 64 << 20;

// ---------------------------------------------------------------------------------------
// The stand-in model

/// How the stand-in model behaves.
#[derive(Clone, Default)]
struct Model {
    /// How long each batch takes.
    delay: Duration,
    /// Told each batch's number of requests when the runner takes it.
    batches: Option<mpsc::UnboundedSender<usize>>,
}

/// The model's runner thread: takes batches until the batcher closes, and answers each with
/// output "out" = the first input as it came (same values, same shape), unless an INT64
/// input holds `POISON`, which fails the batch with the model's own message.
fn run_model(batcher: Arc<Batcher>, model: Model) -> JoinHandle<()> {
    std::thread::spawn(move || {
        while let Some(batch) = batcher.next_batch() {
            if let Some(batches) = &model.batches {
                let _ = batches.send(batch.len());
            }
            std::thread::sleep(model.delay);
            let inputs = match batch.inputs() {
                Ok(inputs) => inputs,
                Err(error) => {
                    batch.fail(&error);
                    continue;
                }
            };
            let Some(first) = inputs.first() else {
                batch.fail(&Error::Model("the model needs an input".into()));
                continue;
            };
            let poisoned = first
                .values
                .as_primitive_opt::<Int64Type>()
                .is_some_and(|values| values.values().contains(&POISON));
            if poisoned {
                batch.fail(&Error::Model(format!("the model refuses {POISON}")));
                continue;
            }
            let out = OutputTensor {
                name: "out".into(),
                shape: first.shape.iter().map(|&d| d as i64).collect(),
                values: Arc::clone(&first.values),
            };
            batch.complete(vec![out], &Parameters::new());
        }
    })
}

// ---------------------------------------------------------------------------------------
// The fake backend

/// A stand-in for the grpcio backend: an HTTP/2 server on a Unix socket that answers
/// Health/Check with one message (SERVING) and OK, and every other call trailers-only with
/// NOT_FOUND and the message `backend got <path> with <n> bytes`, so a test can tell a
/// forwarded call, and the body that reached the backend, from one the front answered.
struct Backend {
    socket: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// A socket path no other test (or test process) uses.
fn unique_socket_path() -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("arrowsmith-front-{}-{n}.sock", std::process::id()))
}

impl Backend {
    fn start() -> Backend {
        let socket = unique_socket_path();
        let _ = std::fs::remove_file(&socket);
        let listener = std::os::unix::net::UnixListener::bind(&socket)
            .unwrap_or_else(|e| panic!("binding {}: {e}", socket.display()));
        listener
            .set_nonblocking(true)
            .expect("a non-blocking socket");
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async move {
                let listener = tokio::net::UnixListener::from_std(listener).expect("a listener");
                let accepting = async {
                    loop {
                        if let Ok((stream, _)) = listener.accept().await {
                            tokio::spawn(backend_connection(stream));
                        }
                    }
                };
                tokio::select! {
                    _ = stopped => {}
                    () = accepting => {}
                }
            });
        });
        Backend {
            socket,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

async fn backend_connection(stream: UnixStream) {
    let Ok(mut connection) = h2::server::handshake(stream).await else {
        return;
    };
    while let Some(Ok((request, respond))) = connection.accept().await {
        tokio::spawn(backend_answer(request, respond));
    }
}

fn grpc_response() -> Response<()> {
    let mut response = Response::new(());
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static("application/grpc"));
    response
}

async fn backend_answer(request: Request<RecvStream>, mut respond: SendResponse<Bytes>) {
    let path = request.uri().path().to_owned();
    let mut body = request.into_body();
    let mut received = 0;
    while let Some(Ok(chunk)) = body.data().await {
        received += chunk.len();
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    if path == HEALTH_CHECK {
        let Ok(mut stream) = respond.send_response(grpc_response(), false) else {
            return;
        };
        let _ = stream.send_data(frame(SERVING), false);
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        let _ = stream.send_trailers(trailers);
    } else {
        let mut response = grpc_response();
        let message = format!("backend got {path} with {received} bytes");
        let headers = response.headers_mut();
        headers.insert("grpc-status", HeaderValue::from_static("5"));
        headers.insert("grpc-message", HeaderValue::from_str(&message).unwrap());
        let _ = respond.send_response(response, true);
    }
}

// ---------------------------------------------------------------------------------------
// A front serving the stand-in model

/// A front on 127.0.0.1 (any free port) serving model `echo` version 1, with no signature,
/// forwarding to its own fake backend. Dropping it stops the front, then the runner, then
/// the backend.
struct Server {
    front: Arc<Front>,
    address: SocketAddr,
    batcher: Arc<Batcher>,
    runner: Option<JoinHandle<()>>,
    /// Dropped after `drop` has stopped the front, which no longer needs it then.
    _backend: Backend,
}

impl Server {
    fn start(model: Model) -> Server {
        Server::with_limits(
            model,
            Limits {
                max_message_size: LARGE,
                ..Limits::default()
            },
        )
    }

    fn with_limit(model: Model, max_message_size: usize) -> Server {
        Server::with_limits(
            model,
            Limits {
                max_message_size,
                max_inflight_bytes: max_message_size.max(LARGE),
                ..Limits::default()
            },
        )
    }

    fn with_limits(model: Model, limits: Limits) -> Server {
        let backend = Backend::start();
        let listener = front::listen("127.0.0.1", 0, false).expect("a listening socket");
        let address = listener.local_addr().expect("a bound address");
        let front =
            Front::start(listener, backend.socket.clone(), limits).expect("the front starts");
        let config = BatchConfig {
            max_batch_rows: 64,
            max_delay: Duration::from_millis(2),
            max_queue: 1024,
        };
        let batcher = Arc::new(Batcher::new(config, MODEL.into(), VERSION.into()));
        front.serve(ServedModel {
            name: MODEL.into(),
            version: VERSION.into(),
            batcher: Arc::clone(&batcher),
            signature: None,
        });
        let runner = run_model(Arc::clone(&batcher), model);
        Server {
            front: Arc::new(front),
            address,
            batcher,
            runner: Some(runner),
            _backend: backend,
        }
    }

    /// Everything the front's stats collected, once they count `n` answers of `status` for
    /// `model` (or after 10 s). The front counts an answer just after sending it, so a
    /// client can hold the answer before the count is there.
    fn stats_once(&self, model: &str, status: &'static str, n: u64) -> Collected {
        let mut total = Collected::default();
        let give_up = Instant::now() + Duration::from_secs(10);
        loop {
            let taken = self.front.stats().take();
            for (key, count) in taken.requests {
                *total.requests.entry(key).or_insert(0) += count;
            }
            for (name, times) in taken.decode_seconds {
                total.decode_seconds.entry(name).or_default().extend(times);
            }
            let seen = total.requests.get(&(model.to_owned(), status));
            if seen.is_some_and(|&seen| seen >= n) || Instant::now() > give_up {
                return total;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.front.stop(Duration::from_secs(5));
        self.batcher.close();
        if let Some(runner) = self.runner.take() {
            let _ = runner.join();
        }
    }
}

/// Runs a test's client side on a runtime of its own, dropped (with the client's
/// connections) before returning.
fn block_on<F: Future>(future: F) -> F::Output {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(future)
}

// ---------------------------------------------------------------------------------------
// A gRPC client

/// One HTTP/2 connection to the front; clones share it.
#[derive(Clone)]
struct Client {
    sender: h2::client::SendRequest<Bytes>,
    authority: String,
}

/// How a call ended.
#[derive(Debug)]
struct Reply {
    status: u32,
    /// `grpc-message`, percent-decoded; empty when absent.
    message: String,
    /// The response message without its gRPC prefix; empty for a trailers-only answer.
    body: Bytes,
}

async fn connect(address: SocketAddr) -> Client {
    connect_watched(address).await.0
}

/// A connection, and the task that drives it, which ends when the connection does.
async fn connect_watched(address: SocketAddr) -> (Client, tokio::task::JoinHandle<()>) {
    let tcp = TcpStream::connect(address)
        .await
        .expect("the front accepts connections");
    let (sender, connection) = h2::client::handshake(tcp)
        .await
        .expect("an HTTP/2 handshake");
    let driving = tokio::spawn(async move {
        let _ = connection.await;
    });
    let client = Client {
        sender,
        authority: address.to_string(),
    };
    (client, driving)
}

/// A message with gRPC's prefix: uncompressed, 4-byte big-endian length.
fn frame(message: &[u8]) -> Bytes {
    let mut framed = BytesMut::with_capacity(5 + message.len());
    framed.put_u8(0);
    framed.put_u32(message.len() as u32);
    framed.put_slice(message);
    framed.freeze()
}

/// The one message of a unary response body.
fn unframe(body: &Bytes) -> Bytes {
    assert!(body.len() >= 5, "a response body of {} bytes", body.len());
    assert_eq!(body[0], 0, "the response message is not compressed");
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    assert_eq!(len, body.len() - 5, "the body holds exactly one message");
    body.slice(5..)
}

fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

fn grpc_message(headers: &HeaderMap) -> String {
    let text = headers
        .get("grpc-message")
        .map_or(&b""[..], HeaderValue::as_bytes);
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        let escaped = text
            .get(i + 1..i + 3)
            .filter(|_| text[i] == b'%')
            .and_then(|hex| u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok());
        if let Some(byte) = escaped {
            out.push(byte);
            i += 3;
        } else {
            out.push(text[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Client {
    /// One unary call: `message` framed, with `grpc-timeout` when given.
    async fn call(&self, path: &str, message: &[u8], timeout: Option<&str>) -> Reply {
        self.call_framed(path, frame(message), timeout).await
    }

    /// One unary call whose body is `body` exactly (framed by the caller).
    async fn call_framed(&self, path: &str, body: Bytes, timeout: Option<&str>) -> Reply {
        tokio::time::timeout(CALL_LIMIT, self.exchange(path, body, timeout))
            .await
            .unwrap_or_else(|_| panic!("no answer to {path} within {CALL_LIMIT:?}"))
    }

    async fn infer(&self, request: &ModelInferRequest) -> Reply {
        self.call(INFER, &request.encode_to_vec(), None).await
    }

    async fn exchange(&self, path: &str, body: Bytes, timeout: Option<&str>) -> Reply {
        let mut request = Request::post(format!("http://{}{path}", self.authority))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        if let Some(timeout) = timeout {
            request = request.header("grpc-timeout", timeout);
        }
        let request = request.body(()).expect("a request");
        let mut sender = self
            .sender
            .clone()
            .ready()
            .await
            .expect("the front takes another stream");
        let (response, mut upload) = sender
            .send_request(request, false)
            .expect("the request's headers are sent");
        upload
            .send_data(body, true)
            .expect("the request's message is sent");
        read_reply(response).await
    }

    /// Starts a call and sends `head` (the start of its body) without ending the request:
    /// the rest goes through the returned stream.
    async fn start_call(
        &self,
        path: &str,
        head: Bytes,
    ) -> (h2::client::ResponseFuture, h2::SendStream<Bytes>) {
        let request = Request::post(format!("http://{}{path}", self.authority))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .expect("a request");
        let mut sender = self
            .sender
            .clone()
            .ready()
            .await
            .expect("the front takes another stream");
        let (response, mut upload) = sender
            .send_request(request, false)
            .expect("the request's headers are sent");
        upload
            .send_data(head, false)
            .expect("the body's start is sent");
        (response, upload)
    }
}

/// How a call ended, from its response.
async fn read_reply(response: h2::client::ResponseFuture) -> Reply {
    let (parts, mut body) = response.await.expect("the front answers").into_parts();
    assert_eq!(parts.status, http::StatusCode::OK, "HTTP status");
    if let Some(status) = grpc_status(&parts.headers) {
        // Trailers-only: the status is all there is.
        return Reply {
            status,
            message: grpc_message(&parts.headers),
            body: Bytes::new(),
        };
    }
    let mut received = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("the response body arrives");
        let _ = body.flow_control().release_capacity(chunk.len());
        received.extend_from_slice(&chunk);
    }
    let trailers = body
        .trailers()
        .await
        .expect("the trailers arrive")
        .expect("a response with a message ends with trailers");
    Reply {
        status: grpc_status(&trailers).expect("the trailers carry grpc-status"),
        message: grpc_message(&trailers),
        body: unframe(&received.freeze()),
    }
}

// ---------------------------------------------------------------------------------------
// Requests and answers

/// A request to `model` with one input "x" of `datatype`, `shape` and raw contents `raw`.
fn tensor_request(
    model: &str,
    id: &str,
    datatype: &str,
    shape: &[i64],
    raw: Vec<u8>,
) -> ModelInferRequest {
    ModelInferRequest {
        model_name: model.into(),
        id: id.into(),
        inputs: vec![InferInputTensor {
            name: "x".into(),
            datatype: datatype.into(),
            shape: shape.to_vec(),
            ..Default::default()
        }],
        raw_input_contents: vec![Bytes::from(raw)],
        ..Default::default()
    }
}

/// A request to the served model: "x", INT64 [n, 1] holding `values`.
fn request(id: &str, values: &[i64]) -> ModelInferRequest {
    let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    tensor_request(MODEL, id, "INT64", &[values.len() as i64, 1], raw)
}

impl Reply {
    /// The response of an OK answer.
    fn response(&self) -> ModelInferResponse {
        assert_eq!(
            self.status, 0,
            "expected OK, got {} {:?}",
            self.status, self.message
        );
        ModelInferResponse::decode(self.body.clone()).expect("a ModelInferResponse")
    }

    /// The values the model echoed, checking the answer is the served model's, for `id`,
    /// with one INT64 output "out" of shape [rows, 1].
    fn echoed(&self, id: &str) -> Vec<i64> {
        let response = self.response();
        assert_eq!(response.model_name, MODEL);
        assert_eq!(response.model_version, VERSION);
        assert_eq!(response.id, id);
        assert_eq!(response.outputs.len(), 1);
        let out = &response.outputs[0];
        assert_eq!((out.name.as_str(), out.datatype.as_str()), ("out", "INT64"));
        let values: Vec<i64> = response.raw_output_contents[0]
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(out.shape, [values.len() as i64, 1], "shape of {id}");
        values
    }
}

// ---------------------------------------------------------------------------------------
// Tests

/// ModelInfer for a served model is answered by the front itself: the model's name and
/// version, the request's id, the output's datatype, shape and exact bytes; the stats count
/// one OK and one decode time for the model.
#[test]
fn a_served_model_answers_model_infer() {
    let server = Server::start(Model::default());
    let values = [1.5f32, -2.25, 3.0e10];
    let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let sent = tensor_request(MODEL, "first", "FP32", &[3, 1], raw.clone());
    let reply = block_on(async {
        let client = connect(server.address).await;
        client.infer(&sent).await
    });
    let response = reply.response();
    assert_eq!(response.model_name, MODEL);
    assert_eq!(response.model_version, VERSION);
    assert_eq!(response.id, "first");
    assert_eq!(response.outputs.len(), 1);
    assert_eq!(response.outputs[0].name, "out");
    assert_eq!(response.outputs[0].datatype, "FP32");
    assert_eq!(response.outputs[0].shape, [3, 1]);
    assert_eq!(response.raw_output_contents, [raw]);

    let stats = server.stats_once(MODEL, "OK", 1);
    assert_eq!(stats.requests.len(), 1, "{:?}", stats.requests);
    assert_eq!(stats.requests[&(MODEL.to_owned(), "OK")], 1);
    assert_eq!(stats.decode_seconds[MODEL].len(), 1);
}

/// 200 requests from 16 tasks over 4 connections, each with its own values and 1 to 4 rows,
/// batched together by the batcher: every answer carries exactly its own request's id and
/// values, every request ran in exactly one batch, and the stats count 200 OK.
#[test]
fn concurrent_requests_get_their_own_answers() {
    const REQUESTS: usize = 200;
    const TASKS: usize = 16;
    let (batches, mut batch_sizes) = mpsc::unbounded_channel();
    let server = Server::start(Model {
        delay: Duration::from_millis(1),
        batches: Some(batches),
    });
    let answered = block_on(async {
        let mut clients = Vec::new();
        for _ in 0..4 {
            clients.push(connect(server.address).await);
        }
        let mut tasks = JoinSet::new();
        for task in 0..TASKS {
            let client = clients[task % clients.len()].clone();
            tasks.spawn(async move {
                let mut answered = 0;
                for r in (task..REQUESTS).step_by(TASKS) {
                    let id = format!("request-{r}");
                    let rows = 1 + r % 4;
                    let values: Vec<i64> = (0..rows).map(|j| (r * 10 + j) as i64).collect();
                    let reply = client.infer(&request(&id, &values)).await;
                    assert_eq!(reply.echoed(&id), values, "the answer to {id}");
                    answered += 1;
                }
                answered
            });
        }
        let mut answered = 0;
        while let Some(task) = tasks.join_next().await {
            answered += task.expect("a client task finishes");
        }
        answered
    });
    assert_eq!(answered, REQUESTS);

    let stats = server.stats_once(MODEL, "OK", REQUESTS as u64);
    assert_eq!(stats.requests.len(), 1, "{:?}", stats.requests);
    assert_eq!(stats.requests[&(MODEL.to_owned(), "OK")], REQUESTS as u64);
    let mut sizes = Vec::new();
    while let Ok(size) = batch_sizes.try_recv() {
        sizes.push(size);
    }
    assert_eq!(
        sizes.iter().sum::<usize>(),
        REQUESTS,
        "requests run in batches"
    );
    let shared = sizes.iter().filter(|&&n| n > 1).count();
    eprintln!(
        "{REQUESTS} requests ran in {} batches, {shared} of them with several requests",
        sizes.len()
    );
}

/// What the front does not answer goes to the backend, whose own answer comes back: a
/// ModelInfer for a model the front does not hold, for another version of one it holds, or
/// with a compressed message (the backend sees the whole request body), ServerLive, and
/// Health/Check (a message and OK passed through).
#[test]
fn other_calls_go_to_the_backend() {
    let server = Server::start(Model::default());
    block_on(async {
        let client = connect(server.address).await;

        let unknown = request("u", &[1, 2]);
        let unknown = ModelInferRequest {
            model_name: "nobody".into(),
            ..unknown
        }
        .encode_to_vec();
        let reply = client.call(INFER, &unknown, None).await;
        assert_eq!(reply.status, 5, "{reply:?}");
        let expected = format!("backend got {INFER} with {} bytes", unknown.len() + 5);
        assert_eq!(reply.message, expected);

        let other_version = ModelInferRequest {
            model_version: "7".into(),
            ..request("v", &[3])
        };
        let reply = client.infer(&other_version).await;
        assert_eq!(reply.status, 5, "{reply:?}");
        assert!(reply.message.starts_with(&format!("backend got {INFER}")));

        // A compressed message (flag 1; the front reads no further) is the backend's to
        // decompress, even for the front's own model.
        let mine = request("c", &[6]).encode_to_vec();
        let mut compressed = frame(&mine).to_vec();
        compressed[0] = 1;
        let reply = client.call_framed(INFER, compressed.into(), None).await;
        assert_eq!(reply.status, 5, "{reply:?}");
        let expected = format!("backend got {INFER} with {} bytes", mine.len() + 5);
        assert_eq!(reply.message, expected);

        let reply = client.call(SERVER_LIVE, &[], None).await;
        assert_eq!(reply.status, 5, "{reply:?}");
        assert_eq!(
            reply.message,
            format!("backend got {SERVER_LIVE} with 5 bytes")
        );

        let reply = client.call(HEALTH_CHECK, &[], None).await;
        assert_eq!(reply.status, 0, "{reply:?}");
        assert_eq!(&reply.body[..], SERVING);

        // The front still answers its own model on the same connection.
        assert_eq!(
            client.infer(&request("mine", &[4])).await.echoed("mine"),
            [4]
        );
    });
}

/// Input the front cannot decode is INVALID_ARGUMENT with a message naming the input (raw
/// contents of the wrong size for the shape) or the problem (bytes that are no
/// ModelInferRequest), and the front goes on serving: a good request afterwards succeeds.
#[test]
fn bad_input_is_invalid_argument() {
    let server = Server::start(Model::default());
    block_on(async {
        let client = connect(server.address).await;

        let short = tensor_request(MODEL, "short", "INT64", &[2, 1], vec![0; 12]);
        let reply = client.infer(&short).await;
        assert_eq!(reply.status, 3, "{reply:?}");
        assert!(reply.message.contains("input 'x'"), "{reply:?}");
        assert!(reply.message.contains("12 bytes"), "{reply:?}");

        let reply = client.call(INFER, &[0xff, 0xff, 0xff], None).await;
        assert_eq!(reply.status, 3, "{reply:?}");
        assert!(reply.message.contains("ModelInferRequest"), "{reply:?}");

        let reply = client.infer(&request("good", &[7, 8])).await;
        assert_eq!(reply.echoed("good"), [7, 8]);
    });
}

/// A batch the model fails is INTERNAL carrying the model's own message, counted as
/// MODEL_ERROR; the model goes on answering good requests.
#[test]
fn a_model_error_is_internal_with_its_message() {
    let server = Server::start(Model::default());
    block_on(async {
        let client = connect(server.address).await;
        let reply = client.infer(&request("poisoned", &[1, POISON])).await;
        assert_eq!(reply.status, 13, "{reply:?}");
        assert_eq!(reply.message, format!("the model refuses {POISON}"));
    });
    let stats = server.stats_once(MODEL, "MODEL_ERROR", 1);
    assert_eq!(stats.requests.len(), 1, "{:?}", stats.requests);
    assert_eq!(stats.requests[&(MODEL.to_owned(), "MODEL_ERROR")], 1);

    let reply = block_on(async {
        let client = connect(server.address).await;
        client.infer(&request("fine", &[2])).await
    });
    assert_eq!(reply.echoed("fine"), [2]);
}

/// A call whose `grpc-timeout` (50 ms) passes while the model (1 s a batch) is still
/// working is DEADLINE_EXCEEDED, and counted so.
#[test]
fn a_passed_deadline_is_deadline_exceeded() {
    let server = Server::start(Model {
        delay: Duration::from_secs(1),
        batches: None,
    });
    let reply = block_on(async {
        let client = connect(server.address).await;
        let message = request("late", &[5]).encode_to_vec();
        client.call(INFER, &message, Some("50m")).await
    });
    assert_eq!(reply.status, 4, "{reply:?}");
    assert!(reply.message.contains("deadline"), "{reply:?}");

    let stats = server.stats_once(MODEL, "DEADLINE_EXCEEDED", 1);
    assert_eq!(stats.requests.len(), 1, "{:?}", stats.requests);
    assert_eq!(stats.requests[&(MODEL.to_owned(), "DEADLINE_EXCEEDED")], 1);
}

/// A message over a mebibyte (decoded off the front's thread) is answered like a small one,
/// and small calls on the same connection go on meanwhile.
#[test]
fn a_big_message_is_answered() {
    let server = Server::start(Model::default());
    block_on(async {
        let client = connect(server.address).await;
        let values: Vec<i64> = (0..200_000).collect();
        let big = request("big", &values);
        assert!(big.encoded_len() > 1 << 20);
        let little = request("small", &[7]);
        let (reply, small) = tokio::join!(client.infer(&big), client.infer(&little));
        assert_eq!(reply.echoed("big"), values);
        assert_eq!(small.echoed("small"), [7]);
    });
}

/// A message larger than `max_message_size` is RESOURCE_EXHAUSTED, as grpcio says it; a
/// small one on the same connection afterwards is answered.
#[test]
fn an_oversized_message_is_resource_exhausted() {
    let server = Server::with_limit(Model::default(), 1024);
    block_on(async {
        let client = connect(server.address).await;
        let values: Vec<i64> = (0..1000).collect();
        let big = request("big", &values).encode_to_vec();
        let reply = client.call(INFER, &big, None).await;
        assert_eq!(reply.status, 8, "{reply:?}");
        let expected = format!("Received message larger than max ({} vs. 1024)", big.len());
        assert_eq!(reply.message, expected);

        let reply = client.infer(&request("small", &[9])).await;
        assert_eq!(reply.echoed("small"), [9]);

        // A prefix that claims little does not let a client make the front hold more.
        let mut lying = vec![0, 0, 0, 0, 10];
        lying.resize(5 + 50_000, 0);
        let reply = client.call_framed(INFER, lying.into(), None).await;
        assert_eq!(reply.status, 8, "{reply:?}");
        assert!(
            reply
                .message
                .starts_with("Received message larger than max ("),
            "{reply:?}"
        );
    });
}

/// `stop` lets a call in flight finish (its answer arrives), and once it returns the port
/// refuses new connections.
#[test]
fn stop_finishes_calls_in_flight_then_refuses_connections() {
    let (batches, mut batch_taken) = mpsc::unbounded_channel();
    let server = Server::start(Model {
        delay: Duration::from_secs(1),
        batches: Some(batches),
    });
    block_on(async {
        let client = connect(server.address).await;
        let in_flight =
            tokio::spawn(async move { client.infer(&request("in-flight", &[11, 12])).await });
        tokio::time::timeout(CALL_LIMIT, batch_taken.recv())
            .await
            .expect("the runner takes the request")
            .expect("a batch");
        let front = Arc::clone(&server.front);
        let stopping = tokio::task::spawn_blocking(move || front.stop(Duration::from_secs(10)));
        let reply = in_flight.await.expect("the call finishes");
        assert_eq!(reply.echoed("in-flight"), [11, 12]);
        tokio::time::timeout(CALL_LIMIT, stopping)
            .await
            .expect("stop returns")
            .expect("stop does not panic");
    });
    let refused = std::net::TcpStream::connect(server.address)
        .expect_err("a stopped front takes no connection");
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
}

// ---------------------------------------------------------------------------------------
// Limits: streams, connections, bytes in flight, dead and idle peers

/// HTTP/2 frame types a raw peer looks at.
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
/// SETTINGS_MAX_CONCURRENT_STREAMS.
const MAX_CONCURRENT_STREAMS: u16 = 0x3;

/// An HTTP/2 peer written by hand: it sends the client preface and an empty SETTINGS
/// frame, then only reads; it answers nothing, PINGs included.
struct RawPeer {
    tcp: TcpStream,
}

/// One frame: its type, flags and payload.
struct Frame {
    kind: u8,
    flags: u8,
    payload: Vec<u8>,
}

impl RawPeer {
    async fn connect(address: SocketAddr) -> RawPeer {
        let mut tcp = TcpStream::connect(address)
            .await
            .expect("the front accepts connections");
        tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .expect("the preface is sent");
        tcp.write_all(&[0, 0, 0, SETTINGS, 0, 0, 0, 0, 0])
            .await
            .expect("SETTINGS are sent");
        RawPeer { tcp }
    }

    /// The next frame; None once the front closed the connection.
    async fn frame(&mut self) -> Option<Frame> {
        let mut head = [0u8; 9];
        self.tcp.read_exact(&mut head).await.ok()?;
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0; len];
        self.tcp.read_exact(&mut payload).await.ok()?;
        Some(Frame {
            kind: head[3],
            flags: head[4],
            payload,
        })
    }

    /// The front's first SETTINGS frame, as (identifier, value) pairs.
    async fn settings(&mut self) -> Vec<(u16, u32)> {
        loop {
            let frame = self.frame().await.expect("the front sends SETTINGS");
            if frame.kind == SETTINGS && frame.flags & 1 == 0 {
                return frame
                    .payload
                    .chunks_exact(6)
                    .map(|s| {
                        let id = u16::from_be_bytes([s[0], s[1]]);
                        (id, u32::from_be_bytes([s[2], s[3], s[4], s[5]]))
                    })
                    .collect();
            }
        }
    }
}

/// Limits with the given changes to the test defaults (a large message size, keepalive and
/// idle timeouts far beyond any test).
fn limits(change: impl FnOnce(&mut Limits)) -> Limits {
    let mut limits = Limits {
        max_message_size: LARGE,
        ..Limits::default()
    };
    change(&mut limits);
    limits
}

/// A request for the served model whose encoding takes about `bytes` bytes.
fn request_of_about(id: &str, bytes: usize) -> ModelInferRequest {
    let values: Vec<i64> = (0..(bytes / 8) as i64).collect();
    request(id, &values)
}

/// The front advertises its stream limit in its SETTINGS; a client that opens more calls
/// than that on one connection has the extra ones wait (h2 queues them), so the model never
/// sees more than the limit at once, and every call is answered.
#[test]
fn streams_per_connection_are_limited_and_advertised() {
    const STREAMS: u32 = 4;
    const CALLS: usize = 12;
    let (batches, mut batch_sizes) = mpsc::unbounded_channel();
    let server = Server::with_limits(
        Model {
            delay: Duration::from_millis(100),
            batches: Some(batches),
        },
        limits(|l| l.max_concurrent_streams = STREAMS),
    );
    block_on(async {
        let mut peer = RawPeer::connect(server.address).await;
        let settings = peer.settings().await;
        assert!(
            settings.contains(&(MAX_CONCURRENT_STREAMS, STREAMS)),
            "SETTINGS {settings:?}"
        );

        let client = connect(server.address).await;
        // A client may open streams before the SETTINGS reach it (the front refuses those
        // past the limit with REFUSED_STREAM, which gRPC clients retry); an answer comes
        // after the front's SETTINGS on the connection.
        let reply = client.infer(&request("first", &[0])).await;
        assert_eq!(reply.echoed("first"), [0]);
        let mut calls = JoinSet::new();
        for n in 0..CALLS {
            let client = client.clone();
            calls.spawn(async move {
                let id = format!("call-{n}");
                let reply = client.infer(&request(&id, &[n as i64])).await;
                assert_eq!(reply.echoed(&id), [n as i64]);
            });
        }
        while let Some(call) = calls.join_next().await {
            call.expect("every call is answered");
        }
        let reply = client.infer(&request("after", &[1])).await;
        assert_eq!(reply.echoed("after"), [1]);
    });
    let mut sizes = Vec::new();
    while let Ok(size) = batch_sizes.try_recv() {
        sizes.push(size);
    }
    assert_eq!(sizes.iter().sum::<usize>(), CALLS + 2);
    assert!(
        sizes.iter().all(|&n| n <= STREAMS as usize),
        "batches of {sizes:?} requests: more calls than the limit were open at once"
    );
}

/// A call whose prefix declares more bytes than the in-flight budget has left (another
/// call holds most of it, its body still arriving) is RESOURCE_EXHAUSTED at once, naming
/// the flag, before its own body is sent whole; the held call then completes, the budget
/// is given back, and the same large call succeeds.
#[test]
fn the_inflight_budget_refuses_a_call_before_reading_its_body() {
    const BUDGET: usize = 100_000;
    let server = Server::with_limits(
        Model::default(),
        limits(|l| {
            l.max_message_size = 80_000;
            l.max_inflight_bytes = BUDGET;
        }),
    );
    block_on(async {
        let client = connect(server.address).await;
        let held = frame(&request_of_about("held", 60_000).encode_to_vec());
        let (held_reply, mut held_rest) = client.start_call(INFER, held.slice(..1000)).await;
        // The front reserves the held call's bytes once its prefix arrives.
        let give_up = Instant::now() + CALL_LIMIT;
        while server.front.inflight_bytes() < 60_000 {
            assert!(Instant::now() < give_up, "the held call is never reserved");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }

        let second = frame(&request_of_about("second", 50_000).encode_to_vec());
        let (reply, _unsent) = client.start_call(INFER, second.slice(..1000)).await;
        let reply = tokio::time::timeout(CALL_LIMIT, read_reply(reply))
            .await
            .expect("the refusal comes before the body is sent");
        assert_eq!(reply.status, 8, "{reply:?}");
        assert!(reply.message.contains("--max-inflight-bytes"), "{reply:?}");
        assert!(reply.message.contains(&format!("{BUDGET}")), "{reply:?}");

        held_rest
            .send_data(held.slice(1000..), true)
            .expect("the rest of the held call is sent");
        let reply = tokio::time::timeout(CALL_LIMIT, read_reply(held_reply))
            .await
            .expect("the held call is answered");
        assert_eq!(reply.echoed("held").len(), 60_000 / 8);

        let reply = client.call_framed(INFER, second, None).await;
        assert_eq!(reply.echoed("second").len(), 50_000 / 8);
        let reply = client.infer(&request("small", &[3])).await;
        assert_eq!(reply.echoed("small"), [3]);
    });
    assert_eq!(
        server.front.inflight_bytes(),
        0,
        "every reservation is given back"
    );
    let stats = server.stats_once("", "RESOURCE_EXHAUSTED", 1);
    assert_eq!(stats.requests[&(String::new(), "RESOURCE_EXHAUSTED")], 1);
}

/// Past `max_connections` a new connection is closed at once (and counted); once a
/// connection ends, a new one is served.
#[test]
fn connections_past_the_limit_are_closed() {
    let server = Server::with_limits(Model::default(), limits(|l| l.max_connections = 2));
    block_on(async {
        let first = connect(server.address).await;
        let second = connect(server.address).await;
        for (client, id) in [(&first, "first"), (&second, "second")] {
            assert_eq!(client.infer(&request(id, &[1])).await.echoed(id), [1]);
        }

        let mut third = TcpStream::connect(server.address)
            .await
            .expect("the kernel accepts the connection");
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(CALL_LIMIT, third.read(&mut byte))
            .await
            .expect("the front closes the connection at once");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");

        // The first connection ends (its client goes); a new one is then served. Until the
        // front has seen the end, a new connection may still be refused: try again then.
        drop(first);
        let give_up = Instant::now() + CALL_LIMIT;
        let address = server.address;
        loop {
            let attempt = tokio::spawn(async move {
                let again = connect(address).await;
                again.infer(&request("again", &[2])).await
            });
            if let Ok(reply) = attempt.await {
                assert_eq!(reply.echoed("again"), [2]);
                break;
            }
            assert!(Instant::now() < give_up, "no connection is served again");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            second.infer(&request("still", &[3])).await.echoed("still"),
            [3]
        );
    });
    let stats = server.stats_once("", "CONNECTION_REFUSED", 1);
    assert!(stats.requests[&(String::new(), "CONNECTION_REFUSED")] >= 1);
}

/// A connection without calls for the idle timeout is closed; one whose call takes longer
/// than that is not; a new connection is served afterwards.
#[test]
fn an_idle_connection_is_closed() {
    let server = Server::with_limits(
        Model {
            delay: Duration::from_millis(600),
            batches: None,
        },
        limits(|l| l.idle_timeout = Some(Duration::from_millis(200))),
    );
    block_on(async {
        let (client, driving) = connect_watched(server.address).await;
        // The call outlasts the idle timeout: a connection with a call open is not idle.
        let reply = client.infer(&request("slow", &[4])).await;
        assert_eq!(reply.echoed("slow"), [4]);
        let started = Instant::now();
        tokio::time::timeout(Duration::from_secs(10), driving)
            .await
            .expect("the idle connection is closed")
            .expect("the connection task ends");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(150),
            "closed after {waited:?}"
        );

        let client = connect(server.address).await;
        assert_eq!(client.infer(&request("new", &[5])).await.echoed("new"), [5]);
    });
}

/// A peer that stops answering PINGs is dropped after the keepalive timeout; a peer that
/// answers them keeps its connection past that, and its calls are answered.
#[test]
fn a_peer_that_stops_answering_pings_is_dropped() {
    let server = Server::with_limits(
        Model::default(),
        limits(|l| {
            l.keepalive_interval = Some(Duration::from_millis(100));
            l.keepalive_timeout = Duration::from_millis(300);
        }),
    );
    block_on(async {
        let mut peer = RawPeer::connect(server.address).await;
        let started = Instant::now();
        let mut pinged = false;
        let closed = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(frame) = peer.frame().await {
                pinged |= frame.kind == PING;
            }
        })
        .await;
        assert!(closed.is_ok(), "the silent peer is still connected");
        assert!(pinged, "the front sent a PING first");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(300),
            "dropped after {waited:?}"
        );

        let (client, driving) = connect_watched(server.address).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            !driving.is_finished(),
            "a peer that answers PINGs was dropped"
        );
        assert_eq!(
            client.infer(&request("alive", &[6])).await.echoed("alive"),
            [6]
        );
    });
}
