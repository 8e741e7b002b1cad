//! The transports: the API on a Unix socket readable by root only (the default), or on TCP
//! with TLS and client certificates (both sides' certificates checked against a CA), and
//! connecting to either.
//!
//! Design: the server runs on its own thread with a small tokio runtime, so the daemon's
//! threads stay as they are; [`spawn_unix`] binds before it returns (an error is the caller's
//! at once, and a client may connect as soon as it returns) and the returned handle stops the
//! server when dropped, closing its connections (a call in flight fails with UNAVAILABLE).
//! Connections come through [`crate::listen`] (caps, deadlines, TLS handshakes under a
//! timeout, an accept loop that backs off), HTTP/2 limits are set on the server.
//!
//! The socket path is handled as a root-owned object: its directory is created mode 0700
//! when missing and refused when it is not a directory owned by this user that only this
//! user may write to; nothing at the path is followed (a symlink is refused); only a stale
//! *socket* of this user is replaced (one that another live server answers on is not, and a
//! regular file, directory or another user's object is never removed).
//! Thread-safety: the handle may be moved to any thread.

use crate::listen::{self, Limits, ListenStats};
use crate::pb::switch_service_client::SwitchServiceClient as SwitchClient;
use crate::server::{Control, Dataplane};
use hyper_util::rt::TokioIo;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Uri};

/// Where switchd listens and switchctl connects by default.
pub const DEFAULT_SOCKET: &str = "/run/nodeswitch/switchd.sock";

/// Why the server could not start, or a client could not connect.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The socket could not be set up.
    #[error("control socket {path}: {source}")]
    Socket {
        /// The socket file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// Another server already answers on the socket.
    #[error("control socket {0}: another switchd is listening on it")]
    InUse(PathBuf),
    /// The socket's path or directory is not safe to serve on.
    #[error("control socket {path}: {why}; refusing to serve there")]
    Unsafe {
        /// The socket file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The connection failed.
    #[error("cannot connect to {path}: {reason}")]
    Connect {
        /// The socket file or address.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// A TLS file could not be read, or TLS could not be set up.
    #[error("TLS: {0}")]
    Tls(String),
}

/// The files of one side of a TLS connection with client certificates.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// This side's certificate (PEM).
    pub cert: PathBuf,
    /// This side's private key (PEM).
    pub key: PathBuf,
    /// The CA that must have signed the other side's certificate (PEM).
    pub ca: PathBuf,
}

impl TlsFiles {
    /// A server-side TLS acceptor: this side's certificate, client certificates required
    /// and checked against the CA, HTTP/2 by ALPN.
    fn acceptor(&self) -> Result<tokio_rustls::TlsAcceptor, TransportError> {
        use tokio_rustls::rustls;
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let tls = |what: &Path, e: &dyn std::fmt::Display| {
            TransportError::Tls(format!("{}: {e}", what.display()))
        };
        let read = |p: &PathBuf| std::fs::read(p).map_err(|e| tls(p, &e));
        let certs = |p: &PathBuf| -> Result<Vec<CertificateDer<'static>>, TransportError> {
            let v = CertificateDer::pem_slice_iter(&read(p)?)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| tls(p, &e))?;
            if v.is_empty() {
                return Err(tls(p, &"no certificate in it"));
            }
            Ok(v)
        };
        let chain = certs(&self.cert)?;
        let key =
            PrivateKeyDer::from_pem_slice(&read(&self.key)?).map_err(|e| tls(&self.key, &e))?;
        let mut roots = rustls::RootCertStore::empty();
        for c in certs(&self.ca)? {
            roots.add(c).map_err(|e| tls(&self.ca, &e))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::clone(&provider),
        )
        .build()
        .map_err(|e| tls(&self.ca, &e))?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TransportError::Tls(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|e| tls(&self.key, &e))?;
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
    }

    fn read(&self) -> Result<(Identity, Certificate), TransportError> {
        let read = |p: &PathBuf| {
            std::fs::read(p).map_err(|e| TransportError::Tls(format!("{}: {e}", p.display())))
        };
        Ok((
            Identity::from_pem(read(&self.cert)?, read(&self.key)?),
            Certificate::from_pem(read(&self.ca)?),
        ))
    }
}

/// A running server; dropping it stops the server and removes the socket file.
pub struct ServerHandle {
    stop: Option<Stop>,
    thread: Option<std::thread::JoinHandle<()>>,
    path: PathBuf,
    /// The TCP address, for a TCP server.
    addr: Option<std::net::SocketAddr>,
    stats: Arc<ListenStats>,
    /// The runtime the calls are served on (for [`ServerHandle::on_serving_thread`]).
    rt: tokio::runtime::Handle,
}

impl ServerHandle {
    /// The socket file (empty for a TCP server).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The address a TCP server listens on.
    pub fn addr(&self) -> Option<std::net::SocketAddr> {
        self.addr
    }

    /// What the listener did: connections accepted, refused, evicted, timed out.
    pub fn stats(&self) -> &Arc<ListenStats> {
        &self.stats
    }

    /// Runs `f` on the thread that serves the calls (for upkeep that is per thread, such as
    /// handing an allocator's free memory back); does nothing once the server has stopped.
    pub fn on_serving_thread(&self, f: fn()) {
        drop(self.rt.spawn(async move { f() }));
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if self.addr.is_none() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn socket_err(path: &Path) -> impl FnOnce(std::io::Error) -> TransportError + '_ {
    move |source| TransportError::Socket {
        path: path.to_path_buf(),
        source,
    }
}

/// Serves `ctl` on the Unix socket `path` (mode 0600: root only) from a new thread, with the
/// default [`Limits`].
pub fn spawn_unix<D: Dataplane>(
    ctl: Arc<Control<D>>,
    path: &Path,
) -> Result<ServerHandle, TransportError> {
    spawn_unix_with(ctl, path, Limits::default())
}

/// This process's effective user id (from /proc/self/status: no unsafe code here).
fn euid() -> Option<u32> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// Makes sure `path` can be served on safely (see the module docs); removes a stale socket.
fn prepare_socket_path(path: &Path) -> Result<(), TransportError> {
    let unsafe_ = |why: String| TransportError::Unsafe {
        path: path.to_path_buf(),
        why,
    };
    let me = euid().ok_or_else(|| unsafe_("cannot tell which user this process runs as".into()))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(socket_err(path))?;
        }
        Err(e) => return Err(socket_err(path)(e)),
        Ok(m) => {
            if !m.file_type().is_dir() {
                return Err(unsafe_(format!(
                    "{} is not a directory (a symlink is not followed)",
                    dir.display()
                )));
            }
            if m.uid() != me {
                return Err(unsafe_(format!(
                    "directory {} belongs to uid {}, not to this user (uid {me})",
                    dir.display(),
                    m.uid()
                )));
            }
            if m.mode() & 0o022 != 0 {
                return Err(unsafe_(format!(
                    "directory {} may be written by group or others (mode {:o}): chmod go-w it",
                    dir.display(),
                    m.mode() & 0o7777
                )));
            }
        }
    }
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(socket_err(path)(e)),
        Ok(m) if !m.file_type().is_socket() => Err(unsafe_(
            "something that is not a socket is there (it is left alone)".into(),
        )),
        Ok(m) if m.uid() != me => Err(unsafe_(format!(
            "the socket there belongs to uid {} (it is left alone)",
            m.uid()
        ))),
        Ok(_) => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(TransportError::InUse(path.to_path_buf()));
            }
            // A socket of ours that nothing answers on: left by a killed daemon.
            std::fs::remove_file(path).map_err(socket_err(path))
        }
    }
}

/// [`spawn_unix`] with the given connection limits.
pub fn spawn_unix_with<D: Dataplane>(
    ctl: Arc<Control<D>>,
    path: &Path,
    limits: Limits,
) -> Result<ServerHandle, TransportError> {
    prepare_socket_path(path)?;
    let rt = runtime().map_err(socket_err(path))?;
    let stats = Arc::new(ListenStats::default());
    let incoming = {
        let _guard = rt.enter();
        // Created with the umask's mode, then narrowed before anyone can be served.
        let l = tokio::net::UnixListener::bind(path).map_err(socket_err(path))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(socket_err(path))?;
        listen::incoming(
            l,
            limits,
            None,
            Arc::clone(&stats),
            path.display().to_string(),
        )
    };
    let builder = server_builder(&limits);
    let rt_handle = rt.handle().clone();
    let (stop, thread) =
        serve_on_thread(rt, builder, ctl.service(), incoming).map_err(socket_err(path))?;
    Ok(ServerHandle {
        stop: Some(stop),
        thread: Some(thread),
        path: path.to_path_buf(),
        addr: None,
        stats,
        rt: rt_handle,
    })
}

/// The HTTP/2 side of the limits: pings, streams per connection, header size.
fn server_builder(limits: &Limits) -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(limits.keepalive))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)))
        .max_concurrent_streams(Some(MAX_STREAMS))
        .http2_max_header_list_size(Some(MAX_HEADER_LIST))
        .http2_max_pending_accept_reset_streams(Some(32))
}

/// Concurrent calls per connection.
pub const MAX_STREAMS: u32 = 32;
/// Bytes of request headers (HTTP/2 header list) per call.
pub const MAX_HEADER_LIST: u32 = 16 << 10;

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(4)
        // The threads that convert and plan big changes end soon after (and with them what
        // their allocator keeps for them).
        .thread_keep_alive(std::time::Duration::from_secs(1))
        .thread_name("switchd-control")
        .enable_all()
        .build()
}

type Stop = tokio::sync::oneshot::Sender<()>;

/// Serves `service` on `incoming` from a new thread that owns `rt`, until the returned
/// sender fires or is dropped.
fn serve_on_thread<D, I, IO, E>(
    rt: tokio::runtime::Runtime,
    builder: tonic::transport::Server,
    service: crate::pb::switch_service_server::SwitchServiceServer<crate::server::Api<D>>,
    incoming: I,
) -> std::io::Result<(Stop, std::thread::JoinHandle<()>)>
where
    D: Dataplane,
    I: tokio_stream::Stream<Item = Result<IO, E>> + Send + 'static,
    IO: tokio::io::AsyncRead
        + tokio::io::AsyncWrite
        + tonic::transport::server::Connected
        + Unpin
        + Send
        + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("switchd-grpc".into())
        .spawn(move || {
            rt.block_on(async move {
                let serve = builder
                    .layer(tower::util::MapResponseLayer::new(
                        crate::server::size_limit_status,
                    ))
                    // A whole cluster's state is megabytes: no waiting for window updates.
                    .initial_stream_window_size(Some(16 << 20))
                    .initial_connection_window_size(Some(16 << 20))
                    .add_service(service)
                    .serve_with_incoming(incoming);
                // Stopping closes every connection at once (a graceful shutdown would wait
                // for clients that never hang up, such as an open WatchStats).
                tokio::select! {
                    _ = serve => {}
                    _ = stopped => {}
                }
            });
            rt.shutdown_timeout(std::time::Duration::from_millis(200));
        })?;
    Ok((stop, thread))
}

/// Serves `ctl` on TCP at `addr` with TLS, requiring a client certificate signed by
/// `tls.ca`, from a new thread. There is no TCP without TLS.
pub fn spawn_tcp<D: Dataplane>(
    ctl: Arc<Control<D>>,
    addr: std::net::SocketAddr,
    tls: &TlsFiles,
) -> Result<ServerHandle, TransportError> {
    spawn_tcp_with(ctl, addr, tls, Limits::default())
}

/// [`spawn_tcp`] with the given connection limits.
pub fn spawn_tcp_with<D: Dataplane>(
    ctl: Arc<Control<D>>,
    addr: std::net::SocketAddr,
    tls: &TlsFiles,
    limits: Limits,
) -> Result<ServerHandle, TransportError> {
    let acceptor = tls.acceptor()?;
    let where_ = PathBuf::from(addr.to_string());
    let rt = runtime().map_err(socket_err(&where_))?;
    let stats = Arc::new(ListenStats::default());
    let (incoming, bound) = {
        let _guard = rt.enter();
        let l = std::net::TcpListener::bind(addr).map_err(socket_err(&where_))?;
        l.set_nonblocking(true).map_err(socket_err(&where_))?;
        let l = tokio::net::TcpListener::from_std(l).map_err(socket_err(&where_))?;
        let bound = l.local_addr().map_err(socket_err(&where_))?;
        let what = format!("tcp {bound}");
        (
            listen::incoming(l, limits, Some(acceptor), Arc::clone(&stats), what),
            bound,
        )
    };
    let builder = server_builder(&limits);
    let rt_handle = rt.handle().clone();
    let (stop, thread) =
        serve_on_thread(rt, builder, ctl.service(), incoming).map_err(socket_err(&where_))?;
    Ok(ServerHandle {
        stop: Some(stop),
        thread: Some(thread),
        path: PathBuf::new(),
        addr: Some(bound),
        stats,
        rt: rt_handle,
    })
}

/// Connects over TCP with TLS to `addr` (`host:port`), presenting `tls.cert` and checking
/// the server's certificate against `tls.ca` for `server_name` (default: the host).
pub async fn connect_tcp(
    addr: &str,
    tls: &TlsFiles,
    server_name: Option<&str>,
) -> Result<SwitchClient<Channel>, TransportError> {
    let (identity, ca) = tls.read()?;
    let fail = |reason: String| TransportError::Connect {
        path: PathBuf::from(addr),
        reason,
    };
    let mut cfg = ClientTlsConfig::new().ca_certificate(ca).identity(identity);
    if let Some(n) = server_name {
        cfg = cfg.domain_name(n);
    }
    let channel = Endpoint::from_shared(format!("https://{addr}"))
        .map_err(|e| fail(e.to_string()))?
        .tls_config(cfg)
        .map_err(|e| TransportError::Tls(e.to_string()))?
        .initial_stream_window_size(Some(16 << 20))
        .initial_connection_window_size(Some(16 << 20))
        .connect()
        .await
        .map_err(|e| {
            let mut reason = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                reason = format!("{reason}: {s}");
                src = s.source();
            }
            fail(reason)
        })?;
    Ok(SwitchClient::new(channel)
        .max_decoding_message_size(256 << 20)
        .max_encoding_message_size(256 << 20))
}

/// Connects to the server on the Unix socket `path`.
pub async fn connect(path: &Path) -> Result<SwitchClient<Channel>, TransportError> {
    let p = path.to_path_buf();
    let channel = Endpoint::try_from("http://switchd.invalid")
        .map_err(|e| TransportError::Connect {
            path: p.clone(),
            reason: e.to_string(),
        })?
        .initial_stream_window_size(Some(16 << 20))
        .initial_connection_window_size(Some(16 << 20))
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let p = p.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(p).await?))
            }
        }))
        .await
        .map_err(|e| {
            let reason = std::error::Error::source(&e)
                .map(|s| s.to_string())
                .unwrap_or_else(|| e.to_string());
            TransportError::Connect {
                path: path.to_path_buf(),
                reason,
            }
        })?;
    Ok(SwitchClient::new(channel)
        .max_decoding_message_size(256 << 20)
        .max_encoding_message_size(256 << 20))
}
