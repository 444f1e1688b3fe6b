//! The socket under a TLS connection (inbound or to a provider), whose writes wait for the
//! connection's next flush, and whose flush lets the runtime turn once first.
//!
//! Why: rustls hands each TLS record to the socket as soon as it has sealed it, and h2 writes
//! a frame at a time, so that on the bare socket an answer's headers and data left in one
//! system call and its trailers in another. Gathered, one h2 flush is one system call
//! (BENCHMARKS.md, "Run H"). And h2 flushes as soon as the stream that woke its connection is
//! written: Tokio runs a task woken by the running one right after it, so the other answers of
//! one journal batch (or the other calls to a provider), ready in the runtime's queue, each
//! went out in system calls of their own. A flush that first lets them run sends them
//! together (BENCHMARKS.md, "Run J").
//!
//! No byte waits for anything but a flush and one turn of the runtime, and h2 flushes before
//! it waits on the peer.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, BufWriter, ReadBuf};
use tokio::net::TcpStream;

/// Bytes a connection gathers before it must write them out: one full TLS record. Larger
/// buffers measured the same; it is allocated once per connection.
const WRITE_BUFFER_BYTES: usize = 16 * 1024;

/// A socket whose writes are gathered until a flush (see the module's documentation).
/// Dropped with bytes still gathered, it writes what the socket takes at once: a TLS alert
/// queued on an error path that does not flush still leaves.
pub struct GatheredWrites {
    inner: BufWriter<TcpStream>,
    /// Off until [`GatheredWrites::start_gathering`] for a connection created with
    /// [`GatheredWrites::passing_through`]: writes go straight to the socket.
    gathering: bool,
    /// The pending flush has already let the runtime turn once: the next poll writes.
    flush_waited: bool,
}

impl GatheredWrites {
    /// Gathers from the first byte. For a TLS client, whose handshake flushes each flight.
    pub fn new(io: TcpStream) -> GatheredWrites {
        GatheredWrites {
            inner: BufWriter::with_capacity(WRITE_BUFFER_BYTES, io),
            gathering: true,
            flush_waited: false,
        }
    }

    /// Writes go straight through until [`GatheredWrites::start_gathering`]. For a TLS server
    /// during its handshake, so that an alert (a revoked or unknown certificate) still reaches
    /// a client whose connection is then dropped without a flush.
    pub fn passing_through(io: TcpStream) -> GatheredWrites {
        let mut passing = GatheredWrites::new(io);
        passing.gathering = false;
        passing
    }

    /// From now on, writes wait for a flush.
    pub fn start_gathering(&mut self) {
        self.gathering = true;
    }
}

impl AsyncRead for GatheredWrites {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for GatheredWrites {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.gathering {
            Pin::new(&mut this.inner).poll_write(cx, buf)
        } else {
            // Nothing is buffered before gathering starts: the socket itself is next in line.
            Pin::new(this.inner.get_mut()).poll_write(cx, buf)
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.gathering {
            Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
        } else {
            Pin::new(this.inner.get_mut()).poll_write_vectored(cx, bufs)
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.inner.buffer().is_empty() && !this.flush_waited {
            // Woken while it runs, the task goes to the back of the runtime's queue (Tokio's
            // yield), behind the tasks that are ready to add their frames.
            this.flush_waited = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        this.flush_waited = false;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl Drop for GatheredWrites {
    fn drop(&mut self) {
        let gathered = self.inner.buffer();
        if !gathered.is_empty() {
            // Best effort, without waiting: the connection is going away.
            let _ = self.inner.get_ref().try_write(gathered);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// Both ends of a loopback TCP connection: ours, and the peer's.
    async fn connection() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ours = TcpStream::connect(listener.local_addr().unwrap());
        let (ours, accepted) = tokio::join!(ours, listener.accept());
        (ours.unwrap(), accepted.unwrap().0)
    }

    /// What the peer can read within a short wait (nothing, if nothing was written out).
    async fn readable(peer: &mut TcpStream) -> Vec<u8> {
        let mut buf = vec![0u8; 64 * 1024];
        match tokio::time::timeout(Duration::from_millis(50), peer.read(&mut buf)).await {
            Ok(Ok(n)) => buf[..n].to_vec(),
            Ok(Err(e)) => panic!("read failed: {e}"),
            Err(_) => Vec::new(),
        }
    }

    #[tokio::test]
    async fn writes_wait_for_the_flush_and_leave_together() {
        let (ours, mut peer) = connection().await;
        let mut io = GatheredWrites::new(ours);
        io.write_all(b"headers+data").await.unwrap();
        io.write_all(b"trailers").await.unwrap();
        assert!(
            readable(&mut peer).await.is_empty(),
            "nothing leaves before the flush"
        );

        // The first poll of the flush yields to the runtime; the flush still completes.
        let mut flush = std::pin::pin!(io.flush());
        assert!(futures::poll!(flush.as_mut()).is_pending());
        flush.await.unwrap();
        assert_eq!(readable(&mut peer).await, b"headers+datatrailers");

        // The next flush waits its turn again, and an empty one does not.
        io.write_all(b"next").await.unwrap();
        let mut flush = std::pin::pin!(io.flush());
        assert!(futures::poll!(flush.as_mut()).is_pending());
        flush.await.unwrap();
        assert_eq!(readable(&mut peer).await, b"next");
        let mut empty = std::pin::pin!(io.flush());
        assert!(futures::poll!(empty.as_mut()).is_ready());
    }

    #[tokio::test]
    async fn a_handshake_writes_straight_through_until_gathering_starts() {
        let (ours, mut peer) = connection().await;
        let mut io = GatheredWrites::passing_through(ours);
        // An alert written before a dropped connection reaches the peer without a flush.
        io.write_all(b"alert").await.unwrap();
        assert_eq!(readable(&mut peer).await, b"alert");

        io.start_gathering();
        io.write_all(b"answer").await.unwrap();
        assert!(readable(&mut peer).await.is_empty());
        io.flush().await.unwrap();
        assert_eq!(readable(&mut peer).await, b"answer");
    }

    #[tokio::test]
    async fn bytes_gathered_when_the_connection_is_dropped_still_leave() {
        let (ours, mut peer) = connection().await;
        let mut io = GatheredWrites::new(ours);
        io.write_all(b"last alert").await.unwrap();
        assert!(readable(&mut peer).await.is_empty());
        drop(io);
        assert_eq!(readable(&mut peer).await, b"last alert");
    }
}
