//! switchd's `/healthz`, `/livez` and `/metrics`: the verdict on the workers and the HTTP
//! endpoints that serve it and the Prometheus exposition.
//!
//! Design: healthy while every worker has published its report within the bound (they do
//! twice a second; a worker stuck in a loop or blocked stops) and runs the published
//! snapshot, or has run an older one for less than the bound (a change is being picked
//! up). The verdict is computed from the same counters `switchctl stats` shows, on each
//! request; the only state kept is when a generation lag was first seen. `/livez` gives
//! the same verdict (a switch whose workers are stuck is not alive for a restart policy).
//!
//! Thread-safety: [`Health`] is shared by the HTTP tasks; its lag record sits behind a
//! mutex held for the comparison only. Nothing here touches the per-packet path.

use control::http::{Handler, Reply};
use control::metrics::{Exporter, CONTENT_TYPE};
use control::pb;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Default bound on a worker's report age and on a generation lag.
pub const DEFAULT_BOUND: Duration = Duration::from_secs(5);

/// The health verdict over the workers' reports.
#[derive(Debug)]
pub struct Health {
    bound: Duration,
    /// The published generation some worker was first seen not to run, and when.
    lag: Mutex<Option<(u64, Instant)>>,
}

impl Health {
    /// A verdict with `bound`.
    pub fn new(bound: Duration) -> Health {
        Health {
            bound,
            lag: Mutex::new(None),
        }
    }

    /// Ok, or why the switch is not healthy, from `s` (read at `now`).
    pub fn verdict(&self, s: &pb::Stats, now: Instant) -> Result<(), String> {
        if s.workers.is_empty() {
            return Err("no worker runs".into());
        }
        let bound = self.bound.as_secs_f64();
        if let Some(w) = s.workers.iter().find(|w| w.report_age_secs > bound) {
            return Err(format!(
                "worker {} has not reported for {:.1} s (bound {bound} s)",
                w.id, w.report_age_secs
            ));
        }
        let behind = s
            .workers
            .iter()
            .find(|w| w.generation < s.published_generation);
        let mut lag = self.lag.lock().unwrap_or_else(|e| e.into_inner());
        let Some(w) = behind else {
            *lag = None;
            return Ok(());
        };
        let since = match *lag {
            Some((g, t)) if g == s.published_generation => t,
            _ => {
                *lag = Some((s.published_generation, now));
                now
            }
        };
        let late = now.saturating_duration_since(since);
        if late > self.bound {
            return Err(format!(
                "worker {} runs generation {} while {} was published {:.1} s ago (bound {bound} s)",
                w.id,
                w.generation,
                s.published_generation,
                late.as_secs_f64()
            ));
        }
        Ok(())
    }

    /// The `/healthz` reply for `s`.
    pub fn reply(&self, s: &pb::Stats) -> Reply {
        let mut body = serde_json::json!({
            "node": s.node,
            "generation": s.generation,
            "publishedGeneration": s.published_generation,
            "workers": s.workers.iter().map(|w| serde_json::json!({
                "id": w.id,
                "generation": w.generation,
                "reportAgeSeconds": (w.report_age_secs * 1000.0).round() / 1000.0,
            })).collect::<Vec<_>>(),
        });
        match self.verdict(s, Instant::now()) {
            Ok(()) => Reply::json("200 OK", &body),
            Err(why) => {
                body["reason"] = why.into();
                Reply::json("503 Service Unavailable", &body)
            }
        }
    }
}

/// The HTTP handler of switchd's endpoints: `/metrics` from `exporter`, `/healthz` and
/// `/livez` from `health` over `stats`.
pub fn handler(
    stats: Arc<dyn Fn() -> pb::Stats + Send + Sync>,
    health: Arc<Health>,
    exporter: Arc<Exporter>,
) -> Arc<Handler> {
    Arc::new(move |path: &str| match path {
        "/metrics" => Reply {
            status: "200 OK",
            content_type: CONTENT_TYPE,
            body: exporter.render(),
        },
        "/healthz" | "/livez" => health.reply(&stats()),
        _ => Reply::not_found(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(published: u64, workers: &[(u64, f64)]) -> pb::Stats {
        pb::Stats {
            published_generation: published,
            workers: workers
                .iter()
                .enumerate()
                .map(|(i, &(generation, age))| pb::WorkerStats {
                    id: i as u32,
                    generation,
                    report_age_secs: age,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_stale_report_or_a_long_lag_is_unhealthy() {
        let h = Health::new(Duration::from_secs(5));
        let t0 = Instant::now();
        assert_eq!(h.verdict(&stats(3, &[(3, 0.4), (3, 0.1)]), t0), Ok(()));
        let e = h.verdict(&stats(3, &[(3, 0.4), (3, 6.0)]), t0).unwrap_err();
        assert!(e.contains("worker 1 has not reported for 6.0 s"), "{e}");
        assert!(h
            .verdict(&stats(3, &[]), t0)
            .unwrap_err()
            .contains("no worker"));
        // A lag is fine within the bound, not beyond it, and forgotten once caught up.
        let lagging = stats(4, &[(4, 0.1), (3, 0.1)]);
        assert_eq!(h.verdict(&lagging, t0), Ok(()));
        assert_eq!(h.verdict(&lagging, t0 + Duration::from_secs(4)), Ok(()));
        let e = h
            .verdict(&lagging, t0 + Duration::from_secs(6))
            .unwrap_err();
        assert!(
            e.contains("worker 1 runs generation 3 while 4 was published"),
            "{e}"
        );
        assert_eq!(h.verdict(&stats(4, &[(4, 0.1), (4, 0.1)]), t0), Ok(()));
        // A new lag starts its own clock.
        let next = stats(5, &[(5, 0.1), (4, 0.1)]);
        assert_eq!(h.verdict(&next, t0 + Duration::from_secs(7)), Ok(()));
        assert!(h.verdict(&next, t0 + Duration::from_secs(13)).is_err());
    }

    #[test]
    fn the_reply_says_why() {
        let h = Health::new(Duration::from_secs(5));
        let r = h.reply(&stats(3, &[(3, 9.0)]));
        assert_eq!(r.status, "503 Service Unavailable");
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert!(
            v["reason"].as_str().unwrap().contains("not reported"),
            "{v}"
        );
        assert_eq!(v["workers"][0]["reportAgeSeconds"], 9.0);
        let r = h.reply(&stats(3, &[(3, 0.2)]));
        assert_eq!(r.status, "200 OK");
    }
}
