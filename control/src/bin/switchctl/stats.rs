//! `switchctl stats`: the node's counters as tables (or one JSON document).

use super::{table, Cli, Format};
use control::pb;

/// Prints one stats document.
pub(crate) fn print_stats(cli: &Cli, s: &pb::Stats) {
    if cli.output == Format::Json {
        println!("{}", serde_json::to_string(s).unwrap_or_default());
        return;
    }
    println!(
        "node {}  generation {} (published {})  up {:.1} s  received {}  conntrack {}/{}",
        s.node,
        s.generation,
        s.published_generation,
        s.uptime_secs,
        s.received,
        s.conntrack_entries,
        s.conntrack_capacity
    );
    let mut actions: Vec<(&String, &u64)> = s.actions.iter().filter(|(_, v)| **v > 0).collect();
    actions.sort();
    let mut drops: Vec<(String, u64)> = s
        .drops
        .iter()
        .map(|(k, v)| (k.clone(), *v))
        .chain(
            s.worker_drops
                .iter()
                .map(|(k, v)| (format!("{k} (worker)"), *v)),
        )
        .filter(|(_, v)| *v > 0)
        .collect();
    drops.sort();
    println!();
    let rows: Vec<Vec<String>> = actions
        .iter()
        .map(|(k, v)| vec![k.to_string(), v.to_string()])
        .collect();
    table(&["ACTION", "FRAMES"], &rows);
    println!();
    if drops.is_empty() {
        println!("no drops");
    } else {
        let rows: Vec<Vec<String>> = drops
            .iter()
            .map(|(k, v)| vec![k.clone(), v.to_string()])
            .collect();
        table(&["DROP REASON", "FRAMES"], &rows);
    }
    if !s.ports.is_empty() {
        println!();
        let rows: Vec<Vec<String>> = s
            .ports
            .iter()
            .map(|p| {
                vec![
                    p.name.clone(),
                    p.worker.to_string(),
                    p.mode.clone(),
                    p.rx.to_string(),
                    p.tx.to_string(),
                    p.tx_ring_full.to_string(),
                    p.rx_not_a_port.to_string(),
                    p.bad_descriptors.to_string(),
                    p.kernel_rx_dropped.to_string(),
                ]
            })
            .collect();
        table(
            &[
                "PORT",
                "WORKER",
                "MODE",
                "RX",
                "TX",
                "TX RING FULL",
                "RX NOT A PORT",
                "BAD DESC",
                "KERNEL RX DROPPED",
            ],
            &rows,
        );
    }
    if !s.workers.is_empty() {
        println!();
        let rows: Vec<Vec<String>> = s
            .workers
            .iter()
            .map(|w| {
                vec![
                    w.id.to_string(),
                    w.generation.to_string(),
                    w.received.to_string(),
                    w.dropped.to_string(),
                    w.handed_off.to_string(),
                    w.free_frames.to_string(),
                    {
                        let mut d: Vec<(&String, &u64)> = w
                            .drops
                            .iter()
                            .chain(&w.worker_drops)
                            .filter(|(_, n)| **n > 0)
                            .collect();
                        d.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
                        let d: Vec<String> = d.iter().map(|(k, n)| format!("{k} {n}")).collect();
                        if d.is_empty() {
                            "-".into()
                        } else {
                            d.join(", ")
                        }
                    },
                ]
            })
            .collect();
        table(
            &[
                "WORKER",
                "GENERATION",
                "RECEIVED",
                "DROPPED",
                "HANDED OFF",
                "FREE FRAMES",
                "DROPS BY REASON",
            ],
            &rows,
        );
    }
}
