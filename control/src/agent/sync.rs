//! The agent's loop: watch the API server, keep this node's switchd in step.
//!
//! Design: three kube-runtime watchers (Nodes, Services, EndpointSlices; each a list, then
//! a watch resumed from its resourceVersion, relisted on `410 Gone` or any watch error, with
//! backoff) send their events to one loop, which applies them to the [`Cluster`] (the
//! objects and the desired state, recomputed per object). Nothing is written until all three
//! have listed once (a start never programs a partial cluster). The first write is a
//! `Replace` of everything the agent owns: the engine applies only what differs (a restarted
//! agent causes no churn) and leaves the node config's and the CNI plugin's objects alone.
//! After it, each change is written as one `Apply` of the objects that changed, compared
//! with what the agent last wrote. Writes are at least `window` apart (kube-proxy's
//! minSyncPeriod): a change after a quiet spell is written at once, the changes of a burst
//! are gathered into the next write. A `Replace` again after a relist, after a write that
//! failed or found switchd out of step (a delete of an object it no longer has), and when
//! switchd's control server is another than before (its `Version.instance`, polled every
//! 250 ms: a restarted switchd keeps the agent's objects, but they may be older than the
//! agent's). An object switchd refuses is left out (and an earlier version of it removed),
//! reported once as a Warning Event, and not offered again until it changes; the rest is
//! written. Its own VTEP MAC is published on its Node (a merge PATCH of its annotation) so
//! that the other agents can program this node. An API server that goes away leaves switchd
//! forwarding with the last state; the watchers reconnect with backoff.
//! Thread-safety: one task owns the loop and the cluster; the watchers and the instance
//! poll are tasks that only send to it.

use super::cluster::{Cluster, Watched};
use super::model::{self, OWNER, VTEP_MAC_ANNOTATION};
use crate::pb;
use crate::pb::switch_service_client::SwitchServiceClient as SwitchClient;
use flowtable::state::{RemoteNodeSpec, ServiceSpec};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Resource;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

/// How many objects one write may leave out for switchd's refusals before it gives up.
const MAX_REFUSALS: usize = 64;
/// How often switchd's control server is asked whether it is still the same one.
const INSTANCE_POLL: Duration = Duration::from_millis(250);
/// How long a failed write waits before it is tried again.
const RETRY: Duration = Duration::from_millis(500);

/// What the agent is told.
#[derive(Debug, Clone)]
pub struct Config {
    /// This node's name (its Node object).
    pub node: String,
    /// switchd's control socket.
    pub socket: PathBuf,
    /// The shortest time between two writes (changes within it are gathered).
    pub window: Duration,
}

/// What the loop reports (for health and metrics): the last write and its outcome.
#[derive(Debug)]
pub struct Status {
    /// Seconds from a change's arrival to switchd running it (a watch event to programmed).
    pub latency: prometheus_client::metrics::histogram::Histogram,
    /// Objects not programmed: skipped (headless, IPv6, another proxy's) or refused by
    /// switchd (each reported as an Event).
    pub not_programmed: AtomicU64,
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

impl Default for Status {
    fn default() -> Self {
        Status {
            // 500 us .. 16 s.
            latency: prometheus_client::metrics::histogram::Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.000_5, 2.0, 16),
            ),
            not_programmed: AtomicU64::new(0),
            last_sync_ms: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            pending_since_ms: AtomicU64::new(0),
        }
    }
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

/// A watcher of `api`'s objects, each event sent to the loop as `wrap` makes it.
fn watch<K>(api: Api<K>, tx: mpsc::UnboundedSender<Input>, wrap: fn(watcher::Event<K>) -> Watched)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let kind = K::kind(&()).to_string();
    let stream = watcher(api, watcher::Config::default()).default_backoff();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(e) => {
                    if tx.send(Input::Watched(wrap(e))).is_err() {
                        return;
                    }
                }
                Err(e) => log(format!("watching {kind}: {e} (retrying)")),
            }
        }
    });
}

/// What the loop is sent.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
enum Input {
    /// A watch event.
    Watched(Watched),
    /// switchd's control server is another one (or answers again): write everything.
    Resync(String),
}

/// Polls switchd's `Version` and sends a resync when its instance changes.
fn poll_instance(socket: PathBuf, tx: mpsc::UnboundedSender<Input>) {
    tokio::spawn(async move {
        let mut seen: Option<String> = None;
        let mut client: Option<SwitchClient<tonic::transport::Channel>> = None;
        loop {
            tokio::time::sleep(INSTANCE_POLL).await;
            if client.is_none() {
                client = crate::client::connect(&socket).await.ok();
            }
            let Some(c) = client.as_mut() else { continue };
            match c.version(pb::VersionRequest {}).await {
                Ok(r) => {
                    let now = r.into_inner().instance;
                    if let Some(old) = seen.as_ref().filter(|o| **o != now) {
                        let why = format!("switchd restarted (instance {old} -> {now})");
                        if tx.send(Input::Resync(why)).is_err() {
                            return;
                        }
                    }
                    seen = Some(now);
                }
                Err(_) => client = None,
            }
        }
    });
}

/// The object a refusal names: `changes[i]` (the i-th change of the write), or
/// `services[ns/name]`, `nodes[name]`.
fn refused_object(message: &str, ops: &[Op]) -> Option<(&'static str, String)> {
    let at = |prefix: &str| {
        message
            .split(prefix)
            .nth(1)
            .and_then(|rest| rest.split(']').next())
            .map(str::to_string)
    };
    if let Some(i) = at("changes[").and_then(|i| i.parse::<usize>().ok()) {
        return ops.get(i).map(Op::object);
    }
    for (prefix, kind) in [("services[", "Service"), ("nodes[", "Node")] {
        if let Some(name) = at(prefix) {
            return Some((kind, name));
        }
    }
    None
}

/// One change the agent writes.
#[derive(Debug, Clone)]
enum Op {
    UpsertNode(RemoteNodeSpec),
    DeleteNode(String),
    UpsertService(ServiceSpec),
    DeleteService(String),
}

impl Op {
    fn object(&self) -> (&'static str, String) {
        match self {
            Op::UpsertNode(n) => ("Node", n.name.clone()),
            Op::DeleteNode(n) => ("Node", n.clone()),
            Op::UpsertService(s) => ("Service", s.name.clone()),
            Op::DeleteService(n) => ("Service", n.clone()),
        }
    }

    fn pb(&self) -> pb::Change {
        use pb::change::Change as C;
        let c = match self {
            Op::UpsertNode(n) => C::UpsertNode(crate::convert::node_pb(n)),
            Op::DeleteNode(n) => C::DeleteNode(n.clone()),
            Op::UpsertService(s) => C::UpsertService(crate::convert::service_request(s)),
            Op::DeleteService(n) => C::DeleteService(n.clone()),
        };
        pb::Change { change: Some(c) }
    }
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

/// Objects switchd refused, as they were then: left out while they stay the same (no failed
/// write per sync for a Service nobody fixes). Forgotten when the object changes or goes,
/// so it holds at most the cluster's objects.
#[derive(Debug, Default)]
struct Refused {
    services: BTreeMap<String, ServiceSpec>,
    nodes: BTreeMap<String, RemoteNodeSpec>,
}

/// `want` as it may be written, given what of it was `refused`: `None` if it was refused as
/// it is; a refusal of an earlier version is forgotten.
fn unrefused<'a, T: PartialEq>(
    refused: &mut BTreeMap<String, T>,
    name: &str,
    want: Option<&'a T>,
) -> Option<&'a T> {
    match (refused.get(name), want) {
        (Some(r), Some(w)) if r == w => None,
        (Some(_), w) => {
            refused.remove(name);
            w
        }
        (None, w) => w,
    }
}

/// What the agent last wrote to switchd: what switchd holds of the agent's, as far as the
/// agent knows.
#[derive(Debug, Default)]
struct Written {
    nodes: BTreeMap<String, RemoteNodeSpec>,
    services: BTreeMap<String, ServiceSpec>,
}

impl Written {
    fn commit(&mut self, op: &Op) {
        match op {
            Op::UpsertNode(n) => {
                self.nodes.insert(n.name.clone(), n.clone());
            }
            Op::DeleteNode(n) => {
                self.nodes.remove(n);
            }
            Op::UpsertService(s) => {
                self.services.insert(s.name.clone(), s.clone());
            }
            Op::DeleteService(n) => {
                self.services.remove(n);
            }
        }
    }
}

/// The agent's side of switchd: the connection, what was written, what was refused.
struct Writer {
    sw: SwitchClient<tonic::transport::Channel>,
    written: Written,
    refused: Refused,
    /// Services and whether the nodes have changed since they were last written.
    stale: BTreeSet<String>,
    nodes_stale: bool,
    /// The next write is a Replace (start, relist, switchd out of step).
    full: bool,
}

/// How a write ended.
enum Wrote {
    /// Nothing differed.
    Nothing,
    /// Written: how many objects changed, and whether it was a Replace.
    Changed(usize, bool),
}

impl Writer {
    /// The incremental changes from what was written to what `cluster` wants.
    fn ops(&mut self, cluster: &Cluster) -> Vec<Op> {
        let mut ops = Vec::new();
        if self.nodes_stale {
            let names: BTreeSet<String> = cluster
                .nodes()
                .keys()
                .chain(self.written.nodes.keys())
                .cloned()
                .collect();
            for n in names {
                let want = unrefused(&mut self.refused.nodes, &n, cluster.nodes().get(&n));
                match (want, self.written.nodes.get(&n)) {
                    (Some(w), have) if have != Some(w) => ops.push(Op::UpsertNode(w.clone())),
                    (None, Some(_)) => ops.push(Op::DeleteNode(n)),
                    _ => {}
                }
            }
        }
        for n in &self.stale {
            let want = unrefused(&mut self.refused.services, n, cluster.services().get(n));
            match (want, self.written.services.get(n)) {
                (Some(w), have) if have != Some(w) => ops.push(Op::UpsertService(w.clone())),
                (None, Some(_)) => ops.push(Op::DeleteService(n.clone())),
                _ => {}
            }
        }
        ops
    }

    /// Writes what changed (or everything, after a resync), leaving out what switchd
    /// refuses; `refusals` gets what it refused now.
    async fn write(
        &mut self,
        cluster: &Cluster,
        refusals: &mut Vec<model::Skipped>,
    ) -> Result<Wrote, tonic::Status> {
        if self.full {
            return self.replace(cluster, refusals).await;
        }
        let mut ops = self.ops(cluster);
        if ops.is_empty() {
            self.stale.clear();
            self.nodes_stale = false;
            return Ok(Wrote::Nothing);
        }
        for _ in 0..MAX_REFUSALS {
            let r = self
                .sw
                .apply(pb::ApplyRequest {
                    changes: ops.iter().map(Op::pb).collect(),
                    dry_run: false,
                })
                .await;
            match r {
                Ok(_) => {
                    for op in &ops {
                        self.written.commit(op);
                    }
                    self.stale.clear();
                    self.nodes_stale = false;
                    return Ok(Wrote::Changed(ops.len(), false));
                }
                Err(e) if e.code() == tonic::Code::NotFound => {
                    // switchd does not hold what the agent wrote: write everything.
                    log(format!(
                        "switchd is out of step ({}): writing everything",
                        e.message()
                    ));
                    self.full = true;
                    return self.replace(cluster, refusals).await;
                }
                Err(e) if e.code() == tonic::Code::InvalidArgument => {
                    let Some((kind, name)) = refused_object(e.message(), &ops) else {
                        return Err(e);
                    };
                    self.refuse(cluster, kind, &name, e.message(), refusals);
                    // Without it: an earlier version written is deleted.
                    let before = ops.len();
                    ops.retain(|o| o.object() != (kind, name.clone()));
                    if ops.len() == before {
                        return Err(e);
                    }
                    let have = match kind {
                        "Service" => self.written.services.contains_key(&name),
                        _ => self.written.nodes.contains_key(&name),
                    };
                    if have {
                        ops.push(match kind {
                            "Service" => Op::DeleteService(name),
                            _ => Op::DeleteNode(name),
                        });
                    }
                    if ops.is_empty() {
                        return Ok(Wrote::Nothing);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Err(tonic::Status::invalid_argument("too many refused objects"))
    }

    /// Remembers that switchd refused `kind` `name` as the cluster wants it now.
    fn refuse(
        &mut self,
        cluster: &Cluster,
        kind: &'static str,
        name: &str,
        why: &str,
        refusals: &mut Vec<model::Skipped>,
    ) {
        match kind {
            "Service" => {
                if let Some(s) = cluster.services().get(name) {
                    self.refused.services.insert(name.to_string(), s.clone());
                }
            }
            _ => {
                if let Some(n) = cluster.nodes().get(name) {
                    self.refused.nodes.insert(name.to_string(), n.clone());
                }
            }
        }
        refusals.push(model::Skipped {
            kind,
            name: name.to_string(),
            reason: why.to_string(),
        });
    }

    /// Writes everything the cluster wants with one Replace of the agent's objects.
    async fn replace(
        &mut self,
        cluster: &Cluster,
        refusals: &mut Vec<model::Skipped>,
    ) -> Result<Wrote, tonic::Status> {
        self.refused
            .services
            .retain(|n, s| cluster.services().get(n) == Some(s));
        self.refused
            .nodes
            .retain(|n, s| cluster.nodes().get(n) == Some(s));
        for _ in 0..MAX_REFUSALS {
            let nodes: Vec<&RemoteNodeSpec> = cluster
                .nodes()
                .values()
                .filter(|n| !self.refused.nodes.contains_key(&n.name))
                .collect();
            let services: Vec<&ServiceSpec> = cluster
                .services()
                .values()
                .filter(|s| !self.refused.services.contains_key(&s.name))
                .collect();
            let state = pb::State {
                nodes: nodes.iter().map(|n| crate::convert::node_pb(n)).collect(),
                services: services
                    .iter()
                    .map(|s| crate::convert::service_request(s))
                    .collect(),
                ..Default::default()
            };
            let r = self
                .sw
                .replace(pb::ReplaceRequest {
                    state: Some(state),
                    dry_run: false,
                    owner: OWNER.into(),
                })
                .await;
            match r {
                Ok(r) => {
                    self.written.nodes = nodes
                        .iter()
                        .map(|n| (n.name.clone(), (*n).clone()))
                        .collect();
                    self.written.services = services
                        .iter()
                        .map(|s| (s.name.clone(), (*s).clone()))
                        .collect();
                    self.full = false;
                    self.stale.clear();
                    self.nodes_stale = false;
                    let changed = r.into_inner().result.map_or(0, |r| r.changes.len());
                    return Ok(if changed == 0 {
                        Wrote::Nothing
                    } else {
                        Wrote::Changed(changed, true)
                    });
                }
                Err(e) if e.code() == tonic::Code::InvalidArgument => {
                    let Some((kind, name)) = refused_object(e.message(), &[]) else {
                        return Err(e);
                    };
                    let known = match kind {
                        "Service" => {
                            cluster.services().contains_key(&name)
                                && !self.refused.services.contains_key(&name)
                        }
                        _ => {
                            cluster.nodes().contains_key(&name)
                                && !self.refused.nodes.contains_key(&name)
                        }
                    };
                    if !known {
                        return Err(e);
                    }
                    self.refuse(cluster, kind, &name, e.message(), refusals);
                }
                Err(e) => return Err(e),
            }
        }
        Err(tonic::Status::invalid_argument("too many refused objects"))
    }
}

/// The reason of the Events on objects the agent does not program.
pub const NOT_PROGRAMMED: &str = "NotProgrammed";
/// Longest Event note (the API's limit is 1 KiB).
const MAX_NOTE: usize = 1000;

/// A Warning Event on the object `s` names, when the cluster still holds it, published off
/// the loop; and its log line.
fn report(recorder: &Recorder, s: &model::Skipped, cluster: &Cluster) {
    log(format!(
        "not programmed: {} {}: {}",
        s.kind, s.name, s.reason
    ));
    let reference = match s.kind {
        "Service" => cluster.service_object(&s.name).map(|o| o.object_ref(&())),
        "EndpointSlice" => cluster.slice_object(&s.name).map(|o| o.object_ref(&())),
        _ => cluster.node_object(&s.name).map(|o| o.object_ref(&())),
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
    let (tx, mut rx) = mpsc::unbounded_channel();
    let nodes_api: Api<Node> = Api::all(client.clone());
    watch(nodes_api.clone(), tx.clone(), Watched::Node);
    watch(Api::all(client.clone()), tx.clone(), Watched::Service);
    watch(Api::all(client), tx.clone(), Watched::Slice);
    let sw = switchd(&cfg.socket).await;
    {
        let (api, c, mut s) = (nodes_api.clone(), cfg.clone(), sw.clone());
        tokio::spawn(async move { publish_vtep_mac(&api, &c, &mut s).await });
    }
    poll_instance(cfg.socket.clone(), tx);
    let mut cluster = Cluster::new(&cfg.node);
    let mut w = Writer {
        sw,
        written: Written::default(),
        refused: Refused::default(),
        stale: BTreeSet::new(),
        nodes_stale: false,
        full: true,
    };
    let mut last_write: Option<Instant> = None;
    // Since when the change being gathered has waited.
    let mut waiting: Option<Instant> = None;
    let mut retry = false;
    loop {
        let take = |input: Input, cluster: &mut Cluster, w: &mut Writer| match input {
            Input::Watched(ev) => {
                let relist = matches!(
                    &ev,
                    Watched::Node(watcher::Event::InitDone)
                        | Watched::Service(watcher::Event::InitDone)
                        | Watched::Slice(watcher::Event::InitDone)
                );
                cluster.apply(ev);
                if relist && w.written.services.len() + w.written.nodes.len() > 0 {
                    // A relist: switchd may hold what the cluster no longer has.
                    w.full = true;
                }
            }
            Input::Resync(why) => {
                log(format!("{why}: writing everything"));
                w.full = true;
            }
        };
        if retry {
            tokio::time::sleep(RETRY).await;
        } else {
            let Some(input) = rx.recv().await else { return };
            take(input, &mut cluster, &mut w);
        }
        let _ = status.pending_since_ms.compare_exchange(
            0,
            now_ms(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        waiting.get_or_insert_with(Instant::now);
        // Writes at least a window apart: what comes meanwhile goes into the next one.
        if let Some(t) = last_write {
            tokio::time::sleep_until((t + cfg.window).into()).await;
        }
        while let Ok(input) = rx.try_recv() {
            take(input, &mut cluster, &mut w);
        }
        if !cluster.listed() {
            status.pending_since_ms.store(0, Ordering::Relaxed);
            waiting = None;
            continue;
        }
        let began = Instant::now();
        let changed = cluster.refresh();
        w.stale.extend(changed.services.iter().cloned());
        w.nodes_stale |= changed.nodes;
        for s in &changed.skipped {
            status.not_programmed.fetch_add(1, Ordering::Relaxed);
            report(&recorder, s, &cluster);
        }
        let mut refusals = Vec::new();
        let r = w.write(&cluster, &mut refusals).await;
        for s in &refusals {
            status.not_programmed.fetch_add(1, Ordering::Relaxed);
            report(&recorder, s, &cluster);
        }
        match r {
            Ok(wrote) => {
                retry = false;
                status.last_sync_ms.store(now_ms(), Ordering::Relaxed);
                status.pending_since_ms.store(0, Ordering::Relaxed);
                let since = waiting.take();
                if let Wrote::Changed(n, full) = wrote {
                    last_write = Some(Instant::now());
                    if let Some(t) = since {
                        status.latency.observe(t.elapsed().as_secs_f64());
                    }
                    status.syncs.fetch_add(1, Ordering::Relaxed);
                    if full {
                        log(format!(
                            "programmed {} nodes, {} Services ({n} changed) in {} ms",
                            w.written.nodes.len(),
                            w.written.services.len(),
                            began.elapsed().as_millis()
                        ));
                    }
                }
            }
            Err(e) => {
                retry = true;
                w.full = true;
                status.errors.fetch_add(1, Ordering::Relaxed);
                log(format!("writing switchd: {} (retrying)", e.message()));
                if e.code() == tonic::Code::Unavailable || e.code() == tonic::Code::Unknown {
                    w.sw = switchd(&cfg.socket).await;
                }
            }
        }
    }
}
