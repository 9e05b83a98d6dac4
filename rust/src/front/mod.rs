//! The gRPC front: an HTTP/2 server on a thread of its own that answers ModelInfer for the
//! models it holds without the Python interpreter (decode, signature, queueing and the
//! response all happen here; only the model's runner thread runs Python, once per batch),
//! and passes every other call to the backend, the process's grpcio server on a Unix
//! socket, which keeps the small RPCs, health and reflection.

mod infer;
mod proxy;
pub mod stats;
pub mod wire;

use std::collections::HashMap;
use std::net::ToSocketAddrs;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::RecvStream;
use http::Request;
use socket2::{Domain, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::batch::Batcher;
use crate::signature::Signature;
use proxy::{forward, Backend, Body};
use stats::Stats;

/// HTTP/2 windows large enough that a big request is not held back by flow control
/// (the protocol's default is 64 KiB).
const STREAM_WINDOW: u32 = 1 << 20;
const CONNECTION_WINDOW: u32 = 1 << 24;
/// Large DATA frames: a 180 KB request arrives in one piece.
const MAX_FRAME_SIZE: u32 = 1 << 20;
/// The pause after a failed accept before the next.
const ACCEPT_RETRY: Duration = Duration::from_millis(10);

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
    max_message_size: usize,
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
    pub fn start(
        listener: std::net::TcpListener,
        backend: PathBuf,
        max_message_size: usize,
    ) -> std::io::Result<Front> {
        listener.set_nonblocking(true)?;
        let shared = Arc::new(Shared {
            models: RwLock::new(HashMap::new()),
            stats: Stats::default(),
            backend: Backend::new(backend),
            max_message_size,
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
                Ok((socket, _)) => {
                    connections.spawn(serve_connection(socket, Arc::clone(&shared), stop.clone()));
                }
                // Out of file descriptors, say: retrying at once would spin.
                Err(_) => tokio::time::sleep(ACCEPT_RETRY).await,
            },
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

async fn serve_connection(
    socket: TcpStream,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<Option<Duration>>,
) {
    let _ = socket.set_nodelay(true);
    let handshake = h2::server::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .handshake::<_, Bytes>(socket);
    let Ok(mut connection) = handshake.await else {
        return;
    };
    let mut stopping = stop.borrow().is_some();
    if stopping {
        connection.graceful_shutdown();
    }
    loop {
        tokio::select! {
            next = connection.accept() => match next {
                Some(Ok((request, respond))) => {
                    tokio::spawn(handle(request, respond, Arc::clone(&shared)));
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
