//! Connections: TCP without Nagle's delay (or, for gRPC, a Unix socket: `unix:PATH`), then
//! hyper's HTTP/2 (its writes coalesced) or HTTP/1.1 client on it. Each connection's I/O runs as a task of its own; what is returned
//! sends requests on it.

use bytes::Bytes;
use http_body::Body;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
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

/// An HTTP/2 connection to `target` (`HOST:PORT` or `unix:PATH`) whose requests carry
/// bodies of type `B`.
pub async fn http2<B>(target: &str) -> Result<http2::SendRequest<B>, String>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
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
/// requests or answers back, and frames up to 1 MiB.
async fn http2_on<B, IO>(io: IO, target: &str) -> Result<http2::SendRequest<B>, String>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .initial_stream_window_size(1 << 24)
        .initial_connection_window_size(1 << 26)
        .max_frame_size(1 << 20)
        .handshake(TokioIo::new(CoalescedWrites::new(io)))
        .await
        .map_err(|e| format!("HTTP/2 handshake with {target}: {e}"))?;
    tokio::spawn(connection);
    Ok(sender)
}

/// `count` HTTP/2 connections, opened one after the other.
pub async fn http2_each<B>(target: &str, count: usize) -> Result<Vec<http2::SendRequest<B>>, String>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
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
