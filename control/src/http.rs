//! A minimal HTTP/1.1 responder for GET endpoints: health checks and metrics scrapes.
//!
//! Design: one task per connection reads a request up to the end of its header (at most
//! [`MAX_REQUEST`] bytes, within [`READ_TIMEOUT`]), answers it with what the handler returns
//! for its path (the query string is passed along, not parsed) and closes the connection. A
//! method other than GET or HEAD is 405, an unreadable request 400; a HEAD gets the GET's
//! header without its body. At most [`MAX_CONNECTIONS`] are served at once; beyond it a new
//! connection is closed at once. No keep-alive, no request body, no TLS: these endpoints are
//! for probes and scrapers on the node or the pod network.
//!
//! [`HttpPool`] serves listeners, opened and closed one by one, from one thread of its own
//! (switchd's metrics endpoint is one, its health-check node ports the others); dropping it
//! stops them.
//!
//! Thread-safety: the handler is shared (`Arc`) by the connection tasks and must be cheap and
//! non-blocking or briefly blocking (it runs on the runtime's thread).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Longest request header read.
pub const MAX_REQUEST: usize = 8192;
/// How long a client has to send its request header.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 64;

/// What a handler answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Status line's code and reason, e.g. `200 OK`.
    pub status: &'static str,
    /// The Content-Type header.
    pub content_type: &'static str,
    /// The body.
    pub body: String,
}

impl Reply {
    /// A JSON body with `status`.
    pub fn json(status: &'static str, body: &serde_json::Value) -> Reply {
        Reply {
            status,
            content_type: "application/json",
            body: body.to_string(),
        }
    }

    /// A plain-text body with `status`.
    pub fn text(status: &'static str, body: impl Into<String>) -> Reply {
        Reply {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }

    /// The 404 for a path no endpoint serves.
    pub fn not_found() -> Reply {
        Reply::text("404 Not Found", "404 page not found\n")
    }
}

/// The handler's signature: the request path (without the query) to the reply.
pub type Handler = dyn Fn(&str) -> Reply + Send + Sync;

/// Serves `handler` on `listener` until the task is dropped or the runtime ends.
pub async fn serve(listener: TcpListener, handler: Arc<Handler>) {
    let open = Arc::new(AtomicUsize::new(0));
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        if open.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
            open.fetch_sub(1, Ordering::AcqRel);
            drop(conn);
            continue;
        }
        let handler = Arc::clone(&handler);
        let open = Arc::clone(&open);
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(512);
            let complete = tokio::time::timeout(READ_TIMEOUT, async {
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    if buf.len() >= MAX_REQUEST {
                        return false;
                    }
                    match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => return false,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                true
            })
            .await
            .unwrap_or(false);
            let (reply, head) = respond(complete, &buf, &*handler);
            let mut out = format!(
                "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                reply.status,
                reply.content_type,
                reply.body.len()
            )
            .into_bytes();
            if !head {
                out.extend_from_slice(reply.body.as_bytes());
            }
            let _ = tokio::time::timeout(READ_TIMEOUT, async {
                let _ = conn.write_all(&out).await;
                let _ = conn.shutdown().await;
            })
            .await;
            open.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

/// The reply to a request read as `buf` (`complete`: its header ended), and whether it is a
/// HEAD (no body sent).
fn respond(complete: bool, buf: &[u8], handler: &Handler) -> (Reply, bool) {
    let line = buf.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_whitespace();
    match (complete, words.next(), words.next(), words.next()) {
        (true, Some(m @ ("GET" | "HEAD")), Some(target), Some(v)) if v.starts_with("HTTP/1.") => {
            let path = target.split('?').next().unwrap_or_default();
            (handler(path), m == "HEAD")
        }
        (true, Some(_), Some(_), Some(v)) if v.starts_with("HTTP/1.") => (
            Reply::text("405 Method Not Allowed", "only GET and HEAD\n"),
            false,
        ),
        _ => (Reply::text("400 Bad Request", "bad request\n"), false),
    }
}

/// Many listeners served by one thread and runtime, each opened and closed on its own (the
/// health-check node ports: one per Service that has one).
pub struct HttpPool {
    rt: tokio::runtime::Runtime,
    tasks: std::collections::HashMap<SocketAddr, tokio::task::AbortHandle>,
}

impl HttpPool {
    /// A pool whose thread is named `name`.
    pub fn new(name: &str) -> std::io::Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(name)
            .enable_all()
            .build()?;
        Ok(HttpPool {
            rt,
            tasks: Default::default(),
        })
    }

    /// Binds `addr` and serves `handler` on it (replacing what it served before); returns the
    /// address bound (the port chosen when asked for 0).
    pub fn open(&mut self, addr: SocketAddr, handler: Arc<Handler>) -> std::io::Result<SocketAddr> {
        self.close(addr);
        let listener = {
            let _guard = self.rt.enter();
            let std = std::net::TcpListener::bind(addr)?;
            std.set_nonblocking(true)?;
            TcpListener::from_std(std)?
        };
        let bound = listener.local_addr()?;
        let task = self.rt.spawn(serve(listener, handler));
        self.tasks.insert(bound, task.abort_handle());
        Ok(bound)
    }

    /// Stops serving `addr` (its listener closes; connections being answered finish).
    pub fn close(&mut self, addr: SocketAddr) {
        if let Some(t) = self.tasks.remove(&addr) {
            t.abort();
        }
    }

    /// The addresses served.
    pub fn addrs(&self) -> impl Iterator<Item = &SocketAddr> {
        self.tasks.keys()
    }
}

impl Drop for HttpPool {
    fn drop(&mut self) {
        for (_, t) in self.tasks.drain() {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handler() -> Arc<Handler> {
        Arc::new(|path: &str| match path {
            "/x" => Reply::text("200 OK", "x\n"),
            _ => Reply::not_found(),
        })
    }

    fn get(addr: SocketAddr, req: &[u8]) -> String {
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        c.write_all(req).unwrap();
        let mut s = String::new();
        c.read_to_string(&mut s).unwrap();
        s
    }

    #[test]
    fn answers_get_and_head_refuses_the_rest() {
        let mut pool = HttpPool::new("http-test").unwrap();
        let a = pool
            .open("127.0.0.1:0".parse().unwrap(), handler())
            .unwrap();
        let r = get(a, b"GET /x?y=1 HTTP/1.1\r\nHost: h\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(
            r.contains("Content-Length: 2\r\n") && r.ends_with("\r\n\r\nx\n"),
            "{r}"
        );
        let r = get(a, b"HEAD /x HTTP/1.0\r\n\r\n");
        assert!(
            r.starts_with("HTTP/1.1 200 OK\r\n") && r.ends_with("\r\n\r\n"),
            "{r}"
        );
        let r = get(a, b"GET /nope HTTP/1.1\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 404 "), "{r}");
        let r = get(a, b"POST /x HTTP/1.1\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 405 "), "{r}");
        let r = get(a, b"\x00\xff garbage\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 400 "), "{r}");
        // A header that does not end within the limit.
        let r = get(a, &[b'a'; MAX_REQUEST]);
        assert!(r.starts_with("HTTP/1.1 400 "), "{r}");
    }
}
