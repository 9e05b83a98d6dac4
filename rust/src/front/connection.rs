//! One client connection: TLS when configured, then hyper's HTTP/2 server with the front's
//! limits, each call handed to the router. The connection counts its open calls (a call is
//! open until its response body ends), closes itself with GOAWAY once idle for the idle
//! timeout, and on stop lets its calls finish.

#![deny(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use super::router::Router;
use super::Accepted;

/// HTTP/2 windows large enough that a big request is not held back by flow control
/// (the protocol's default is 64 KiB).
const STREAM_WINDOW: u32 = 1 << 20;
const CONNECTION_WINDOW: u32 = 1 << 24;
/// Large DATA frames: a 180 KB request arrives in one piece.
const MAX_FRAME_SIZE: u32 = 1 << 20;
/// Request headers per call (grpcio takes 8 KiB of metadata by default): a client cannot
/// make the front hold megabytes of header per stream.
const MAX_HEADER_LIST_SIZE: u32 = 64 << 10;

/// Serves one accepted connection until it ends, is idle too long, or the front stops.
pub(super) async fn serve(
    accepted: Accepted,
    tls: Option<TlsAcceptor>,
    router: Router,
    stop: watch::Receiver<Option<Duration>>,
) {
    let handshake_limit = router.limits().keepalive_timeout;
    match (accepted, tls) {
        (Accepted::Tcp(socket), None) => {
            let _ = socket.set_nodelay(true);
            serve_http2(socket, router, stop).await;
        }
        (Accepted::Unix(socket), None) => serve_http2(socket, router, stop).await,
        (Accepted::Tcp(socket), Some(tls)) => {
            let _ = socket.set_nodelay(true);
            // A peer that connects and never completes TLS does not hold a connection long.
            if let Ok(Ok(socket)) = tokio::time::timeout(handshake_limit, tls.accept(socket)).await
            {
                serve_http2(socket, router, stop).await;
            }
        }
        (Accepted::Unix(socket), Some(tls)) => {
            if let Ok(Ok(socket)) = tokio::time::timeout(handshake_limit, tls.accept(socket)).await
            {
                serve_http2(socket, router, stop).await;
            }
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

async fn serve_http2<IO>(io: IO, router: Router, mut stop: watch::Receiver<Option<Duration>>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = router.limits().clone();
    let calls = Arc::new(OpenCalls::default());
    let service = CallService {
        router,
        calls: Arc::clone(&calls),
    };
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_header_list_size(MAX_HEADER_LIST_SIZE)
        .max_concurrent_streams(limits.max_concurrent_streams)
        // h2's guard against rapid reset closes a connection whose client resets more than
        // 20 streams (its default) before they are accepted; clients cancelling calls at
        // their deadlines under load do that. As many as the client may open at once keeps
        // the guard and spares honest cancellations.
        .max_pending_accept_reset_streams(limits.max_concurrent_streams as usize)
        .keep_alive_interval(limits.keepalive_interval)
        .keep_alive_timeout(limits.keepalive_timeout);
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let mut stopping = stop.borrow().is_some();
    if stopping {
        connection.as_mut().graceful_shutdown();
    }
    let mut idle_since = Instant::now();
    // Set once the connection was told GOAWAY for idleness: when it is dropped if still open.
    let mut closing_by: Option<Instant> = None;
    loop {
        let idle_at = if stopping || calls.any() {
            None
        } else {
            later(idle_since, limits.idle_timeout)
        };
        tokio::select! {
            _ = connection.as_mut() => return,
            changed = stop.changed(), if !stopping => {
                if changed.is_err() || stop.borrow().is_some() {
                    // GOAWAY: calls in flight finish, new ones go elsewhere.
                    connection.as_mut().graceful_shutdown();
                    stopping = true;
                }
            }
            () = calls.none_left.notified() => idle_since = Instant::now(),
            () = sleep_until(idle_at) => {
                // A call opened since the timer was set: not idle (the end of the last call
                // restarts the clock).
                if calls.any() {
                    continue;
                }
                connection.as_mut().graceful_shutdown();
                stopping = true;
                closing_by = later(Instant::now(), Some(limits.keepalive_timeout));
            }
            () = sleep_until(closing_by) => return,
        }
    }
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

/// The connection's calls, each routed and counted open until its response ends.
#[derive(Clone)]
struct CallService {
    router: Router,
    calls: Arc<OpenCalls>,
}

impl hyper::service::Service<Request<Incoming>> for CallService {
    type Response = Response<CallBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let call = self.calls.open();
        let router = self.router.clone();
        Box::pin(async move {
            let response = router.route(request).await;
            Ok(response.map(|body| CallBody { body, _call: call }))
        })
    }
}

/// A response body that keeps its call counted open until it ends.
pub(super) struct CallBody {
    body: tonic::body::Body,
    _call: OpenCall,
}

impl Body for CallBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
