//! Prometheus metrics of one switch: every counter `switchctl stats` shows, with labels
//! instead of names in names, and the control plane's write latencies, as an OpenMetrics
//! text exposition.
//!
//! Design: the exposition is prometheus-client's encoder; nothing here formats it. The
//! switch's counters are not kept here: on each scrape the [`Exporter`]'s collector asks its
//! source (the dataplane's `stats()`: the figures the workers publish twice a second, the same
//! `switchctl stats` shows) and encodes them as labelled families, so a scrape never touches
//! the per-packet path. The write latencies ([`Writes`]) are histograms the control plane
//! observes on each write. Label values (port and node names) are escaped here, because the
//! encoder writes them as given.
//!
//! Thread-safety: an [`Exporter`] is shared by the HTTP tasks (`&self` only); the metrics
//! of [`Writes`] are atomics, shared by clones.

use crate::pb;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// The Content-Type of the exposition.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A write's outcome, the label of `nodeswitch_control_writes_total`.
pub type ResultLabel = [(&'static str, &'static str); 1];

/// The control plane's write figures, observed by the server on every write.
#[derive(Debug, Clone)]
pub struct Writes {
    /// Seconds to plan a write: convert, validate, build the next snapshot.
    pub planned: Histogram,
    /// Seconds from a snapshot's publication to every worker running it.
    pub programmed: Histogram,
    /// Writes by result: `applied`, `unchanged`, `refused`.
    pub results: Family<ResultLabel, Counter>,
}

impl Default for Writes {
    fn default() -> Self {
        Writes {
            // 50 us .. 1.6 s.
            planned: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            programmed: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            results: Family::default(),
        }
    }
}

impl Writes {
    /// Counts one write with `result`.
    pub fn count(&self, result: &'static str) {
        self.results.get_or_create(&[("result", result)]).inc();
    }
}

/// Produces the counters on each scrape.
pub type Source = dyn Fn() -> pb::Stats + Send + Sync;

/// The registry a scrape encodes.
#[derive(Debug)]
pub struct Exporter {
    registry: Registry,
}

impl Exporter {
    /// An exporter of `source`'s counters and `writes`, for switchd `version`.
    pub fn new(version: &str, source: Box<Source>, writes: &Writes) -> Exporter {
        let mut registry = Registry::default();
        registry.register(
            "nodeswitch_control_plan_duration_seconds",
            "Seconds to convert, validate and plan a control-plane write into its snapshot",
            writes.planned.clone(),
        );
        registry.register(
            "nodeswitch_control_program_duration_seconds",
            "Seconds from a snapshot's publication to every worker running it",
            writes.programmed.clone(),
        );
        registry.register(
            "nodeswitch_control_writes",
            "Control-plane writes (API, switchctl, SIGHUP) by result",
            writes.results.clone(),
        );
        registry.register_collector(Box::new(Counters {
            version: escape(version),
            source,
        }));
        Exporter { registry }
    }

    /// The exposition now.
    pub fn render(&self) -> String {
        render(&self.registry)
    }
}

/// A label value as the text format needs it: backslash, double quote and newline escaped.
pub fn escape(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

struct Counters {
    version: String,
    source: Box<Source>,
}

impl std::fmt::Debug for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Counters")
    }
}

type Labels = Vec<(&'static str, String)>;

/// One family: `name`'s descriptor, then a sample per row.
fn family<M: EncodeMetric>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    kind: MetricType,
    rows: Vec<(Labels, M)>,
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, kind)?;
    if let [(labels, v)] = rows.as_slice() {
        if labels.is_empty() {
            return v.encode(m);
        }
    }
    for (labels, v) in &rows {
        v.encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

/// One unlabelled sample of `name` (for other collectors: the agent's).
pub fn single<M: EncodeMetric>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    kind: MetricType,
    v: M,
) -> Result<(), std::fmt::Error> {
    family(enc, name, help, kind, vec![(Vec::new(), v)])
}

/// An exposition of `registry` (OpenMetrics text), or a bare `# EOF` if a collector failed.
pub fn render(registry: &Registry) -> String {
    let mut out = String::with_capacity(16 * 1024);
    if prometheus_client::encoding::text::encode(&mut out, registry).is_err() {
        // Writing into a String does not fail; a collector error leaves a cut exposition,
        // which a scraper must not take for a complete one.
        out.clear();
        out.push_str("# EOF\n");
    }
    out
}

fn counter(v: u64) -> ConstCounter<u64> {
    ConstCounter::new(v)
}

fn gauge(v: u64) -> ConstGauge<i64> {
    ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX))
}

/// A map's entries sorted by key, each as one sample labelled `label`.
fn by_key<M>(
    map: &std::collections::HashMap<String, u64>,
    label: &'static str,
    mut extra: impl FnMut() -> Labels,
    f: impl Fn(u64) -> M,
) -> Vec<(Labels, M)> {
    let mut keys: Vec<_> = map.iter().collect();
    keys.sort();
    keys.into_iter()
        .map(|(k, v)| {
            let mut l = extra();
            l.push((label, escape(k)));
            (l, f(*v))
        })
        .collect()
}

impl Collector for Counters {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let s = (self.source)();
        let node = escape(&s.node);
        let none = Vec::new;
        family(
            &mut enc,
            "nodeswitch_build_info",
            "This switchd's version and node (always 1).",
            MetricType::Gauge,
            vec![(
                vec![("version", self.version.clone()), ("node", node)],
                gauge(1),
            )],
        )?;
        family(
            &mut enc,
            "nodeswitch_generation",
            "The oldest snapshot generation a worker runs.",
            MetricType::Gauge,
            vec![(none(), gauge(s.generation))],
        )?;
        family(
            &mut enc,
            "nodeswitch_published_generation",
            "The snapshot generation published to the workers.",
            MetricType::Gauge,
            vec![(none(), gauge(s.published_generation))],
        )?;
        family(
            &mut enc,
            "nodeswitch_uptime_seconds",
            "Seconds since switchd started.",
            MetricType::Gauge,
            vec![(none(), ConstGauge::new(s.uptime_secs))],
        )?;
        family(
            &mut enc,
            "nodeswitch_received_packets",
            "Frames the pipeline received from every port.",
            MetricType::Counter,
            vec![(none(), counter(s.received))],
        )?;
        family(
            &mut enc,
            "nodeswitch_actions",
            "Frames by what the pipeline did with them.",
            MetricType::Counter,
            by_key(&s.actions, "action", none, counter),
        )?;
        let mut drops = by_key(
            &s.drops,
            "reason",
            || vec![("stage", "pipeline".into())],
            counter,
        );
        drops.extend(by_key(
            &s.worker_drops,
            "reason",
            || vec![("stage", "worker".into())],
            counter,
        ));
        family(
            &mut enc,
            "nodeswitch_drops",
            "Frames dropped, by reason: by the pipeline (stage=pipeline) or after it and at the \
             ports' sockets (stage=worker).",
            MetricType::Counter,
            drops,
        )?;
        let port = |p: &pb::PortStats| -> Labels {
            vec![("port", escape(&p.name)), ("worker", p.worker.to_string())]
        };
        family(
            &mut enc,
            "nodeswitch_port_info",
            "A switch port and its AF_XDP mode (always 1).",
            MetricType::Gauge,
            s.ports
                .iter()
                .map(|p| {
                    let mut l = port(p);
                    l.push(("mode", escape(&p.mode)));
                    (l, gauge(1))
                })
                .collect(),
        )?;
        let mut packets = Vec::new();
        for p in &s.ports {
            for (dir, v) in [("rx", p.rx), ("tx", p.tx)] {
                let mut l = port(p);
                l.push(("direction", dir.into()));
                packets.push((l, counter(v)));
            }
        }
        family(
            &mut enc,
            "nodeswitch_port_packets",
            "Frames received from (rx) and queued for transmit on (tx) a port.",
            MetricType::Counter,
            packets,
        )?;
        let mut port_drops = Vec::new();
        for p in &s.ports {
            for (reason, v) in [
                ("tx_ring_full", p.tx_ring_full),
                ("rx_not_a_port", p.rx_not_a_port),
                ("rx_too_long", p.rx_too_long),
                ("gso_refused", p.gso_refused),
                ("tx_failed", p.tx_failed),
                ("kernel_rx_ring_full", p.kernel_rx_ring_full),
                ("kernel_rx_dropped", p.kernel_rx_dropped),
                ("kernel_tx_invalid", p.kernel_tx_invalid),
            ] {
                let mut l = port(p);
                l.push(("reason", reason.into()));
                port_drops.push((l, counter(v)));
            }
        }
        family(
            &mut enc,
            "nodeswitch_port_drops",
            "Frames dropped at a port, by reason (kernel_*: the kernel's socket counters).",
            MetricType::Counter,
            port_drops,
        )?;
        let mut gso = Vec::new();
        for p in s.ports.iter().filter(|p| p.mode == "vnet") {
            for (what, v) in [
                ("received", p.rx_gso),
                ("joined", p.tx_joined),
                ("joined_segments", p.tx_joined_segments),
            ] {
                let mut l = port(p);
                l.push(("what", what.into()));
                gso.push((l, counter(v)));
            }
        }
        family(
            &mut enc,
            "nodeswitch_port_gso_packets",
            "vnet ports: GSO packets received (received), packets joined from TCP segments \
             for the pod (joined) and the segments they were made of (joined_segments).",
            MetricType::Counter,
            gso,
        )?;
        family(
            &mut enc,
            "nodeswitch_port_bad_descriptors",
            "Descriptors from the kernel that matched no frame of the port (ignored).",
            MetricType::Counter,
            s.ports
                .iter()
                .map(|p| (port(p), counter(p.bad_descriptors)))
                .collect(),
        )?;
        let worker = |w: &pb::WorkerStats| -> Labels { vec![("worker", w.id.to_string())] };
        let per_worker = |f: fn(&pb::WorkerStats) -> u64| -> Vec<(Labels, ConstCounter<u64>)> {
            s.workers
                .iter()
                .map(|w| (worker(w), counter(f(w))))
                .collect()
        };
        family(
            &mut enc,
            "nodeswitch_worker_received_packets",
            "Frames a worker took from its ports' sockets.",
            MetricType::Counter,
            per_worker(|w| w.received),
        )?;
        family(
            &mut enc,
            "nodeswitch_worker_dropped_packets",
            "Frames a worker dropped, every reason.",
            MetricType::Counter,
            per_worker(|w| w.dropped),
        )?;
        let mut worker_drops = Vec::new();
        for w in &s.workers {
            let id = w.id.to_string();
            for (map, stage) in [(&w.drops, "pipeline"), (&w.worker_drops, "worker")] {
                worker_drops.extend(by_key(
                    map,
                    "reason",
                    || vec![("worker", id.clone()), ("stage", stage.into())],
                    counter,
                ));
            }
        }
        family(
            &mut enc,
            "nodeswitch_worker_drops",
            "Frames a worker dropped, by reason and stage (as nodeswitch_drops_total, per worker).",
            MetricType::Counter,
            worker_drops,
        )?;
        family(
            &mut enc,
            "nodeswitch_worker_handed_off_packets",
            "Frames a worker handed to another worker's port.",
            MetricType::Counter,
            per_worker(|w| w.handed_off),
        )?;
        family(
            &mut enc,
            "nodeswitch_worker_free_frames",
            "UMEM frames in a worker's free pool.",
            MetricType::Gauge,
            s.workers
                .iter()
                .map(|w| (worker(w), gauge(w.free_frames)))
                .collect(),
        )?;
        family(
            &mut enc,
            "nodeswitch_worker_generation",
            "The snapshot generation a worker runs.",
            MetricType::Gauge,
            s.workers
                .iter()
                .map(|w| (worker(w), gauge(w.generation)))
                .collect(),
        )?;
        family(
            &mut enc,
            "nodeswitch_worker_report_age_seconds",
            "Seconds since a worker last published its counters (it does twice a second).",
            MetricType::Gauge,
            s.workers
                .iter()
                .map(|w| (worker(w), ConstGauge::new(w.report_age_secs)))
                .collect(),
        )?;
        family(
            &mut enc,
            "nodeswitch_conntrack_entries",
            "Connections in the conntrack table.",
            MetricType::Gauge,
            vec![(none(), gauge(s.conntrack_entries))],
        )?;
        family(
            &mut enc,
            "nodeswitch_conntrack_capacity",
            "Connections the conntrack table holds at most.",
            MetricType::Gauge,
            vec![(none(), gauge(s.conntrack_capacity))],
        )?;
        let ct = |k: &str| s.conntrack.get(k).copied().unwrap_or(0);
        family(
            &mut enc,
            "nodeswitch_conntrack_assured_entries",
            "Connections seen in both directions (never evicted under pressure).",
            MetricType::Gauge,
            vec![(none(), gauge(ct("assured")))],
        )?;
        let mut census: Vec<_> = s
            .conntrack
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix("census.")?, *v)))
            .collect();
        census.sort();
        let tcp: Vec<(&str, u64)> = census
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix("tcp.")?, *v)))
            .collect();
        if !tcp.is_empty() {
            let mut protocols: Vec<(String, u64)> = census
                .iter()
                .filter(|(k, _)| !k.starts_with("tcp."))
                .map(|(k, v)| (escape(k), *v))
                .collect();
            protocols.push(("tcp".into(), tcp.iter().map(|(_, v)| v).sum()));
            protocols.sort();
            family(
                &mut enc,
                "nodeswitch_conntrack_tcp_entries",
                "TCP connections in the conntrack table, by state (as conntrack -L names them).",
                MetricType::Gauge,
                tcp.iter()
                    .map(|(k, v)| (vec![("state", escape(k))], gauge(*v)))
                    .collect(),
            )?;
            family(
                &mut enc,
                "nodeswitch_conntrack_entries_by_protocol",
                "Entries in the conntrack table by protocol (affinity: session-affinity records).",
                MetricType::Gauge,
                protocols
                    .into_iter()
                    .map(|(k, v)| (vec![("protocol", k)], gauge(v)))
                    .collect(),
            )?;
        }
        family(
            &mut enc,
            "nodeswitch_conntrack_events",
            "Conntrack events: inserted, full (a new flow refused), evicted, expired, reopened \
             (a closed TCP entry's tuple reused), busy (a segment passed while another worker \
             held its entry).",
            MetricType::Counter,
            ["inserted", "full", "evicted", "expired", "reopened", "busy"]
                .into_iter()
                .map(|k| (vec![("event", k.to_string())], counter(ct(k))))
                .collect(),
        )?;
        family(
            &mut enc,
            "nodeswitch_nat_packets",
            "Frames translated: dnat (to a backend), reverse_nat (back to the Service), snat \
             (masqueraded to the node's address).",
            MetricType::Counter,
            ["dnat", "reverse_nat", "snat"]
                .into_iter()
                .map(|k| {
                    let v = s.nat.get(k).copied().unwrap_or(0);
                    (vec![("kind", k.to_string())], counter(v))
                })
                .collect(),
        )?;
        family(
            &mut enc,
            "nodeswitch_nat_new_flows",
            "New Service and masqueraded flows.",
            MetricType::Counter,
            vec![(
                none(),
                counter(s.nat.get("new_flows").copied().unwrap_or(0)),
            )],
        )?;
        family(
            &mut enc,
            "nodeswitch_xdp_packets",
            "Frames the XDP program saw, by verdict: redirected (to a socket), passed (the \
             node's), held (dropped while no socket served the port), unknown_port, other_queue, \
             unserved (passed because no switchd beat the heartbeat).",
            MetricType::Counter,
            by_key(&s.xdp, "verdict", none, counter),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats() -> pb::Stats {
        pb::Stats {
            node: "node\"1\\\n".into(),
            generation: 4,
            published_generation: 5,
            uptime_secs: 1.5,
            received: 100,
            drops: [("spoofed_source".to_string(), 3)].into(),
            worker_drops: [("tx_ring_full".to_string(), 2)].into(),
            ports: vec![
                pb::PortStats {
                    name: "veth-a".into(),
                    worker: 0,
                    mode: "copy".into(),
                    rx: 60,
                    tx: 40,
                    kernel_rx_ring_full: 7,
                    ..Default::default()
                },
                pb::PortStats {
                    name: "veth-v".into(),
                    worker: 0,
                    mode: "vnet".into(),
                    rx_gso: 12,
                    tx_joined: 3,
                    tx_joined_segments: 40,
                    gso_refused: 1,
                    tx_failed: 2,
                    ..Default::default()
                },
            ],
            workers: vec![pb::WorkerStats {
                id: 0,
                generation: 4,
                received: 100,
                drops: [("spoofed_source".to_string(), 3)].into(),
                worker_drops: [("tx_ring_full".to_string(), 2)].into(),
                ..Default::default()
            }],
            conntrack_entries: 9,
            conntrack_capacity: 1024,
            conntrack: [
                ("expired".to_string(), 11),
                ("census.tcp.established".to_string(), 5),
                ("census.tcp.syn_sent".to_string(), 2),
                ("census.udp".to_string(), 4),
            ]
            .into(),
            xdp: [("redirected".to_string(), 99)].into(),
            ..Default::default()
        }
    }

    #[test]
    fn every_counter_is_a_labelled_family() {
        let w = Writes::default();
        w.planned.observe(0.001);
        w.count("applied");
        let e = Exporter::new("1.2.3", Box::new(stats), &w);
        let text = e.render();
        for line in [
            "# TYPE nodeswitch_drops counter",
            "nodeswitch_drops_total{stage=\"pipeline\",reason=\"spoofed_source\"} 3",
            "nodeswitch_drops_total{stage=\"worker\",reason=\"tx_ring_full\"} 2",
            "nodeswitch_worker_drops_total{worker=\"0\",stage=\"pipeline\",reason=\"spoofed_source\"} 3",
            "nodeswitch_worker_drops_total{worker=\"0\",stage=\"worker\",reason=\"tx_ring_full\"} 2",
            "nodeswitch_port_packets_total{port=\"veth-a\",worker=\"0\",direction=\"rx\"} 60",
            "nodeswitch_port_drops_total{port=\"veth-a\",worker=\"0\",reason=\"kernel_rx_ring_full\"} 7",
            "nodeswitch_port_drops_total{port=\"veth-v\",worker=\"0\",reason=\"gso_refused\"} 1",
            "nodeswitch_port_drops_total{port=\"veth-v\",worker=\"0\",reason=\"tx_failed\"} 2",
            "nodeswitch_port_gso_packets_total{port=\"veth-v\",worker=\"0\",what=\"received\"} 12",
            "nodeswitch_port_gso_packets_total{port=\"veth-v\",worker=\"0\",what=\"joined\"} 3",
            "nodeswitch_port_gso_packets_total{port=\"veth-v\",worker=\"0\",what=\"joined_segments\"} 40",
            "nodeswitch_conntrack_events_total{event=\"expired\"} 11",
            "nodeswitch_conntrack_tcp_entries{state=\"established\"} 5",
            "nodeswitch_conntrack_entries_by_protocol{protocol=\"tcp\"} 7",
            "nodeswitch_conntrack_entries_by_protocol{protocol=\"udp\"} 4",
            "nodeswitch_xdp_packets_total{verdict=\"redirected\"} 99",
            "nodeswitch_generation 4",
            "nodeswitch_published_generation 5",
            "nodeswitch_build_info{version=\"1.2.3\",node=\"node\\\"1\\\\\\n\"} 1",
            "nodeswitch_control_writes_total{result=\"applied\"} 1",
            "nodeswitch_control_plan_duration_seconds_count 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in:\n{text}");
        }
        assert!(
            !text.contains("gso_packets_total{port=\"veth-a\""),
            "no GSO series for an AF_XDP port"
        );
        assert!(text.ends_with("# EOF\n"));
        // One line per sample or descriptor: an escaped newline never splits one.
        assert!(text
            .lines()
            .all(|l| l.starts_with('#') || l.starts_with("nodeswitch_")));
    }

    #[test]
    fn escapes_what_the_format_needs() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(escape("veth-a"), "veth-a");
    }
}
