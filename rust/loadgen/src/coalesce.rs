//! Writes held until the connection flushes, so the frames of every call queued meanwhile
//! leave together, in one system call.
//!
//! Callers queue each call's HEADERS and DATA frames on their connection, and h2 encodes
//! whatever is queued when the connection's task next runs, then flushes. Left alone, h2
//! writes a DATA frame of more than a few hundred bytes straight to the socket when the
//! socket takes vectored writes (no copy), one write per frame: a call per system call,
//! where the server then pays a read and a wake-up per call too (a Python server the most),
//! which would count against it in a benchmark. Here every write goes to a buffer, which
//! takes no vectored writes (so h2 copies frames of up to 1 KiB into its own buffer instead
//! of stopping to flush after each), and the flush writes the buffer out.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Past this many buffered bytes, a write first drains the buffer to the socket, so a slow
/// reader on the other side holds the writer back instead of growing the buffer.
const HIGH_WATER: usize = 256 * 1024;

pub struct CoalescedWrites<T> {
    io: T,
    buffer: Vec<u8>,
}

impl<T> CoalescedWrites<T> {
    pub fn new(io: T) -> Self {
        CoalescedWrites {
            io,
            buffer: Vec::with_capacity(16 * 1024),
        }
    }
}

impl<T: AsyncWrite + Unpin> CoalescedWrites<T> {
    /// Writes out everything buffered.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut written = 0;
        while written < self.buffer.len() {
            match Pin::new(&mut self.io).poll_write(cx, &self.buffer[written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    self.buffer.drain(..written);
                    return Poll::Pending;
                }
            }
        }
        self.buffer.clear();
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for CoalescedWrites<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.buffer.len() >= HIGH_WATER {
            ready!(this.drain(cx))?;
        }
        this.buffer.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.drain(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.drain(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for CoalescedWrites<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn writes_leave_together_at_the_flush() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            let (near, mut far) = tokio::io::duplex(1024);
            let mut writes = CoalescedWrites::new(near);
            // So h2 copies small frames into its buffer rather than flush after each.
            assert!(!writes.is_write_vectored());
            writes.write_all(b"HEADERS ").await.unwrap();
            writes.write_all(b"DATA").await.unwrap();
            let mut received = [0; 12];
            {
                let mut read = std::pin::pin!(far.read(&mut received));
                let waiting = std::future::poll_fn(|cx| Poll::Ready(read.as_mut().poll(cx)));
                assert!(
                    waiting.await.is_pending(),
                    "nothing is written before a flush"
                );
            }
            writes.flush().await.unwrap();
            far.read_exact(&mut received).await.unwrap();
            assert_eq!(&received, b"HEADERS DATA");
        });
    }

    #[test]
    fn a_full_buffer_drains_before_taking_more() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            let (near, mut far) = tokio::io::duplex(HIGH_WATER * 4);
            let mut writes = CoalescedWrites::new(near);
            let block = vec![7; HIGH_WATER];
            writes.write_all(&block).await.unwrap();
            writes.write_all(&block).await.unwrap();
            // The second write found the buffer full: the first block has gone out.
            let mut received = vec![0; HIGH_WATER];
            far.read_exact(&mut received).await.unwrap();
            assert_eq!(received, block);
            assert_eq!(writes.buffer.len(), HIGH_WATER);
        });
    }
}
