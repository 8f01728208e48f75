//! One accepted connection's life beyond HTTP: how long it may sit idle, how many a face holds
//! at once, and a closing that lets the client read the answer.
//!
//! - **Idle timeout.** Every read and write on the connection marks it active; a connection
//!   with no request in flight and nothing read or written for the face's idle timeout is
//!   closed, on HTTP/1.1 and HTTP/2 alike (hyper's `header_read_timeout` covers a request
//!   that has started; an HTTP/2 connection has nothing of the kind).
//! - **A cap per face.** Beyond it a new connection is closed at once, before its handshake,
//!   and counted; the connections already open are not disturbed.
//! - **Lingering close.** When the server closes a connection while the client is still
//!   sending (a 10 MB body refused with 413, a head over hyper's buffer), closing at once makes
//!   the kernel answer the unread bytes with a reset, and the client often loses the answer
//!   with it. So on close the write side is shut first, and what the client still sends is read
//!   and dropped for a moment (bounded in time and bytes), as nginx's `lingering_close` does.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How long a closing connection keeps reading what the client still sends.
pub const LINGER_TIME: Duration = Duration::from_secs(2);
/// How much it reads so, at most.
pub const LINGER_BYTES: usize = 32 * 1024 * 1024;

/// What a face's connections are allowed.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// Closed after this long with no request in flight and nothing read or written.
    pub idle_timeout: Duration,
    /// Connections open at once, handshakes included; beyond it new ones are closed.
    pub max_connections: usize,
    pub stats: Arc<FaceStats>,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            idle_timeout: Duration::from_secs(60),
            max_connections: usize::MAX >> 4,
            stats: Arc::default(),
        }
    }
}

/// A face's connection counts, for the metrics.
#[derive(Debug, Default)]
pub struct FaceStats {
    pub open: AtomicUsize,
    pub refused: AtomicU64,
    pub idle_closed: AtomicU64,
}

/// When a connection last did anything, and how many requests it has in flight.
#[derive(Debug)]
pub struct Activity {
    started: Instant,
    last_ms: AtomicU64,
    requests: AtomicUsize,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            started: Instant::now(),
            last_ms: AtomicU64::new(0),
            requests: AtomicUsize::new(0),
        }
    }
}

impl Activity {
    fn touch(&self) {
        self.last_ms
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }

    /// A request on the connection, in flight until the guard is dropped.
    pub fn request(self: &Arc<Self>) -> RequestGuard {
        self.requests.fetch_add(1, Ordering::SeqCst);
        self.touch();
        RequestGuard(self.clone())
    }
}

pub struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.touch();
        self.0.requests.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Whether a connection that has done nothing for `idle`, with `requests` in flight, is to be
/// closed under `timeout`; and if not, how long to wait before asking again.
pub fn idle_decision(idle: Duration, requests: usize, timeout: Duration) -> Result<(), Duration> {
    if requests == 0 && idle >= timeout {
        Ok(())
    } else if requests > 0 {
        Err(timeout)
    } else {
        Err((timeout - idle).max(Duration::from_millis(10)))
    }
}

/// Resolves when the connection has been idle for `timeout`.
pub async fn idle(activity: &Activity, timeout: Duration) {
    loop {
        let requests = activity.requests.load(Ordering::SeqCst);
        match idle_decision(activity.idle_for(), requests, timeout) {
            Ok(()) => return,
            Err(wait) => tokio::time::sleep(wait).await,
        }
    }
}

/// A connection's stream, marking its activity and closing with a linger.
pub struct Tracked<T> {
    inner: T,
    activity: Arc<Activity>,
    linger: Option<Linger>,
}

struct Linger {
    until: Pin<Box<tokio::time::Sleep>>,
    read: usize,
}

impl<T> Tracked<T> {
    pub fn new(inner: T, activity: Arc<Activity>) -> Self {
        activity.touch();
        Tracked {
            inner,
            activity,
            linger: None,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    /// Shuts the write side, then reads and drops what the client still sends, until it
    /// closes, [`LINGER_TIME`] passes or [`LINGER_BYTES`] are read.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.linger.is_none() {
            std::task::ready!(Pin::new(&mut self.inner).poll_shutdown(cx))?;
            self.linger = Some(Linger {
                until: Box::pin(tokio::time::sleep(LINGER_TIME)),
                read: 0,
            });
        }
        let mut scratch = [0u8; 16 * 1024];
        loop {
            let this = &mut *self;
            let linger = this.linger.as_mut().expect("lingering");
            if linger.read >= LINGER_BYTES || linger.until.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ok(()));
            }
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut this.inner).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => linger.read += buf.filled().len(),
                // The client reset or the stream is unreadable: nothing more to wait for.
                Poll::Ready(Err(_)) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_is_idle_only_with_no_request_in_flight_for_the_whole_timeout() {
        let t = Duration::from_secs(5);
        assert_eq!(idle_decision(Duration::from_secs(5), 0, t), Ok(()));
        assert_eq!(
            idle_decision(Duration::from_secs(2), 0, t),
            Err(Duration::from_secs(3)),
            "asked again when the timeout would be reached"
        );
        assert_eq!(
            idle_decision(Duration::from_secs(50), 1, t),
            Err(t),
            "a request in flight (a slow region) keeps it open"
        );
    }

    #[tokio::test]
    async fn activity_is_marked_by_reads_and_writes_and_a_close_lingers_until_the_client_is_done() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (client, server) = tokio::io::duplex(64 * 1024);
        let activity = Arc::new(Activity::default());
        let mut tracked = Tracked::new(server, activity.clone());
        let (mut client_read, mut client_write) = tokio::io::split(client);
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(activity.idle_for() >= Duration::from_millis(30));
        client_write.write_all(b"hello").await.unwrap();
        let mut got = [0u8; 5];
        tracked.read_exact(&mut got).await.unwrap();
        assert!(
            activity.idle_for() < Duration::from_millis(30),
            "a read marks it"
        );
        // The client goes on sending while the server closes: the close waits for it (reads
        // and drops), and ends when the client is done.
        let sender = tokio::spawn(async move {
            for _ in 0..64 {
                if client_write.write_all(&[7u8; 1024]).await.is_err() {
                    break;
                }
            }
            drop(client_write);
        });
        tracked.write_all(b"413").await.unwrap();
        tracked.shutdown().await.unwrap();
        sender.await.unwrap();
        let mut answer = Vec::new();
        client_read.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, b"413", "the client read the whole answer");
    }
}
