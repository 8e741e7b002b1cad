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
        next.pods
            .retain(|p| p.owner != owner || state.pods.iter().any(|x| x.name == p.name));
        for p in &state.pods {
            match next.pods.iter_mut().find(|x| x.name == p.name) {
                Some(x) => *x = p.clone(),
                None => next.pods.push(p.clone()),
            }
        }
        next.nodes
            .retain(|n| n.owner != owner || state.nodes.iter().any(|x| x.name == n.name));
        for n in &state.nodes {
            match next.nodes.iter_mut().find(|x| x.name == n.name) {
                Some(x) => *x = n.clone(),
                None => next.nodes.push(n.clone()),
            }
        }
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
        unchanged += next
            .pods
            .iter()
            .filter(|p| p.owner == owner && self.base.pods.contains(p))
            .count() as u32;
        unchanged += next
            .nodes
            .iter()
            .filter(|n| n.owner == owner && self.base.nodes.contains(n))
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
            for p in &b.pods {
                match self.base.pods.iter().find(|x| x.name == p.name) {
                    None => changes.push(change("pod", &p.name, "created")),
                    Some(x) if x != p => changes.push(change("pod", &p.name, "configured")),
                    _ => {}
                }
            }
            for p in &self.base.pods {
                if !b.pods.iter().any(|x| x.name == p.name) {
                    changes.push(change("pod", &p.name, "deleted"));
                }
            }
            for n in &b.nodes {
                match self.base.nodes.iter().find(|x| x.name == n.name) {
                    None => changes.push(change("node", &n.name, "created")),
                    Some(x) if x != n => changes.push(change("node", &n.name, "configured")),
                    _ => {}
                }
            }
            for n in &self.base.nodes {
                if !b.nodes.iter().any(|x| x.name == n.name) {
                    changes.push(change("node", &n.name, "deleted"));
                }
            }
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
