//! `nodeswitch-agent`: one per node, next to switchd; programs it from the Kubernetes API
//! (Nodes, Services, EndpointSlices) over its control socket, as kube-proxy and Flannel's
//! daemon follow the API for theirs. See `control/src/agent/`.

use clap::Parser;
use control::agent::sync::{self, Config, Status};
use control::client::DEFAULT_SOCKET;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// Programs this node's switchd from the Kubernetes API.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// This node's name (its Node object; the DaemonSet passes spec.nodeName).
    #[arg(long, env = "NODE_NAME")]
    node: String,
    /// switchd's control socket.
    #[arg(long, default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// The API server's URL (e.g. http://127.0.0.1:8001 for a kubectl proxy); default: the
    /// in-cluster service account, else $KUBECONFIG or ~/.kube/config.
    #[arg(long)]
    server: Option<String>,
    /// How long changes are gathered before one write to switchd (milliseconds).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    sync_window_ms: u64,
    /// Where /healthz and /livez are served ("" for nowhere).
    #[arg(long, default_value = "0.0.0.0:10266")]
    healthz_address: String,
    /// /healthz fails once a change has waited this long to be programmed (seconds).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    healthz_bound_seconds: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("nodeswitch-agent: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async {
        let client = match &args.server {
            Some(url) => match url.parse() {
                Ok(uri) => {
                    kube::Client::try_from(kube::Config::new(uri)).map_err(|e| e.to_string())
                }
                Err(e) => Err(format!("--server {url:?}: {e}")),
            },
            None => kube::Client::try_default().await.map_err(|e| e.to_string()),
        };
        let client = match client {
            Ok(c) => c,
            Err(e) => {
                eprintln!("nodeswitch-agent: error: the Kubernetes API: {e}");
                return ExitCode::FAILURE;
            }
        };
        let cfg = Config {
            node: args.node.clone(),
            socket: args.socket.clone(),
            window: Duration::from_millis(args.sync_window_ms),
        };
        let status = Arc::new(Status::default());
        if !args.healthz_address.is_empty() {
            match tokio::net::TcpListener::bind(&args.healthz_address).await {
                Ok(l) => {
                    tokio::spawn(control::agent::health::serve(
                        l,
                        Arc::clone(&status),
                        Duration::from_secs(args.healthz_bound_seconds),
                    ));
                }
                Err(e) => {
                    eprintln!(
                        "nodeswitch-agent: error: --healthz-address {}: {e}",
                        args.healthz_address
                    );
                    return ExitCode::FAILURE;
                }
            }
        }
        sync::run(client, cfg, status).await;
        ExitCode::SUCCESS
    })
}
