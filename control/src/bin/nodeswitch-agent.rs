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
    #[command(subcommand)]
    cmd: Option<Cmd>,
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

/// What else the binary does.
#[derive(Debug, clap::Subcommand)]
enum Cmd {
    /// Writes this node's switchd config, the host port's settings and the CNI config from
    /// its Node object (a DaemonSet's init step), then exits. Waits for the Node's pod CIDR.
    NodeConfig {
        /// The uplink interface (the one holding the node's InternalIP).
        #[arg(long, default_value = "eth0")]
        uplink: String,
        /// The Service CIDR.
        #[arg(long, default_value = "10.96.0.0/12")]
        service_cidr: flowtable::cidr::Ipv4Cidr,
        /// The cluster's pod CIDR (every node's inside it).
        #[arg(long, default_value = "10.244.0.0/16")]
        cluster_cidr: flowtable::cidr::Ipv4Cidr,
        /// The cluster DNS Service address for pods' resolv.conf.
        #[arg(long)]
        dns: Option<std::net::Ipv4Addr>,
        /// Where node.toml and node.env are written.
        #[arg(long, default_value = "/run/nodeswitch")]
        out_dir: PathBuf,
        /// Where the CNI network config list is written.
        #[arg(long, default_value = "/etc/cni/net.d/10-nodeswitch.conflist")]
        cni_conf: PathBuf,
        /// How long to wait for the Node to have a pod CIDR (seconds).
        #[arg(long, default_value_t = 300)]
        wait_seconds: u64,
    },
}

/// Reads an interface's MAC and MTU from sysfs.
fn uplink_facts(name: &str) -> Result<control::agent::nodeconfig::Uplink, String> {
    let read = |f: &str| {
        std::fs::read_to_string(format!("/sys/class/net/{name}/{f}"))
            .map(|s| s.trim().to_string())
            .map_err(|e| format!("interface {name:?}: {f}: {e}"))
    };
    Ok(control::agent::nodeconfig::Uplink {
        name: name.to_string(),
        mac: read("address")?
            .parse()
            .map_err(|e| format!("interface {name:?}: {e}"))?,
        mtu: read("mtu")?
            .parse()
            .map_err(|e| format!("interface {name:?}: mtu: {e}"))?,
    })
}

/// Writes `text` to `path` atomically (a temporary file renamed over it).
fn write_file(path: &std::path::Path, text: &str) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| format!("{}: {e}", path.display()))
}

#[allow(clippy::too_many_arguments)]
async fn node_config(
    client: kube::Client,
    node: &str,
    uplink: &str,
    cluster: control::agent::nodeconfig::ClusterSettings,
    out_dir: &std::path::Path,
    cni_conf: &std::path::Path,
    wait: Duration,
) -> Result<(), String> {
    let up = uplink_facts(uplink)?;
    let api: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client);
    let deadline = std::time::Instant::now() + wait;
    let files = loop {
        let attempt = match api.get(node).await {
            Ok(n) => control::agent::nodeconfig::files(&n, &up, &cluster),
            Err(e) => Err(format!("reading Node {node:?}: {e}")),
        };
        match attempt {
            Ok(f) => break f,
            Err(e) if std::time::Instant::now() < deadline => {
                eprintln!("nodeswitch-agent: {e} (waiting)");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(e) => return Err(e),
        }
    };
    write_file(&out_dir.join("node.toml"), &files.state)?;
    write_file(&out_dir.join("node.env"), &files.env)?;
    write_file(cni_conf, &files.conflist)?;
    eprintln!(
        "nodeswitch-agent: wrote {}, {} and {}",
        out_dir.join("node.toml").display(),
        out_dir.join("node.env").display(),
        cni_conf.display()
    );
    Ok(())
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
        if let Some(Cmd::NodeConfig {
            uplink,
            service_cidr,
            cluster_cidr,
            dns,
            out_dir,
            cni_conf,
            wait_seconds,
        }) = &args.cmd
        {
            let cluster = control::agent::nodeconfig::ClusterSettings {
                service_cidr: *service_cidr,
                cluster_cidr: *cluster_cidr,
                dns: *dns,
            };
            return match node_config(
                client,
                &args.node,
                uplink,
                cluster,
                out_dir,
                cni_conf,
                Duration::from_secs(*wait_seconds),
            )
            .await
            {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("nodeswitch-agent: error: {e}");
                    ExitCode::FAILURE
                }
            };
        }
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
