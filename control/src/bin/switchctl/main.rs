//! `switchctl`: drives a running switchd over its control socket.
//!
//! Tables for people by default, `-o json` for scripts. Exit codes: 0 done, 1 refused
//! (invalid request or failed precondition), 2 usage error, 3 switchd unreachable (or, over
//! TCP, this client's certificate refused), 4 not found, 5 applied but not programmed in time,
//! 6 the state file could not be read or parsed.

mod capture;
mod list;
mod monitor;
mod stats;

use clap::{Parser, Subcommand, ValueEnum};
use control::client::{connect, DEFAULT_SOCKET};
use control::pb;
use control::pb::switch_service_client::SwitchServiceClient as SwitchClient;
use flowtable::state::StateFile;
use serde::Serialize;
use std::path::PathBuf;
use std::process::ExitCode;
use tonic::transport::Channel;

#[derive(Parser)]
#[command(
    name = "switchctl",
    version,
    about = "Drive a running switchd (nodeswitch)."
)]
struct Cli {
    /// switchd's control socket.
    #[arg(long, short = 's', env = "SWITCHCTL_SOCKET", default_value = DEFAULT_SOCKET, global = true)]
    socket: PathBuf,
    /// Connect over TCP with TLS to this host:port instead of the socket.
    #[arg(long, value_name = "ADDR", global = true, requires_all = ["tls_ca", "tls_cert", "tls_key"])]
    tcp: Option<String>,
    /// The CA (PEM) that signed switchd's certificate (with --tcp).
    #[arg(long, value_name = "FILE", global = true)]
    tls_ca: Option<PathBuf>,
    /// This client's certificate (PEM) (with --tcp).
    #[arg(long, value_name = "FILE", global = true)]
    tls_cert: Option<PathBuf>,
    /// This client's private key (PEM) (with --tcp).
    #[arg(long, value_name = "FILE", global = true)]
    tls_key: Option<PathBuf>,
    /// The name switchd's certificate must carry (default: the host of --tcp).
    #[arg(long, value_name = "NAME", global = true)]
    tls_server_name: Option<String>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Format::Table, global = true)]
    output: Format,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    /// Human-readable tables.
    Table,
    /// JSON, one document.
    Json,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Kind {
    /// Other nodes of the cluster.
    #[value(alias = "node")]
    Nodes,
    /// Pods on this node.
    #[value(alias = "pod")]
    Pods,
    /// Services, with each port's Maglev backend distribution.
    #[value(alias = "service", alias = "svc")]
    Services,
    /// Endpoints of Services.
    #[value(alias = "endpoint", alias = "ep")]
    Endpoints,
}

#[derive(Subcommand)]
enum Cmd {
    /// Make switchd's state the one in FILE (the state file's schema); prints what changed.
    Apply {
        /// The state file (TOML), or - for standard input.
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        /// Validate and show what would change, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// List objects of a kind.
    List {
        /// What to list.
        kind: Kind,
    },
    /// Show one object (for endpoints: a Service's).
    Get {
        /// What to show.
        kind: Kind,
        /// Its name.
        name: String,
    },
    /// Delete one object (nodes, pods, services).
    Delete {
        /// What to delete.
        kind: Kind,
        /// Its name.
        name: String,
    },
    /// The connection tracking table.
    Ct {
        #[command(subcommand)]
        cmd: CtCmd,
    },
    /// Counters: drops by reason, per port, per worker.
    Stats {
        /// Print again every interval until interrupted.
        #[arg(long, short = 'w')]
        watch: bool,
        /// Interval for --watch, in milliseconds.
        #[arg(long, default_value_t = 1000)]
        interval_ms: u32,
    },
    /// The decision chain a packet would take: explain tcp 10.244.1.2:40000 10.96.0.10:80
    Explain {
        /// tcp, udp or icmp.
        protocol: String,
        /// Source address:port (for icmp, the port is the echo identifier).
        src: String,
        /// Destination address:port (icmp: the address alone).
        dst: String,
        /// The port it arrives on (default: the pod with the source address, else the uplink).
        #[arg(long)]
        from: Option<String>,
    },
    /// Stream the frames passing the switch's ports as pcapng: capture -w - | tshark -r -
    Capture {
        /// A port to capture on (repeat for more; default: every port, also new ones).
        #[arg(long = "port", value_name = "NAME")]
        ports: Vec<String>,
        /// Received frames (before the pipeline), sent ones (after NAT and encapsulation) or
        /// both.
        #[arg(long, value_enum, default_value_t = Point::Both)]
        point: Point,
        /// Which frames: host IP, net CIDR, port N, proto tcp|udp|icmp|arp|N (also tcp, udp,
        /// icmp, arp alone), all of which must hold for the frame's packet or, in a VXLAN
        /// frame, for its inner packet. Example: --filter host 10.244.1.5 tcp port 80
        #[arg(long, num_args = 1.., value_name = "TERM", allow_hyphen_values = false)]
        filter: Vec<String>,
        /// Stop after this many frames.
        #[arg(short = 'c', long)]
        count: Option<u64>,
        /// Stop after this many seconds.
        #[arg(long, value_name = "SECONDS")]
        duration: Option<f64>,
        /// Write pcapng to FILE, or to standard output with -.
        #[arg(short = 'w', long = "write", value_name = "FILE")]
        write: PathBuf,
    },
    /// Print drops (with their reason) and forwarding decisions as they happen, one line each
    /// (with -o json, one JSON object per line).
    Monitor {
        /// Which events.
        #[arg(long = "type", value_enum, default_value_t = EventType::Drop)]
        kind: EventType,
        /// Only frames received on this port (repeat for more; default: every port).
        #[arg(long = "port", value_name = "NAME")]
        ports: Vec<String>,
        /// Which frames, as for capture (matched before or after translation).
        #[arg(long, num_args = 1.., value_name = "TERM")]
        filter: Vec<String>,
        /// Stop after this many events.
        #[arg(short = 'c', long)]
        count: Option<u64>,
        /// Stop after this many seconds.
        #[arg(long, value_name = "SECONDS")]
        duration: Option<f64>,
    },
    /// The versions of switchctl and switchd.
    Version,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Point {
    /// Received frames.
    Rx,
    /// Sent frames.
    Tx,
    /// Both.
    Both,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum EventType {
    /// Dropped frames, with the reason.
    Drop,
    /// Forwarded frames, before and after translation.
    Trace,
    /// Both.
    All,
}

/// Resolves once `d` has passed from now; never without a duration (a stream's end by time).
async fn after(d: Option<std::time::Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// A `--duration` in seconds, checked.
fn duration(secs: Option<f64>) -> Result<Option<std::time::Duration>, Failure> {
    match secs {
        None => Ok(None),
        Some(s) if s.is_finite() && s > 0.0 && s <= 1e9 => {
            Ok(Some(std::time::Duration::from_secs_f64(s)))
        }
        Some(s) => Err(usage(format!(
            "--duration {s}: must be a number of seconds above 0"
        ))),
    }
}

#[derive(Subcommand)]
enum CtCmd {
    /// List entries.
    List {
        /// Either address of the flow, original or translated.
        #[arg(long)]
        address: Option<String>,
        /// TCP, UDP, ICMP, SCTP, affinity.
        #[arg(long)]
        protocol: Option<String>,
        /// Either port of the flow.
        #[arg(long)]
        port: Option<u32>,
        /// A TCP state (syn_sent, syn_recv, established, fin_wait, close_wait, last_ack,
        /// time_wait, close), unreplied or replied (UDP), or a group: new, closing.
        #[arg(long)]
        state: Option<String>,
        /// At most this many entries.
        #[arg(long, default_value_t = 1000)]
        limit: u32,
    },
}

/// A failure and its exit code.
struct Failure {
    code: u8,
    msg: String,
}

impl From<tonic::Status> for Failure {
    fn from(s: tonic::Status) -> Failure {
        use tonic::Code;
        let code = match s.code() {
            Code::InvalidArgument | Code::FailedPrecondition | Code::AlreadyExists => 1,
            Code::NotFound => 4,
            Code::DeadlineExceeded => 5,
            Code::Unavailable => 3,
            // The connection went away under the call: over TCP, switchd refusing this
            // client's certificate looks like this.
            Code::Cancelled => {
                return Failure {
                    code: 3,
                    msg: format!(
                        "the connection was closed ({}); over --tcp: is this client's certificate signed by switchd's --tls-client-ca?",
                        s.message()
                    ),
                }
            }
            // The connection failed under the call (a transport error, not an answer of
            // switchd's): over TCP, switchd's TLS refusing this client's certificate.
            Code::Unknown if std::error::Error::source(&s).is_some() => {
                let mut why = s.message().to_string();
                let mut src = std::error::Error::source(&s);
                while let Some(e) = src {
                    why = format!("{why}: {e}");
                    src = e.source();
                }
                return Failure {
                    code: 3,
                    msg: format!(
                        "the connection failed ({why}); over --tcp: is this client's certificate signed by switchd's --tls-client-ca?"
                    ),
                };
            }
            _ => 1,
        };
        Failure {
            code,
            msg: format!("{}: {}", code_name(s.code()), s.message()),
        }
    }
}

fn code_name(c: tonic::Code) -> &'static str {
    use tonic::Code;
    match c {
        Code::InvalidArgument => "invalid argument",
        Code::NotFound => "not found",
        Code::FailedPrecondition => "failed precondition",
        Code::DeadlineExceeded => "not programmed in time",
        Code::Unavailable => "unavailable",
        _ => "error",
    }
}

fn usage(msg: impl Into<String>) -> Failure {
    Failure {
        code: 2,
        msg: msg.into(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("switchctl: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(&cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("switchctl: {}", f.msg);
            ExitCode::from(f.code)
        }
    }
}

async fn client(cli: &Cli) -> Result<SwitchClient<Channel>, Failure> {
    if let (Some(addr), Some(ca), Some(cert), Some(key)) =
        (&cli.tcp, &cli.tls_ca, &cli.tls_cert, &cli.tls_key)
    {
        let tls = control::client::TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            ca: ca.clone(),
        };
        return control::client::connect_tcp(addr, &tls, cli.tls_server_name.as_deref())
            .await
            .map_err(|e| Failure {
                code: 3,
                msg: e.to_string(),
            });
    }
    connect(&cli.socket).await.map_err(|e| Failure {
        code: 3,
        msg: format!("{e} (is switchd running? --socket or SWITCHCTL_SOCKET names its socket)"),
    })
}

fn json<T: Serialize>(v: &T) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// Prints rows as columns padded to the widest cell.
fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(x) = w.get_mut(i) {
                *x = (*x).max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let n = cells.len();
        let s: Vec<String> = cells
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                if i + 1 == n {
                    c
                } else {
                    format!("{c:<width$}", width = w[i])
                }
            })
            .collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r.clone());
    }
}

async fn run(cli: &Cli) -> Result<(), Failure> {
    match &cli.cmd {
        Cmd::Capture {
            ports,
            point,
            filter,
            count,
            duration: secs,
            write,
        } => {
            let point = match point {
                Point::Rx => "rx",
                Point::Tx => "tx",
                Point::Both => "both",
            };
            let args = capture::Args {
                ports,
                point,
                filter,
                count: *count,
                duration: duration(*secs)?,
                write,
            };
            capture::run(cli, args).await
        }
        Cmd::Monitor {
            kind,
            ports,
            filter,
            count,
            duration: secs,
        } => {
            let kind = match kind {
                EventType::Drop => "drop",
                EventType::Trace => "trace",
                EventType::All => "all",
            };
            let args = monitor::Args {
                kind,
                ports,
                filter,
                count: *count,
                duration: duration(*secs)?,
            };
            monitor::run(cli, args).await
        }
        Cmd::Apply { file, dry_run } => apply(cli, file, *dry_run).await,
        Cmd::List { kind } => list::list(cli, *kind, "").await,
        Cmd::Get { kind, name } => list::list(cli, *kind, name).await,
        Cmd::Delete { kind, name } => delete(cli, *kind, name).await,
        Cmd::Ct {
            cmd:
                CtCmd::List {
                    address,
                    protocol,
                    port,
                    state,
                    limit,
                },
        } => {
            let mut c = client(cli).await?;
            let r = c
                .list_conntrack(pb::ListConntrackRequest {
                    address: address.clone().unwrap_or_default(),
                    protocol: protocol.clone().unwrap_or_default(),
                    port: port.unwrap_or(0),
                    state: state.clone().unwrap_or_default(),
                    limit: *limit,
                })
                .await?
                .into_inner();
            if cli.output == Format::Json {
                json(&r);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = r
                .entries
                .iter()
                .map(|e| {
                    vec![
                        e.protocol.clone(),
                        format!("{}:{}", e.src, e.sport),
                        format!("{}:{}", e.dst, e.dport),
                        format!("{}:{}", e.translated_src, e.translated_sport),
                        format!("{}:{}", e.translated_dst, e.translated_dport),
                        e.state.clone(),
                        if e.replied { "yes".into() } else { "no".into() },
                        if e.assured { "yes".into() } else { "no".into() },
                        format!("{}s", e.expires_in),
                    ]
                })
                .collect();
            table(
                &[
                    "PROTO",
                    "SOURCE",
                    "DESTINATION",
                    "TRANSLATED SOURCE",
                    "TRANSLATED DESTINATION",
                    "STATE",
                    "REPLIED",
                    "ASSURED",
                    "EXPIRES",
                ],
                &rows,
            );
            println!(
                "{} shown, {} matched, {} tracked, capacity {}",
                r.entries.len(),
                r.matched,
                r.total,
                r.capacity
            );
            Ok(())
        }
        Cmd::Stats { watch, interval_ms } => {
            let mut c = client(cli).await?;
            if !watch {
                let s = c.get_stats(pb::GetStatsRequest {}).await?.into_inner();
                stats::print_stats(cli, &s.stats.unwrap_or_default());
                return Ok(());
            }
            let mut stream = c
                .watch_stats(pb::WatchStatsRequest {
                    interval_ms: *interval_ms,
                    count: 0,
                })
                .await?
                .into_inner();
            while let Some(s) = stream.message().await? {
                stats::print_stats(cli, &s.stats.unwrap_or_default());
                if cli.output == Format::Table {
                    println!();
                }
            }
            Ok(())
        }
        Cmd::Explain {
            protocol,
            src,
            dst,
            from,
        } => {
            let split = |what: &str, s: &str| -> Result<(String, u32), Failure> {
                match s.rsplit_once(':') {
                    Some((a, p)) => p
                        .parse()
                        .map(|p| (a.to_string(), p))
                        .map_err(|_| usage(format!("{what}: '{p}' is not a port number"))),
                    None if protocol.eq_ignore_ascii_case("icmp") => Ok((s.to_string(), 0)),
                    None => Err(usage(format!("{what}: '{s}' should be address:port"))),
                }
            };
            let (s, sp) = split("source", src)?;
            let (d, dp) = split("destination", dst)?;
            let mut c = client(cli).await?;
            let r = c
                .explain(pb::ExplainRequest {
                    src: s,
                    sport: sp,
                    dst: d,
                    dport: dp,
                    protocol: protocol.clone(),
                    from: from.clone().unwrap_or_default(),
                })
                .await?
                .into_inner();
            if cli.output == Format::Json {
                json(&r);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = r
                .steps
                .iter()
                .map(|s| vec![s.table.clone(), s.result.clone()])
                .collect();
            table(&["STEP", "RESULT"], &rows);
            println!("verdict: {} (generation {})", r.verdict, r.generation);
            Ok(())
        }
        Cmd::Version => {
            let mut c = client(cli).await?;
            let v = c.version(pb::VersionRequest {}).await?.into_inner();
            if cli.output == Format::Json {
                json(&serde_json::json!({
                    "switchctl": env!("CARGO_PKG_VERSION"),
                    "switchd": v,
                }));
                return Ok(());
            }
            println!("switchctl {}", env!("CARGO_PKG_VERSION"));
            println!(
                "switchd   {} (API {}, node {}, generation {})",
                v.version, v.api, v.node, v.generation
            );
            Ok(())
        }
    }
}

async fn apply(cli: &Cli, file: &PathBuf, dry_run: bool) -> Result<(), Failure> {
    let text = if file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(file)
    }
    .map_err(|e| Failure {
        code: 6,
        msg: format!("{}: {e}", file.display()),
    })?;
    let state = StateFile::parse(&text).map_err(|e| Failure {
        code: 6,
        msg: format!("{}: {e}", file.display()),
    })?;
    // The file is checked as switchd checks a state file (SIGHUP) before it is sent: the API
    // reads a zero as "the default", a file may not say 0 where 0 is not allowed.
    if let Err(e) = flowtable::snapshot::Snapshot::build(&state, 1) {
        return Err(Failure {
            code: 1,
            msg: format!(
                "invalid argument: {}: {}",
                file.display(),
                control::engine::by_name(&e.to_string(), &state)
            ),
        });
    }
    let mut c = client(cli).await?;
    let r = c
        .replace(pb::ReplaceRequest {
            owner: String::new(),
            state: Some(control::convert::state_request(&state)),
            dry_run,
        })
        .await?
        .into_inner()
        .result
        .unwrap_or_default();
    if cli.output == Format::Json {
        json(&r);
        return Ok(());
    }
    for ch in &r.changes {
        let name = if ch.name.is_empty() {
            ch.kind.clone()
        } else {
            format!("{}/{}", ch.kind, ch.name)
        };
        println!(
            "{name} {}{}",
            ch.action,
            if dry_run { " (dry run)" } else { "" }
        );
    }
    if !r.changed {
        println!("no changes; generation {} stays", r.generation);
    } else if dry_run {
        println!(
            "{} unchanged; dry run, nothing applied (validated in {} us)",
            r.unchanged, r.build_micros
        );
    } else {
        println!(
            "{} unchanged; generation {} programmed (built in {} us, running on every worker {} us later)",
            r.unchanged, r.generation, r.build_micros, r.programmed_micros
        );
    }
    Ok(())
}

async fn delete(cli: &Cli, kind: Kind, name: &str) -> Result<(), Failure> {
    let mut c = client(cli).await?;
    let name = name.to_string();
    let r =
        match kind {
            Kind::Nodes => {
                c.delete_node(pb::DeleteNodeRequest { name })
                    .await?
                    .into_inner()
                    .result
            }
            Kind::Pods => {
                c.delete_pod(pb::DeletePodRequest { name })
                    .await?
                    .into_inner()
                    .result
            }
            Kind::Services => {
                c.delete_service(pb::DeleteServiceRequest { name })
                    .await?
                    .into_inner()
                    .result
            }
            Kind::Endpoints => return Err(usage(
                "endpoints belong to a Service: apply a state without them, or delete the Service",
            )),
        }
        .unwrap_or_default();
    if cli.output == Format::Json {
        json(&r);
    } else {
        for ch in &r.changes {
            println!("{}/{} {}", ch.kind, ch.name, ch.action);
        }
        println!("generation {} programmed", r.generation);
    }
    Ok(())
}
