//! The transports: the API on a Unix socket readable by root only (the default), or on TCP
//! with TLS and client certificates (both sides' certificates checked against a CA), and
//! connecting to either.
//!
//! Design: the server runs on its own thread with a small tokio runtime, so the daemon's
//! threads stay as they are; [`spawn_unix`] binds before it returns (an error is the caller's
//! at once, and a client may connect as soon as it returns) and the returned handle stops the
//! server when dropped, closing its connections (a call in flight fails with UNAVAILABLE). A socket file left by a killed daemon is replaced; one that another
//! live server answers on is not. Thread-safety: the handle may be moved to any thread.

use crate::pb::switch_client::SwitchClient;
use crate::server::{Control, Dataplane};
use hyper_util::rt::TokioIo;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tonic::transport::{
    Certificate, Channel, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig, Uri,
};

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

/// Serves `ctl` on the Unix socket `path` (mode 0600: root only) from a new thread.
pub fn spawn_unix<D: Dataplane>(
    ctl: Arc<Control<D>>,
    path: &Path,
) -> Result<ServerHandle, TransportError> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() && !dir.exists() {
            std::fs::create_dir_all(dir).map_err(socket_err(path))?;
        }
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(TransportError::InUse(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(socket_err(path))?;
    }
    let rt = runtime().map_err(socket_err(path))?;
    let listener = {
        let _guard = rt.enter();
        // Created with the umask's mode, then narrowed before anyone can be served.
        let l = tokio::net::UnixListener::bind(path).map_err(socket_err(path))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(socket_err(path))?;
        l
    };
    let builder = tonic::transport::Server::builder();
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    let (stop, thread) =
        serve_on_thread(rt, builder, ctl.service(), incoming).map_err(socket_err(path))?;
    Ok(ServerHandle {
        stop: Some(stop),
        thread: Some(thread),
        path: path.to_path_buf(),
        addr: None,
    })
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(4)
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
    service: crate::pb::switch_server::SwitchServer<crate::server::Api<D>>,
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
    let (identity, ca) = tls.read()?;
    let where_ = PathBuf::from(addr.to_string());
    let rt = runtime().map_err(socket_err(&where_))?;
    let listener = {
        let _guard = rt.enter();
        let l = std::net::TcpListener::bind(addr).map_err(socket_err(&where_))?;
        l.set_nonblocking(true).map_err(socket_err(&where_))?;
        tokio::net::TcpListener::from_std(l).map_err(socket_err(&where_))?
    };
    let bound = listener.local_addr().map_err(socket_err(&where_))?;
    let builder = tonic::transport::Server::builder()
        .tls_config(ServerTlsConfig::new().identity(identity).client_ca_root(ca))
        .map_err(|e| TransportError::Tls(e.to_string()))?;
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let (stop, thread) =
        serve_on_thread(rt, builder, ctl.service(), incoming).map_err(socket_err(&where_))?;
    Ok(ServerHandle {
        stop: Some(stop),
        thread: Some(thread),
        path: PathBuf::new(),
        addr: Some(bound),
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
