//! Connections: TCP without Nagle's delay (or, for gRPC, a Unix socket: `unix:PATH`), then
//! h2's HTTP/2 client or hyper's HTTP/1.1 client on it. Each connection's I/O runs as a task
//! of its own; what is returned sends requests on it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body::Body;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};

use crate::coalesce::CoalescedWrites;

async fn tcp(target: &str) -> Result<TcpStream, String> {
    let tcp = TcpStream::connect(target)
        .await
        .map_err(|e| format!("connect {target}: {e}"))?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    Ok(tcp)
}

/// An HTTP/2 connection: what sends requests on it, and whether it has closed.
pub struct Http2 {
    pub sender: h2::client::SendRequest<Bytes>,
    closed: Arc<AtomicBool>,
}

impl Http2 {
    /// Its I/O task has ended, or a request found it unusable.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Takes it out of use: the next caller opens another.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
    }
}

/// An HTTP/2 connection to `target` (`HOST:PORT` or `unix:PATH`).
pub async fn http2(target: &str) -> Result<Http2, String> {
    match target.strip_prefix("unix:") {
        Some(path) => {
            let socket = UnixStream::connect(path)
                .await
                .map_err(|e| format!("connect {target}: {e}"))?;
            http2_on(socket, target).await
        }
        None => http2_on(tcp(target).await?, target).await,
    }
}

/// HTTP/2 on a connected socket. Its windows are large, so flow control never holds the
/// requests or answers back, and frames up to 1 MiB. Its I/O task is the runtime's, not a
/// level's: it outlives the level that opened it.
async fn http2_on<IO>(io: IO, target: &str) -> Result<Http2, String>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = h2::client::Builder::new()
        .initial_window_size(1 << 24)
        .initial_connection_window_size(1 << 26)
        .max_frame_size(1 << 20)
        .handshake(CoalescedWrites::new(io))
        .await
        .map_err(|e| format!("HTTP/2 handshake with {target}: {e}"))?;
    let closed = Arc::new(AtomicBool::new(false));
    let ended = Arc::clone(&closed);
    tokio::spawn(async move {
        let _ = connection.await;
        ended.store(true, Ordering::Relaxed);
    });
    Ok(Http2 { sender, closed })
}

/// `count` HTTP/2 connections, opened one after the other.
pub async fn http2_each(target: &str, count: usize) -> Result<Vec<Http2>, String> {
    let mut connections = Vec::with_capacity(count);
    for _ in 0..count {
        connections.push(http2(target).await?);
    }
    Ok(connections)
}

/// An HTTP/1.1 keep-alive connection.
pub async fn http1<B>(target: &str) -> Result<http1::SendRequest<B>, String>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // hyper writes a request's head and whole body at once: nothing to coalesce.
    let (sender, connection) = http1::handshake(TokioIo::new(tcp(target).await?))
        .await
        .map_err(|e| format!("HTTP/1.1 handshake with {target}: {e}"))?;
    tokio::spawn(connection);
    Ok(sender)
}
