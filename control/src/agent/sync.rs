//! The agent's loop: watch the API server, keep this node's switchd in step.
//!
//! Design: three kube-runtime reflectors (Nodes, Services, EndpointSlices; each a list,
//! then a watch resumed from its resourceVersion, relisted on `410 Gone` or any watch
//! error, with backoff) keep in-memory stores and signal every change. The loop waits until
//! all three have listed once (so a start never programs a partial cluster), then, after
//! each change, waits out a short window that coalesces bursts (kube-proxy's minSyncPeriod
//! idea), computes the [`model::desired`] state from the stores and, when it differs from
//! what was last programmed, writes it with one `Replace` of the agent's own objects: the
//! engine applies only what differs, and leaves the node config's and the CNI plugin's
//! objects alone. An object switchd refuses is left out, logged, and the rest is written
//! again (bounded). Its own VTEP MAC is published on its Node (a merge PATCH of its
//! annotation) so that the other agents can program this node. An API server that goes away
//! leaves switchd forwarding with the last state; the reflectors reconnect with backoff.
//! Thread-safety: one task owns the loop; the reflectors' stores are read-only snapshots.

use super::model::{self, Desired, OWNER, VTEP_MAC_ANNOTATION};
use crate::pb;
use crate::pb::switch_service_client::SwitchServiceClient as SwitchClient;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;

/// How many objects one sync may leave out for switchd's refusals before it gives up.
const MAX_REFUSALS: usize = 64;

/// What the agent is told.
#[derive(Debug, Clone)]
pub struct Config {
    /// This node's name (its Node object).
    pub node: String,
    /// switchd's control socket.
    pub socket: PathBuf,
    /// How long changes are gathered before one write.
    pub window: Duration,
}

/// What the loop reports (for health and metrics): the last write and its outcome.
#[derive(Debug, Default)]
pub struct Status {
    /// Unix milliseconds of the last successful sync (0: none yet).
    pub last_sync_ms: AtomicU64,
    /// Syncs that programmed a change.
    pub syncs: AtomicU64,
    /// Syncs that failed (switchd unreachable, refused beyond the bound).
    pub errors: AtomicU64,
    /// Unix milliseconds since when a change has waited to be programmed (0: none waits).
    pub pending_since_ms: AtomicU64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Status {
    /// Health as kube-proxy reports it: healthy once a first sync was programmed and while
    /// no change has waited longer than `bound`. The reason when not.
    pub fn health(&self, bound: Duration) -> Result<(), String> {
        let last = self.last_sync_ms.load(Ordering::Relaxed);
        if last == 0 {
            return Err("no sync programmed yet".into());
        }
        let pending = self.pending_since_ms.load(Ordering::Relaxed);
        let waited = now_ms().saturating_sub(pending);
        if pending != 0 && waited > bound.as_millis() as u64 {
            return Err(format!("a change has waited {waited} ms to be programmed"));
        }
        Ok(())
    }
}

fn log(msg: impl std::fmt::Display) {
    eprintln!("nodeswitch-agent: {msg}");
}

/// A reflector for `api`'s objects, signalling `changed` on every event; returns its store
/// and a flag that is set once it has listed.
fn reflect<K>(
    api: Api<K>,
    changed: Arc<Notify>,
) -> (reflector::Store<K>, Arc<std::sync::atomic::AtomicBool>)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let listed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let l = Arc::clone(&listed);
    let kind = K::kind(&()).to_string();
    let stream = reflector(writer, watcher(api, watcher::Config::default())).default_backoff();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(watcher::Event::InitDone) => {
                    l.store(true, Ordering::Release);
                    changed.notify_one();
                }
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
                Ok(_) => changed.notify_one(),
                Err(e) => log(format!("watching {kind}: {e} (retrying)")),
            }
        }
    });
    (store, listed)
}

/// The objects a refusal names (`services[ns/name]...`, `nodes[name]...`), if any.
fn refused_object(message: &str) -> Option<(&'static str, String)> {
    for (prefix, kind) in [("services[", "Service"), ("nodes[", "Node")] {
        if let Some(rest) = message.split(prefix).nth(1) {
            if let Some(name) = rest.split(']').next() {
                return Some((kind, name.to_string()));
            }
        }
    }
    None
}

/// Connects to switchd, retrying with backoff until it answers.
async fn switchd(socket: &Path) -> SwitchClient<tonic::transport::Channel> {
    let mut wait = Duration::from_millis(100);
    loop {
        match crate::client::connect(socket).await {
            Ok(c) => return c,
            Err(e) => {
                log(format!("{e} (retrying in {} ms)", wait.as_millis()));
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Publishes this node's VTEP MAC (switchd's own, from its config) on its Node object.
async fn publish_vtep_mac(
    nodes: &Api<Node>,
    cfg: &Config,
    sw: &mut SwitchClient<tonic::transport::Channel>,
) {
    let mac = loop {
        match sw
            .get_state(pb::GetStateRequest {
                owner: "config".into(),
            })
            .await
        {
            Ok(r) => {
                let node = r
                    .into_inner()
                    .state
                    .and_then(|s| s.node)
                    .unwrap_or_default();
                break if node.vtep_mac.is_empty() {
                    node.uplink_mac
                } else {
                    node.vtep_mac
                };
            }
            Err(e) => {
                log(format!(
                    "reading switchd's node config: {} (retrying)",
                    e.message()
                ));
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    let patch = serde_json::json!({"metadata": {"annotations": {VTEP_MAC_ANNOTATION: mac}}});
    let mut wait = Duration::from_millis(200);
    loop {
        match nodes
            .patch(&cfg.node, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                log(format!(
                    "published {VTEP_MAC_ANNOTATION}={mac} on Node {}",
                    cfg.node
                ));
                return;
            }
            Err(e) => {
                log(format!("annotating Node {}: {e} (retrying)", cfg.node));
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Writes `d` as the agent's objects, leaving out what switchd refuses (logged); returns
/// what was written.
async fn write(
    sw: &mut SwitchClient<tonic::transport::Channel>,
    mut d: Desired,
) -> Result<Desired, tonic::Status> {
    for _ in 0..MAX_REFUSALS {
        let state = pb::State {
            nodes: d.nodes.iter().map(crate::convert::node_pb).collect(),
            services: d.services.iter().map(crate::convert::service_pb).collect(),
            ..Default::default()
        };
        let r = sw
            .replace(pb::ReplaceRequest {
                state: Some(state),
                dry_run: false,
                owner: OWNER.into(),
            })
            .await;
        match r {
            Ok(_) => return Ok(d),
            Err(e) if e.code() == tonic::Code::InvalidArgument => {
                let Some((kind, name)) = refused_object(e.message()) else {
                    return Err(e);
                };
                log(format!("switchd refuses {kind} {name}: {}", e.message()));
                let before = d.nodes.len() + d.services.len();
                match kind {
                    "Service" => d.services.retain(|s| s.name != name),
                    _ => d.nodes.retain(|n| n.name != name),
                }
                if d.nodes.len() + d.services.len() == before {
                    return Err(e);
                }
                d.skipped.push(model::Skipped {
                    kind,
                    name,
                    reason: e.message().to_string(),
                });
            }
            Err(e) => return Err(e),
        }
    }
    Err(tonic::Status::invalid_argument("too many refused objects"))
}

fn owned<K: Clone>(v: Vec<Arc<K>>) -> Vec<K> {
    v.into_iter().map(|a| (*a).clone()).collect()
}

/// Runs the agent until the process ends.
pub async fn run(client: kube::Client, cfg: Config, status: Arc<Status>) {
    let changed = Arc::new(Notify::new());
    let nodes_api: Api<Node> = Api::all(client.clone());
    let (nodes, n_ok) = reflect(nodes_api.clone(), Arc::clone(&changed));
    let (services, s_ok) = reflect(Api::<Service>::all(client.clone()), Arc::clone(&changed));
    let (slices, e_ok) = reflect(Api::<EndpointSlice>::all(client), Arc::clone(&changed));
    let mut sw = switchd(&cfg.socket).await;
    {
        let (api, c, mut s) = (nodes_api.clone(), cfg.clone(), sw.clone());
        tokio::spawn(async move { publish_vtep_mac(&api, &c, &mut s).await });
    }
    let mut last: Option<(Vec<_>, Vec<_>)> = None;
    let mut reported = std::collections::BTreeSet::new();
    loop {
        changed.notified().await;
        let _ = status.pending_since_ms.compare_exchange(
            0,
            now_ms(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        if !(n_ok.load(Ordering::Acquire)
            && s_ok.load(Ordering::Acquire)
            && e_ok.load(Ordering::Acquire))
        {
            continue;
        }
        tokio::time::sleep(cfg.window).await;
        let began = Instant::now();
        let d = model::desired(
            &cfg.node,
            &owned(nodes.state()),
            &owned(services.state()),
            &owned(slices.state()),
        );
        for s in &d.skipped {
            if reported.insert((s.kind, s.name.clone(), s.reason.clone())) {
                log(format!(
                    "not programmed: {} {}: {}",
                    s.kind, s.name, s.reason
                ));
            }
        }
        let key = (d.nodes.clone(), d.services.clone());
        if last.as_ref() == Some(&key) {
            status.pending_since_ms.store(0, Ordering::Relaxed);
            continue;
        }
        match write(&mut sw, d).await {
            Ok(w) => {
                status.syncs.fetch_add(1, Ordering::Relaxed);
                status.last_sync_ms.store(now_ms(), Ordering::Relaxed);
                status.pending_since_ms.store(0, Ordering::Relaxed);
                log(format!(
                    "programmed {} nodes, {} Services in {} ms",
                    w.nodes.len(),
                    w.services.len(),
                    began.elapsed().as_millis()
                ));
                last = Some(key);
            }
            Err(e) => {
                status.errors.fetch_add(1, Ordering::Relaxed);
                log(format!("writing switchd: {} (retrying)", e.message()));
                if e.code() == tonic::Code::Unavailable || e.code() == tonic::Code::Unknown {
                    sw = switchd(&cfg.socket).await;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                changed.notify_one();
            }
        }
    }
}
