//! The desired state and how a change to it becomes the next snapshot.
//!
//! Design: the engine holds what the controller asked for (this node, pods, other nodes,
//! Services) and the Service tables of the live generation. A change is first *planned*: applied
//! to a copy of the small part of the state (pods and nodes), its Services validated and built
//! incrementally ([`ServiceTables::update`]: only the Services it touches), and the whole
//! validated into an immutable [`Snapshot`]. Nothing is changed until the caller has published
//! that snapshot and [`Engine::commit`]s the plan; a plan that fails leaves no trace, so a
//! batch is applied whole or not at all. A change that changes nothing plans to `None`: no
//! new generation, no churn (a controller's resync with the same state costs only the compare).
//!
//! Thread-safety: plain data, owned by whoever serialises writes (the server keeps it under a
//! mutex, held from planning to commit).

use crate::error::ApiError;
use crate::pb;
use flowtable::names::quote;
use flowtable::services::ServiceTables;
use flowtable::snapshot::{Snapshot, StateError};
use flowtable::state::{EndpointSpec, PodSpec, RemoteNodeSpec, ServiceSpec, StateFile};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One change to the desired state.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Create or replace another node.
    UpsertNode(RemoteNodeSpec),
    /// Delete another node.
    DeleteNode(String),
    /// Create or replace a pod.
    UpsertPod(PodSpec),
    /// Delete a pod.
    DeletePod(String),
    /// Create or replace a Service (with its endpoints).
    UpsertService(ServiceSpec),
    /// Delete a Service.
    DeleteService(String),
    /// Replace a Service's endpoints.
    SetEndpoints(String, Vec<EndpointSpec>),
}

/// A validated change, ready to publish: the next snapshot and what commits it.
#[derive(Debug)]
pub struct Plan {
    /// The next generation's tables (its generation number is set when published); the
    /// publisher takes it.
    pub snapshot: Option<Snapshot>,
    /// What it creates, changes and deletes.
    pub changes: Vec<pb::ObjectChange>,
    /// Objects given that were already so.
    pub unchanged: u32,
    /// Time spent validating and building.
    pub build: Duration,
    base: Option<StateFile>,
    services: Vec<(String, Option<ServiceSpec>)>,
    tables: Arc<ServiceTables>,
}

impl Plan {
    /// The pods, nodes and settings it leaves, if it changes them.
    pub fn base(&self) -> Option<&StateFile> {
        self.base.as_ref()
    }

    /// The Services it changes: the new spec, or `None` for a deleted one.
    pub fn service_changes(&self) -> &[(String, Option<ServiceSpec>)] {
        &self.services
    }
}

/// The desired state and the live generation's Service tables.
#[derive(Debug)]
pub struct Engine {
    /// Everything but the Services (its `services` is empty).
    base: Arc<StateFile>,
    /// Shared with readers ([`Engine::view`]); copied on commit only while one holds it.
    services: Arc<BTreeMap<String, ServiceSpec>>,
    tables: Arc<ServiceTables>,
}

fn change(kind: &str, name: &str, action: &str) -> pb::ObjectChange {
    pb::ObjectChange {
        kind: kind.into(),
        name: name.into(),
        action: action.into(),
    }
}

/// Rewrites `pods[3]` and `nodes[0]` in a snapshot error into `pods[web-1]`, `nodes[node2]`:
/// a caller knows its objects by name, not by where they sit in the switch's list.
pub fn by_name(text: &str, base: &StateFile) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('[') {
        let (head, tail) = rest.split_at(i);
        out.push_str(head);
        let close = tail.find(']').unwrap_or(0);
        let idx: Option<usize> = tail.get(1..close).and_then(|d| d.parse().ok());
        // A name that breaks the rules is shown quoted (short, escaped).
        let shown = |n: &str, ok: bool| if ok { n.to_string() } else { quote(n) };
        let name = match idx {
            Some(k) if head.ends_with("pods") => base
                .pods
                .get(k)
                .map(|p| shown(&p.name, flowtable::names::pod_name(&p.name).is_ok())),
            Some(k) if head.ends_with("nodes") => base
                .nodes
                .get(k)
                .map(|n| shown(&n.name, flowtable::names::node_name(&n.name).is_ok())),
            _ => None,
        };
        match name {
            Some(n) => {
                out.push('[');
                out.push_str(&n);
                out.push(']');
                rest = &tail[close + 1..];
            }
            None => {
                out.push('[');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn state_error(e: StateError, base: &StateFile) -> ApiError {
    ApiError::Invalid {
        field: by_name(&e.field, base),
        reason: by_name(&e.reason, base),
    }
}

/// Finds the first name given twice in `names`.
fn duplicate<'a>(names: impl Iterator<Item = &'a str>) -> Option<(usize, usize)> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, n) in names.enumerate() {
        if let Some(j) = seen.insert(n, i) {
            return Some((j, i));
        }
    }
    None
}

/// Pods and other nodes: objects a writer owns, named uniquely.
trait Named {
    /// Its name.
    fn name(&self) -> &str;
    /// The writer that owns it.
    fn owner(&self) -> &str;
}

impl Named for PodSpec {
    fn name(&self) -> &str {
        &self.name
    }
    fn owner(&self) -> &str {
        &self.owner
    }
}

impl Named for RemoteNodeSpec {
    fn name(&self) -> &str {
        &self.name
    }
    fn owner(&self) -> &str {
        &self.owner
    }
}

/// `list` indexed by name (a later duplicate wins; lists given to the engine have none).
fn index_by_name<T: Named>(list: &[T]) -> HashMap<&str, &T> {
    list.iter().map(|x| (x.name(), x)).collect()
}

/// What a Replace by `owner` makes of `list`: `owner`'s objects that `given` does not name
/// are removed, and each of `given` replaces the object of its name (whoever owned it) or is
/// added at the end. Linear in both lists (a cluster has thousands of nodes).
fn replace_owned<T: Named + Clone>(list: &mut Vec<T>, given: &[T], owner: &str) {
    let wanted = index_by_name(given);
    list.retain(|x| x.owner() != owner || wanted.contains_key(x.name()));
    let mut at: HashMap<String, usize> = list
        .iter()
        .enumerate()
        .map(|(i, x)| (x.name().to_string(), i))
        .collect();
    for x in given {
        match at.get(x.name()) {
            Some(&i) => list[i] = x.clone(),
            None => {
                at.insert(x.name().to_string(), list.len());
                list.push(x.clone());
            }
        }
    }
}

/// The `kind` objects created, configured and deleted from `before` to `after`.
fn named_changes<T: Named + PartialEq>(
    changes: &mut Vec<pb::ObjectChange>,
    kind: &str,
    before: &[T],
    after: &[T],
) {
    let old = index_by_name(before);
    for x in after {
        match old.get(x.name()) {
            None => changes.push(change(kind, x.name(), "created")),
            Some(o) if *o != x => changes.push(change(kind, x.name(), "configured")),
            _ => {}
        }
    }
    let new = index_by_name(after);
    for x in before {
        if !new.contains_key(x.name()) {
            changes.push(change(kind, x.name(), "deleted"));
        }
    }
}

impl Engine {
    /// An engine holding `state`, and the first snapshot built from it.
    pub fn new(state: StateFile) -> Result<(Engine, Snapshot), ApiError> {
        let mut base = state;
        let services = std::mem::take(&mut base.services);
        if let Some((j, i)) = duplicate(services.iter().map(|s| s.name.as_str())) {
            return Err(ApiError::Invalid {
                field: format!("services[{i}].name"),
                reason: format!("'{}' is also the name of services[{j}]", services[i].name),
            });
        }
        let refs: Vec<&ServiceSpec> = services.iter().collect();
        let tables =
            Arc::new(ServiceTables::build_from(&base, &refs).map_err(|e| state_error(e, &base))?);
        let snapshot = Snapshot::build_with(&base, Arc::clone(&tables), 1)
            .map_err(|e| state_error(e, &base))?;
        let services = Arc::new(services.into_iter().map(|s| (s.name.clone(), s)).collect());
        Ok((
            Engine {
                base: Arc::new(base),
                services,
                tables,
            },
            snapshot,
        ))
    }

    /// The whole desired state.
    pub fn state(&self) -> StateFile {
        let mut s = (*self.base).clone();
        s.services = self.services.values().cloned().collect();
        s
    }

    /// Everything but the Services.
    pub fn base(&self) -> &StateFile {
        &self.base
    }

    /// The Services, by name.
    pub fn services(&self) -> &BTreeMap<String, ServiceSpec> {
        &self.services
    }

    /// The desired state as shared references, for readers that must not hold up writers:
    /// take it under the lock, read it after.
    pub fn view(&self) -> (Arc<StateFile>, Arc<BTreeMap<String, ServiceSpec>>) {
        (Arc::clone(&self.base), Arc::clone(&self.services))
    }

    /// Plans a batch of changes, applied in order (`ops[i].0` names the change in errors).
    /// `None` if it changes nothing. `current` is the live snapshot, built from this engine's
    /// state: a change to Services only copies the rest of it instead of rebuilding it.
    pub fn plan(
        &self,
        ops: &[(String, Op)],
        current: Option<&Snapshot>,
    ) -> Result<Option<Plan>, ApiError> {
        let start = Instant::now();
        let mut base: Option<StateFile> = None;
        let mut pending: BTreeMap<String, Option<ServiceSpec>> = BTreeMap::new();
        let mut unchanged = 0u32;
        for (f, op) in ops {
            match op {
                Op::UpsertPod(p) => {
                    let cur = base.as_ref().unwrap_or(&self.base);
                    match cur.pods.iter().position(|x| x.name == p.name) {
                        Some(i) if cur.pods[i] == *p => unchanged += 1,
                        Some(i) => {
                            base.get_or_insert_with(|| (*self.base).clone()).pods[i] = p.clone()
                        }
                        None => base
                            .get_or_insert_with(|| (*self.base).clone())
                            .pods
                            .push(p.clone()),
                    }
                }
                Op::DeletePod(n) => {
                    let cur = base.as_ref().unwrap_or(&self.base);
                    let Some(i) = cur.pods.iter().position(|x| x.name == *n) else {
                        return Err(ApiError::NotFound(format!(
                            "{f}: there is no pod {}",
                            quote(n)
                        )));
                    };
                    base.get_or_insert_with(|| (*self.base).clone())
                        .pods
                        .remove(i);
                }
                Op::UpsertNode(r) => {
                    let cur = base.as_ref().unwrap_or(&self.base);
                    match cur.nodes.iter().position(|x| x.name == r.name) {
                        Some(i) if cur.nodes[i] == *r => unchanged += 1,
                        Some(i) => {
                            base.get_or_insert_with(|| (*self.base).clone()).nodes[i] = r.clone()
                        }
                        None => base
                            .get_or_insert_with(|| (*self.base).clone())
                            .nodes
                            .push(r.clone()),
                    }
                }
                Op::DeleteNode(n) => {
                    let cur = base.as_ref().unwrap_or(&self.base);
                    let Some(i) = cur.nodes.iter().position(|x| x.name == *n) else {
                        return Err(ApiError::NotFound(format!(
                            "{f}: there is no node {}",
                            quote(n)
                        )));
                    };
                    base.get_or_insert_with(|| (*self.base).clone())
                        .nodes
                        .remove(i);
                }
                Op::UpsertService(s) => {
                    let cur = match pending.get(&s.name) {
                        Some(x) => x.as_ref(),
                        None => self.services.get(&s.name),
                    };
                    if cur == Some(s) {
                        unchanged += 1;
                    } else {
                        pending.insert(s.name.clone(), Some(s.clone()));
                    }
                }
                Op::DeleteService(n) => {
                    let exists = match pending.get(n) {
                        Some(x) => x.is_some(),
                        None => self.services.contains_key(n),
                    };
                    if !exists {
                        return Err(ApiError::NotFound(format!(
                            "{f}: there is no Service {}",
                            quote(n)
                        )));
                    }
                    pending.insert(n.clone(), None);
                }
                Op::SetEndpoints(n, eps) => {
                    let cur = match pending.get(n) {
                        Some(x) => x.as_ref(),
                        None => self.services.get(n),
                    };
                    let Some(cur) = cur else {
                        return Err(ApiError::NotFound(format!(
                            "{f}: there is no Service {}",
                            quote(n)
                        )));
                    };
                    if cur.endpoints == *eps {
                        unchanged += 1;
                    } else {
                        let mut s = cur.clone();
                        s.endpoints = eps.clone();
                        pending.insert(n.clone(), Some(s));
                    }
                }
            }
        }
        // An object changed and changed back in one batch is no change.
        pending.retain(|n, s| s.as_ref() != self.services.get(n));
        if base.as_ref() == Some(&*self.base) {
            base = None;
        }
        self.finish(base, pending, unchanged, start, current)
    }

    /// Plans replacing one writer's objects with those of `state` (a resync by `owner`; ""
    /// is the node's config, which also gives this node, VXLAN and the Service settings):
    /// `owner`'s objects not in `state` are deleted, other writers' objects are kept, and
    /// every object in `state` becomes `owner`'s. Only what differs changes; pods and nodes
    /// keep their order. `None` if nothing differs.
    pub fn plan_replace(
        &self,
        mut state: StateFile,
        owner: &str,
        current: Option<&Snapshot>,
    ) -> Result<Option<Plan>, ApiError> {
        let start = Instant::now();
        if let Some((j, i)) = duplicate(state.pods.iter().map(|p| p.name.as_str())) {
            return Err(ApiError::Invalid {
                field: format!("state.pods[{i}].name"),
                reason: format!(
                    "'{}' is also the name of state.pods[{j}]",
                    state.pods[i].name
                ),
            });
        }
        if let Some((j, i)) = duplicate(state.nodes.iter().map(|p| p.name.as_str())) {
            return Err(ApiError::Invalid {
                field: format!("state.nodes[{i}].name"),
                reason: format!(
                    "'{}' is also the name of state.nodes[{j}]",
                    state.nodes[i].name
                ),
            });
        }
        if let Some((j, i)) = duplicate(state.services.iter().map(|p| p.name.as_str())) {
            return Err(ApiError::Invalid {
                field: format!("state.services[{i}].name"),
                reason: format!(
                    "'{}' is also the name of state.services[{j}]",
                    state.services[i].name
                ),
            });
        }
        for p in &mut state.pods {
            p.owner = owner.to_string();
        }
        for n in &mut state.nodes {
            n.owner = owner.to_string();
        }
        for s in &mut state.services {
            s.owner = owner.to_string();
        }
        let mut next = (*self.base).clone();
        if owner.is_empty() {
            next.node = state.node.clone();
            next.vxlan = state.vxlan;
            next.service_config = state.service_config.clone();
            next.egress = state.egress.clone();
        }
        replace_owned(&mut next.pods, &state.pods, owner);
        replace_owned(&mut next.nodes, &state.nodes, owner);
        let mut pending: BTreeMap<String, Option<ServiceSpec>> = BTreeMap::new();
        let mut unchanged = 0u32;
        {
            let wanted: std::collections::HashSet<&str> =
                state.services.iter().map(|s| s.name.as_str()).collect();
            for (n, s) in self.services.iter() {
                if s.owner == owner && !wanted.contains(n.as_str()) {
                    pending.insert(n.clone(), None);
                }
            }
        }
        // The request's Services are moved, not copied (a resync can carry 100,000 endpoints).
        for s in std::mem::take(&mut state.services) {
            if self.services.get(&s.name) == Some(&s) {
                unchanged += 1;
            } else {
                pending.insert(s.name.clone(), Some(s));
            }
        }
        let pods = index_by_name(&self.base.pods);
        unchanged += next
            .pods
            .iter()
            .filter(|p| p.owner == owner && pods.get(p.name.as_str()) == Some(p))
            .count() as u32;
        let nodes = index_by_name(&self.base.nodes);
        unchanged += next
            .nodes
            .iter()
            .filter(|n| n.owner == owner && nodes.get(n.name.as_str()) == Some(n))
            .count() as u32;
        let base = (next != *self.base).then_some(next);
        self.finish(base, pending, unchanged, start, current)
    }

    fn finish(
        &self,
        base: Option<StateFile>,
        pending: BTreeMap<String, Option<ServiceSpec>>,
        unchanged: u32,
        start: Instant,
        current: Option<&Snapshot>,
    ) -> Result<Option<Plan>, ApiError> {
        if base.is_none() && pending.is_empty() {
            return Ok(None);
        }
        let next_base = base.as_ref().unwrap_or(&self.base);
        let tables = if !self.tables.context_matches(next_base) {
            // Nodes or Service settings changed: every Service is validated again.
            let all: Vec<&ServiceSpec> = self
                .services
                .iter()
                .filter(|(n, _)| !pending.contains_key(*n))
                .map(|(_, s)| s)
                .chain(pending.values().flatten())
                .collect();
            Arc::new(
                ServiceTables::build_from(next_base, &all)
                    .map_err(|e| state_error(e, next_base))?,
            )
        } else if pending.is_empty() {
            Arc::clone(&self.tables)
        } else {
            let removed: Vec<&str> = pending
                .iter()
                .filter(|(_, s)| s.is_none())
                .map(|(n, _)| n.as_str())
                .collect();
            let upserted: Vec<&ServiceSpec> = pending.values().flatten().collect();
            Arc::new(self.tables.update(&removed, &upserted)?)
        };
        let snapshot = match (&base, current) {
            (None, Some(cur)) if Arc::ptr_eq(&cur.services, &self.tables) => {
                cur.with_services(Arc::clone(&tables))
            }
            _ => Snapshot::build_with(next_base, Arc::clone(&tables), 0)
                .map_err(|e| state_error(e, next_base))?,
        };
        let mut changes = Vec::new();
        if let Some(b) = &base {
            if b.node != self.base.node {
                changes.push(change("this-node", &b.node.name, "configured"));
            }
            if b.vxlan != self.base.vxlan {
                changes.push(change("vxlan", "", "configured"));
            }
            if b.service_config != self.base.service_config {
                changes.push(change("service-config", "", "configured"));
            }
            if b.egress != self.base.egress {
                changes.push(change("egress", "", "configured"));
            }
            named_changes(&mut changes, "pod", &self.base.pods, &b.pods);
            named_changes(&mut changes, "node", &self.base.nodes, &b.nodes);
        }
        for (n, s) in &pending {
            let action = match (s, self.services.contains_key(n)) {
                (None, _) => "deleted",
                (Some(_), true) => "configured",
                (Some(_), false) => "created",
            };
            changes.push(change("service", n, action));
        }
        Ok(Some(Plan {
            snapshot: Some(snapshot),
            changes,
            unchanged,
            build: start.elapsed(),
            base,
            services: pending.into_iter().collect(),
            tables,
        }))
    }

    /// Makes a planned change the desired state (after its snapshot was published).
    pub fn commit(&mut self, plan: Plan) {
        if let Some(b) = plan.base {
            self.base = Arc::new(b);
        }
        if !plan.services.is_empty() {
            let services = Arc::make_mut(&mut self.services);
            for (n, s) in plan.services {
                match s {
                    Some(s) => {
                        services.insert(n, s);
                    }
                    None => {
                        services.remove(&n);
                    }
                }
            }
        }
        self.tables = plan.tables;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATE: &str = include_str!("../../examples/node1.toml");

    fn engine() -> Engine {
        Engine::new(StateFile::parse(STATE).unwrap()).unwrap().0
    }

    #[test]
    fn errors_name_objects_not_positions() {
        let e = engine();
        let mut p = e.base().pods[1].clone();
        p.name = "default/new".into();
        p.mac = "02:00:00:00:09:09".parse().unwrap();
        p.port = "veth-new".into();
        let err = e
            .plan(&[("changes[0]".into(), Op::UpsertPod(p))], None)
            .unwrap_err()
            .to_string();
        let first = &e.base().pods[1].name;
        assert_eq!(
            err,
            format!(
                "pods[default/new].ip: {} is also the address of pods[{first}]",
                e.base().pods[1].ip
            )
        );
    }

    fn remote(name: &str, k: u8, owner: &str) -> RemoteNodeSpec {
        RemoteNodeSpec {
            owner: owner.into(),
            name: name.into(),
            ip: std::net::Ipv4Addr::new(198, 18, 1, k),
            pod_cidr: format!("10.244.{}.0/24", 100 + k).parse().unwrap(),
            vtep_mac: format!("02:00:00:00:fe:{k:02x}").parse().unwrap(),
            mac: None,
        }
    }

    #[test]
    fn a_replace_changes_only_its_owners_objects_and_reports_each_once() {
        let mut s = engine().state();
        s.nodes.push(remote("a", 1, "agent"));
        s.nodes.push(remote("b", 2, "agent"));
        s.nodes.push(remote("c", 3, "agent"));
        let (e, _) = Engine::new(s).unwrap();
        // The agent's Replace: a gone, b unchanged, c moved, d new.
        let mut given = e.state();
        given.services.clear();
        given.pods.clear();
        given.nodes = vec![remote("b", 2, ""), remote("c", 9, ""), remote("d", 4, "")];
        let plan = e.plan_replace(given, "agent", None).unwrap().unwrap();
        let names: Vec<(&str, &str)> = plan
            .base()
            .unwrap()
            .nodes
            .iter()
            .map(|n| (n.name.as_str(), n.owner.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("node2", ""),
                ("b", "agent"),
                ("c", "agent"),
                ("d", "agent")
            ]
        );
        assert_eq!(plan.base().unwrap().nodes[2].ip, remote("c", 9, "").ip);
        let changes: Vec<(&str, &str, &str)> = plan
            .changes
            .iter()
            .map(|c| (c.kind.as_str(), c.name.as_str(), c.action.as_str()))
            .collect();
        assert_eq!(
            changes,
            [
                ("node", "c", "configured"),
                ("node", "d", "created"),
                ("node", "a", "deleted")
            ]
        );
        assert_eq!(plan.unchanged, 1, "b");
        // Another owner's object of a name the Replace gives is taken over, not doubled.
        let mut given = e.state();
        given.services.clear();
        given.pods.clear();
        let mut node2 = e.base().nodes[0].clone();
        node2.vtep_mac = "02:00:00:00:fe:07".parse().unwrap();
        given.nodes = vec![node2];
        let plan = e.plan_replace(given, "cni", None).unwrap().unwrap();
        let nodes = &plan.base().unwrap().nodes;
        assert_eq!(nodes.iter().filter(|n| n.name == "node2").count(), 1);
        assert_eq!(nodes[0].owner, "cni");
    }

    #[test]
    fn replace_with_the_same_state_plans_nothing() {
        let e = engine();
        let mut s = e.state();
        assert!(e.plan_replace(s.clone(), "", None).unwrap().is_none());
        s.pods.reverse();
        s.services.reverse();
        assert!(
            e.plan_replace(s.clone(), "", None).unwrap().is_none(),
            "order is not a change"
        );
    }
}
