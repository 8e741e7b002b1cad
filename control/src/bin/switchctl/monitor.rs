//! `switchctl monitor`: drops and forwarding decisions as they happen, one line each.
//!
//! Design: prints each event as it arrives (a line for people, or with `-o json` one JSON
//! object per line); stops at the count, the duration or Ctrl-C, and says on stderr how many
//! events it printed and how many the switch lost because this reader was behind.

use crate::{client, Cli, Failure, Format};
use control::pb;
use std::io::Write;
use std::time::Duration;

/// What to monitor.
pub struct Args<'a> {
    /// drop, trace or all.
    pub kind: &'a str,
    /// Receiving ports (empty: all).
    pub ports: &'a [String],
    /// The filter's words.
    pub filter: &'a [String],
    /// Stop after this many events.
    pub count: Option<u64>,
    /// Stop after this long.
    pub duration: Option<Duration>,
}

/// `hh:mm:ss.micros` (UTC) of a time in nanoseconds since the epoch.
fn clock(ns: u64) -> String {
    let s = ns / 1_000_000_000;
    let us = (ns / 1000) % 1_000_000;
    format!(
        "{:02}:{:02}:{:02}.{us:06}",
        (s / 3600) % 24,
        (s / 60) % 60,
        s % 60
    )
}

/// `tcp 10.0.0.1:80 -> 10.0.0.2:4000`, `icmp 10.0.0.1 -> 10.0.0.2 type 8 code 0`.
fn flow(f: &Option<pb::Flow>) -> String {
    let Some(f) = f else {
        return "(not IPv4/ARP)".into();
    };
    match f.protocol.as_str() {
        "tcp" | "udp" => format!(
            "{} {}:{} -> {}:{}",
            f.protocol, f.source, f.source_port, f.destination, f.destination_port
        ),
        "icmp" => format!(
            "icmp {} -> {} type {} code {}",
            f.source, f.destination, f.source_port, f.destination_port
        ),
        p => format!("{p} {} -> {}", f.source, f.destination),
    }
}

fn tunnel(f: &Option<pb::Flow>) -> String {
    match f {
        Some(t) => format!(" (vxlan {} -> {})", t.source, t.destination),
        None => String::new(),
    }
}

/// One event as a line.
pub fn line(e: &pb::MonitorEvent) -> String {
    let head = format!(
        "{} worker {} gen {} {}",
        clock(e.time_ns),
        e.worker,
        e.generation,
        e.port
    );
    if e.r#type == "drop" {
        format!(
            "{head} DROP {}: {}{}",
            e.reason,
            flow(&e.before),
            tunnel(&e.before_tunnel)
        )
    } else {
        format!(
            "{head} -> {}: {}{} => {}{}",
            e.to_port,
            flow(&e.before),
            tunnel(&e.before_tunnel),
            flow(&e.after),
            tunnel(&e.after_tunnel)
        )
    }
}

/// Runs `switchctl monitor`.
pub async fn run(cli: &Cli, a: Args<'_>) -> Result<(), Failure> {
    let mut c = client(cli).await?;
    let mut stream = c
        .monitor(pb::MonitorRequest {
            r#type: a.kind.to_string(),
            ports: a.ports.to_vec(),
            filter: a.filter.join(" "),
        })
        .await?
        .into_inner();
    let (mut shown, mut lost) = (0u64, 0u64);
    let sleep = crate::after(a.duration);
    tokio::pin!(sleep);
    let mut stdout = std::io::stdout().lock();
    let why = 'outer: loop {
        let msg = tokio::select! {
            m = stream.message() => m?,
            _ = &mut sleep => break "the duration passed",
            _ = tokio::signal::ctrl_c() => break "interrupted",
        };
        let Some(msg) = msg else {
            break "switchd ended the monitor";
        };
        lost = msg.lost;
        for e in &msg.events {
            if a.count.is_some_and(|n| shown >= n) {
                break 'outer "the count was reached";
            }
            let text = if cli.output == Format::Json {
                serde_json::to_string(e).unwrap_or_default()
            } else {
                line(e)
            };
            if writeln!(stdout, "{text}").is_err() {
                break 'outer "the output closed";
            }
            shown += 1;
        }
        if stdout.flush().is_err() {
            break "the output closed";
        }
        if a.count.is_some_and(|n| shown >= n) {
            break "the count was reached";
        }
    };
    let _ = stdout.flush();
    eprintln!(
        "switchctl: {shown} events, {lost} lost{}; {why}",
        if lost > 0 {
            " (the switch's monitor ring was full: this reader was behind)"
        } else {
            ""
        }
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drop_and_a_trace_read_as_one_line_each() {
        let f = |p: &str, s: &str, sp, d: &str, dp| {
            Some(pb::Flow {
                protocol: p.into(),
                source: s.into(),
                destination: d.into(),
                source_port: sp,
                destination_port: dp,
            })
        };
        let drop = pb::MonitorEvent {
            time_ns: 3_723_000_004_000,
            port: "pod-a".into(),
            r#type: "drop".into(),
            reason: "spoofed_source".into(),
            before: f("udp", "10.9.9.9", 1, "10.244.1.3", 53),
            generation: 7,
            ..Default::default()
        };
        assert_eq!(
            line(&drop),
            "01:02:03.000004 worker 0 gen 7 pod-a DROP spoofed_source: udp 10.9.9.9:1 -> 10.244.1.3:53"
        );
        let trace = pb::MonitorEvent {
            r#type: "trace".into(),
            to_port: "uplink".into(),
            after: f("icmp", "10.244.1.2", 8, "10.244.2.5", 0),
            after_tunnel: f("udp", "192.168.0.1", 1, "192.168.0.2", 4789),
            ..drop
        };
        assert!(line(&trace).ends_with(
            "pod-a -> uplink: udp 10.9.9.9:1 -> 10.244.1.3:53 => icmp 10.244.1.2 -> 10.244.2.5 type 8 code 0 (vxlan 192.168.0.1 -> 192.168.0.2)"
        ), "{}", line(&trace));
    }
}
