//! The gRPC front: an HTTP/2 server on a thread of its own that answers ModelInfer for the
//! models it holds without the Python interpreter (decode, signature, queueing and the
//! response all happen here; only the model's runner thread runs Python, once per batch),
//! and passes every other call to the backend, the process's grpcio server on a Unix
//! socket, which keeps the small RPCs, health and reflection.
//!
//! What a client can make it hold is bounded (`Limits`): streams per connection,
//! connections, bytes of requests in flight; a connection whose peer stops answering PINGs,
//! or that carries no call for the idle timeout, is closed.

#![deny(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

pub mod budget;
mod infer;
mod proxy;
pub mod stats;
pub mod wire;

use std::collections::HashMap;
use std::future::poll_fn;
use std::net::ToSocketAddrs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{Ping, RecvStream};
use http::Request;
use socket2::{Domain, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::batch::Batcher;
use crate::signature::Signature;
use budget::ByteBudget;
use proxy::{forward, Backend, Body};
use stats::Stats;

/// HTTP/2 windows large enough that a big request is not held back by flow control
/// (the protocol's default is 64 KiB).
const STREAM_WINDOW: u32 = 1 << 20;
const CONNECTION_WINDOW: u32 = 1 << 24;
/// Large DATA frames: a 180 KB request arrives in one piece.
const MAX_FRAME_SIZE: u32 = 1 << 20;
/// Request headers per call (grpcio takes 8 KiB of metadata by default): a client cannot
/// make the front hold megabytes of header per stream.
const MAX_HEADER_LIST_SIZE: u32 = 64 << 10;
/// The pause after a failed accept before the next.
const ACCEPT_RETRY: Duration = Duration::from_millis(10);

/// The status a refused connection is counted with (model "").
pub const CONNECTION_REFUSED: &str = "CONNECTION_REFUSED";
/// The status a call refused by a transport limit (message size, bytes in flight) is
/// counted with.
pub const RESOURCE_EXHAUSTED: &str = "RESOURCE_EXHAUSTED";

/// What a client can make the front hold.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The largest request message read.
    pub max_message_size: usize,
    /// Bytes of request messages held at once, over all calls; at least `max_message_size`.
    pub max_inflight_bytes: usize,
    /// Streams a client may open at once on one connection (SETTINGS_MAX_CONCURRENT_STREAMS).
    pub max_concurrent_streams: u32,
    /// Connections served at once; past it, new ones are closed at once.
    pub max_connections: usize,
    /// How often a connection is PINGed; None: never.
    pub keepalive_interval: Option<Duration>,
    /// How long a PING may wait for its answer before the connection is dropped (also the
    /// time a new connection has to start HTTP/2).
    pub keepalive_timeout: Duration,
    /// A connection without calls for this long is closed (GOAWAY); None: never.
    pub idle_timeout: Option<Duration>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_size: 256 << 20,
            max_inflight_bytes: 1 << 30,
            max_concurrent_streams: 128,
            max_connections: 1024,
            keepalive_interval: Some(Duration::from_secs(60)),
            keepalive_timeout: Duration::from_secs(20),
            idle_timeout: Some(Duration::from_secs(300)),
        }
    }
}

impl Limits {
    /// What is wrong with these limits, if anything.
    pub fn check(&self) -> Result<(), String> {
        if self.max_message_size == 0 {
            return Err("max_message_size must be positive".into());
        }
        if self.max_inflight_bytes < self.max_message_size {
            return Err(format!(
                "max_inflight_bytes ({}) must be at least max_message_size ({})",
                self.max_inflight_bytes, self.max_message_size
            ));
        }
        if self.max_concurrent_streams == 0 || self.max_connections == 0 {
            return Err("max_concurrent_streams and max_connections must be positive".into());
        }
        if self.keepalive_timeout.is_zero() {
            return Err("keepalive_timeout must be positive".into());
        }
        Ok(())
    }
}

/// A model the front answers for.
pub struct ServedModel {
    pub name: String,
    pub version: String,
    pub batcher: Arc<Batcher>,
    pub signature: Option<Signature>,
}

struct Shared {
    models: RwLock<HashMap<String, Arc<ServedModel>>>,
    stats: Stats,
    backend: Backend,
    limits: Limits,
    /// Request bytes held by calls in flight.
    inflight: Arc<ByteBudget>,
}

impl Shared {
    /// The model a request names, when the front holds it in the version asked for.
    fn model(&self, name: &str, version: &str) -> Option<Arc<ServedModel>> {
        let models = self.models.read().unwrap_or_else(PoisonError::into_inner);
        let model = models.get(name)?;
        (version.is_empty() || version == model.version).then(|| Arc::clone(model))
    }
}

/// A listening socket on `host:port` (port 0: any free one). `reuse_port`: several
/// processes share the port, the kernel spreading connections over them; without it a port
/// already in use is an error.
pub fn listen(host: &str, port: u16, reuse_port: bool) -> std::io::Result<std::net::TcpListener> {
    let address = (host, port).to_socket_addrs()?.next().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no address for {host}"),
        )
    })?;
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(reuse_port)?;
    socket.bind(&address.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// A running front.
pub struct Front {
    shared: Arc<Shared>,
    /// Set once, to the grace period in-flight calls get, when the front should stop.
    stop: watch::Sender<Option<Duration>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Front {
    /// Serves on `listener` (already bound and listening) from a new thread; calls it does
    /// not answer itself go to the grpcio server listening on the Unix socket `backend`.
    /// Limits that make no sense (`Limits::check`) are an `InvalidInput` error.
    pub fn start(
        listener: std::net::TcpListener,
        backend: PathBuf,
        limits: Limits,
    ) -> std::io::Result<Front> {
        limits
            .check()
            .map_err(|problem| std::io::Error::new(std::io::ErrorKind::InvalidInput, problem))?;
        listener.set_nonblocking(true)?;
        let shared = Arc::new(Shared {
            models: RwLock::new(HashMap::new()),
            stats: Stats::default(),
            backend: Backend::new(backend),
            inflight: ByteBudget::new(limits.max_inflight_bytes),
            limits,
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (stop, stopped) = watch::channel(None);
        let serving = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("grpc-front".to_owned())
            .spawn(move || {
                runtime.block_on(async move {
                    match TcpListener::from_std(listener) {
                        Ok(listener) => accept_loop(listener, serving, stopped).await,
                        Err(e) => eprintln!("the gRPC front cannot listen: {e}"),
                    }
                });
            })?;
        Ok(Front {
            shared,
            stop,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Answers ModelInfer for `model` from now on.
    pub fn serve(&self, model: ServedModel) {
        let mut models = self
            .shared
            .models
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        models.insert(model.name.clone(), Arc::new(model));
    }

    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    /// Whether the front's thread still serves (it ends only when stopped, or when its
    /// listener could not be used).
    pub fn is_running(&self) -> bool {
        self.thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .is_some_and(|thread| !thread.is_finished())
    }

    /// Request bytes held by calls in flight now.
    pub fn inflight_bytes(&self) -> usize {
        self.shared.inflight.used()
    }

    /// The process's budget of request bytes in flight, for the other fronts to share.
    pub fn budget(&self) -> &ByteBudget {
        &self.shared.inflight
    }

    /// Stops taking connections, lets calls in flight finish for up to `grace`, then ends
    /// the front's thread.
    pub fn stop(&self, grace: Duration) {
        let _ = self.stop.send(Some(grace));
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<Option<Duration>>,
) {
    let mut connections = JoinSet::new();
    let grace = loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((socket, _)) if connections.len() >= shared.limits.max_connections => {
                    // Closed at once: the client learns now, and may try another server.
                    drop(socket);
                    shared.stats.count("", CONNECTION_REFUSED);
                }
                Ok((socket, _)) => {
                    connections.spawn(serve_connection(socket, Arc::clone(&shared), stop.clone()));
                }
                // Out of file descriptors, say: retrying at once would spin.
                Err(_) => tokio::time::sleep(ACCEPT_RETRY).await,
            },
            // Ended connections leave the set, so that its size is the connections served.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            changed = stop.changed() => {
                if changed.is_err() {
                    break Duration::ZERO;
                }
                if let Some(grace) = *stop.borrow() {
                    break grace;
                }
            }
        }
    };
    drop(listener);
    let drained = async { while connections.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(grace, drained).await;
}

/// The calls open on one connection; told when the last one ends.
#[derive(Default)]
struct OpenCalls {
    count: AtomicUsize,
    none_left: Notify,
}

/// One open call; its end is counted when dropped.
struct OpenCall(Arc<OpenCalls>);

impl OpenCalls {
    fn open(self: &Arc<Self>) -> OpenCall {
        self.count.fetch_add(1, Ordering::AcqRel);
        OpenCall(Arc::clone(self))
    }

    fn any(&self) -> bool {
        self.count.load(Ordering::Acquire) > 0
    }
}

impl Drop for OpenCall {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.none_left.notify_one();
        }
    }
}

/// Sleeps until `at`; forever when None.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// `now + after`, or None when that cannot be represented (then it never comes).
fn later(now: Instant, after: Option<Duration>) -> Option<Instant> {
    now.checked_add(after?)
}

async fn serve_connection(
    socket: TcpStream,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<Option<Duration>>,
) {
    let _ = socket.set_nodelay(true);
    let limits = &shared.limits;
    let handshake = h2::server::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_header_list_size(MAX_HEADER_LIST_SIZE)
        .max_concurrent_streams(limits.max_concurrent_streams)
        // h2's guard against rapid reset closes a connection whose client resets more than
        // 20 streams (its default) before they are accepted; clients cancelling calls at
        // their deadlines under load did that in the soak run. As many as the client may
        // open at once keeps the guard and spares honest cancellations.
        .max_pending_accept_reset_streams(limits.max_concurrent_streams as usize)
        .handshake::<_, Bytes>(socket);
    // A peer that connects and never speaks HTTP/2 does not hold a connection for long.
    let Ok(Ok(mut connection)) = tokio::time::timeout(limits.keepalive_timeout, handshake).await
    else {
        return;
    };
    let mut stopping = stop.borrow().is_some();
    if stopping {
        connection.graceful_shutdown();
    }
    let mut pings = connection.ping_pong();
    let calls = Arc::new(OpenCalls::default());
    let mut idle_since = Instant::now();
    let mut next_ping = later(idle_since, limits.keepalive_interval);
    // Set while a PING waits for its answer: when the connection is given up.
    let mut pong_due: Option<Instant> = None;
    // Set once an idle connection was told GOAWAY: when it is dropped if still open.
    let mut closing_by: Option<Instant> = None;
    loop {
        let idle_at = if stopping || calls.any() {
            None
        } else {
            later(idle_since, limits.idle_timeout)
        };
        tokio::select! {
            next = connection.accept() => match next {
                Some(Ok((request, respond))) => {
                    let call = calls.open();
                    let shared = Arc::clone(&shared);
                    tokio::spawn(async move {
                        handle(request, respond, shared).await;
                        drop(call);
                    });
                }
                Some(Err(_)) | None => return,
            },
            changed = stop.changed(), if !stopping => {
                if changed.is_err() || stop.borrow().is_some() {
                    // GOAWAY: calls in flight finish, new ones go elsewhere.
                    connection.graceful_shutdown();
                    stopping = true;
                }
            }
            () = calls.none_left.notified() => idle_since = Instant::now(),
            () = sleep_until(idle_at) => {
                connection.graceful_shutdown();
                stopping = true;
                closing_by = later(Instant::now(), Some(limits.keepalive_timeout));
            }
            () = sleep_until(closing_by) => return,
            () = sleep_until(pong_due.or(next_ping)) => {
                if pong_due.is_some() {
                    // No answer in time: the peer is gone (or not listening).
                    return;
                }
                let sent = pings.as_mut().is_some_and(|p| p.send_ping(Ping::opaque()).is_ok());
                if sent {
                    pong_due = later(Instant::now(), Some(limits.keepalive_timeout));
                } else {
                    next_ping = None;
                }
            }
            pong = poll_fn(|cx| match pings.as_mut() {
                Some(pings) => pings.poll_pong(cx),
                None => std::task::Poll::Pending,
            }), if pong_due.is_some() => {
                if pong.is_err() {
                    return;
                }
                pong_due = None;
                next_ping = later(Instant::now(), limits.keepalive_interval);
            }
        }
    }
}

async fn handle(request: Request<RecvStream>, respond: SendResponse<Bytes>, shared: Arc<Shared>) {
    if request.uri().path() == infer::PATH {
        infer::model_infer(request, respond, shared).await;
    } else {
        let (parts, body) = request.into_parts();
        forward(parts, Body::Streaming(body), respond, &shared.backend).await;
    }
}
