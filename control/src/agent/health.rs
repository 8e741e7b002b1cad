//! The agent's `/healthz`, `/livez` and `/metrics`, as kube-proxy serves them on its healthz
//! (and metrics) port.
//!
//! Design: a plain HTTP/1.1 responder on a TCP listener: `GET /healthz` answers 200 with
//! `{"lastUpdated": ..., "currentTime": ...}` (RFC 3339, UTC) while [`Status::health`] is
//! fine, 503 with the reason otherwise; `/livez` answers 200 while the process serves;
//! `/metrics` is the sync latency and counters (Prometheus, OpenMetrics text); the
//! HTTP side is [`crate::http`]'s. Thread-safety: one task per connection, reading the
//! shared [`Status`] atomics.

use super::sync::Status;
use crate::http::Reply;
use crate::metrics::single;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;

fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The agent's metrics: its sync latency histogram and its counters.
pub fn registry(status: &Arc<Status>) -> Registry {
    let mut r = Registry::default();
    r.register(
        "nodeswitch_agent_sync_duration_seconds",
        "Seconds from a change seen in the API server to switchd running it",
        status.latency.clone(),
    );
    r.register_collector(Box::new(Counters(Arc::clone(status))));
    r
}

#[derive(Debug)]
struct Counters(Arc<Status>);

impl Collector for Counters {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        let n = |a: &std::sync::atomic::AtomicU64| ConstCounter::new(a.load(Ordering::Relaxed));
        single(
            &mut enc,
            "nodeswitch_agent_syncs",
            "Writes to switchd that programmed a change.",
            MetricType::Counter,
            n(&s.syncs),
        )?;
        single(
            &mut enc,
            "nodeswitch_agent_sync_errors",
            "Writes to switchd that failed (retried, then written whole).",
            MetricType::Counter,
            n(&s.errors),
        )?;
        single(
            &mut enc,
            "nodeswitch_agent_objects_not_programmed",
            "Objects left out: skipped (headless, ExternalName, IPv6, another proxy's) or \
             refused by switchd; each is reported as an Event.",
            MetricType::Counter,
            n(&s.not_programmed),
        )?;
        single(
            &mut enc,
            "nodeswitch_agent_last_sync_timestamp_seconds",
            "Unix time of the last sync programmed (0: none yet).",
            MetricType::Gauge,
            ConstGauge::new(s.last_sync_ms.load(Ordering::Relaxed) as f64 / 1000.0),
        )
    }
}

/// Serves `/healthz` and `/livez` on `listener` until the process ends.
pub async fn serve(listener: TcpListener, status: Arc<Status>, bound: Duration) {
    let registry = registry(&status);
    let handler = move |path: &str| match path {
        "/healthz" => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let last = status.last_sync_ms.load(Ordering::Relaxed);
            let mut body = serde_json::json!({
                "lastUpdated": if last == 0 { String::new() } else { rfc3339(last) },
                "currentTime": rfc3339(now),
            });
            match status.health(bound) {
                Ok(()) => Reply::json("200 OK", &body),
                Err(why) => {
                    body["reason"] = why.into();
                    Reply::json("503 Service Unavailable", &body)
                }
            }
        }
        "/livez" => Reply::text("200 OK", "ok"),
        "/metrics" => Reply {
            status: "200 OK",
            content_type: crate::metrics::CONTENT_TYPE,
            body: crate::metrics::render(&registry),
        },
        _ => Reply::not_found(),
    };
    crate::http::serve(listener, Arc::new(handler)).await
}

#[cfg(test)]
mod tests {
    #[test]
    fn dates_are_rfc3339_utc() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(1_796_083_200_000), "2026-12-01T00:00:00Z");
        assert_eq!(
            super::rfc3339(951_782_400_000 + 3_723_000),
            "2000-02-29T01:02:03Z"
        );
    }
}
