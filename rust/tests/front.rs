//! The gRPC front end to end, in one process: real listeners (TCP on 127.0.0.1, a Unix
//! socket, TLS with certificates made when the test runs), an HTTP/2 gRPC client written on
//! h2 (so a test sees SETTINGS, resets and message prefixes exactly as sent), and a runner
//! thread standing in for the model (it echoes its first input, or fails a batch holding the
//! poison value).
//!
//! Each test starts its own front. The client side of a test runs on a runtime of its own
//! (`block_on`) that is dropped before the front stops, so the client's connections are gone
//! by then and `stop` has nothing to wait for. The front's setters (`serve`,
//! `set_serving`...) block on the front's runtime, so tests call them between client
//! runtimes, never inside one.

use std::collections::HashMap;
use std::future::Future;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrowsmith_native::batch::{BatchConfig, Batcher};
use arrowsmith_native::encode::OutputTensor;
use arrowsmith_native::front::stats::Collected;
use arrowsmith_native::front::tls::TlsFiles;
use arrowsmith_native::front::{
    self, Front, Limits, Listeners, RepositoryHandler, RepositoryMethod, ServedModel, ServerInfo,
};
use arrowsmith_native::proto::model_infer_request::InferInputTensor;
use arrowsmith_native::proto::model_metadata_response::TensorMetadata;
use arrowsmith_native::proto::model_repository_parameter::ParameterChoice;
use arrowsmith_native::proto::repository_index_response::ModelIndex;
use arrowsmith_native::proto::{
    DataType, ModelConfig, ModelConfigRequest, ModelConfigResponse, ModelDynamicBatching,
    ModelInferRequest, ModelInferResponse, ModelInput, ModelMetadataRequest, ModelMetadataResponse,
    ModelOutput, ModelReadyRequest, ModelReadyResponse, ModelRepositoryParameter,
    ModelStreamInferResponse, RepositoryIndexRequest, RepositoryIndexResponse,
    RepositoryModelLoadRequest, RepositoryModelLoadResponse, RepositoryModelUnloadRequest,
    RepositoryModelUnloadResponse, ServerLiveRequest, ServerLiveResponse, ServerMetadataRequest,
    ServerMetadataResponse, ServerReadyRequest, ServerReadyResponse,
};
use arrowsmith_native::{Error, Parameters};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use http::{HeaderMap, HeaderValue, Request};
use prost::Message;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName,
};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

const MODEL: &str = "echo";
const VERSION: &str = "1";
/// A model the server expects in the test that has one, never served.
const LATE: &str = "late";
const SERVICE: &str = "inference.GRPCInferenceService";
const INFER: &str = "/inference.GRPCInferenceService/ModelInfer";
const STREAM_INFER: &str = "/inference.GRPCInferenceService/ModelStreamInfer";
const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";
const HEALTH_WATCH: &str = "/grpc.health.v1.Health/Watch";
const REFLECTION: &str = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";
/// How long a test waits to be sure that something does not come.
const QUIET: Duration = Duration::from_millis(200);
/// Who the front says it is (ServerMetadata).
const SERVER_NAME: &str = "arrowsmith";
const SERVER_VERSION: &str = "0.1.0-test";
/// An INT64 value the stand-in model refuses, failing its whole batch.
const POISON: i64 = -666;
/// How long one call (or one wait for the front) may take before a test gives up on it:
/// generous, for busy machines.
const CALL_LIMIT: Duration = Duration::from_secs(30);
/// The default `max_message_size`, large enough for every test but the oversized one.
const LARGE: usize = 64 << 20;
/// The HTTP/2 client preface.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

// ---------------------------------------------------------------------------------------
// The stand-in model

/// How the stand-in model behaves.
#[derive(Clone, Default)]
struct Model {
    /// How long each batch takes.
    delay: Duration,
    /// Told each batch's number of requests when the runner takes it.
    batches: Option<mpsc::UnboundedSender<usize>>,
    /// When set, the runner waits for it to open before answering a batch (after telling
    /// `batches`), so a test decides when the model is busy.
    gate: Option<Gate>,
}

/// A gate the runner waits at; opened once, for good.
#[derive(Clone, Default)]
struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    fn open(&self) {
        let (open, opened) = &*self.0;
        *open.lock().unwrap_or_else(PoisonError::into_inner) = true;
        opened.notify_all();
    }

    fn wait(&self) {
        let (open, opened) = &*self.0;
        let guard = open.lock().unwrap_or_else(PoisonError::into_inner);
        let _open = opened
            .wait_while(guard, |open| !*open)
            .unwrap_or_else(PoisonError::into_inner);
    }
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
            if let Some(gate) = &model.gate {
                gate.wait();
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

/// What ModelMetadata says of the stand-in model.
fn echo_metadata() -> ModelMetadataResponse {
    let tensor = |name: &str| TensorMetadata {
        name: name.into(),
        datatype: "INT64".into(),
        shape: vec![-1, 1],
        parameters: HashMap::new(),
    };
    ModelMetadataResponse {
        name: MODEL.into(),
        versions: vec![VERSION.into()],
        platform: "mlflow".into(),
        inputs: vec![tensor("x")],
        outputs: vec![tensor("out")],
        properties: HashMap::from([("flavor".into(), "echo".into())]),
    }
}

/// What ModelConfig says of the stand-in model.
fn echo_config() -> ModelConfigResponse {
    let int64 = DataType::TypeInt64 as i32;
    ModelConfigResponse {
        config: Some(ModelConfig {
            name: MODEL.into(),
            platform: "mlflow".into(),
            max_batch_size: 64,
            input: vec![ModelInput {
                name: "x".into(),
                data_type: int64,
                dims: vec![1],
            }],
            output: vec![ModelOutput {
                name: "out".into(),
                data_type: int64,
                dims: vec![1],
            }],
            dynamic_batching: Some(ModelDynamicBatching {
                max_queue_delay_microseconds: 2000,
            }),
        }),
    }
}

// ---------------------------------------------------------------------------------------
// A front serving the stand-in model

/// A directory of one test's own, removed with what it holds when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("arrowsmith-front-{}-{n}", std::process::id());
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        TempDir(path)
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How a test's front is set up.
struct Setup {
    model: Model,
    limits: Limits,
    tls: Option<TlsFiles>,
    /// A Unix socket to listen on as well as the TCP port.
    unix: Option<PathBuf>,
    /// The models the server must serve to be ready.
    expected: Vec<String>,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            model: Model::default(),
            limits: limits(|_| {}),
            tls: None,
            unix: None,
            expected: vec![MODEL.into()],
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

/// A batcher for a version of the stand-in model.
fn echo_batcher(version: &str) -> Arc<Batcher> {
    let config = BatchConfig {
        max_batch_rows: 64,
        max_delay: Duration::from_millis(2),
        max_queue: 1024,
    };
    Arc::new(Batcher::new(config, MODEL.into(), version.into()))
}

/// A front on 127.0.0.1 (any free port) for model `echo` version 1, with no signature, and
/// the model's runner. Dropping it opens the model's gate, stops the front, then the runner.
struct Server {
    front: Arc<Front>,
    address: SocketAddr,
    batcher: Arc<Batcher>,
    runner: Option<JoinHandle<()>>,
    gate: Option<Gate>,
    /// What the front's stats counted, taken from it so far.
    collected: Mutex<Collected>,
}

impl Server {
    /// A front that serves `echo` from the start.
    fn start(setup: Setup) -> Server {
        let server = Server::launch(setup);
        server.serve();
        server.front.set_serving(true);
        server
    }

    /// A front that does not serve `echo` yet (see `serve`).
    fn launch(setup: Setup) -> Server {
        let tcp = front::listen("127.0.0.1", 0, false).expect("a listening socket");
        let address = tcp.local_addr().expect("a bound address");
        let unix = setup.unix.map(|path| {
            let listener = front::listen_unix(&path).expect("a listening Unix socket");
            (listener, path)
        });
        let listeners = Listeners {
            tcp: Some(tcp),
            unix,
            flight: None,
        };
        let server = ServerInfo {
            name: SERVER_NAME.into(),
            version: SERVER_VERSION.into(),
            extensions: vec!["model_repository".into()],
        };
        let front = Front::start(listeners, setup.limits, setup.tls, server, setup.expected)
            .expect("the front starts");
        let batcher = echo_batcher(VERSION);
        let gate = setup.model.gate.clone();
        let runner = run_model(Arc::clone(&batcher), setup.model);
        Server {
            front: Arc::new(front),
            address,
            batcher,
            runner: Some(runner),
            gate,
            collected: Mutex::default(),
        }
    }

    /// The front answers for `echo` from now on, with its metadata and config.
    fn serve(&self) {
        self.front.serve(ServedModel {
            name: MODEL.into(),
            version: VERSION.into(),
            batcher: Arc::clone(&self.batcher),
            signature: None,
            metadata: echo_metadata(),
            config: echo_config(),
        });
    }

    /// Everything the front's stats counted so far in this test.
    fn collected(&self) -> MutexGuard<'_, Collected> {
        let taken = self.front.stats().take();
        let mut total = self
            .collected
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (key, count) in taken.requests {
            *total.requests.entry(key).or_insert(0) += count;
        }
        for (name, times) in taken.decode_seconds {
            total.decode_seconds.entry(name).or_default().extend(times);
        }
        total
    }

    /// Answers of `status` the front counted for `model` so far.
    fn count(&self, model: &str, status: &'static str) -> u64 {
        let key = (model.to_owned(), status);
        self.collected().requests.get(&key).copied().unwrap_or(0)
    }

    /// Waits until the front counted `n` answers of `status` for `model`. The front counts
    /// an answer just after sending it, so a client can hold the answer before the count.
    async fn counted(&self, model: &str, status: &'static str, n: u64) {
        let what = format!("{n} {status} counted for {model:?}");
        until(&what, || self.count(model, status) >= n).await;
    }

    /// One ModelInfer call on a connection of its own.
    fn infer(&self, request: &ModelInferRequest) -> Reply {
        block_on(async { connect(self.address).await.infer(request).await })
    }

    /// One call of the inference service's `method` on a connection of its own.
    fn ask(&self, method: &str, request: &impl Message) -> Reply {
        block_on(async { connect(self.address).await.ask(method, request).await })
    }

    /// The health service's answer for `service`.
    fn health(&self, service: &str) -> Reply {
        let request = HealthCheckRequest {
            service: service.into(),
        };
        block_on(async {
            let client = connect(self.address).await;
            client.call(HEALTH_CHECK, &request.encode_to_vec()).await
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(gate) = &self.gate {
            gate.open();
        }
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

/// Waits until `condition` holds, checking every few milliseconds; fails the test after
/// `CALL_LIMIT`.
async fn until(what: &str, mut condition: impl FnMut() -> bool) {
    let give_up = Instant::now() + CALL_LIMIT;
    while !condition() {
        assert!(
            Instant::now() < give_up,
            "{what}: not within {CALL_LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The next batch size the runner reports.
async fn next_batch(batches: &mut mpsc::UnboundedReceiver<usize>) -> usize {
    tokio::time::timeout(CALL_LIMIT, batches.recv())
        .await
        .expect("the runner takes a batch")
        .expect("the runner reports its batches")
}

/// The batch sizes the runner reported and the test has not read yet.
fn reported(batches: &mut mpsc::UnboundedReceiver<usize>) -> Vec<usize> {
    std::iter::from_fn(|| batches.try_recv().ok()).collect()
}

// ---------------------------------------------------------------------------------------
// A gRPC client

/// One HTTP/2 connection to the front; clones share it.
#[derive(Clone)]
struct Client {
    sender: h2::client::SendRequest<Bytes>,
    authority: String,
}

/// One message of a response body.
#[derive(Debug)]
struct Framed {
    compressed: bool,
    message: Bytes,
}

/// How a call ended.
#[derive(Debug)]
struct Reply {
    code: Code,
    /// `grpc-message`, percent-decoded; empty when absent.
    message: String,
    /// The response's headers (a trailers-only answer's only ones).
    headers: HeaderMap,
    /// The response's messages; none for a trailers-only answer.
    messages: Vec<Framed>,
}

async fn connect(address: SocketAddr) -> Client {
    connect_watched(address).await.0
}

/// A connection, and the task that drives it, which ends when the connection does.
async fn connect_watched(address: SocketAddr) -> (Client, tokio::task::JoinHandle<()>) {
    let tcp = TcpStream::connect(address)
        .await
        .expect("the front accepts connections");
    Client::over(tcp, &address.to_string()).await
}

/// A message with gRPC's prefix: uncompressed, 4-byte big-endian length.
fn frame(message: &[u8]) -> Bytes {
    frame_as(0, message)
}

/// A message with gRPC's prefix: the compressed flag `flag`, 4-byte big-endian length.
fn frame_as(flag: u8, message: &[u8]) -> Bytes {
    let mut framed = BytesMut::with_capacity(5 + message.len());
    framed.put_u8(flag);
    framed.put_u32(message.len() as u32);
    framed.put_slice(message);
    framed.freeze()
}

/// The requests as one request body, each message framed.
fn frames(requests: &[ModelInferRequest]) -> Bytes {
    let mut body = BytesMut::new();
    for request in requests {
        body.extend_from_slice(&frame(&request.encode_to_vec()));
    }
    body.freeze()
}

/// A response body's messages, each with its compressed flag.
fn split_messages(mut body: Bytes) -> Vec<Framed> {
    let mut messages = Vec::new();
    while !body.is_empty() {
        assert!(body.len() >= 5, "a message prefix cut short: {body:?}");
        let compressed = match body.get_u8() {
            0 => false,
            1 => true,
            flag => panic!("compressed flag {flag}"),
        };
        let len = body.get_u32() as usize;
        assert!(body.len() >= len, "a message of {len} bytes cut short");
        messages.push(Framed {
            compressed,
            message: body.split_to(len),
        });
    }
    messages
}

fn grpc_code(headers: &HeaderMap) -> Option<Code> {
    let code: i32 = headers.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    Some(Code::from_i32(code))
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
    /// A client on an established connection of any transport, and the task that drives
    /// the connection, which ends when the connection does.
    async fn over<IO>(io: IO, authority: &str) -> (Client, tokio::task::JoinHandle<()>)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, connection) = h2::client::handshake(io)
            .await
            .expect("an HTTP/2 handshake");
        let driving = tokio::spawn(async move {
            let _ = connection.await;
        });
        let client = Client {
            sender,
            authority: authority.to_owned(),
        };
        (client, driving)
    }

    /// One unary call of `message`, framed.
    async fn call(&self, path: &str, message: &[u8]) -> Reply {
        self.call_framed(path, frame(message), &[]).await
    }

    /// One call whose request body is `body` exactly (framed by the caller), with the
    /// given extra headers.
    async fn call_framed(&self, path: &str, body: Bytes, headers: &[(&str, &str)]) -> Reply {
        tokio::time::timeout(CALL_LIMIT, self.exchange(path, body, headers))
            .await
            .unwrap_or_else(|_| panic!("no answer to {path} within {CALL_LIMIT:?}"))
    }

    async fn infer(&self, request: &ModelInferRequest) -> Reply {
        self.call(INFER, &request.encode_to_vec()).await
    }

    /// One call of the inference service's `method`.
    async fn ask(&self, method: &str, request: &impl Message) -> Reply {
        let path = format!("/{SERVICE}/{method}");
        self.call(&path, &request.encode_to_vec()).await
    }

    async fn exchange(&self, path: &str, body: Bytes, headers: &[(&str, &str)]) -> Reply {
        let (response, mut upload) = self.open(path, headers).await;
        upload
            .send_data(body, true)
            .expect("the request's body is sent");
        read_reply(response).await
    }

    /// Starts a call: its headers are sent, its body goes through the returned stream.
    async fn open(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (h2::client::ResponseFuture, h2::SendStream<Bytes>) {
        let mut request = Request::post(format!("http://{}{path}", self.authority))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        for &(name, value) in headers {
            request = request.header(name, value);
        }
        let request = request.body(()).expect("a request");
        let mut sender = self
            .sender
            .clone()
            .ready()
            .await
            .expect("the front takes another stream");
        sender
            .send_request(request, false)
            .expect("the request's headers are sent")
    }

    /// Starts a call and sends `head`, the start of its body, without ending it.
    async fn start_call(
        &self,
        path: &str,
        head: Bytes,
    ) -> (h2::client::ResponseFuture, h2::SendStream<Bytes>) {
        let (response, mut upload) = self.open(path, &[]).await;
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
    if let Some(code) = grpc_code(&parts.headers) {
        // Trailers-only: the status is all there is.
        return Reply {
            code,
            message: grpc_message(&parts.headers),
            headers: parts.headers,
            messages: Vec::new(),
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
        .expect("a response with messages ends with trailers");
    Reply {
        code: grpc_code(&trailers).expect("the trailers carry grpc-status"),
        message: grpc_message(&trailers),
        headers: parts.headers,
        messages: split_messages(received.freeze()),
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

/// A request for the served model whose encoding takes about `bytes` bytes.
fn request_of_about(id: &str, bytes: usize) -> ModelInferRequest {
    let values: Vec<i64> = (0..(bytes / 8) as i64).collect();
    request(id, &values)
}

/// A request the front refuses: raw contents of 12 bytes for an INT64 [2, 1] input.
fn short_request(id: &str) -> ModelInferRequest {
    tensor_request(MODEL, id, "INT64", &[2, 1], vec![0; 12])
}

/// The values the model echoed, checking the answer is the served model's, for `id`, with
/// one INT64 output "out" of shape [rows, 1].
fn echoed(response: &ModelInferResponse, id: &str) -> Vec<i64> {
    echoed_by(response, id, VERSION)
}

/// `echoed`, checking the answer is that of `version` of the served model.
fn echoed_by(response: &ModelInferResponse, id: &str, version: &str) -> Vec<i64> {
    assert_eq!(response.model_name, MODEL);
    assert_eq!(
        response.model_version, version,
        "the version that answered {id}"
    );
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

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).expect("gzip writes to memory");
    encoder.finish().expect("gzip finishes")
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .expect("a gzip message");
    out
}

impl Reply {
    /// The one message of an OK answer, uncompressed.
    fn only_message(&self) -> &Bytes {
        assert_eq!(
            self.code,
            Code::Ok,
            "expected OK, got {:?} {:?}",
            self.code,
            self.message
        );
        assert_eq!(self.messages.len(), 1, "{self:?}");
        let framed = &self.messages[0];
        assert!(!framed.compressed, "the response message is not compressed");
        &framed.message
    }

    /// The one message of an OK answer, decoded.
    fn decoded<M: Message + Default>(&self) -> M {
        M::decode(self.only_message().clone()).expect("the response message decodes")
    }

    /// The values the model echoed (see `echoed`).
    fn echoed(&self, id: &str) -> Vec<i64> {
        echoed(&self.decoded(), id)
    }

    /// The values `version` of the model echoed (see `echoed_by`).
    fn echoed_by(&self, id: &str, version: &str) -> Vec<i64> {
        echoed_by(&self.decoded(), id, version)
    }

    /// The messages of an OK ModelStreamInfer answer, uncompressed.
    fn stream_responses(&self) -> Vec<ModelStreamInferResponse> {
        assert_eq!(self.code, Code::Ok, "{self:?}");
        self.messages
            .iter()
            .map(|framed| {
                assert!(!framed.compressed, "the response message is not compressed");
                ModelStreamInferResponse::decode(framed.message.clone())
                    .expect("a ModelStreamInferResponse")
            })
            .collect()
    }

    /// The code and message of a refusal.
    fn refusal(&self) -> (Code, &str) {
        (self.code, self.message.as_str())
    }
}

/// The values echoed in one stream response, checking it answers `id`.
fn stream_echoed(response: &ModelStreamInferResponse, id: &str) -> Vec<i64> {
    assert_eq!(response.error_message, "", "the answer to {id}");
    let answer = response
        .infer_response
        .as_ref()
        .unwrap_or_else(|| panic!("no infer_response for {id}"));
    echoed(answer, id)
}

// ---------------------------------------------------------------------------------------
// TLS: certificates made when the test runs

/// A certificate authority of one test.
struct Authority(CertifiedIssuer<'static, KeyPair>);

/// A certificate and its key.
struct Identity {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Authority {
    fn new(name: &str) -> Authority {
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("a CA key");
        Authority(CertifiedIssuer::self_signed(params, key).expect("a CA certificate"))
    }

    /// A server certificate for `localhost` and 127.0.0.1.
    fn server(&self) -> Identity {
        self.issue(
            vec!["localhost".into(), "127.0.0.1".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate.
    fn client(&self) -> Identity {
        self.issue(vec!["client".into()], ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn issue(&self, names: Vec<String>, usage: ExtendedKeyUsagePurpose) -> Identity {
        let mut params = CertificateParams::new(names).expect("certificate names");
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().expect("a key");
        let cert = params
            .signed_by(&key, &self.0)
            .expect("a signed certificate");
        Identity { cert, key }
    }

    /// Client settings that trust this authority only (ALPN h2), presenting `identity`.
    fn client_config(&self, identity: Option<&Identity>) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.0.der().clone()).expect("a trusted root");
        let builder = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots);
        let mut config = match identity {
            Some(identity) => builder
                .with_client_auth_cert(vec![identity.der()], identity.key_der())
                .expect("a client certificate"),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Arc::new(config)
    }
}

impl Identity {
    fn der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()))
    }

    /// Writes the certificate and key where `files` says (replacing what is there).
    fn install(&self, files: &TlsFiles) {
        std::fs::write(&files.cert, self.cert.pem()).expect("the certificate is written");
        std::fs::write(&files.key, self.key.serialize_pem()).expect("the key is written");
    }
}

/// The front's certificate files in `dir`, with `identity` written there, and with
/// `clients` written as the client CA when given (mutual TLS).
fn tls_files(dir: &TempDir, identity: &Identity, clients: Option<&Authority>) -> TlsFiles {
    let client_ca = clients.map(|authority| {
        let path = dir.join("clients.pem");
        std::fs::write(&path, authority.0.pem()).expect("the client CA is written");
        path
    });
    let files = TlsFiles {
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
        client_ca,
    };
    identity.install(&files);
    files
}

/// A TLS connection to the front as `localhost`.
async fn tls_connect(
    address: SocketAddr,
    config: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(address).await?;
    let name = ServerName::try_from("localhost").expect("a server name");
    TlsConnector::from(config).connect(name, tcp).await
}

/// A client over TLS, checking the front chose HTTP/2 by ALPN.
async fn tls_client(address: SocketAddr, config: Arc<ClientConfig>) -> Client {
    let tls = tls_connect(address, config).await.expect("a TLS handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "ALPN");
    Client::over(tls, "localhost").await.0
}

/// Whether the front refuses a TLS client with `config`: the handshake fails, or the front
/// ends the connection (an alert, or its close) instead of answering the client's HTTP/2
/// preface with its SETTINGS.
async fn refused(address: SocketAddr, config: Arc<ClientConfig>) -> bool {
    let attempt = async {
        let Ok(mut tls) = tls_connect(address, config).await else {
            return true;
        };
        if tls.write_all(PREFACE).await.is_err() {
            return true;
        }
        let mut head = [0u8; 9];
        tls.read_exact(&mut head).await.is_err()
    };
    tokio::time::timeout(CALL_LIMIT, attempt)
        .await
        .expect("the front accepts or refuses the client")
}

// ---------------------------------------------------------------------------------------
// ModelInfer

/// ModelInfer for a served model is answered by the front itself: the model's name and
/// version, the request's id, the output's datatype, shape and exact bytes; the stats count
/// one OK and one decode time for the model.
#[test]
fn a_served_model_answers_model_infer() {
    let server = Server::start(Setup::default());
    let values = [1.5f32, -2.25, 3.0e10];
    let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let sent = tensor_request(MODEL, "first", "FP32", &[3, 1], raw.clone());
    let reply = block_on(async {
        let client = connect(server.address).await;
        client.infer(&sent).await
    });
    let response: ModelInferResponse = reply.decoded();
    assert_eq!(response.model_name, MODEL);
    assert_eq!(response.model_version, VERSION);
    assert_eq!(response.id, "first");
    assert_eq!(response.outputs.len(), 1);
    assert_eq!(response.outputs[0].name, "out");
    assert_eq!(response.outputs[0].datatype, "FP32");
    assert_eq!(response.outputs[0].shape, [3, 1]);
    assert_eq!(response.raw_output_contents, [raw]);

    block_on(server.counted(MODEL, "OK", 1));
    let stats = server.collected();
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
    let server = Server::start(Setup {
        model: Model {
            delay: Duration::from_millis(1),
            batches: Some(batches),
            gate: None,
        },
        ..Setup::default()
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

    block_on(server.counted(MODEL, "OK", REQUESTS as u64));
    let stats = server.collected();
    assert_eq!(stats.requests.len(), 1, "{:?}", stats.requests);
    assert_eq!(stats.requests[&(MODEL.to_owned(), "OK")], REQUESTS as u64);
    let sizes = reported(&mut batch_sizes);
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

/// Input the front cannot decode is INVALID_ARGUMENT with a message naming the input (raw
/// contents of the wrong size for the shape) or the problem (bytes that are no
/// ModelInferRequest), and the front goes on serving: a good request afterwards succeeds.
#[test]
fn bad_input_is_invalid_argument() {
    let server = Server::start(Setup::default());
    block_on(async {
        let client = connect(server.address).await;

        let reply = client.infer(&short_request("short")).await;
        assert_eq!(reply.code, Code::InvalidArgument, "{reply:?}");
        assert!(reply.message.contains("input 'x'"), "{reply:?}");
        assert!(reply.message.contains("12 bytes"), "{reply:?}");

        let reply = client.call(INFER, &[0xff, 0xff, 0xff]).await;
        assert_eq!(reply.code, Code::InvalidArgument, "{reply:?}");
        assert!(reply.message.contains("ModelInferRequest"), "{reply:?}");

        let reply = client.infer(&request("good", &[7, 8])).await;
        assert_eq!(reply.echoed("good"), [7, 8]);
    });
}

/// A batch the model fails is INTERNAL carrying the model's own message, counted as
/// MODEL_ERROR; the model goes on answering good requests.
#[test]
fn a_model_error_is_internal_with_its_message() {
    let server = Server::start(Setup::default());
    block_on(async {
        let client = connect(server.address).await;
        let reply = client.infer(&request("poisoned", &[1, POISON])).await;
        let expected = format!("the model refuses {POISON}");
        assert_eq!(reply.refusal(), (Code::Internal, expected.as_str()));
    });
    block_on(server.counted(MODEL, "MODEL_ERROR", 1));
    {
        let stats = server.collected();
        assert_eq!(stats.requests.len(), 1, "{:?}", stats.requests);
        assert_eq!(stats.requests[&(MODEL.to_owned(), "MODEL_ERROR")], 1);
    }

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
    let server = Server::start(Setup {
        model: Model {
            delay: Duration::from_secs(1),
            ..Model::default()
        },
        ..Setup::default()
    });
    let reply = block_on(async {
        let client = connect(server.address).await;
        let message = frame(&request("late", &[5]).encode_to_vec());
        client
            .call_framed(INFER, message, &[("grpc-timeout", "50m")])
            .await
    });
    assert_eq!(reply.code, Code::DeadlineExceeded, "{reply:?}");
    assert!(reply.message.contains("deadline"), "{reply:?}");

    block_on(server.counted(MODEL, "DEADLINE_EXCEEDED", 1));
    let stats = server.collected();
    assert_eq!(stats.requests.len(), 1, "{:?}", stats.requests);
    assert_eq!(stats.requests[&(MODEL.to_owned(), "DEADLINE_EXCEEDED")], 1);
}

/// A message over a mebibyte (decoded off the front's thread) is answered like a small one,
/// and small calls on the same connection go on meanwhile.
#[test]
fn a_big_message_is_answered() {
    let server = Server::start(Setup::default());
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
/// small one on the same connection afterwards is answered. A prefix that declares little
/// does not let more through: the bytes past the declared message are read as the next
/// message, whose declared length is checked in turn.
#[test]
fn an_oversized_message_is_resource_exhausted() {
    let server = Server::start(Setup {
        limits: limits(|l| l.max_message_size = 1024),
        ..Setup::default()
    });
    block_on(async {
        let client = connect(server.address).await;
        let values: Vec<i64> = (0..1000).collect();
        let big = request("big", &values).encode_to_vec();
        let reply = client.call(INFER, &big).await;
        let expected = format!("Received message larger than max ({} vs. 1024)", big.len());
        assert_eq!(
            reply.refusal(),
            (Code::ResourceExhausted, expected.as_str())
        );

        let reply = client.infer(&request("small", &[9])).await;
        assert_eq!(reply.echoed("small"), [9]);

        let mut lying = BytesMut::new();
        lying.extend_from_slice(&frame(&[0; 10]));
        lying.extend_from_slice(&frame(&vec![0; 50_000]));
        let reply = client.call_framed(INFER, lying.freeze(), &[]).await;
        let expected = "Received message larger than max (50000 vs. 1024)";
        assert_eq!(reply.refusal(), (Code::ResourceExhausted, expected));
    });
}

/// `stop` lets a call in flight finish (its answer arrives), and once it returns the port
/// refuses new connections.
#[test]
fn stop_finishes_calls_in_flight_then_refuses_connections() {
    let (batches, mut batch_taken) = mpsc::unbounded_channel();
    let server = Server::start(Setup {
        model: Model {
            delay: Duration::from_secs(1),
            batches: Some(batches),
            gate: None,
        },
        ..Setup::default()
    });
    block_on(async {
        let client = connect(server.address).await;
        let in_flight =
            tokio::spawn(async move { client.infer(&request("in-flight", &[11, 12])).await });
        next_batch(&mut batch_taken).await;
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
// The small RPCs, health and unknown calls, answered natively

/// ServerLive, ServerMetadata (as given in `ServerInfo`), ModelMetadata and ModelConfig
/// (exactly the messages given in `ServedModel`, with or without the version), ModelReady.
#[test]
fn the_small_rpcs_are_answered_natively() {
    let server = Server::start(Setup::default());
    let live: ServerLiveResponse = server.ask("ServerLive", &ServerLiveRequest {}).decoded();
    assert!(live.live);

    let metadata: ServerMetadataResponse = server
        .ask("ServerMetadata", &ServerMetadataRequest {})
        .decoded();
    assert_eq!(metadata.name, SERVER_NAME);
    assert_eq!(metadata.version, SERVER_VERSION);
    assert_eq!(metadata.extensions, ["model_repository"]);

    for version in ["", VERSION] {
        let asked = ModelMetadataRequest {
            name: MODEL.into(),
            version: version.into(),
        };
        let metadata: ModelMetadataResponse = server.ask("ModelMetadata", &asked).decoded();
        assert_eq!(metadata, echo_metadata());
        let asked = ModelConfigRequest {
            name: MODEL.into(),
            version: version.into(),
        };
        let config: ModelConfigResponse = server.ask("ModelConfig", &asked).decoded();
        assert_eq!(config, echo_config());
        let asked = ModelReadyRequest {
            name: MODEL.into(),
            version: version.into(),
        };
        let ready: ModelReadyResponse = server.ask("ModelReady", &asked).decoded();
        assert!(ready.ready, "version {version:?}");
    }
}

/// Whether the front says the server is ready.
fn server_ready(server: &Server) -> bool {
    let ready: ServerReadyResponse = server.ask("ServerReady", &ServerReadyRequest {}).decoded();
    ready.ready
}

/// Whether the front says `echo` is ready.
fn echo_ready(server: &Server) -> bool {
    let asked = ModelReadyRequest {
        name: MODEL.into(),
        version: String::new(),
    };
    let ready: ModelReadyResponse = server.ask("ModelReady", &asked).decoded();
    ready.ready
}

/// The ModelMetadata answer for `name`.
fn model_metadata(server: &Server, name: &str, version: &str) -> Reply {
    let asked = ModelMetadataRequest {
        name: name.into(),
        version: version.into(),
    };
    server.ask("ModelMetadata", &asked)
}

/// ServerReady is false until every expected model is served and the server is published
/// as serving (all its fronts listen), true then, false again while one is not ready or once
/// it no longer serves; ModelReady follows the model's readiness, and ModelMetadata of a
/// model not ready is UNAVAILABLE.
#[test]
fn server_ready_follows_the_expected_models() {
    let server = Server::launch(Setup::default());
    assert!(!server_ready(&server), "ready before the model is served");
    assert!(!echo_ready(&server));

    server.serve();
    assert!(echo_ready(&server));
    assert!(
        !server_ready(&server),
        "ready before it was published as serving"
    );
    server.front.set_serving(true);
    assert!(server_ready(&server));
    assert!(echo_ready(&server));

    server.front.set_model_ready(MODEL, VERSION, false);
    assert!(!server_ready(&server), "ready with its model not ready");
    assert!(!echo_ready(&server));
    let reply = model_metadata(&server, MODEL, "");
    let expected = "model 'echo' is not ready yet";
    assert_eq!(reply.refusal(), (Code::Unavailable, expected));

    server.front.set_model_ready(MODEL, VERSION, true);
    assert!(server_ready(&server));
    assert_eq!(
        model_metadata(&server, MODEL, "").decoded::<ModelMetadataResponse>(),
        echo_metadata()
    );

    server.front.set_serving(false);
    assert!(!server_ready(&server), "ready once it no longer serves");
    assert!(echo_ready(&server));
}

/// A model the server expects but does not serve yet is UNAVAILABLE, as loading, for
/// ModelInfer and ModelMetadata; it is not ready, nor is the server, though `echo` is.
#[test]
fn an_expected_model_not_served_yet_is_unavailable() {
    let server = Server::start(Setup {
        expected: vec![MODEL.into(), LATE.into()],
        ..Setup::default()
    });
    let expected = "model 'late' is loading and not ready yet";
    let reply = model_metadata(&server, LATE, "");
    assert_eq!(reply.refusal(), (Code::Unavailable, expected));
    let reply = block_on(async {
        let client = connect(server.address).await;
        let late = ModelInferRequest {
            model_name: LATE.into(),
            ..request("early", &[1])
        };
        client.infer(&late).await
    });
    assert_eq!(reply.refusal(), (Code::Unavailable, expected));

    let asked = ModelReadyRequest {
        name: LATE.into(),
        version: String::new(),
    };
    assert!(
        !server
            .ask("ModelReady", &asked)
            .decoded::<ModelReadyResponse>()
            .ready
    );
    assert!(echo_ready(&server));
    assert!(!server_ready(&server), "ready without every expected model");
}

/// A model the front does not serve is NOT_FOUND, naming the models it serves, for
/// ModelInfer, ModelMetadata and ModelConfig, and not ready; a version it does not serve is
/// NOT_FOUND too.
#[test]
fn models_and_versions_not_served_are_not_found() {
    let server = Server::start(Setup::default());
    let unknown = "model 'x' is not served here (models: 'echo')";
    assert_eq!(
        model_metadata(&server, "x", "").refusal(),
        (Code::NotFound, unknown)
    );
    let asked = ModelConfigRequest {
        name: "x".into(),
        version: String::new(),
    };
    assert_eq!(
        server.ask("ModelConfig", &asked).refusal(),
        (Code::NotFound, unknown)
    );
    let asked = ModelReadyRequest {
        name: "x".into(),
        version: String::new(),
    };
    assert!(
        !server
            .ask("ModelReady", &asked)
            .decoded::<ModelReadyResponse>()
            .ready
    );

    let other_version = "model 'echo' has no version '7' here (served versions: '1')";
    assert_eq!(
        model_metadata(&server, MODEL, "7").refusal(),
        (Code::NotFound, other_version)
    );
    block_on(async {
        let client = connect(server.address).await;
        let to_x = ModelInferRequest {
            model_name: "x".into(),
            ..request("u", &[1, 2])
        };
        assert_eq!(
            client.infer(&to_x).await.refusal(),
            (Code::NotFound, unknown)
        );
        let to_7 = ModelInferRequest {
            model_version: "7".into(),
            ..request("v", &[3])
        };
        let reply = client.infer(&to_7).await;
        assert_eq!(reply.refusal(), (Code::NotFound, other_version));
        // The front still answers its own model on the same connection.
        assert_eq!(
            client.infer(&request("mine", &[4])).await.echoed("mine"),
            [4]
        );
    });
}

/// A method the inference service does not have, and a service the front does not have,
/// are UNIMPLEMENTED.
#[test]
fn unknown_methods_and_services_are_unimplemented() {
    let server = Server::start(Setup::default());
    block_on(async {
        let client = connect(server.address).await;
        let reply = client.call(&format!("/{SERVICE}/ModelUnload"), &[]).await;
        assert_eq!(reply.code, Code::Unimplemented, "{reply:?}");
        let reply = client.call("/no.such.Service/Method", &[]).await;
        assert_eq!(reply.code, Code::Unimplemented, "{reply:?}");
        assert_eq!(
            client.infer(&request("after", &[1])).await.echoed("after"),
            [1]
        );
    });
}

/// The serving status Health/Check gives for `service`, or the call's code when it fails.
fn health_status(server: &Server, service: &str) -> Result<ServingStatus, Code> {
    let reply = server.health(service);
    if reply.code != Code::Ok {
        return Err(reply.code);
    }
    Ok(reply.decoded::<HealthCheckResponse>().status())
}

/// Health/Check of "" and of the inference service follows `set_serving` (not serving until
/// then); of the model's name, it follows `set_model_ready` (unknown before the model is
/// served).
#[test]
fn health_follows_serving_and_model_readiness() {
    let server = Server::launch(Setup::default());
    assert_eq!(health_status(&server, ""), Ok(ServingStatus::NotServing));
    assert_eq!(health_status(&server, MODEL), Err(Code::NotFound));

    server.serve();
    assert_eq!(health_status(&server, MODEL), Ok(ServingStatus::Serving));
    server.front.set_serving(true);
    for service in ["", SERVICE] {
        assert_eq!(health_status(&server, service), Ok(ServingStatus::Serving));
    }

    server.front.set_model_ready(MODEL, VERSION, false);
    assert_eq!(health_status(&server, MODEL), Ok(ServingStatus::NotServing));
    assert_eq!(health_status(&server, ""), Ok(ServingStatus::Serving));
    server.front.set_model_ready(MODEL, VERSION, true);
    assert_eq!(health_status(&server, MODEL), Ok(ServingStatus::Serving));

    server.front.set_serving(false);
    for service in ["", SERVICE] {
        assert_eq!(
            health_status(&server, service),
            Ok(ServingStatus::NotServing)
        );
    }
}

// ---------------------------------------------------------------------------------------
// Versions

/// Another version of the stand-in model, with a batcher and a runner of its own. Dropping
/// it opens its gate, closes its batcher and ends its runner.
struct OtherVersion {
    version: String,
    batcher: Arc<Batcher>,
    runner: Option<JoinHandle<()>>,
    gate: Option<Gate>,
}

impl OtherVersion {
    fn start(version: &str, model: Model) -> OtherVersion {
        let batcher = echo_batcher(version);
        let gate = model.gate.clone();
        let runner = run_model(Arc::clone(&batcher), model);
        OtherVersion {
            version: version.into(),
            batcher,
            runner: Some(runner),
            gate,
        }
    }

    /// This version as the front serves it.
    fn served(&self) -> ServedModel {
        ServedModel {
            name: MODEL.into(),
            version: self.version.clone(),
            batcher: Arc::clone(&self.batcher),
            signature: None,
            metadata: echo_metadata(),
            config: echo_config(),
        }
    }
}

impl Drop for OtherVersion {
    fn drop(&mut self) {
        if let Some(gate) = &self.gate {
            gate.open();
        }
        self.batcher.close();
        if let Some(runner) = self.runner.take() {
            let _ = runner.join();
        }
    }
}

/// `request` naming `version` of the model.
fn versioned(id: &str, version: &str, values: &[i64]) -> ModelInferRequest {
    ModelInferRequest {
        model_version: version.into(),
        ..request(id, values)
    }
}

/// Whether the front says `version` of `echo` is ready ("": its default version).
fn version_ready(server: &Server, version: &str) -> bool {
    let asked = ModelReadyRequest {
        name: MODEL.into(),
        version: version.into(),
    };
    server
        .ask("ModelReady", &asked)
        .decoded::<ModelReadyResponse>()
        .ready
}

/// Two versions side by side, each with its own batcher: a request naming a version is
/// answered by that version, one without by the default version (the first served until
/// `set_default_version` names another, which the next request sees). ModelReady, ServerReady
/// and the not-ready refusals follow each version's readiness, the default's for requests
/// without a version.
#[test]
fn requests_go_to_the_version_they_name_or_to_the_default() {
    let server = Server::start(Setup::default());
    let two = OtherVersion::start("2", Model::default());
    server.front.serve(two.served());
    block_on(async {
        let client = connect(server.address).await;
        let reply = client.infer(&request("plain", &[1])).await;
        assert_eq!(reply.echoed_by("plain", VERSION), [1]);
        let reply = client.infer(&versioned("to-2", "2", &[2])).await;
        assert_eq!(reply.echoed_by("to-2", "2"), [2]);
        let reply = client.infer(&versioned("to-1", VERSION, &[3])).await;
        assert_eq!(reply.echoed_by("to-1", VERSION), [3]);
    });

    server
        .front
        .set_default_version(MODEL, "2")
        .expect("version 2 is served");
    assert_eq!(
        server
            .infer(&request("now-2", &[4]))
            .echoed_by("now-2", "2"),
        [4]
    );
    let refused = server.front.set_default_version(MODEL, "7");
    let expected = "model 'echo' has no version '7' here (served versions: '1', '2')";
    assert_eq!(refused, Err(Error::NotFound(expected.into())));
    assert_eq!(
        server.infer(&versioned("to-7", "7", &[5])).refusal(),
        (Code::NotFound, expected)
    );
    let refused = server.front.set_default_version("x", VERSION);
    assert!(matches!(refused, Err(Error::NotFound(_))), "{refused:?}");
    assert_eq!(
        server
            .infer(&request("still-2", &[6]))
            .echoed_by("still-2", "2"),
        [6],
        "a refused default changes nothing"
    );
    for (version, ready) in [("", true), (VERSION, true), ("2", true), ("7", false)] {
        assert_eq!(
            version_ready(&server, version),
            ready,
            "version {version:?}"
        );
    }

    server.front.set_model_ready(MODEL, VERSION, false);
    assert!(!version_ready(&server, VERSION));
    assert!(version_ready(&server, ""), "the default version is ready");
    assert!(server_ready(&server), "the default version is ready");
    let expected = "model 'echo' version '1' is not ready yet";
    assert_eq!(
        model_metadata(&server, MODEL, VERSION).refusal(),
        (Code::Unavailable, expected)
    );
    assert_eq!(
        model_metadata(&server, MODEL, "").decoded::<ModelMetadataResponse>(),
        echo_metadata()
    );

    server.front.set_model_ready(MODEL, "2", false);
    assert!(
        !server_ready(&server),
        "ready with its default version not ready"
    );
    assert_eq!(
        model_metadata(&server, MODEL, "").refusal(),
        (Code::Unavailable, "model 'echo' is not ready yet")
    );
    block_on(server.counted(MODEL, "OK", 5));
}

/// An unserved version is NOT_FOUND, naming the versions left. With its default version
/// unserved and another left, the model is UNAVAILABLE to requests without a version until
/// a default is given again; with every version unserved, it is UNAVAILABLE as loading
/// while expected, NOT_FOUND once not. Served again, its first version is the default.
#[test]
fn an_unserved_version_is_not_found() {
    let server = Server::start(Setup::default());
    let two = OtherVersion::start("2", Model::default());
    server.front.serve(two.served());
    assert!(server.front.unserve(MODEL, "2"));
    assert!(!server.front.unserve(MODEL, "2"), "unserved already");
    let gone = "model 'echo' has no version '2' here (served versions: '1')";
    assert_eq!(
        server.infer(&versioned("to-2", "2", &[1])).refusal(),
        (Code::NotFound, gone)
    );
    assert_eq!(
        model_metadata(&server, MODEL, "2").refusal(),
        (Code::NotFound, gone)
    );
    assert!(!version_ready(&server, "2"));
    assert_eq!(server.infer(&request("plain", &[2])).echoed("plain"), [2]);

    server.front.serve(two.served());
    assert!(server.front.unserve(MODEL, VERSION));
    let no_default = "model 'echo' has no version ready to serve";
    assert_eq!(
        server.infer(&request("plain", &[3])).refusal(),
        (Code::Unavailable, no_default)
    );
    assert_eq!(
        model_metadata(&server, MODEL, "").refusal(),
        (Code::Unavailable, no_default)
    );
    assert!(!version_ready(&server, ""));
    assert!(!server_ready(&server), "ready without a default version");
    assert_eq!(
        server
            .infer(&versioned("to-2", "2", &[4]))
            .echoed_by("to-2", "2"),
        [4]
    );
    server
        .front
        .set_default_version(MODEL, "2")
        .expect("version 2 is served");
    assert_eq!(
        server
            .infer(&request("plain", &[5]))
            .echoed_by("plain", "2"),
        [5]
    );
    assert!(server_ready(&server));

    assert!(server.front.unserve(MODEL, "2"));
    let loading = "model 'echo' is loading and not ready yet";
    assert_eq!(
        server.infer(&request("plain", &[6])).refusal(),
        (Code::Unavailable, loading)
    );
    assert!(!server_ready(&server));
    server.front.set_expected(Vec::new());
    let unknown = "model 'echo' is not served here (models: none)";
    assert_eq!(
        server.infer(&request("plain", &[7])).refusal(),
        (Code::NotFound, unknown)
    );
    assert_eq!(
        server.infer(&versioned("to-2", "2", &[8])).refusal(),
        (Code::NotFound, unknown)
    );
    assert!(server_ready(&server), "no model is expected");

    server.front.set_expected(vec![MODEL.into()]);
    server.serve();
    server.front.serve(two.served());
    assert_eq!(server.infer(&request("back", &[9])).echoed("back"), [9]);
}

/// A request a version has taken is answered after that version is unserved (its batcher
/// drains), while new requests naming it are NOT_FOUND.
#[test]
fn a_request_in_flight_on_an_unserved_version_is_answered() {
    let server = Server::start(Setup::default());
    let (batches, mut taken) = mpsc::unbounded_channel();
    let gate = Gate::default();
    let two = OtherVersion::start(
        "2",
        Model {
            batches: Some(batches),
            gate: Some(gate.clone()),
            ..Model::default()
        },
    );
    server.front.serve(two.served());
    let address = server.address;
    let asking = std::thread::spawn(move || {
        block_on(async move {
            let client = connect(address).await;
            client.infer(&versioned("held", "2", &[5])).await
        })
    });
    assert_eq!(
        block_on(next_batch(&mut taken)),
        1,
        "version 2 took the call"
    );
    assert!(server.front.unserve(MODEL, "2"));
    assert_eq!(
        server.infer(&versioned("late", "2", &[6])).refusal().0,
        Code::NotFound
    );
    gate.open();
    let reply = asking.join().expect("the client's thread");
    assert_eq!(reply.echoed_by("held", "2"), [5]);
    block_on(server.counted(MODEL, "OK", 1));
}

/// A Health/Watch stream's statuses, as they come.
struct Watch {
    body: h2::RecvStream,
    received: BytesMut,
}

impl Watch {
    async fn open(client: &Client, service: &str) -> Watch {
        let request = HealthCheckRequest {
            service: service.into(),
        };
        let (response, mut upload) = client.open(HEALTH_WATCH, &[]).await;
        upload
            .send_data(frame(&request.encode_to_vec()), true)
            .expect("the watch's request is sent");
        let response = tokio::time::timeout(CALL_LIMIT, response)
            .await
            .expect("the watch is answered")
            .expect("the front answers");
        assert!(
            grpc_code(response.headers()).is_none(),
            "the watch is refused: {:?}",
            response.headers()
        );
        Watch {
            body: response.into_body(),
            received: BytesMut::new(),
        }
    }

    /// The next status, or None when none comes within `wait`.
    async fn next_within(&mut self, wait: Duration) -> Option<ServingStatus> {
        let give_up = tokio::time::Instant::now() + wait;
        loop {
            if self.received.len() >= 5 {
                let len = u32::from_be_bytes(self.received[1..5].try_into().unwrap()) as usize;
                if self.received.len() >= 5 + len {
                    let mut message = self.received.split_to(5 + len);
                    message.advance(5);
                    let response = HealthCheckResponse::decode(message.freeze())
                        .expect("a HealthCheckResponse");
                    return Some(response.status());
                }
            }
            let chunk = tokio::time::timeout_at(give_up, self.body.data())
                .await
                .ok()?
                .expect("the watch goes on")
                .expect("the watch's data arrives");
            let _ = self.body.flow_control().release_capacity(chunk.len());
            self.received.extend_from_slice(&chunk);
        }
    }

    async fn next(&mut self) -> ServingStatus {
        self.next_within(CALL_LIMIT)
            .await
            .unwrap_or_else(|| panic!("no status within {CALL_LIMIT:?}"))
    }
}

/// A runtime for a test's client side that outlives one call, so that a stream stays open
/// while the test changes the front (from outside the runtime). Declared after the server,
/// it is dropped first.
fn client_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

/// A Watch of the model's health follows its default version: told when the default
/// changes to a version of other readiness, or the default's readiness changes, or the
/// default is unserved; nothing when another version changes, or when nothing changed.
#[test]
fn model_health_follows_the_default_version() {
    let server = Server::start(Setup::default());
    let two = OtherVersion::start("2", Model::default());
    let client_side = client_runtime();
    let (_client, mut watch) = client_side.block_on(async {
        let client = connect(server.address).await;
        let watch = Watch::open(&client, MODEL).await;
        (client, watch)
    });
    assert_eq!(client_side.block_on(watch.next()), ServingStatus::Serving);

    server.front.serve(two.served());
    server.front.set_model_ready(MODEL, "2", false);
    assert_eq!(
        client_side.block_on(watch.next_within(QUIET)),
        None,
        "a version other than the default changes nothing"
    );
    server
        .front
        .set_default_version(MODEL, "2")
        .expect("version 2 is served");
    assert_eq!(
        client_side.block_on(watch.next()),
        ServingStatus::NotServing
    );
    server.front.set_model_ready(MODEL, "2", true);
    assert_eq!(client_side.block_on(watch.next()), ServingStatus::Serving);
    assert_eq!(health_status(&server, MODEL), Ok(ServingStatus::Serving));

    server.front.set_model_ready(MODEL, VERSION, false);
    server.front.set_model_ready(MODEL, "2", true);
    server.front.serve(two.served());
    assert_eq!(
        client_side.block_on(watch.next_within(QUIET)),
        None,
        "nothing changed for the default version"
    );
    assert!(server.front.unserve(MODEL, "2"));
    assert_eq!(
        client_side.block_on(watch.next()),
        ServingStatus::NotServing
    );
    server
        .front
        .set_default_version(MODEL, VERSION)
        .expect("version 1 is served");
    assert_eq!(
        client_side.block_on(watch.next_within(QUIET)),
        None,
        "the new default is not ready either"
    );
    server.front.set_model_ready(MODEL, VERSION, true);
    assert_eq!(client_side.block_on(watch.next()), ServingStatus::Serving);
}

// ---------------------------------------------------------------------------------------
// The model repository methods

/// A stand-in for Python's repository handler: an index of one model; a load of "missing"
/// is NOT_FOUND, of "broken" INVALID_ARGUMENT, of "slow" waits for its gate; everything else
/// is done. It keeps what it was asked and on which threads.
#[derive(Default)]
struct FakeRepository {
    calls: Mutex<Vec<(RepositoryMethod, Bytes)>>,
    threads: Mutex<Vec<Option<String>>>,
    slow: Gate,
}

impl FakeRepository {
    fn calls(&self) -> Vec<(RepositoryMethod, Bytes)> {
        self.calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl RepositoryHandler for FakeRepository {
    fn call(&self, method: RepositoryMethod, request: Bytes) -> Result<Vec<u8>, Error> {
        let thread = std::thread::current().name().map(str::to_owned);
        self.threads
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(thread);
        self.calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((method, request.clone()));
        match method {
            RepositoryMethod::Index => Ok(RepositoryIndexResponse {
                models: vec![ModelIndex {
                    name: MODEL.into(),
                    version: VERSION.into(),
                    state: "READY".into(),
                    reason: String::new(),
                }],
            }
            .encode_to_vec()),
            RepositoryMethod::ModelLoad => {
                let asked = RepositoryModelLoadRequest::decode(request)
                    .map_err(|e| Error::Internal(e.to_string()))?;
                match asked.model_name.as_str() {
                    "missing" => Err(Error::NotFound(
                        "no model 'missing' in the repository".into(),
                    )),
                    "broken" => Err(Error::request("the model 'broken' cannot be read")),
                    "slow" => {
                        self.slow.wait();
                        Ok(RepositoryModelLoadResponse {}.encode_to_vec())
                    }
                    _ => Ok(RepositoryModelLoadResponse {}.encode_to_vec()),
                }
            }
            RepositoryMethod::ModelUnload => Ok(RepositoryModelUnloadResponse {}.encode_to_vec()),
        }
    }
}

/// A RepositoryModelLoad request for `model`.
fn load(model: &str) -> RepositoryModelLoadRequest {
    RepositoryModelLoadRequest {
        repository_name: String::new(),
        model_name: model.into(),
        parameters: HashMap::new(),
    }
}

const REPOSITORY_METHODS: [&str; 3] = [
    "RepositoryIndex",
    "RepositoryModelLoad",
    "RepositoryModelUnload",
];

/// Without a handler the repository methods are UNIMPLEMENTED; with one, each request
/// reaches it as sent, on a thread other than the front's, and its answer or error (by the
/// error's gRPC code, with its message) is the call's. A malformed request does not reach
/// it. Removing the handler makes them UNIMPLEMENTED again.
#[test]
fn the_repository_methods_are_answered_by_the_handler() {
    let server = Server::start(Setup::default());
    for method in REPOSITORY_METHODS {
        let expected = format!("Method not found: {SERVICE}/{method}");
        let reply = server.ask(method, &RepositoryIndexRequest::default());
        assert_eq!(reply.refusal(), (Code::Unimplemented, expected.as_str()));
    }

    let repository = Arc::new(FakeRepository::default());
    server
        .front
        .set_repository_handler(Some(Arc::clone(&repository) as Arc<dyn RepositoryHandler>));
    let asked = RepositoryIndexRequest {
        repository_name: String::new(),
        ready: true,
    };
    let index: RepositoryIndexResponse = server.ask("RepositoryIndex", &asked).decoded();
    assert_eq!(index.models.len(), 1);
    assert_eq!(
        (
            index.models[0].name.as_str(),
            index.models[0].state.as_str()
        ),
        (MODEL, "READY")
    );

    let with_config = RepositoryModelLoadRequest {
        parameters: HashMap::from([(
            "config".into(),
            ModelRepositoryParameter {
                parameter_choice: Some(ParameterChoice::StringParam("{}".into())),
            },
        )]),
        ..load("other")
    };
    let _: RepositoryModelLoadResponse = server.ask("RepositoryModelLoad", &with_config).decoded();
    let unload = RepositoryModelUnloadRequest {
        repository_name: String::new(),
        model_name: "other".into(),
        parameters: HashMap::new(),
    };
    let _: RepositoryModelUnloadResponse = server.ask("RepositoryModelUnload", &unload).decoded();
    let calls = repository.calls();
    assert_eq!(
        calls,
        [
            (RepositoryMethod::Index, Bytes::from(asked.encode_to_vec())),
            (
                RepositoryMethod::ModelLoad,
                Bytes::from(with_config.encode_to_vec())
            ),
            (
                RepositoryMethod::ModelUnload,
                Bytes::from(unload.encode_to_vec())
            ),
        ]
    );

    assert_eq!(
        server
            .ask("RepositoryModelLoad", &load("missing"))
            .refusal(),
        (Code::NotFound, "no model 'missing' in the repository")
    );
    assert_eq!(
        server.ask("RepositoryModelLoad", &load("broken")).refusal(),
        (Code::InvalidArgument, "the model 'broken' cannot be read")
    );
    let malformed = block_on(async {
        let client = connect(server.address).await;
        let path = format!("/{SERVICE}/RepositoryModelLoad");
        client.call(&path, &[0xff, 0xff, 0xff]).await
    });
    assert_eq!(malformed.code, Code::Internal, "{malformed:?}");
    assert_eq!(
        repository.calls().len(),
        5,
        "the malformed request was not passed on"
    );
    let threads = repository
        .threads
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    assert!(
        threads
            .iter()
            .all(|thread| thread.as_deref() != Some("grpc-front")),
        "{threads:?}"
    );

    server.front.set_repository_handler(None);
    for method in REPOSITORY_METHODS {
        let reply = server.ask(method, &RepositoryIndexRequest::default());
        assert_eq!(reply.code, Code::Unimplemented, "{method}: {reply:?}");
    }
}

/// A load that takes its time holds up no other call: inference on the same connection is
/// answered meanwhile. A call whose deadline passes first is DEADLINE_EXCEEDED.
#[test]
fn a_slow_repository_call_holds_up_nothing_else() {
    let server = Server::start(Setup::default());
    let repository = Arc::new(FakeRepository::default());
    server
        .front
        .set_repository_handler(Some(Arc::clone(&repository) as Arc<dyn RepositoryHandler>));
    let path = format!("/{SERVICE}/RepositoryModelLoad");
    block_on(async {
        let client = connect(server.address).await;
        let loading = {
            let client = client.clone();
            tokio::spawn(async move { client.ask("RepositoryModelLoad", &load("slow")).await })
        };
        until("the slow load reaches the handler", || {
            !repository.calls().is_empty()
        })
        .await;
        let reply = client.infer(&request("meanwhile", &[7])).await;
        assert_eq!(reply.echoed("meanwhile"), [7]);
        let body = frame(&load("slow").encode_to_vec());
        let reply = client
            .call_framed(&path, body, &[("grpc-timeout", "100m")])
            .await;
        assert_eq!(reply.code, Code::DeadlineExceeded, "{reply:?}");
        assert!(!loading.is_finished(), "the slow load is not done yet");

        repository.slow.open();
        let reply = loading.await.expect("the load's task");
        let _: RepositoryModelLoadResponse = reply.decoded();
    });
}

/// The handler runs two repository calls at once: a flood of them waits for its turn
/// (holding no thread, within its deadline) instead of filling the blocking pool.
#[test]
fn repository_calls_take_turns() {
    let server = Server::start(Setup::default());
    let repository = Arc::new(FakeRepository::default());
    server
        .front
        .set_repository_handler(Some(Arc::clone(&repository) as Arc<dyn RepositoryHandler>));
    block_on(async {
        let client = connect(server.address).await;
        let loads: Vec<_> = (0..4)
            .map(|_| {
                let client = client.clone();
                tokio::spawn(async move { client.ask("RepositoryModelLoad", &load("slow")).await })
            })
            .collect();
        until("two loads reach the handler", || {
            repository.calls().len() == 2
        })
        .await;
        let body = frame(&RepositoryIndexRequest::default().encode_to_vec());
        let path = format!("/{SERVICE}/RepositoryIndex");
        let waited = client
            .call_framed(&path, body, &[("grpc-timeout", "100m")])
            .await;
        assert_eq!(waited.code, Code::DeadlineExceeded, "{waited:?}");
        assert_eq!(repository.calls().len(), 2, "no third call ran meanwhile");

        repository.slow.open();
        for loading in loads {
            let _: RepositoryModelLoadResponse = loading.await.expect("a load's task").decoded();
        }
        assert_eq!(
            repository.calls().len(),
            4,
            "the index that gave up never ran"
        );
    });
}

/// Server reflection describes the repository methods and their messages.
#[test]
fn reflection_describes_the_repository_methods() {
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};

    let server = Server::start(Setup::default());
    let symbols = [
        "inference.GRPCInferenceService.RepositoryIndex",
        "inference.GRPCInferenceService.RepositoryModelLoad",
        "inference.GRPCInferenceService.RepositoryModelUnload",
        "inference.RepositoryIndexResponse.ModelIndex",
        "inference.ModelRepositoryParameter",
    ];
    let mut body = BytesMut::new();
    for symbol in symbols {
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(symbol.into())),
        };
        body.extend_from_slice(&frame(&request.encode_to_vec()));
    }
    let reply = block_on(async {
        let client = connect(server.address).await;
        client.call_framed(REFLECTION, body.freeze(), &[]).await
    });
    assert_eq!(reply.code, Code::Ok, "{reply:?}");
    assert_eq!(reply.messages.len(), symbols.len());
    for (framed, symbol) in reply.messages.iter().zip(symbols) {
        let response = ServerReflectionResponse::decode(framed.message.clone())
            .expect("a ServerReflectionResponse");
        match response.message_response {
            Some(MessageResponse::FileDescriptorResponse(files)) => {
                assert!(!files.file_descriptor_proto.is_empty(), "{symbol}");
            }
            other => panic!("{symbol}: {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// ModelStreamInfer

/// Several requests on one stream are answered in their order, each in a response of its
/// own; a request the front refuses is answered in-band with INVALID_ARGUMENT's text (as a
/// unary call gets it), and the requests after it are answered too.
#[test]
fn a_stream_answers_in_order_and_refusals_in_band() {
    let server = Server::start(Setup::default());
    block_on(async {
        let client = connect(server.address).await;
        let unary = client.infer(&short_request("bad")).await;
        assert_eq!(unary.code, Code::InvalidArgument, "{unary:?}");

        let values: [&[i64]; 5] = [&[0], &[1, 2], &[], &[3], &[4, 5, 6]];
        let requests: Vec<ModelInferRequest> = values
            .iter()
            .enumerate()
            .map(|(n, values)| match n {
                2 => short_request("bad"),
                _ => request(&format!("s-{n}"), values),
            })
            .collect();
        let reply = client
            .call_framed(STREAM_INFER, frames(&requests), &[])
            .await;
        let responses = reply.stream_responses();
        assert_eq!(responses.len(), requests.len(), "{responses:?}");
        for (n, (response, values)) in responses.iter().zip(values).enumerate() {
            if n == 2 {
                assert_eq!(response.error_message, unary.message);
                assert_eq!(response.infer_response, None);
            } else {
                assert_eq!(stream_echoed(response, &format!("s-{n}")), values);
            }
        }
    });
    block_on(server.counted(MODEL, "OK", 4));
}

/// With the model busy, the requests of two streams and two unary calls queue; the model
/// then takes them all as one batch, and each gets its own answer.
#[test]
fn streams_and_unary_calls_batch_together() {
    let (batches, mut batch_sizes) = mpsc::unbounded_channel();
    let gate = Gate::default();
    let server = Server::start(Setup {
        model: Model {
            batches: Some(batches),
            gate: Some(gate.clone()),
            ..Model::default()
        },
        ..Setup::default()
    });
    block_on(async {
        let client = connect(server.address).await;
        let busy = client.clone();
        let blocker = tokio::spawn(async move { busy.infer(&request("blocker", &[0])).await });
        assert_eq!(next_batch(&mut batch_sizes).await, 1);

        let mut streams = JoinSet::new();
        for stream in ["a", "b"] {
            let client = client.clone();
            streams.spawn(async move {
                let ids = [format!("{stream}-0"), format!("{stream}-1")];
                let requests = [request(&ids[0], &[1]), request(&ids[1], &[2, 3])];
                let reply = client
                    .call_framed(STREAM_INFER, frames(&requests), &[])
                    .await;
                let responses = reply.stream_responses();
                assert_eq!(responses.len(), 2, "{responses:?}");
                assert_eq!(stream_echoed(&responses[0], &ids[0]), [1]);
                assert_eq!(stream_echoed(&responses[1], &ids[1]), [2, 3]);
            });
        }
        let mut calls = JoinSet::new();
        for n in 0..2 {
            let client = client.clone();
            calls.spawn(async move {
                let id = format!("unary-{n}");
                assert_eq!(client.infer(&request(&id, &[n])).await.echoed(&id), [n]);
            });
        }
        until("the 6 requests are queued", || server.batcher.depth() == 6).await;
        gate.open();

        let reply = blocker.await.expect("the blocker is answered");
        assert_eq!(reply.echoed("blocker"), [0]);
        while let Some(stream) = streams.join_next().await {
            stream.expect("each stream is answered");
        }
        while let Some(call) = calls.join_next().await {
            call.expect("each call is answered");
        }
    });
    assert_eq!(
        reported(&mut batch_sizes),
        [6],
        "one batch of every queued request"
    );
}

/// A client that resets its stream (RST_STREAM) while its requests wait in the queue: they
/// are counted CANCELLED and leave the queue unrun (the model never sees them).
#[test]
fn a_cancelled_stream_leaves_the_queue() {
    let (batches, mut batch_sizes) = mpsc::unbounded_channel();
    let gate = Gate::default();
    let server = Server::start(Setup {
        model: Model {
            batches: Some(batches),
            gate: Some(gate.clone()),
            ..Model::default()
        },
        ..Setup::default()
    });
    block_on(async {
        let client = connect(server.address).await;
        let busy = client.clone();
        let blocker = tokio::spawn(async move { busy.infer(&request("blocker", &[0])).await });
        assert_eq!(next_batch(&mut batch_sizes).await, 1);

        let requests: Vec<ModelInferRequest> = (1..=3)
            .map(|n| request(&format!("gone-{n}"), &[n]))
            .collect();
        let (response, mut upload) = client.start_call(STREAM_INFER, frames(&requests)).await;
        until("the stream's 3 requests are queued", || {
            server.batcher.depth() == 3
        })
        .await;
        upload.send_reset(h2::Reason::CANCEL);
        drop(response);
        server.counted(MODEL, "CANCELLED", 3).await;

        gate.open();
        assert_eq!(blocker.await.expect("the blocker").echoed("blocker"), [0]);
        let reply = client.infer(&request("after", &[9])).await;
        assert_eq!(reply.echoed("after"), [9]);
    });
    assert_eq!(
        reported(&mut batch_sizes),
        [1],
        "the model ran only the call after the stream"
    );
    block_on(server.counted(MODEL, "OK", 2));
    let stats = server.collected();
    assert_eq!(stats.requests[&(MODEL.to_owned(), "CANCELLED")], 3);
    assert_eq!(stats.requests.len(), 2, "{:?}", stats.requests);
}

/// A stream holds at most `max_concurrent_streams` of its requests in flight: with a limit
/// of 4, 12 requests on one stream never make a batch of more than 4, and all are answered
/// in order.
#[test]
fn a_stream_holds_at_most_the_stream_limit_in_flight() {
    const LIMIT: u32 = 4;
    const REQUESTS: usize = 12;
    let (batches, mut batch_sizes) = mpsc::unbounded_channel();
    let server = Server::start(Setup {
        model: Model {
            delay: Duration::from_millis(20),
            batches: Some(batches),
            gate: None,
        },
        limits: limits(|l| l.max_concurrent_streams = LIMIT),
        ..Setup::default()
    });
    block_on(async {
        let client = connect(server.address).await;
        let requests: Vec<ModelInferRequest> = (0..REQUESTS as i64)
            .map(|n| request(&format!("s-{n}"), &[n]))
            .collect();
        let reply = client
            .call_framed(STREAM_INFER, frames(&requests), &[])
            .await;
        let responses = reply.stream_responses();
        assert_eq!(responses.len(), REQUESTS);
        for (n, response) in responses.iter().enumerate() {
            assert_eq!(stream_echoed(response, &format!("s-{n}")), [n as i64]);
        }
    });
    let sizes = reported(&mut batch_sizes);
    assert_eq!(sizes.iter().sum::<usize>(), REQUESTS);
    assert!(
        sizes.iter().all(|&n| n <= LIMIT as usize),
        "batches of {sizes:?} requests: more than the limit were in flight"
    );
}

// ---------------------------------------------------------------------------------------
// Compression

/// A request body of one gzip-compressed message (compressed flag 1).
fn gzip_body(request: &ModelInferRequest) -> Bytes {
    frame_as(1, &gzip(&request.encode_to_vec()))
}

/// A gzip-compressed request (`grpc-encoding: gzip`, compressed flag 1) is answered; the
/// answer is not compressed, as the client did not say it accepts gzip.
#[test]
fn a_gzip_request_is_answered() {
    let server = Server::start(Setup::default());
    let reply = block_on(async {
        let client = connect(server.address).await;
        let body = gzip_body(&request("zipped", &[3, 4]));
        client
            .call_framed(INFER, body, &[("grpc-encoding", "gzip")])
            .await
    });
    assert_eq!(reply.echoed("zipped"), [3, 4]);
    assert_eq!(reply.headers.get("grpc-encoding"), None);
}

/// A gzip request from a client that accepts gzip (`grpc-accept-encoding: gzip`) gets its
/// answer compressed: the response says `grpc-encoding: gzip`, its message has flag 1 and
/// decompresses to the right answer. The front compresses only as the request was: an
/// uncompressed request from the same client gets an uncompressed answer.
#[test]
fn a_gzip_request_accepting_gzip_gets_a_gzip_answer() {
    let server = Server::start(Setup::default());
    let (zipped, plain) = block_on(async {
        let client = connect(server.address).await;
        let body = gzip_body(&request("zip", &[5, 6]));
        let headers = [("grpc-encoding", "gzip"), ("grpc-accept-encoding", "gzip")];
        let zipped = client.call_framed(INFER, body, &headers).await;
        let body = frame(&request("plain", &[7]).encode_to_vec());
        let headers = [("grpc-accept-encoding", "gzip")];
        let plain = client.call_framed(INFER, body, &headers).await;
        (zipped, plain)
    });
    assert_eq!(zipped.code, Code::Ok, "{zipped:?}");
    assert_eq!(
        zipped
            .headers
            .get("grpc-encoding")
            .map(HeaderValue::as_bytes),
        Some(&b"gzip"[..])
    );
    assert_eq!(zipped.messages.len(), 1, "{zipped:?}");
    assert!(zipped.messages[0].compressed, "flag 1");
    let message = gunzip(&zipped.messages[0].message);
    let response = ModelInferResponse::decode(&message[..]).expect("a ModelInferResponse");
    assert_eq!(echoed(&response, "zip"), [5, 6]);

    assert_eq!(plain.echoed("plain"), [7]);
    assert_eq!(plain.headers.get("grpc-encoding"), None);
}

// ---------------------------------------------------------------------------------------
// Transports: TLS, mutual TLS, certificate reload, Unix sockets

/// With a certificate made by a test CA, the front serves over TLS, choosing HTTP/2 by
/// ALPN, to a client that trusts that CA.
#[test]
fn tls_serves_a_client_that_trusts_the_certificate() {
    let dir = TempDir::new();
    let authority = Authority::new("test CA");
    let server = Server::start(Setup {
        tls: Some(tls_files(&dir, &authority.server(), None)),
        ..Setup::default()
    });
    block_on(async {
        let client = tls_client(server.address, authority.client_config(None)).await;
        assert_eq!(client.infer(&request("tls", &[1])).await.echoed("tls"), [1]);
        let stranger = Authority::new("another CA");
        assert!(refused(server.address, stranger.client_config(None)).await);
    });
}

/// With a client CA (mutual TLS), a client without a certificate is refused, as is one
/// whose certificate another CA signed; one with a certificate the client CA signed is
/// served.
#[test]
fn mutual_tls_refuses_a_client_without_a_certificate() {
    let dir = TempDir::new();
    let authority = Authority::new("test CA");
    let clients = Authority::new("client CA");
    let server = Server::start(Setup {
        tls: Some(tls_files(&dir, &authority.server(), Some(&clients))),
        ..Setup::default()
    });
    block_on(async {
        assert!(refused(server.address, authority.client_config(None)).await);
        let stranger = Authority::new("another CA").client();
        assert!(refused(server.address, authority.client_config(Some(&stranger))).await);

        let identity = clients.client();
        let config = authority.client_config(Some(&identity));
        assert!(!refused(server.address, Arc::clone(&config)).await);
        let client = tls_client(server.address, config).await;
        assert_eq!(
            client.infer(&request("mtls", &[2])).await.echoed("mtls"),
            [2]
        );
    });
}

/// `reload_tls` reads the certificate files again: new connections get the new
/// certificate (a client trusting only the old CA is refused, one trusting the new CA is
/// served), while a connection opened before goes on working. A front without TLS has
/// nothing to reload.
#[test]
fn reload_tls_swaps_the_certificate_for_new_connections() {
    let dir = TempDir::new();
    let old = Authority::new("old CA");
    let new = Authority::new("new CA");
    let files = tls_files(&dir, &old.server(), None);
    let server = Server::start(Setup {
        tls: Some(files.clone()),
        ..Setup::default()
    });
    block_on(async {
        let before = tls_client(server.address, old.client_config(None)).await;
        assert_eq!(before.infer(&request("old", &[1])).await.echoed("old"), [1]);

        // Reloading reads files only: it does not block on the front's runtime.
        new.server().install(&files);
        assert!(server.front.reload_tls().expect("the new files load"));

        assert!(refused(server.address, old.client_config(None)).await);
        let after = tls_client(server.address, new.client_config(None)).await;
        assert_eq!(after.infer(&request("new", &[2])).await.echoed("new"), [2]);
        let reply = before.infer(&request("kept", &[3])).await;
        assert_eq!(reply.echoed("kept"), [3]);
    });

    let plain = Server::start(Setup::default());
    assert!(!plain.front.reload_tls().expect("nothing to reload"));
}

/// A front listening on a Unix socket answers ModelInfer there (and on its TCP port), and
/// removes the socket file when it stops.
#[test]
fn a_unix_socket_answers_model_infer() {
    let dir = TempDir::new();
    let path = dir.join("front.sock");
    let server = Server::start(Setup {
        unix: Some(path.clone()),
        ..Setup::default()
    });
    block_on(async {
        let socket = UnixStream::connect(&path)
            .await
            .expect("the front accepts on its socket");
        let (client, _) = Client::over(socket, "localhost").await;
        assert_eq!(
            client.infer(&request("unix", &[8])).await.echoed("unix"),
            [8]
        );
        let tcp = connect(server.address).await;
        assert_eq!(tcp.infer(&request("tcp", &[9])).await.echoed("tcp"), [9]);
    });
    server.front.stop(Duration::from_secs(5));
    assert!(!path.exists(), "the socket file is removed");
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
        tcp.write_all(PREFACE).await.expect("the preface is sent");
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

/// The front advertises its stream limit in its SETTINGS; a client that opens more calls
/// than that on one connection has the extra ones wait (h2 queues them), so the model never
/// sees more than the limit at once, and every call is answered.
#[test]
fn streams_per_connection_are_limited_and_advertised() {
    const STREAMS: u32 = 4;
    const CALLS: usize = 12;
    let (batches, mut batch_sizes) = mpsc::unbounded_channel();
    let server = Server::start(Setup {
        model: Model {
            delay: Duration::from_millis(100),
            batches: Some(batches),
            gate: None,
        },
        limits: limits(|l| l.max_concurrent_streams = STREAMS),
        ..Setup::default()
    });
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
    let sizes = reported(&mut batch_sizes);
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
    let server = Server::start(Setup {
        limits: limits(|l| {
            l.max_message_size = 80_000;
            l.max_inflight_bytes = BUDGET;
        }),
        ..Setup::default()
    });
    block_on(async {
        let client = connect(server.address).await;
        let held = frame(&request_of_about("held", 60_000).encode_to_vec());
        let (held_reply, mut held_rest) = client.start_call(INFER, held.slice(..1000)).await;
        // The front reserves the held call's bytes once its prefix arrives.
        until("the held call is reserved", || {
            server.front.inflight_bytes() >= 60_000
        })
        .await;

        let second = frame(&request_of_about("second", 50_000).encode_to_vec());
        let (reply, _unsent) = client.start_call(INFER, second.slice(..1000)).await;
        let reply = tokio::time::timeout(CALL_LIMIT, read_reply(reply))
            .await
            .expect("the refusal comes before the body is sent");
        assert_eq!(reply.code, Code::ResourceExhausted, "{reply:?}");
        assert!(reply.message.contains("--max-inflight-bytes"), "{reply:?}");
        assert!(reply.message.contains(&format!("{BUDGET}")), "{reply:?}");

        held_rest
            .send_data(held.slice(1000..), true)
            .expect("the rest of the held call is sent");
        let reply = tokio::time::timeout(CALL_LIMIT, read_reply(held_reply))
            .await
            .expect("the held call is answered");
        assert_eq!(reply.echoed("held").len(), 60_000 / 8);

        let reply = client.call_framed(INFER, second, &[]).await;
        assert_eq!(reply.echoed("second").len(), 50_000 / 8);
        let reply = client.infer(&request("small", &[3])).await;
        assert_eq!(reply.echoed("small"), [3]);
    });
    // The front gives a call's bytes back once the call is over on its side, which may be
    // just after the client has its answer.
    block_on(until("every reservation is given back", || {
        server.front.inflight_bytes() == 0
    }));
    block_on(server.counted("", "RESOURCE_EXHAUSTED", 1));
    assert_eq!(server.count("", "RESOURCE_EXHAUSTED"), 1);
}

/// Past `max_connections` a new connection is closed at once (and counted); once a
/// connection ends, a new one is served.
#[test]
fn connections_past_the_limit_are_closed() {
    let server = Server::start(Setup {
        limits: limits(|l| l.max_connections = 2),
        ..Setup::default()
    });
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
    block_on(server.counted("", "CONNECTION_REFUSED", 1));
}

/// A connection without calls for the idle timeout is closed; one whose call takes longer
/// than that is not (the idle time counts from the call's end); a new connection is served
/// afterwards.
#[test]
fn an_idle_connection_is_closed() {
    const IDLE: Duration = Duration::from_millis(400);
    const DELAY: Duration = Duration::from_millis(800);
    let server = Server::start(Setup {
        model: Model {
            delay: DELAY,
            ..Model::default()
        },
        limits: limits(|l| l.idle_timeout = Some(IDLE)),
        ..Setup::default()
    });
    block_on(async {
        let (client, driving) = connect_watched(server.address).await;
        let started = Instant::now();
        // The call outlasts the idle timeout: a connection with a call open is not idle.
        let reply = client.infer(&request("slow", &[4])).await;
        assert_eq!(reply.echoed("slow"), [4]);
        tokio::time::timeout(CALL_LIMIT, driving)
            .await
            .expect("the idle connection is closed")
            .expect("the connection task ends");
        let waited = started.elapsed();
        assert!(
            waited >= DELAY + IDLE,
            "closed {waited:?} after its call started: the idle timeout ran while the call \
             was open"
        );

        let client = connect(server.address).await;
        assert_eq!(client.infer(&request("new", &[5])).await.echoed("new"), [5]);
    });
}

/// A peer that stops answering PINGs is PINGed, then dropped no sooner than the keepalive
/// timeout; a peer that answers them keeps its connection across several PING intervals,
/// and its calls are answered.
#[test]
fn a_peer_that_stops_answering_pings_is_dropped() {
    const INTERVAL: Duration = Duration::from_millis(200);
    const TIMEOUT: Duration = Duration::from_secs(1);
    let server = Server::start(Setup {
        limits: limits(|l| {
            l.keepalive_interval = Some(INTERVAL);
            l.keepalive_timeout = TIMEOUT;
        }),
        ..Setup::default()
    });
    block_on(async {
        let started = Instant::now();
        let mut peer = RawPeer::connect(server.address).await;
        let mut pinged = false;
        let closed = tokio::time::timeout(CALL_LIMIT, async {
            while let Some(frame) = peer.frame().await {
                pinged |= frame.kind == PING;
            }
        })
        .await;
        assert!(closed.is_ok(), "the silent peer is still connected");
        assert!(pinged, "the front sent a PING first");
        let waited = started.elapsed();
        assert!(waited >= TIMEOUT, "dropped after {waited:?}");

        let (client, driving) = connect_watched(server.address).await;
        tokio::time::sleep(INTERVAL * 10).await;
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

// ---------------------------------------------------------------------------------------
// Models served by another process, on its Unix socket

/// A front that serves nothing itself, routing `echo` to a server on a Unix socket: every
/// call naming `echo` (ModelInfer, a stream's messages, ModelReady, ModelMetadata) is
/// answered by the other server, its refusals included; ServerReady and `echo`'s health
/// follow `set_remote_ready`; once the other server is gone, calls are UNAVAILABLE; and
/// once the route is removed, `echo` is unknown again.
#[test]
fn a_routed_model_is_answered_by_the_process_serving_it() {
    let dir = TempDir::new();
    let path = dir.join("model.sock");
    let backend = Server::start(Setup {
        unix: Some(path.clone()),
        ..Setup::default()
    });
    let router = Server::launch(Setup {
        expected: vec![],
        ..Setup::default()
    });
    router.front.route_to(MODEL, Some(path.clone()));
    router.front.set_serving(true);

    let ready = |server: &Server| -> bool {
        let answer: ServerReadyResponse =
            server.ask("ServerReady", &ServerReadyRequest {}).decoded();
        answer.ready
    };
    assert!(!ready(&router), "not ready before the routed model is");
    assert_eq!(router.health(MODEL).code, Code::Ok);
    router.front.set_remote_ready(MODEL, true);
    assert!(ready(&router));

    block_on(async {
        let client = connect(router.address).await;
        assert_eq!(
            client.infer(&request("far", &[4, 2])).await.echoed("far"),
            [4, 2]
        );
        let refused = client.infer(&short_request("bad")).await;
        let direct = connect(backend.address)
            .await
            .infer(&short_request("bad"))
            .await;
        assert_eq!(refused.code, Code::InvalidArgument, "{refused:?}");
        assert_eq!(refused.message, direct.message);
        let unknown_version = ModelInferRequest {
            model_version: "9".into(),
            ..request("v9", &[1])
        };
        assert_eq!(client.infer(&unknown_version).await.code, Code::NotFound);

        let requests = [
            request("s-0", &[1]),
            short_request("bad"),
            request("s-2", &[2, 3]),
        ];
        let reply = client
            .call_framed(STREAM_INFER, frames(&requests), &[])
            .await;
        let responses = reply.stream_responses();
        assert_eq!(responses.len(), 3, "{responses:?}");
        assert_eq!(stream_echoed(&responses[0], "s-0"), [1]);
        assert_eq!(responses[1].error_message, direct.message);
        assert_eq!(stream_echoed(&responses[2], "s-2"), [2, 3]);

        let asked = ModelMetadataRequest {
            name: MODEL.into(),
            version: String::new(),
        };
        let metadata: ModelMetadataResponse = client.ask("ModelMetadata", &asked).await.decoded();
        assert_eq!(metadata, echo_metadata());
    });
    block_on(backend.counted(MODEL, "OK", 3));
    assert_eq!(
        router.count(MODEL, "OK"),
        0,
        "the router counts nothing it forwards"
    );

    router.front.set_remote_ready(MODEL, false);
    assert!(!ready(&router));
    drop(backend);
    let gone = router.infer(&request("gone", &[1]));
    assert_eq!(gone.code, Code::Unavailable, "{gone:?}");

    router.front.route_to(MODEL, None);
    assert!(ready(&router), "nothing routed, nothing expected: ready");
    assert_eq!(router.infer(&request("none", &[1])).code, Code::NotFound);
}

/// A front's Unix socket file replaced by a successor's (moved onto its path) is left
/// alone when the front stops: the path leads to the successor from then on.
#[test]
fn a_successor_socket_moved_onto_the_path_survives_the_stop() {
    let dir = TempDir::new();
    let path = dir.join("model.sock");
    let staged = dir.join("model.sock.next");
    let first = Server::start(Setup {
        unix: Some(path.clone()),
        ..Setup::default()
    });
    let second = Server::start(Setup {
        unix: Some(staged.clone()),
        ..Setup::default()
    });
    std::fs::rename(&staged, &path).expect("the successor's socket takes the path");
    first.front.stop(Duration::from_secs(5));
    assert!(path.exists(), "the successor's socket file stays");
    block_on(async {
        let socket = UnixStream::connect(&path)
            .await
            .expect("the successor accepts on the path");
        let (client, _) = Client::over(socket, "localhost").await;
        assert_eq!(
            client.infer(&request("next", &[3])).await.echoed("next"),
            [3]
        );
    });
    drop(second);
}

/// A stand-in for the process serving a routed model: records the W3C headers of every call
/// on the first connection made to `path`, and answers each UNAVAILABLE.
fn recording_model_process(path: &std::path::Path) -> Arc<Mutex<Vec<(String, String)>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorded = Arc::clone(&seen);
    let listener = std::os::unix::net::UnixListener::bind(path).expect("the socket binds");
    listener.set_nonblocking(true).expect("non-blocking");
    std::thread::spawn(move || {
        block_on(async move {
            let listener = tokio::net::UnixListener::from_std(listener).expect("a listener");
            let (stream, _) = listener.accept().await.expect("the router connects");
            let mut connection = h2::server::handshake(stream).await.expect("HTTP/2");
            while let Some(Ok((request, mut respond))) = connection.accept().await {
                let header = |name: &str| {
                    request
                        .headers()
                        .get(name)
                        .and_then(|value| value.to_str().ok())
                        .unwrap_or("")
                        .to_owned()
                };
                recorded
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push((header("traceparent"), header("tracestate")));
                let response = http::Response::builder()
                    .header("content-type", "application/grpc")
                    .header("grpc-status", "14")
                    .header("grpc-message", "stand-in")
                    .body(())
                    .expect("a response");
                respond
                    .send_response(response, true)
                    .expect("the answer is sent");
            }
        });
    });
    seen
}

#[test]
fn a_routed_call_carries_the_callers_trace_context() {
    let dir = TempDir::new();
    let path = dir.join("model.sock");
    let seen = recording_model_process(&path);
    let router = Server::launch(Setup {
        expected: vec![],
        ..Setup::default()
    });
    router.front.route_to(MODEL, Some(path));
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let context = [("traceparent", traceparent), ("tracestate", "vendor=1")];
    block_on(async {
        let client = connect(router.address).await;
        let unary = client
            .call_framed(
                INFER,
                frame(&request("far", &[1]).encode_to_vec()),
                &context,
            )
            .await;
        assert_eq!(unary.code, Code::Unavailable, "{unary:?}");
        let streamed = client
            .call_framed(STREAM_INFER, frames(&[request("s-0", &[1])]), &context)
            .await;
        assert_eq!(streamed.stream_responses().len(), 1, "{streamed:?}");
        let metadata = ModelMetadataRequest {
            name: MODEL.into(),
            version: String::new(),
        };
        let path = format!("/{SERVICE}/ModelMetadata");
        let asked = client
            .call_framed(&path, frame(&metadata.encode_to_vec()), &[])
            .await;
        assert_eq!(asked.code, Code::Unavailable, "{asked:?}");
    });
    let expected = (traceparent.to_owned(), "vendor=1".to_owned());
    assert_eq!(
        *seen.lock().unwrap_or_else(PoisonError::into_inner),
        [expected.clone(), expected, (String::new(), String::new())]
    );
}

/// A Flight client of the front at `address`.
async fn flight_client(
    address: SocketAddr,
) -> arrow_flight::flight_service_client::FlightServiceClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .expect("an endpoint")
        .connect()
        .await
        .expect("a connection");
    arrow_flight::flight_service_client::FlightServiceClient::new(channel)
}

/// Record batches of one INT64 column `x`, two rows each, the `i`th holding `values(i)`.
fn flight_batches(values: impl Fn(i64) -> [i64; 2]) -> Vec<arrow_array::RecordBatch> {
    (0..5)
        .map(|i| {
            let column = arrow_array::Int64Array::from(values(i).to_vec());
            arrow_array::RecordBatch::try_from_iter([(
                "x",
                Arc::new(column) as arrow_array::ArrayRef,
            )])
            .expect("a record batch")
        })
        .collect()
}

/// Streams `batches` to the echo model over DoExchange; the answers, until the first error.
async fn flight_exchange(
    address: SocketAddr,
    batches: Vec<arrow_array::RecordBatch>,
) -> (Vec<arrow_array::RecordBatch>, Option<tonic::Status>) {
    use futures::{StreamExt, TryStreamExt};
    let mut client = flight_client(address).await;
    let descriptor = arrow_flight::FlightDescriptor::new_path(vec![MODEL.into()]);
    let sent = arrow_flight::encode::FlightDataEncoderBuilder::new()
        .with_flight_descriptor(Some(descriptor))
        .build(futures::stream::iter(batches.into_iter().map(Ok)))
        .map(|data| data.expect("encoded"));
    let answers = client
        .do_exchange(sent)
        .await
        .expect("an exchange")
        .into_inner();
    let mut decoded = arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(
        answers.map_err(arrow_flight::error::FlightError::from),
    );
    let mut received = Vec::new();
    loop {
        match decoded.try_next().await {
            Ok(Some(batch)) => received.push(batch),
            Ok(None) => return (received, None),
            Err(error) => return (received, Some(tonic::Status::from(error))),
        }
    }
}

/// DoExchange: each record batch is a request to the model's batcher, answered in order,
/// row for row, and counted as ModelInfer's calls are.
#[test]
fn flight_exchanges_answer_each_batch_in_order() {
    let server = Server::start(Setup::default());
    let batches = flight_batches(|i| [i * 10, i * 10 + 1]);
    let (answers, error) = block_on(flight_exchange(server.address, batches.clone()));
    assert!(error.is_none(), "{error:?}");
    assert_eq!(answers.len(), batches.len());
    for (sent, answer) in batches.iter().zip(&answers) {
        assert_eq!(answer.schema().field(0).name(), "out");
        assert_eq!(answer.column(0).as_ref(), sent.column(0).as_ref());
    }
    block_on(server.counted(MODEL, "OK", 5));
}

/// A batch the model fails ends the exchange with the status ModelInfer would give, after
/// the answers of the batches before it; the front keeps serving.
#[test]
fn a_failed_flight_batch_ends_the_exchange_with_its_status() {
    let server = Server::start(Setup::default());
    let batches = flight_batches(|i| if i == 2 { [POISON, 0] } else { [i, i] });
    let (answers, error) = block_on(flight_exchange(server.address, batches.clone()));
    let status = error.expect("the exchange failed");
    assert_eq!(status.code(), tonic::Code::Internal, "{status:?}");
    assert!(status.message().contains("refuses"), "{status:?}");
    assert!(answers.len() <= 2, "{} answers", answers.len());
    let (again, error) = block_on(flight_exchange(server.address, flight_batches(|i| [i, i])));
    assert!(error.is_none() && again.len() == 5, "{error:?}");
}
