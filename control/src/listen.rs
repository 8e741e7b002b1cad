//! The accept loop in front of the gRPC server: a cap on connections, deadlines for the ones
//! that do not speak, TLS handshakes that cannot hang, and an accept loop that never spins.
//!
//! Design: one task accepts from the listener. A new connection is *pending* until it has
//! proved it speaks: on TCP its TLS handshake (client certificate included) has finished, on
//! the Unix socket its first bytes (an HTTP/2 client sends its preface at once) have come,
//! each within [`Limits::handshake_timeout`]. At most [`Limits::max_pending`] are pending:
//! a new one evicts the oldest, so a flood of silent connections holds a bounded number of
//! descriptors and a real client, which speaks at once, gets through while it runs. A
//! connection that has spoken becomes *established* and holds one of
//! [`Limits::max_connections`] permits until it closes (one over the cap is closed:
//! `refused`); it is wrapped in a [`Conn`] whose reads fail with `TimedOut` after
//! [`Limits::idle_timeout`] of silence (the server pings every client more often than that,
//! and a PONG is a read). An accept error (out of file descriptors, say) is counted, logged once per kind
//! until an accept succeeds again, and followed by a pause ([`ACCEPT_BACKOFF`]), so the loop
//! never spins; the listener stays open and serves again as soon as descriptors are free.
//! Thread-safety: the loop and the handshakes run on the server's runtime; [`ListenStats`]
//! are atomics readable from any thread.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::Connected;

/// How long the accept loop pauses after an accept error.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The limits of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Established connections open at once; more are closed.
    pub max_connections: usize,
    /// Connections not yet established; a new one evicts the oldest.
    pub max_pending: usize,
    /// From connecting to the first byte (Unix) or to a finished TLS handshake (TCP).
    pub handshake_timeout: Duration,
    /// Longest silence from a connected client (it answers the server's pings).
    pub idle_timeout: Duration,
    /// How often the server pings each client (HTTP/2 PING); less than `idle_timeout`.
    pub keepalive: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 64,
            max_pending: 64,
            handshake_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            keepalive: Duration::from_secs(20),
        }
    }
}

/// What a listener did (cumulative).
#[derive(Debug, Default)]
pub struct ListenStats {
    /// Connections accepted from the listener.
    pub accepted: AtomicU64,
    /// Connections that finished their handshake and were served.
    pub established: AtomicU64,
    /// Established connections closed because `max_connections` were open.
    pub refused: AtomicU64,
    /// Pending connections closed to make room for a newer one.
    pub evicted: AtomicU64,
    /// Accept errors (each followed by a pause), such as running out of descriptors.
    pub accept_errors: AtomicU64,
    /// Pending connections closed for saying nothing, or not finishing TLS, in time.
    pub handshake_timeouts: AtomicU64,
    /// TLS handshakes that failed (no or a wrong client certificate, not TLS at all).
    pub tls_failures: AtomicU64,
    /// Connections closed after `idle_timeout` of silence.
    pub idle_closed: AtomicU64,
}

/// [`ListenStats`] at one moment, for counters files and reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ListenReport {
    /// See [`ListenStats::accepted`].
    pub accepted: u64,
    /// See [`ListenStats::established`].
    pub established: u64,
    /// See [`ListenStats::refused`].
    pub refused: u64,
    /// See [`ListenStats::evicted`].
    pub evicted: u64,
    /// See [`ListenStats::accept_errors`].
    pub accept_errors: u64,
    /// See [`ListenStats::handshake_timeouts`].
    pub handshake_timeouts: u64,
    /// See [`ListenStats::tls_failures`].
    pub tls_failures: u64,
    /// See [`ListenStats::idle_closed`].
    pub idle_closed: u64,
}

impl ListenStats {
    /// The counters now.
    pub fn report(&self) -> ListenReport {
        ListenReport {
            accepted: self.accepted.load(Relaxed),
            established: self.established.load(Relaxed),
            refused: self.refused.load(Relaxed),
            evicted: self.evicted.load(Relaxed),
            accept_errors: self.accept_errors.load(Relaxed),
            handshake_timeouts: self.handshake_timeouts.load(Relaxed),
            tls_failures: self.tls_failures.load(Relaxed),
            idle_closed: self.idle_closed.load(Relaxed),
        }
    }
}

/// Something connections are accepted from (a Unix or TCP listener; a fake in tests).
pub trait Listener: Send + 'static {
    /// An accepted connection.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// Waits for the next connection.
    fn accept(&mut self) -> impl std::future::Future<Output = io::Result<Self::Io>> + Send;
}

impl Listener for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept(&mut self) -> io::Result<Self::Io> {
        tokio::net::UnixListener::accept(self).await.map(|(s, _)| s)
    }
}

impl Listener for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept(&mut self) -> io::Result<Self::Io> {
        let (s, _) = tokio::net::TcpListener::accept(self).await?;
        let _ = s.set_nodelay(true);
        Ok(s)
    }
}

/// Reads a plain connection's first bytes (to prove it speaks); an error if the peer closes
/// first. They are replayed to the server by the [`Conn`].
async fn first_bytes<IO: AsyncRead + Unpin>(io: &mut IO) -> io::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut first = vec![0u8; 64];
    let n = io.read(&mut first).await?;
    if n == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    first.truncate(n);
    Ok(first)
}

/// An established connection: the bytes its handshake read (replayed first), its permit,
/// and the deadline of its next read.
pub struct Conn<IO> {
    io: IO,
    first: Vec<u8>,
    at: usize,
    _permit: OwnedSemaphorePermit,
    deadline: Pin<Box<tokio::time::Sleep>>,
    limits: Limits,
    stats: Arc<ListenStats>,
}

impl<IO> Conn<IO> {
    fn new(
        (io, first): (IO, Vec<u8>),
        permit: OwnedSemaphorePermit,
        limits: Limits,
        stats: Arc<ListenStats>,
    ) -> Self {
        Conn {
            io,
            first,
            at: 0,
            _permit: permit,
            deadline: Box::pin(tokio::time::sleep(limits.idle_timeout)),
            limits,
            stats,
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Conn<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.at < self.first.len() {
            let n = buf.remaining().min(self.first.len() - self.at);
            let at = self.at;
            buf.put_slice(&self.first[at..at + n]);
            self.at += n;
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    let next = tokio::time::Instant::now() + self.limits.idle_timeout;
                    self.deadline.as_mut().reset(next);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    self.stats.idle_closed.fetch_add(1, Relaxed);
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "control connection silent past its deadline",
                    )))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Conn<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl<IO> Connected for Conn<IO> {
    type ConnectInfo = ();
    fn connect_info(&self) -> Self::ConnectInfo {}
}

/// Accepts from `listener` under `limits` (TLS first if `tls` is given) on the current
/// runtime; returns the stream of established connections for `serve_with_incoming`.
pub fn incoming<L>(
    mut listener: L,
    limits: Limits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    stats: Arc<ListenStats>,
    what: String,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<Conn<Box<dyn Io>>>>
where
    L: Listener,
{
    let (tx, rx) = mpsc::channel(limits.max_connections.max(1));
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    // Descriptors held by pending connections, evicted ones included until their task has
    // dropped them: the loop waits for room rather than outrun the tasks that close them.
    let pending_fds = Arc::new(Semaphore::new(limits.max_pending.max(1) * 2));
    tokio::spawn(async move {
        let mut logged: Option<io::ErrorKind> = None;
        // Pending handshakes, oldest first: dropping a sender cancels its handshake.
        let mut pending: std::collections::VecDeque<tokio::sync::oneshot::Sender<()>> =
            std::collections::VecDeque::new();
        loop {
            let io = tokio::select! {
                r = listener.accept() => r,
                _ = tx.closed() => return,
            };
            let io = match io {
                Ok(io) => {
                    logged = None;
                    io
                }
                Err(e) => {
                    stats.accept_errors.fetch_add(1, Relaxed);
                    if logged != Some(e.kind()) {
                        eprintln!(
                            "switchd: control API on {what}: accept failed ({e}); pausing \
                             {} ms after each failure",
                            ACCEPT_BACKOFF.as_millis()
                        );
                        logged = Some(e.kind());
                    }
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            stats.accepted.fetch_add(1, Relaxed);
            pending.retain(|c| !c.is_closed());
            while pending.len() >= limits.max_pending.max(1) {
                if let Some(oldest) = pending.pop_front() {
                    if !oldest.is_closed() {
                        stats.evicted.fetch_add(1, Relaxed);
                    }
                }
            }
            let Ok(held) = Arc::clone(&pending_fds).acquire_owned().await else {
                return;
            };
            let (cancel, cancelled) = tokio::sync::oneshot::channel::<()>();
            pending.push_back(cancel);
            let (tx, stats, tls, permits) = (
                tx.clone(),
                Arc::clone(&stats),
                tls.clone(),
                Arc::clone(&permits),
            );
            tokio::spawn(async move {
                let handshake = async {
                    match tls {
                        None => {
                            let mut io = io;
                            first_bytes(&mut io)
                                .await
                                .map(|first| (Box::new(io) as Box<dyn Io>, first))
                        }
                        Some(acceptor) => match acceptor.accept(io).await {
                            Ok(s) => Ok((Box::new(s) as Box<dyn Io>, Vec::new())),
                            Err(e) => {
                                stats.tls_failures.fetch_add(1, Relaxed);
                                Err(e)
                            }
                        },
                    }
                };
                let done = tokio::select! {
                    r = tokio::time::timeout(limits.handshake_timeout, handshake) => r,
                    _ = cancelled => return, // evicted: counted by the loop
                };
                drop(held); // (also dropped, with the connection, on every return above)
                let conn = match done {
                    Ok(Ok(c)) => c,
                    Ok(Err(_)) => return,
                    Err(_) => {
                        stats.handshake_timeouts.fetch_add(1, Relaxed);
                        return;
                    }
                };
                let Ok(permit) = permits.try_acquire_owned() else {
                    stats.refused.fetch_add(1, Relaxed);
                    return;
                };
                stats.established.fetch_add(1, Relaxed);
                let _ = tx.send(Ok(Conn::new(conn, permit, limits, stats))).await;
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// A connection's byte stream, whatever the transport.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A listener that has run out of descriptors: every accept fails at once.
    struct Exhausted(Arc<AtomicUsize>);

    impl Listener for Exhausted {
        type Io = tokio::io::DuplexStream;
        async fn accept(&mut self) -> io::Result<Self::Io> {
            self.0.fetch_add(1, Relaxed);
            Err(io::Error::from_raw_os_error(24)) // EMFILE
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn running_out_of_descriptors_never_spins_the_loop() {
        let calls = Arc::new(AtomicUsize::new(0));
        let stats = Arc::new(ListenStats::default());
        let _incoming = incoming(
            Exhausted(Arc::clone(&calls)),
            Limits::default(),
            None,
            Arc::clone(&stats),
            "test".into(),
        );
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let n = calls.load(Relaxed);
        // One try per ACCEPT_BACKOFF: about ten in a second, not millions.
        assert!((5..=12).contains(&n), "{n} accept calls in a second");
        assert_eq!(stats.accept_errors.load(Relaxed), n as u64);
    }
}
