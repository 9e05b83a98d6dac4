//! Writes held back for one round of the scheduler, so the frames that several tasks make for
//! one call leave together, in one segment and one system call.
//!
//! hyper's HTTP/2 client opens a request's stream from its connection task and sends the body
//! from a task of its own once the stream is open. Left alone, the connection writes the
//! HEADERS frame, then one round later the DATA frame: two writes per unary call where gRPC's
//! own clients make one. The server then pays an extra read and wake-up per request (a
//! Python server the most), which would count against it in a benchmark, and the generator
//! an extra system call. Here the connection's writes go to a buffer, and the first flush
//! that finds it non-empty yields once, waking its task at once: the body task, woken in the
//! same round, adds its frame first, and the next flush writes both.

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
    /// The flush already yielded once for what is buffered.
    yielded: bool,
}

impl<T> CoalescedWrites<T> {
    pub fn new(io: T) -> Self {
        CoalescedWrites {
            io,
            buffer: Vec::with_capacity(16 * 1024),
            yielded: false,
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
        self.yielded = false;
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

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        slices: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.buffer.len() >= HIGH_WATER {
            ready!(this.drain(cx))?;
        }
        let mut length = 0;
        for slice in slices {
            this.buffer.extend_from_slice(slice);
            length += slice.len();
        }
        Poll::Ready(Ok(length))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.buffer.is_empty() {
            if !this.yielded {
                // h2 flushes at the end of every poll of the connection, so it comes back
                // here once the tasks woken in this round have run.
                this.yielded = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            ready!(this.drain(cx))?;
        }
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
    fn writes_leave_together_at_the_second_flush() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            let (near, mut far) = tokio::io::duplex(1024);
            let mut writes = CoalescedWrites::new(near);
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
