//! The gRPC server: request handling over an [`Engine`] and a [`Dataplane`].
//!
//! Design: a write (Apply, Replace, the one-object shorthands) is converted and validated, then
//! planned, published and committed under one mutex, on a blocking thread (the async thread
//! only moves messages). The data path never waits for that mutex, and with no controller
//! connected the switch forwards with the last state. A write returns once the dataplane
//! reports every worker running the new generation. A read takes the mutex only to take
//! shared references to the desired state and the live snapshot (so it waits for a write in
//! progress, and a write never waits for a read's work), then answers on a blocking thread.
//!
//! Thread-safety: [`Control`] is shared (`Arc`) by every connection and by the daemon (for
//! SIGHUP reloads); its engine sits behind a `Mutex` held from planning to commit.

use crate::engine::{Engine, Op, Plan};
use crate::error::ApiError;
use crate::keep::{Keep, Kept};
use crate::metrics::Writes;
use crate::pb::switch_service_server::{SwitchService, SwitchServiceServer};
use crate::{convert, pb, query};
use flowtable::conntrack::Conntrack;
use flowtable::snapshot::Snapshot;
use flowtable::state::StateFile;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

type ServiceMap = std::collections::BTreeMap<String, flowtable::state::ServiceSpec>;

/// The API version string reported by `Version`.
pub const API: &str = "nodeswitch.v1";

/// What the server needs from the switch it controls.
pub trait Dataplane: Send + Sync + 'static {
    /// Makes `next` the live snapshot (first checking and preparing what only the dataplane
    /// can, such as the interfaces of new pods) and returns its generation number.
    fn publish(&self, next: Snapshot) -> Result<u64, ApiError>;
    /// Waits until every worker runs `generation` or a later one.
    fn wait_programmed(&self, generation: u64, timeout: Duration) -> Result<(), ApiError>;
    /// The live snapshot.
    fn current(&self) -> Arc<Snapshot>;
    /// The conntrack table, if there is one.
    fn conntrack(&self) -> Option<Arc<Conntrack>>;
    /// The counters now.
    fn stats(&self) -> pb::Stats;
    /// The uplink's next hops the workers use, if the dataplane learns them.
    fn next_hops(&self) -> Option<flowtable::egress::NextHopsCell> {
        None
    }
    /// The workers' captures and monitors, if the dataplane has them.
    fn taps(&self) -> Option<Arc<flowtable::tap::Taps>> {
        None
    }
}

/// How long a write waits for every worker to run its generation.
pub const PROGRAM_TIMEOUT: Duration = Duration::from_secs(2);

/// The control plane of one switch: its desired state and its dataplane.
pub struct Control<D: Dataplane> {
    engine: Mutex<Engine>,
    plane: D,
    keep: Option<Keep>,
    instance: String,
    writes: Writes,
}

/// A name for one control server, different for every one a machine starts (process id,
/// start time, a counter): a writer that sees it change knows its objects may be gone.
fn new_instance() -> String {
    static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}-{nanos:x}-{n}", std::process::id())
}

impl<D: Dataplane> Control<D> {
    /// Control over `plane`, whose live state is `engine`'s.
    pub fn new(engine: Engine, plane: D) -> Arc<Self> {
        Control::kept(engine, plane, None)
    }

    /// Control over `plane` that keeps other writers' objects in `keep` for a restart
    /// ([`crate::keep`]): a change is written there before it is published.
    pub fn kept(engine: Engine, plane: D, keep: Option<Keep>) -> Arc<Self> {
        Arc::new(Control {
            engine: Mutex::new(engine),
            plane,
            keep,
            instance: new_instance(),
            writes: Writes::default(),
        })
    }

    /// The write latencies and results, for the metrics endpoint.
    pub fn writes(&self) -> &Writes {
        &self.writes
    }

    /// The dataplane.
    pub fn plane(&self) -> &D {
        &self.plane
    }

    fn engine(&self) -> Result<std::sync::MutexGuard<'_, Engine>, ApiError> {
        self.engine
            .lock()
            .map_err(|_| ApiError::Unavailable("the control plane failed; restart switchd".into()))
    }

    fn run(
        &self,
        dry_run: bool,
        plan: impl FnOnce(&Engine, &Snapshot) -> Result<Option<Plan>, ApiError>,
    ) -> Result<pb::ApplyResult, ApiError> {
        let r = self.write(dry_run, plan);
        if !dry_run {
            self.writes.count(match &r {
                Ok(a) if a.changed => "applied",
                Ok(_) => "unchanged",
                Err(_) => "refused",
            });
        }
        r
    }

    fn write(
        &self,
        dry_run: bool,
        plan: impl FnOnce(&Engine, &Snapshot) -> Result<Option<Plan>, ApiError>,
    ) -> Result<pb::ApplyResult, ApiError> {
        let mut engine = self.engine()?;
        let current = self.plane.current();
        let t = Instant::now();
        let planned = plan(&engine, &current);
        if !dry_run {
            self.writes.planned.observe(t.elapsed().as_secs_f64());
        }
        let Some(mut plan) = planned? else {
            return Ok(pb::ApplyResult {
                generation: self.plane.current().generation,
                changed: false,
                dry_run,
                ..Default::default()
            });
        };
        let mut reply = pb::ApplyResult {
            changed: true,
            changes: std::mem::take(&mut plan.changes),
            unchanged: plan.unchanged,
            build_micros: plan.build.as_micros() as u64,
            dry_run,
            ..Default::default()
        };
        if dry_run {
            reply.generation = self.plane.current().generation;
            return Ok(reply);
        }
        let Some(snapshot) = plan.snapshot.take() else {
            return Err(ApiError::Unavailable("a plan without a snapshot".into()));
        };
        // Kept first: a change the caller is told succeeded survives a restart.
        if let Some(k) = &self.keep {
            k.save(&engine, &plan).map_err(|e| {
                ApiError::Unavailable(format!(
                    "not applied: the objects a restart keeps could not be written: {e}"
                ))
            })?;
        }
        let generation = match self.plane.publish(snapshot) {
            Ok(g) => g,
            Err(e) => {
                if let Some(k) = &self.keep {
                    if let Err(w) = k.write(&Kept::of(&engine)) {
                        eprintln!(
                            "switchd: a refused change, and the kept objects not written back: {w}"
                        );
                    }
                }
                return Err(e);
            }
        };
        engine.commit(plan);
        drop(engine);
        let t = Instant::now();
        self.plane.wait_programmed(generation, PROGRAM_TIMEOUT)?;
        self.writes.programmed.observe(t.elapsed().as_secs_f64());
        reply.programmed_micros = t.elapsed().as_micros() as u64;
        reply.generation = generation;
        Ok(reply)
    }

    /// Applies a batch of changes atomically (blocking).
    pub fn apply(&self, ops: &[(String, Op)], dry_run: bool) -> Result<pb::ApplyResult, ApiError> {
        self.run(dry_run, |e, cur| e.plan(ops, Some(cur)))
    }

    /// Replaces the node config's objects and settings (blocking; the state file, SIGHUP):
    /// changes only what differs, other writers' objects are kept.
    pub fn replace(&self, state: StateFile, dry_run: bool) -> Result<pb::ApplyResult, ApiError> {
        self.run(dry_run, |e, cur| e.plan_replace(state, "", Some(cur)))
    }

    /// Replaces `owner`'s pods, nodes and Services with those of `objects` (blocking);
    /// its node, VXLAN and Service settings are not used.
    pub fn replace_owned(
        &self,
        objects: convert::Objects,
        owner: &str,
        dry_run: bool,
    ) -> Result<pb::ApplyResult, ApiError> {
        self.run(dry_run, |e, cur| {
            let mut state = e.base().clone();
            state.pods = objects.pods;
            state.nodes = objects.nodes;
            state.services = objects.services;
            e.plan_replace(state, owner, Some(cur))
        })
    }

    /// The desired state.
    pub fn state(&self) -> Result<StateFile, ApiError> {
        Ok(self.engine()?.state())
    }

    /// A tonic service for this control plane.
    pub fn service(self: &Arc<Self>) -> SwitchServiceServer<Api<D>> {
        SwitchServiceServer::new(Api(Arc::clone(self)))
            .max_decoding_message_size(MAX_REQUEST)
            .max_encoding_message_size(MAX_REQUEST)
    }
}

/// Largest request (and reply) message: a whole cluster's state fits many times over.
pub const MAX_REQUEST: usize = 256 << 20;

/// gRPC's code for a request over the size limit is RESOURCE_EXHAUSTED (tonic answers
/// OUT_OF_RANGE): rewrites that answer, with the limit in the message.
pub fn size_limit_status<B>(
    mut r: tonic::codegen::http::Response<B>,
) -> tonic::codegen::http::Response<B> {
    use tonic::codegen::http::HeaderValue;
    let h = r.headers_mut();
    let too_large = h.get("grpc-status").is_some_and(|v| v == "11")
        && h.get("grpc-message")
            .and_then(|m| m.to_str().ok())
            .is_some_and(|m| {
                m.replace("%20", " ")
                    .contains("decoded message length too large")
            });
    if too_large {
        let found = h
            .get("grpc-message")
            .and_then(|m| m.to_str().ok())
            .and_then(|m| m.split("found%20").nth(1).or(m.split("found ").nth(1)))
            .and_then(|rest| rest.split(['%', ' ']).next())
            .unwrap_or("more")
            .to_string();
        let msg = format!(
            "the request is {found} bytes, over the limit of {MAX_REQUEST} bytes ({} MiB)",
            MAX_REQUEST >> 20
        );
        h.insert("grpc-status", HeaderValue::from_static("8"));
        if let Ok(v) = HeaderValue::from_str(&msg.replace(' ', "%20")) {
            h.insert("grpc-message", v);
        }
    }
    r
}

/// Converts one change message into an [`Op`]; `f` is its path in the request.
pub fn op(f: &str, c: &pb::Change) -> Result<Op, ApiError> {
    use pb::change::Change as C;
    let name = |k: &str, n: &str| -> Result<String, ApiError> {
        if n.is_empty() {
            Err(ApiError::Invalid {
                field: format!("{f}.{k}"),
                reason: "is required".into(),
            })
        } else {
            Ok(n.to_string())
        }
    };
    match c.change.as_ref() {
        None => Err(ApiError::Invalid {
            field: f.into(),
            reason: "is empty (set one of upsert_node, delete_node, upsert_pod, delete_pod, upsert_service, delete_service, set_endpoints)".into(),
        }),
        Some(C::UpsertNode(n)) => Ok(Op::UpsertNode(convert::node(&format!("{f}.upsert_node"), n)?)),
        Some(C::DeleteNode(n)) => Ok(Op::DeleteNode(name("delete_node", n)?)),
        Some(C::UpsertPod(p)) => Ok(Op::UpsertPod(convert::pod(&format!("{f}.upsert_pod"), p)?)),
        Some(C::DeletePod(n)) => Ok(Op::DeletePod(name("delete_pod", n)?)),
        Some(C::UpsertService(s)) => Ok(Op::UpsertService(convert::service(
            &format!("{f}.upsert_service"),
            s,
        )?)),
        Some(C::DeleteService(n)) => Ok(Op::DeleteService(name("delete_service", n)?)),
        Some(C::SetEndpoints(s)) => Ok(Op::SetEndpoints(
            name("set_endpoints.service", &s.service)?,
            convert::endpoints(&format!("{f}.set_endpoints.endpoints"), &s.endpoints)?,
        )),
    }
}

/// The tonic service (see [`Control::service`]).
pub struct Api<D: Dataplane>(Arc<Control<D>>);

impl<D: Dataplane> Api<D> {
    /// Opens a capture or monitor session in the dataplane (refused when it has no taps or
    /// as many sessions as it allows are open).
    fn open_tap(&self, spec: flowtable::tap::Spec) -> Result<flowtable::tap::Tap, Status> {
        let taps = self
            .0
            .plane
            .taps()
            .ok_or_else(|| Status::unimplemented("this dataplane cannot capture or monitor"))?;
        taps.open(spec).map_err(Status::resource_exhausted)
    }

    async fn write(
        &self,
        ops: Vec<(String, Op)>,
        dry_run: bool,
    ) -> Result<Response<pb::ApplyResult>, Status> {
        let ctl = Arc::clone(&self.0);
        tokio::task::spawn_blocking(move || ctl.apply(&ops, dry_run))
            .await
            .map_err(|e| Status::internal(format!("apply failed: {e}")))?
            .map(Response::new)
            .map_err(Status::from)
    }

    /// Answers a read on a blocking thread from one consistent view: the desired state and
    /// the live snapshot, taken together under the engine's lock (held only to take them).
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(Arc<StateFile>, Arc<ServiceMap>, Arc<Snapshot>) -> Result<T, Status>
            + Send
            + 'static,
    ) -> Result<Response<T>, Status> {
        let ctl = Arc::clone(&self.0);
        tokio::task::spawn_blocking(move || {
            let (base, services, snap) = {
                let e = ctl.engine()?;
                let (b, s) = e.view();
                (b, s, ctl.plane.current())
            };
            f(base, services, snap)
        })
        .await
        .map_err(|e| Status::internal(format!("read failed: {e}")))?
        .map(Response::new)
    }

    /// A one-object shorthand: converted and checked as the same change in a batch would be
    /// (its fields named `request.upsert_pod.ip`, ...).
    async fn one(&self, c: pb::change::Change) -> Result<Response<pb::ApplyResult>, Status> {
        let change = pb::Change { change: Some(c) };
        let op = op("request", &change)?;
        self.write(vec![("request".into(), op)], false).await
    }
}

fn not_found(kind: &str, name: &str) -> Status {
    Status::not_found(format!(
        "there is no {kind} {}",
        flowtable::names::quote(name)
    ))
}

use pb::change::Change as C;

/// A write's answer in the response message of its rpc.
macro_rules! answer {
    ($e:expr, $t:ident) => {
        $e.await.map(|r| {
            Response::new(pb::$t {
                result: Some(r.into_inner()),
            })
        })
    };
}

#[tonic::async_trait]
impl<D: Dataplane> SwitchService for Api<D> {
    async fn apply(
        &self,
        req: Request<pb::ApplyRequest>,
    ) -> Result<Response<pb::ApplyResponse>, Status> {
        let req = req.into_inner();
        let ops = req
            .changes
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let f = format!("changes[{i}]");
                op(&f, c).map(|o| (f, o))
            })
            .collect::<Result<Vec<_>, ApiError>>()?;
        answer!(self.write(ops, req.dry_run), ApplyResponse)
    }

    async fn replace(
        &self,
        req: Request<pb::ReplaceRequest>,
    ) -> Result<Response<pb::ReplaceResponse>, Status> {
        let pb::ReplaceRequest {
            owner,
            state,
            dry_run,
        } = req.into_inner();
        let state = state.ok_or_else(|| Status::invalid_argument("state: is required"))?;
        let owner = convert::owner("owner", &owner)?;
        let ctl = Arc::clone(&self.0);
        // A whole cluster's state (100,000 endpoints) takes tens of milliseconds to convert
        // and plan: off the runtime's thread, which keeps serving other calls. The request's
        // memory is freed while the reply goes out, not before it.
        let (result, state) = tokio::task::spawn_blocking(move || {
            let run = || -> Result<pb::ApplyResult, ApiError> {
                convert::owned_by(&state, &owner)?;
                if owner.is_empty() {
                    ctl.replace(convert::state(&state)?, dry_run)
                } else {
                    ctl.replace_owned(convert::objects(&state)?, &owner, dry_run)
                }
            };
            (run(), state)
        })
        .await
        .map_err(|e| Status::internal(format!("replace failed: {e}")))?;
        tokio::task::spawn_blocking(move || drop(state));
        result
            .map(|r| Response::new(pb::ReplaceResponse { result: Some(r) }))
            .map_err(Status::from)
    }

    async fn upsert_node(
        &self,
        req: Request<pb::UpsertNodeRequest>,
    ) -> Result<Response<pb::UpsertNodeResponse>, Status> {
        let node = req.into_inner().node.unwrap_or_default();
        answer!(self.one(C::UpsertNode(node)), UpsertNodeResponse)
    }

    async fn delete_node(
        &self,
        req: Request<pb::DeleteNodeRequest>,
    ) -> Result<Response<pb::DeleteNodeResponse>, Status> {
        answer!(
            self.one(C::DeleteNode(req.into_inner().name)),
            DeleteNodeResponse
        )
    }

    async fn upsert_pod(
        &self,
        req: Request<pb::UpsertPodRequest>,
    ) -> Result<Response<pb::UpsertPodResponse>, Status> {
        let pod = req.into_inner().pod.unwrap_or_default();
        answer!(self.one(C::UpsertPod(pod)), UpsertPodResponse)
    }

    async fn delete_pod(
        &self,
        req: Request<pb::DeletePodRequest>,
    ) -> Result<Response<pb::DeletePodResponse>, Status> {
        answer!(
            self.one(C::DeletePod(req.into_inner().name)),
            DeletePodResponse
        )
    }

    async fn upsert_service(
        &self,
        req: Request<pb::UpsertServiceRequest>,
    ) -> Result<Response<pb::UpsertServiceResponse>, Status> {
        let service = req.into_inner().service.unwrap_or_default();
        answer!(self.one(C::UpsertService(service)), UpsertServiceResponse)
    }

    async fn delete_service(
        &self,
        req: Request<pb::DeleteServiceRequest>,
    ) -> Result<Response<pb::DeleteServiceResponse>, Status> {
        answer!(
            self.one(C::DeleteService(req.into_inner().name)),
            DeleteServiceResponse
        )
    }

    async fn set_endpoints(
        &self,
        req: Request<pb::SetEndpointsRequest>,
    ) -> Result<Response<pb::SetEndpointsResponse>, Status> {
        answer!(
            self.one(C::SetEndpoints(req.into_inner())),
            SetEndpointsResponse
        )
    }

    async fn get_state(
        &self,
        req: Request<pb::GetStateRequest>,
    ) -> Result<Response<pb::GetStateResponse>, Status> {
        let req = req.into_inner();
        let owner = (!req.owner.is_empty())
            .then(|| convert::owner("owner", &req.owner))
            .transpose()?;
        self.read(move |base, services, snap| {
            let mut state = (*base).clone();
            state.services = services.values().cloned().collect();
            let mut msg = convert::state_pb(&state, snap.generation);
            if let Some(o) = &owner {
                // One writer's objects, as its Replace takes them.
                let o = flowtable::names::owner_shown(o);
                msg.pods.retain(|p| p.owner == o);
                msg.nodes.retain(|n| n.owner == o);
                msg.services.retain(|s| s.owner == o);
                if o != flowtable::names::CONFIG_OWNER {
                    msg.node = None;
                    msg.vxlan = None;
                    msg.service_config = None;
                    msg.egress = None;
                }
            }
            Ok(pb::GetStateResponse { state: Some(msg) })
        })
        .await
    }

    async fn list_nodes(
        &self,
        req: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        let name = req.into_inner().name;
        self.read(move |base, _, snap| {
            let nodes: Vec<pb::Node> = base
                .nodes
                .iter()
                .filter(|n| name.is_empty() || n.name == name)
                .map(convert::node_pb)
                .collect();
            if !name.is_empty() && nodes.is_empty() {
                return Err(not_found("node", &name));
            }
            Ok(pb::ListNodesResponse {
                nodes,
                generation: snap.generation,
            })
        })
        .await
    }

    async fn list_pods(
        &self,
        req: Request<pb::ListPodsRequest>,
    ) -> Result<Response<pb::ListPodsResponse>, Status> {
        let name = req.into_inner().name;
        self.read(move |base, _, snap| {
            let pods: Vec<pb::Pod> = base
                .pods
                .iter()
                .filter(|p| name.is_empty() || p.name == name)
                .map(convert::pod_pb)
                .collect();
            if !name.is_empty() && pods.is_empty() {
                return Err(not_found("pod", &name));
            }
            Ok(pb::ListPodsResponse {
                pods,
                generation: snap.generation,
            })
        })
        .await
    }

    async fn list_services(
        &self,
        req: Request<pb::ListServicesRequest>,
    ) -> Result<Response<pb::ListServicesResponse>, Status> {
        let name = req.into_inner().name;
        self.read(move |_, services, snap| {
            let list: Vec<pb::ServiceInfo> = if name.is_empty() {
                services
                    .values()
                    .map(|s| query::service_info(s, &snap))
                    .collect()
            } else {
                services
                    .get(&name)
                    .map(|s| query::service_info(s, &snap))
                    .into_iter()
                    .collect()
            };
            if !name.is_empty() && list.is_empty() {
                return Err(not_found("Service", &name));
            }
            Ok(pb::ListServicesResponse {
                services: list,
                generation: snap.generation,
            })
        })
        .await
    }

    async fn list_endpoints(
        &self,
        req: Request<pb::ListEndpointsRequest>,
    ) -> Result<Response<pb::ListEndpointsResponse>, Status> {
        let name = req.into_inner().name;
        self.read(move |_, services, snap| {
            if !name.is_empty() && !services.contains_key(&name) {
                return Err(not_found("Service", &name));
            }
            let endpoints = services
                .values()
                .filter(|s| name.is_empty() || s.name == name)
                .flat_map(|s| query::endpoint_infos(s, &snap))
                .collect();
            Ok(pb::ListEndpointsResponse {
                endpoints,
                generation: snap.generation,
            })
        })
        .await
    }

    async fn list_conntrack(
        &self,
        req: Request<pb::ListConntrackRequest>,
    ) -> Result<Response<pb::ListConntrackResponse>, Status> {
        let Some(ct) = self.0.plane.conntrack() else {
            return Err(Status::unavailable("this switch has no conntrack table"));
        };
        let req = req.into_inner();
        let list = tokio::task::spawn_blocking(move || query::conntrack(&ct, &req))
            .await
            .map_err(|e| Status::internal(e.to_string()))??;
        Ok(Response::new(list))
    }

    async fn explain(
        &self,
        req: Request<pb::ExplainRequest>,
    ) -> Result<Response<pb::ExplainResponse>, Status> {
        let snap = self.0.plane.current();
        let ct = self.0.plane.conntrack();
        let hops = self.0.plane.next_hops();
        Ok(Response::new(query::explain(
            &snap,
            ct.as_ref(),
            hops,
            req.get_ref(),
        )?))
    }

    async fn get_stats(
        &self,
        _: Request<pb::GetStatsRequest>,
    ) -> Result<Response<pb::GetStatsResponse>, Status> {
        Ok(Response::new(pb::GetStatsResponse {
            stats: Some(self.0.plane.stats()),
        }))
    }

    type WatchStatsStream =
        Pin<Box<dyn Stream<Item = Result<pb::WatchStatsResponse, Status>> + Send + 'static>>;

    async fn watch_stats(
        &self,
        req: Request<pb::WatchStatsRequest>,
    ) -> Result<Response<Self::WatchStatsStream>, Status> {
        let req = req.into_inner();
        let every = Duration::from_millis(if req.interval_ms == 0 {
            1000
        } else {
            u64::from(req.interval_ms.max(10))
        });
        let count = req.count;
        let ctl = Arc::clone(&self.0);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            let mut sent = 0u32;
            loop {
                tick.tick().await;
                let stats = pb::WatchStatsResponse {
                    stats: Some(ctl.plane.stats()),
                };
                if tx.send(Ok(stats)).await.is_err() {
                    return; // the client went away
                }
                sent += 1;
                if count != 0 && sent >= count {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    type CaptureStream =
        Pin<Box<dyn Stream<Item = Result<pb::CaptureResponse, Status>> + Send + 'static>>;

    async fn capture(
        &self,
        req: Request<pb::CaptureRequest>,
    ) -> Result<Response<Self::CaptureStream>, Status> {
        let snap = self.0.plane.current();
        let (spec, now) = crate::tap::capture_spec(&req.into_inner(), snap.ports())?;
        let tap = self.open_tap(spec)?;
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        tokio::task::spawn_blocking(move || crate::tap::pump_frames(tap, now, tx));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    type MonitorStream =
        Pin<Box<dyn Stream<Item = Result<pb::MonitorResponse, Status>> + Send + 'static>>;

    async fn monitor(
        &self,
        req: Request<pb::MonitorRequest>,
    ) -> Result<Response<Self::MonitorStream>, Status> {
        let snap = self.0.plane.current();
        let spec = crate::tap::monitor_spec(&req.into_inner(), snap.ports())?;
        let tap = self.open_tap(spec)?;
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        tokio::task::spawn_blocking(move || crate::tap::pump_events(tap, tx));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn version(
        &self,
        _: Request<pb::VersionRequest>,
    ) -> Result<Response<pb::VersionResponse>, Status> {
        let snap = self.0.plane.current();
        Ok(Response::new(pb::VersionResponse {
            version: env!("CARGO_PKG_VERSION").into(),
            api: API.into(),
            node: snap.node.name.clone(),
            generation: snap.generation,
            instance: self.0.instance.clone(),
        }))
    }
}
