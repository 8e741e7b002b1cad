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
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::Resource;
use std::collections::BTreeMap;
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

/// Objects switchd refused, as they were then: left out up front while they stay the same
/// (no failed write per sync for a Service nobody fixes).
#[derive(Debug, Default)]
struct Refused {
    services: BTreeMap<String, (flowtable::state::ServiceSpec, String)>,
    nodes: BTreeMap<String, (flowtable::state::RemoteNodeSpec, String)>,
}

impl Refused {
    /// Takes out of `d` what was refused as it is now; forgets what changed or went.
    fn apply(&mut self, d: &mut Desired) {
        self.services
            .retain(|n, (spec, _)| d.services.iter().any(|s| &s.name == n && s == spec));
        self.nodes
            .retain(|n, (spec, _)| d.nodes.iter().any(|x| &x.name == n && x == spec));
        let mut skipped = Vec::new();
        d.services.retain(|s| match self.services.get(&s.name) {
            Some((_, why)) => {
                skipped.push(("Service", s.name.clone(), why.clone()));
                false
            }
            None => true,
        });
        d.nodes.retain(|x| match self.nodes.get(&x.name) {
            Some((_, why)) => {
                skipped.push(("Node", x.name.clone(), why.clone()));
                false
            }
            None => true,
        });
        for (kind, name, reason) in skipped {
            d.skipped.push(model::Skipped { kind, name, reason });
        }
    }
}

/// Writes `d` as the agent's objects, leaving out what switchd refuses (remembered in
/// `refused`); returns what was written.
async fn write(
    sw: &mut SwitchClient<tonic::transport::Channel>,
    mut d: Desired,
    refused: &mut Refused,
) -> Result<Desired, tonic::Status> {
    refused.apply(&mut d);
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
                let why = e.message().to_string();
                let before = d.nodes.len() + d.services.len();
                match kind {
                    "Service" => {
                        if let Some(s) = d.services.iter().find(|s| s.name == name) {
                            refused
                                .services
                                .insert(name.clone(), (s.clone(), why.clone()));
                        }
                        d.services.retain(|s| s.name != name);
                    }
                    _ => {
                        if let Some(n) = d.nodes.iter().find(|n| n.name == name) {
                            refused.nodes.insert(name.clone(), (n.clone(), why.clone()));
                        }
                        d.nodes.retain(|n| n.name != name);
                    }
                }
                if d.nodes.len() + d.services.len() == before {
                    return Err(e);
                }
                d.skipped.push(model::Skipped {
                    kind,
                    name,
                    reason: why,
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

/// The reason of the Events on objects the agent does not program.
pub const NOT_PROGRAMMED: &str = "NotProgrammed";
/// Longest Event note (the API's limit is 1 KiB).
const MAX_NOTE: usize = 1000;

/// A Warning Event on the object `s` names, when the stores still hold it (Nodes, Services,
/// EndpointSlices), published off the loop.
fn report(
    recorder: &Recorder,
    s: &model::Skipped,
    nodes: &reflector::Store<Node>,
    services: &reflector::Store<Service>,
    slices: &reflector::Store<EndpointSlice>,
) {
    let (ns, name) = match s.name.split_once('/') {
        Some((ns, n)) => (Some(ns.to_string()), n.to_string()),
        None => (None, s.name.clone()),
    };
    let find =
        |o: &kube::api::ObjectMeta| o.name.as_deref() == Some(name.as_str()) && o.namespace == ns;
    let reference = match s.kind {
        "Service" => services
            .state()
            .iter()
            .find(|o| find(&o.metadata))
            .map(|o| o.object_ref(&())),
        "EndpointSlice" => slices
            .state()
            .iter()
            .find(|o| find(&o.metadata))
            .map(|o| o.object_ref(&())),
        _ => nodes
            .state()
            .iter()
            .find(|o| o.metadata.name.as_deref() == Some(name.as_str()))
            .map(|o| o.object_ref(&())),
    };
    let Some(mut reference) = reference else {
        return;
    };
    if reference.namespace.is_none() {
        // (Events on cluster-scoped objects live in `default`, as kubectl shows them.)
        reference.namespace = Some("default".into());
    }
    let mut note: String = s.reason.chars().take(MAX_NOTE).collect();
    if note.len() < s.reason.len() {
        note.push('…');
    }
    let ev = Event {
        type_: EventType::Warning,
        reason: NOT_PROGRAMMED.into(),
        note: Some(note),
        action: "Program".into(),
        secondary: None,
    };
    let recorder = recorder.clone();
    tokio::spawn(async move {
        if let Err(e) = recorder.publish(&ev, &reference).await {
            log(format!("publishing an Event: {e}"));
        }
    });
}

/// Runs the agent until the process ends.
pub async fn run(client: kube::Client, cfg: Config, status: Arc<Status>) {
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "nodeswitch-agent".into(),
            instance: Some(cfg.node.clone()),
        },
    );
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
    let mut refused = Refused::default();
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
                report(&recorder, s, &nodes, &services, &slices);
            }
        }
        let key = (d.nodes.clone(), d.services.clone());
        if last.as_ref() == Some(&key) {
            status.pending_since_ms.store(0, Ordering::Relaxed);
            continue;
        }
        match write(&mut sw, d, &mut refused).await {
            Ok(w) => {
                for s in &w.skipped {
                    if reported.insert((s.kind, s.name.clone(), s.reason.clone())) {
                        log(format!(
                            "switchd refuses {} {}: {}",
                            s.kind, s.name, s.reason
                        ));
                        report(&recorder, s, &nodes, &services, &slices);
                    }
                }
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
