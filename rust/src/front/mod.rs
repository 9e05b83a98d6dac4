//! The gRPC front: the process's one gRPC server, tonic on hyper's HTTP/2, on a thread of
//! its own. It serves the whole gRPC surface without the Python interpreter:
//! `inference.GRPCInferenceService` (ModelInfer and ModelStreamInfer through the native
//! decoder and the models' batchers; the small RPCs from per-model state Python sets when a
//! model loads), `grpc.health.v1.Health` (tonic-health) and server reflection v1 and v1alpha
//! (tonic-reflection). Only a model's runner thread runs Python, once per batch, and the
//! repository handler, when one is set, for the model repository methods (on tokio's
//! blocking pool).
//!
//! A model may be served in several versions side by side, each with its own batcher; a
//! request names one, or gets the model's default version.
//!
//! It listens on TCP, a Unix socket, or both, in the clear or with TLS (rustls; mutual TLS
//! with a client CA; certificates reloadable without dropping connections).
//!
//! What a client can make it hold is bounded (`Limits`): streams per connection,
//! connections, bytes of requests in flight; a connection whose peer stops answering PINGs,
//! or that carries no call for the idle timeout, is closed.
//!
//! Hand-written gRPC is limited to what tonic has no hook for: reading each message's
//! declared length as it arrives, to reserve its bytes before it is buffered (`metered`),
//! and the `grpc-timeout` header, whose expiry is DEADLINE_EXCEEDED here (`deadline`).

#![deny(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

pub mod budget;
mod codec;
mod connection;
pub mod deadline;
mod flight;
mod forward;
mod infer;
pub mod metered;
mod models;
mod observe;
mod repository;
mod router;
mod service;
pub mod stats;
mod stream;
pub mod tls;
pub mod unsent;

use std::future::poll_fn;
use std::net::ToSocketAddrs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::task::Poll;
use std::thread::JoinHandle;
use std::time::Duration;

use socket2::{Domain, Socket, Type};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::batch::Batcher;
use crate::proto::{ModelConfigResponse, ModelMetadataResponse};
use crate::signature::Signature;
use budget::ByteBudget;
use models::ModelTable;
pub use repository::{RepositoryHandler, RepositoryMethod};
use router::Router;
pub use service::grpc_code;
use stats::Stats;
use tls::{Tls, TlsFiles};

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
    /// Streams a client may open at once on one connection (SETTINGS_MAX_CONCURRENT_STREAMS);
    /// also the messages one ModelStreamInfer stream may have in flight.
    pub max_concurrent_streams: u32,
    /// Connections served at once; past it, new ones are closed at once.
    pub max_connections: usize,
    /// How often a connection is PINGed; None: never.
    pub keepalive_interval: Option<Duration>,
    /// How long a PING may wait for its answer before the connection is dropped (also the
    /// time a new connection has for its TLS handshake).
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

/// Who the server says it is (ServerMetadata).
#[derive(Debug, Clone, Default)]
pub struct ServerInfo {
    pub name: String,
    pub version: String,
    pub extensions: Vec<String>,
}

/// A version of a model the front answers for, with what the small RPCs say of it.
pub struct ServedModel {
    pub name: String,
    pub version: String,
    pub batcher: Arc<Batcher>,
    pub signature: Option<Signature>,
    pub metadata: ModelMetadataResponse,
    pub config: ModelConfigResponse,
}

/// What the serving tasks share.
struct Shared {
    models: ModelTable,
    server: ServerInfo,
    stats: Stats,
    limits: Limits,
    /// Request bytes held by calls in flight.
    inflight: Arc<ByteBudget>,
    /// What answers the model repository methods; None: they are UNIMPLEMENTED.
    repository: RwLock<Option<Arc<dyn RepositoryHandler>>>,
    /// Repository calls running in Python at once; the rest wait here, holding no thread.
    repository_calls: Arc<tokio::sync::Semaphore>,
    /// Models served by other processes, and where.
    routes: forward::Routes,
}

impl Shared {
    fn repository_handler(&self) -> Option<Arc<dyn RepositoryHandler>> {
        self.repository
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
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

/// A listening Unix socket at `path`. Anything already at the path is an error: whoever
/// starts the front removes a stale socket file first.
pub fn listen_unix(path: &Path) -> std::io::Result<std::os::unix::net::UnixListener> {
    std::os::unix::net::UnixListener::bind(path)
}

/// Where the front listens: TCP, a Unix socket, or both; and the Arrow Flight port, which
/// serves the same services (clients of Flight expect a port of its own).
#[derive(Default)]
pub struct Listeners {
    pub tcp: Option<std::net::TcpListener>,
    pub unix: Option<(std::os::unix::net::UnixListener, PathBuf)>,
    pub flight: Option<std::net::TcpListener>,
}

/// A running front.
pub struct Front {
    shared: Arc<Shared>,
    tls: Option<Arc<Tls>>,
    runtime: tokio::runtime::Handle,
    /// Set once, to the grace period in-flight calls get, when the front should stop.
    stop: watch::Sender<Option<Duration>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// The Unix socket's file and its inode, removed when the front stops if it is still
    /// this front's (a successor's socket may have been moved onto the path meanwhile).
    socket_file: Option<(PathBuf, u64)>,
}

impl Front {
    /// Serves on `listeners` (already bound) from a new thread, with TLS when `tls` names
    /// certificate files. `expected` names the models the server must serve to be ready.
    /// Limits that make no sense (`Limits::check`), listeners it cannot use or certificates
    /// it cannot read are an error.
    pub fn start(
        listeners: Listeners,
        limits: Limits,
        tls: Option<TlsFiles>,
        server: ServerInfo,
        expected: Vec<String>,
    ) -> std::io::Result<Front> {
        limits
            .check()
            .map_err(|problem| std::io::Error::new(std::io::ErrorKind::InvalidInput, problem))?;
        if listeners.tcp.is_none() && listeners.unix.is_none() && listeners.flight.is_none() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the gRPC front needs a TCP port or a Unix socket",
            ));
        }
        let tls = tls.map(Tls::load).transpose()?.map(Arc::new);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        // Listeners are registered with the runtime that polls them.
        let (tcp, unix, socket_file) = {
            let _entered = runtime.enter();
            let tcp = [listeners.tcp, listeners.flight]
                .into_iter()
                .flatten()
                .map(|listener| {
                    listener.set_nonblocking(true)?;
                    TcpListener::from_std(listener)
                })
                .collect::<std::io::Result<Vec<_>>>()?;
            let (unix, socket_file) = match listeners.unix {
                Some((listener, path)) => {
                    listener.set_nonblocking(true)?;
                    let inode = std::fs::metadata(&path)?.ino();
                    (Some(UnixListener::from_std(listener)?), Some((path, inode)))
                }
                None => (None, None),
            };
            (tcp, unix, socket_file)
        };
        let shared = Arc::new(Shared {
            models: ModelTable::new(expected),
            server,
            stats: Stats::default(),
            inflight: ByteBudget::new(limits.max_inflight_bytes),
            limits,
            repository: RwLock::new(None),
            repository_calls: Arc::new(tokio::sync::Semaphore::new(repository::CALLS_AT_ONCE)),
            routes: forward::Routes::default(),
        });
        let router = Router::new(Arc::clone(&shared))?;
        // Not serving until Python says the models are ready.
        runtime.block_on(shared.models.publish_server_health(false));
        runtime.block_on(shared.models.publish_liveness());
        let (stop, stopped) = watch::channel(None);
        let handle = runtime.handle().clone();
        let serving_tls = tls.clone();
        let thread = std::thread::Builder::new()
            .name("grpc-front".to_owned())
            .spawn(move || {
                runtime.block_on(accept_loop(tcp, unix, router, serving_tls, stopped));
                // A repository call still running on the blocking pool finishes on its own:
                // stopping does not wait for a model load.
                runtime.shutdown_background();
            })?;
        Ok(Front {
            shared,
            tls,
            runtime: handle,
            stop,
            thread: Mutex::new(Some(thread)),
            socket_file,
        })
    }

    /// Answers for this version of the model from now on (ModelInfer and the small RPCs),
    /// ready at once, in place of a version of the same name and version served before
    /// (whose calls in flight still finish); it becomes the model's default version when
    /// the model has none. This and the other setters of the model table wait on the
    /// front's runtime: call them from outside any tokio runtime (Python's threads do).
    pub fn serve(&self, model: ServedModel) {
        let name = model.name.clone();
        self.shared.models.serve(model);
        self.publish_model_health(&name);
    }

    /// Stops answering for `version` of `name`: requests naming it are NOT_FOUND from now
    /// on; those it already took still finish (its batcher is not touched). When it was the
    /// default version, the model has none until `set_default_version` or `serve` gives
    /// one. False when that version was not served.
    pub fn unserve(&self, name: &str, version: &str) -> bool {
        let removed = self.shared.models.unserve(name, version);
        self.publish_model_health(name);
        removed
    }

    /// Makes `version` (served) the version of `name` a request without one gets, from the
    /// next request on. NOT_FOUND when that version is not served.
    pub fn set_default_version(&self, name: &str, version: &str) -> crate::error::Result<()> {
        self.shared.models.set_default(name, version)?;
        self.publish_model_health(name);
        Ok(())
    }

    /// Whether `version` of `name` is ready (ModelReady; and the model's health service
    /// when it is the default version, told only of changes); a version not served is not
    /// changed.
    pub fn set_model_ready(&self, name: &str, version: &str, ready: bool) {
        self.shared.models.set_ready(name, version, ready);
        self.publish_model_health(name);
    }

    /// Replaces the names the server must serve to be ready. A name no longer expected and
    /// not served is NOT_FOUND, no longer UNAVAILABLE as loading.
    pub fn set_expected(&self, names: Vec<String>) {
        self.shared.models.set_expected(names);
    }

    /// Forwards every call naming model `name` (ModelInfer, ModelStreamInfer's messages,
    /// ModelMetadata, ModelReady, ModelConfig) to the gRPC server on the Unix socket
    /// `socket`, from the next call on; not ready until `set_remote_ready` says so. None
    /// stops routing it.
    pub fn route_to(&self, name: &str, socket: Option<PathBuf>) {
        let routed = socket.is_some();
        self.shared.routes.set(name, socket);
        self.shared
            .models
            .publish_routed_health(&self.runtime, name, routed.then_some(false));
    }

    /// Whether routed model `name` is ready (its health; ServerReady waits for every routed
    /// model). A name not routed is not changed.
    pub fn set_remote_ready(&self, name: &str, ready: bool) {
        if self.shared.routes.set_ready(name, ready) {
            self.shared
                .models
                .publish_routed_health(&self.runtime, name, Some(ready));
        }
    }

    /// What answers RepositoryIndex, RepositoryModelLoad and RepositoryModelUnload from now
    /// on; None: they are UNIMPLEMENTED.
    pub fn set_repository_handler(&self, handler: Option<Arc<dyn RepositoryHandler>>) {
        *self
            .shared
            .repository
            .write()
            .unwrap_or_else(PoisonError::into_inner) = handler;
    }

    fn publish_model_health(&self, name: &str) {
        self.shared.models.publish_model_health(&self.runtime, name);
    }

    /// Whether the server as a whole serves: health of "" and of the inference service.
    pub fn set_serving(&self, serving: bool) {
        self.runtime
            .block_on(self.shared.models.publish_server_health(serving));
    }

    /// Reads the certificate files again; new connections use them, open ones keep theirs.
    /// Without TLS there is nothing to reload.
    pub fn reload_tls(&self) -> std::io::Result<bool> {
        match &self.tls {
            Some(tls) => tls.reload().map(|()| true),
            None => Ok(false),
        }
    }

    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    /// Whether the front's thread still serves (it ends only when stopped).
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
    /// the front's thread and removes its Unix socket file.
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
        if let Some((path, inode)) = &self.socket_file {
            if std::fs::metadata(path).is_ok_and(|found| found.ino() == *inode) {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

/// An accepted connection, before TLS.
enum Accepted {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

/// The next connection on any listener.
async fn accept(tcp: &[TcpListener], unix: Option<&UnixListener>) -> std::io::Result<Accepted> {
    poll_fn(|cx| {
        for listener in tcp {
            if let Poll::Ready(accepted) = listener.poll_accept(cx) {
                return Poll::Ready(accepted.map(|(socket, _)| Accepted::Tcp(socket)));
            }
        }
        if let Some(listener) = unix {
            if let Poll::Ready(accepted) = listener.poll_accept(cx) {
                return Poll::Ready(accepted.map(|(socket, _)| Accepted::Unix(socket)));
            }
        }
        Poll::Pending
    })
    .await
}

async fn accept_loop(
    tcp: Vec<TcpListener>,
    unix: Option<UnixListener>,
    router: Router,
    tls: Option<Arc<Tls>>,
    mut stop: watch::Receiver<Option<Duration>>,
) {
    let limits = router.limits().clone();
    let mut connections = JoinSet::new();
    let grace = loop {
        tokio::select! {
            accepted = accept(&tcp, unix.as_ref()) => match accepted {
                Ok(_) if connections.len() >= limits.max_connections => {
                    // Closed at once: the client learns now, and may try another server.
                    router.count_refused_connection();
                }
                Ok(accepted) => {
                    let serve = connection::serve(
                        accepted,
                        tls.as_ref().map(|tls| tls.acceptor()),
                        router.clone(),
                        stop.clone(),
                    );
                    connections.spawn(serve);
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
    drop((tcp, unix));
    let drained = async { while connections.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(grace, drained).await;
}
