//! `switchd`: nodeswitch's daemon. Today: `replay` captures through the pipeline and `check`
//! a state file; the AF_XDP ports arrive with their own issue.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use switch::replay::{self, Input};

#[derive(Parser)]
#[command(
    name = "switchd",
    version,
    about = "nodeswitch: a userspace AF_XDP packet switch for Kubernetes nodes"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Replay pcap/pcapng captures through the real pipeline and write what it sends.
    ///
    /// Writes DIR/<port>.pcap for every port (the uplink and each pod's), DIR/kernel.pcap for
    /// frames handed to the node's kernel, and DIR/counters.json with every counter.
    Replay {
        /// The state file (TOML; see docs/state-file.md).
        #[arg(long)]
        state: PathBuf,
        /// PORT=FILE: frames of FILE arrive on PORT (a port name or pod name). Repeatable.
        #[arg(long = "in", value_name = "PORT=FILE", required = true)]
        inputs: Vec<Input>,
        /// Output directory (created if missing; files in it are overwritten).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Validate a state file and print the tables it describes.
    Check {
        /// The state file.
        #[arg(long)]
        state: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Replay { state, inputs, out } => replay::run(&state, &inputs, &out).map(|r| {
            println!(
                "replayed {} frames on node {} (generation {})",
                r.received, r.node, r.generation
            );
            if r.input.skipped_truncated_capture + r.input.skipped_too_large > 0 {
                println!(
                    "  skipped: {} cut short by the capture's snaplen, {} too large",
                    r.input.skipped_truncated_capture, r.input.skipped_too_large
                );
            }
            for (k, v) in r.actions.iter().filter(|(_, v)| **v > 0) {
                println!("  {k:<24} {v:>8}");
            }
            for (k, v) in r.drops.iter().filter(|(_, v)| **v > 0) {
                println!("  drop {k:<19} {v:>8}");
            }
            for (k, v) in &r.output {
                println!("  -> {}/{k}.pcap: {v} frames", out.display());
            }
            println!("  -> {}/{}", out.display(), replay::COUNTERS_JSON);
        }),
        Cmd::Check { state } => replay::load_state(&state).map(|s| {
            println!(
                "{}: valid. node {} ip {} pod_cidr {} gateway {} ({})",
                state.display(),
                s.node.name,
                s.node.ip,
                s.node.pod_cidr,
                s.node.gateway_ip,
                s.node.gateway_mac
            );
            println!(
                "vxlan vni {} port {}, uplink '{}' mtu {}",
                s.node.vni,
                s.node.vxlan_port,
                s.ports()[0],
                s.node.uplink_mtu
            );
            for p in s.pods() {
                println!(
                    "pod  {:<24} {:<15} {} port {}",
                    p.name,
                    p.ip,
                    p.mac,
                    s.port_name(p.port).unwrap_or("?")
                );
            }
            for r in s.remotes() {
                println!(
                    "node {:<24} {:<15} pod_cidr {} vtep {} next-hop {}",
                    r.name, r.ip, r.pod_cidr, r.vtep_mac, r.next_hop_mac
                );
            }
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchd: error: {e}");
            ExitCode::FAILURE
        }
    }
}
