//! The cluster's objects as the agent holds them, and its desired state kept up to date one
//! object at a time.
//!
//! Design: the watch events of Nodes, Services and EndpointSlices are applied to maps keyed
//! by `namespace/name`; slices are indexed by the Service their `kubernetes.io/service-name`
//! label names. An event marks what it can change: a Service or a slice marks its Service
//! (a slice relabelled marks both); a Node marks the nodes. [`Cluster::refresh`] recomputes
//! only what is marked, through [`model`]'s per-object functions, and returns the names whose
//! desired object changed: an endpoint change with 10,000 Services costs one Service, not
//! the cluster. The nodes decide every Service's endpoints only through where they are and
//! which are programmed ([`model::Placement`]); a Node change that leaves that as it was
//! (a status update, a new annotation on a node already programmed) recomputes no Service.
//! A relist (a watcher's `Init` .. `InitDone`) replaces a kind's map whole and marks every
//! Service. What was left out (and why) is kept per object, so a reason is reported once
//! while it holds, and forgotten with its object: memory follows the cluster, not its
//! history.
//!
//! Thread-safety: plain data, owned by the agent's loop.

use super::model::{self, Placement, Skipped};
use flowtable::state::{RemoteNodeSpec, ServiceSpec};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::Event;
use std::collections::{BTreeMap, BTreeSet};

/// One watch event of one of the three kinds (moved once, from a watcher to the loop: the
/// size of a Node is no cost worth a box).
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Watched {
    /// A Node's.
    Node(Event<Node>),
    /// A Service's.
    Service(Event<Service>),
    /// An EndpointSlice's.
    Slice(Event<EndpointSlice>),
}

/// What a [`Cluster::refresh`] found changed in the desired state.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changed {
    /// The other nodes' desired set changed.
    pub nodes: bool,
    /// Services whose desired object changed (created, changed or gone), by name.
    pub services: Vec<String>,
    /// Reasons for leaving an object out that were not there before (to report).
    pub skipped: Vec<Skipped>,
}

/// A kind's objects by name, and the relist being gathered.
#[derive(Debug)]
struct Objects<K> {
    by_name: BTreeMap<String, K>,
    relist: Option<BTreeMap<String, K>>,
    listed: bool,
}

impl<K> Default for Objects<K> {
    fn default() -> Self {
        Objects {
            by_name: BTreeMap::new(),
            relist: None,
            listed: false,
        }
    }
}

/// The cluster's objects and the desired state made of them.
#[derive(Debug)]
pub struct Cluster {
    this_node: String,
    nodes: Objects<Node>,
    services: Objects<Service>,
    slices: Objects<EndpointSlice>,
    /// Slice name -> the Service it is for.
    slice_service: BTreeMap<String, String>,
    /// Service name -> its slices' names.
    by_service: BTreeMap<String, BTreeSet<String>>,
    nodes_dirty: bool,
    all_dirty: bool,
    dirty: BTreeSet<String>,
    placement: Placement,
    want_nodes: BTreeMap<String, RemoteNodeSpec>,
    want_services: BTreeMap<String, ServiceSpec>,
    node_skips: Vec<Skipped>,
    service_skips: BTreeMap<String, Vec<Skipped>>,
}

fn name_of(m: &kube::api::ObjectMeta) -> String {
    model::object_name(m)
}

impl Cluster {
    /// An empty cluster, seen from the node named `this_node`.
    pub fn new(this_node: &str) -> Cluster {
        Cluster {
            this_node: this_node.to_string(),
            nodes: Objects::default(),
            services: Objects::default(),
            slices: Objects::default(),
            slice_service: BTreeMap::new(),
            by_service: BTreeMap::new(),
            nodes_dirty: true,
            all_dirty: true,
            dirty: BTreeSet::new(),
            placement: Placement::default(),
            want_nodes: BTreeMap::new(),
            want_services: BTreeMap::new(),
            node_skips: Vec::new(),
            service_skips: BTreeMap::new(),
        }
    }

    /// Every kind has been listed once (before that, a write would program a partial
    /// cluster).
    pub fn listed(&self) -> bool {
        self.nodes.listed && self.services.listed && self.slices.listed
    }

    /// The desired other nodes, by name.
    pub fn nodes(&self) -> &BTreeMap<String, RemoteNodeSpec> {
        &self.want_nodes
    }

    /// The desired Services, by name.
    pub fn services(&self) -> &BTreeMap<String, ServiceSpec> {
        &self.want_services
    }

    /// A Node the cluster holds.
    pub fn node_object(&self, name: &str) -> Option<&Node> {
        self.nodes.by_name.get(name)
    }

    /// A Service the cluster holds (`namespace/name`).
    pub fn service_object(&self, name: &str) -> Option<&Service> {
        self.services.by_name.get(name)
    }

    /// An EndpointSlice the cluster holds (`namespace/name`).
    pub fn slice_object(&self, name: &str) -> Option<&EndpointSlice> {
        self.slices.by_name.get(name)
    }

    /// Applies one watch event.
    pub fn apply(&mut self, ev: Watched) {
        match ev {
            Watched::Node(e) => {
                self.nodes_dirty = true;
                if let Some(map) = event(&mut self.nodes, e) {
                    self.nodes.by_name = map;
                }
            }
            Watched::Service(e) => {
                let name = match &e {
                    Event::Apply(s) | Event::Delete(s) => Some(name_of(&s.metadata)),
                    _ => None,
                };
                if let Some(map) = event(&mut self.services, e) {
                    self.services.by_name = map;
                    self.all_dirty = true;
                }
                if let Some(n) = name {
                    self.dirty.insert(n);
                }
            }
            Watched::Slice(e) => match e {
                Event::Apply(s) => {
                    let name = name_of(&s.metadata);
                    self.index_slice(&name, model::slice_service(&s));
                    self.slices.by_name.insert(name, s);
                }
                Event::Delete(s) => {
                    let name = name_of(&s.metadata);
                    self.index_slice(&name, None);
                    self.slices.by_name.remove(&name);
                }
                e => {
                    if let Some(map) = event(&mut self.slices, e) {
                        self.slices.by_name = map;
                        self.slice_service.clear();
                        self.by_service.clear();
                        let index: Vec<(String, Option<String>)> = self
                            .slices
                            .by_name
                            .iter()
                            .map(|(n, s)| (n.clone(), model::slice_service(s)))
                            .collect();
                        for (n, svc) in index {
                            self.index_slice(&n, svc);
                        }
                        self.all_dirty = true;
                    }
                }
            },
        }
    }

    /// Files slice `name` under Service `svc` (none: under no Service), marking the Service
    /// it leaves and the one it joins.
    fn index_slice(&mut self, name: &str, svc: Option<String>) {
        if let Some(old) = self.slice_service.remove(name) {
            if let Some(set) = self.by_service.get_mut(&old) {
                set.remove(name);
                if set.is_empty() {
                    self.by_service.remove(&old);
                }
            }
            self.dirty.insert(old);
        }
        if let Some(svc) = svc {
            self.by_service
                .entry(svc.clone())
                .or_default()
                .insert(name.to_string());
            self.slice_service.insert(name.to_string(), svc.clone());
            self.dirty.insert(svc);
        }
    }

    /// Recomputes what the events since the last refresh marked; returns what changed.
    pub fn refresh(&mut self) -> Changed {
        let mut out = Changed::default();
        if self.nodes_dirty {
            self.nodes_dirty = false;
            let (placement, specs, skips) =
                model::nodes(&self.this_node, self.nodes.by_name.values());
            let specs: BTreeMap<String, RemoteNodeSpec> =
                specs.into_iter().map(|n| (n.name.clone(), n)).collect();
            out.nodes = specs != self.want_nodes;
            self.want_nodes = specs;
            out.skipped.extend(
                skips
                    .iter()
                    .filter(|s| !self.node_skips.contains(s))
                    .cloned(),
            );
            self.node_skips = skips;
            if placement != self.placement {
                self.placement = placement;
                self.all_dirty = true;
            }
        }
        let names: Vec<String> = if self.all_dirty {
            self.all_dirty = false;
            self.dirty.clear();
            self.services
                .by_name
                .keys()
                .chain(self.want_services.keys())
                .chain(self.service_skips.keys())
                .cloned()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect()
        } else {
            std::mem::take(&mut self.dirty).into_iter().collect()
        };
        for name in names {
            let (want, skips) = self.compute(&name);
            let old = self.service_skips.remove(&name).unwrap_or_default();
            out.skipped
                .extend(skips.iter().filter(|s| !old.contains(s)).cloned());
            if !skips.is_empty() {
                self.service_skips.insert(name.clone(), skips);
            }
            let changed = match want {
                Some(s) => {
                    self.want_services.get(&name) != Some(&s) && {
                        self.want_services.insert(name.clone(), s);
                        true
                    }
                }
                None => self.want_services.remove(&name).is_some(),
            };
            if changed {
                out.services.push(name);
            }
        }
        out
    }

    /// Service `name`'s desired object, if any, and what of it was left out.
    fn compute(&self, name: &str) -> (Option<ServiceSpec>, Vec<Skipped>) {
        let Some(s) = self.services.by_name.get(name) else {
            return (None, Vec::new());
        };
        let slices: Vec<&EndpointSlice> = self
            .by_service
            .get(name)
            .into_iter()
            .flatten()
            .filter_map(|n| self.slices.by_name.get(n))
            .collect();
        match model::service(name, s, &slices, &self.placement) {
            Ok(Some((spec, left))) => (Some(spec), left),
            Ok(None) => (None, Vec::new()),
            Err(reason) => (
                None,
                vec![Skipped {
                    kind: "Service",
                    name: name.to_string(),
                    reason,
                }],
            ),
        }
    }
}

/// Applies a watch event to a kind's objects: returns the new map when a relist completed.
fn event<K: kube::Resource>(objs: &mut Objects<K>, ev: Event<K>) -> Option<BTreeMap<String, K>> {
    match ev {
        Event::Apply(o) => {
            objs.by_name.insert(name_of(o.meta()), o);
            None
        }
        Event::Delete(o) => {
            objs.by_name.remove(&name_of(o.meta()));
            None
        }
        Event::Init => {
            objs.relist = Some(BTreeMap::new());
            None
        }
        Event::InitApply(o) => {
            objs.relist
                .get_or_insert_with(BTreeMap::new)
                .insert(name_of(o.meta()), o);
            None
        }
        Event::InitDone => {
            objs.listed = true;
            Some(objs.relist.take().unwrap_or_default())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn node(name: &str, cidr: Option<&str>) -> Node {
        let mut n = json!({
            "metadata": {"name": name,
                         "annotations": {"nodeswitch.io/vtep-mac": "02:00:00:00:ff:02"}},
            "spec": {},
            "status": {"addresses": [{"type": "InternalIP", "address": "198.18.0.2"}]}
        });
        if let Some(c) = cidr {
            n["spec"] = json!({"podCIDR": c});
        }
        serde_json::from_value(n).unwrap()
    }

    fn service(name: &str, ip: &str) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80}]}
        }))
        .unwrap()
    }

    fn slice(name: &str, svc: &str, ips: &[&str]) -> EndpointSlice {
        let eps: Vec<Value> = ips.iter().map(|ip| json!({"addresses": [ip]})).collect();
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns",
                         "labels": {"kubernetes.io/service-name": svc}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": eps
        }))
        .unwrap()
    }

    /// A listed cluster: node1 (this one), node2 with 10.244.2.0/24, Services a, b, c with a
    /// slice each (an endpoint on node2, found by its pod CIDR).
    fn cluster() -> Cluster {
        let mut c = Cluster::new("node1");
        c.apply(Watched::Node(Event::Init));
        c.apply(Watched::Node(Event::InitApply(node(
            "node1",
            Some("10.244.1.0/24"),
        ))));
        c.apply(Watched::Node(Event::InitApply(node(
            "node2",
            Some("10.244.2.0/24"),
        ))));
        c.apply(Watched::Node(Event::InitDone));
        c.apply(Watched::Service(Event::Init));
        c.apply(Watched::Slice(Event::Init));
        for (i, n) in ["a", "b", "c"].iter().enumerate() {
            let ip = format!("10.96.0.{}", i + 1);
            c.apply(Watched::Service(Event::InitApply(service(n, &ip))));
            let ep = format!("10.244.2.{}", i + 1);
            c.apply(Watched::Slice(Event::InitApply(slice(
                &format!("{n}-1"),
                n,
                &[&ep],
            ))));
        }
        assert!(!c.listed(), "slices and Services still listing");
        c.apply(Watched::Service(Event::InitDone));
        c.apply(Watched::Slice(Event::InitDone));
        assert!(c.listed());
        let first = c.refresh();
        assert!(first.nodes);
        assert_eq!(first.services, ["ns/a", "ns/b", "ns/c"]);
        c
    }

    #[test]
    fn a_slice_change_recomputes_its_service_only() {
        let mut c = cluster();
        assert_eq!(
            c.refresh(),
            Changed::default(),
            "nothing new, nothing changed"
        );
        c.apply(Watched::Slice(Event::Apply(slice(
            "b-1",
            "b",
            &["10.244.2.2", "10.244.2.9"],
        ))));
        let ch = c.refresh();
        assert_eq!((ch.nodes, ch.services), (false, vec!["ns/b".to_string()]));
        assert_eq!(c.services()["ns/b"].endpoints.len(), 2);
        // The same slice again (a resync of the controller): marked, but not changed.
        c.apply(Watched::Slice(Event::Apply(slice(
            "b-1",
            "b",
            &["10.244.2.2", "10.244.2.9"],
        ))));
        assert!(c.refresh().services.is_empty());
    }

    #[test]
    fn a_relabelled_slice_moves_between_services_and_a_deleted_one_leaves() {
        let mut c = cluster();
        c.apply(Watched::Slice(Event::Apply(slice(
            "a-1",
            "c",
            &["10.244.2.1"],
        ))));
        assert_eq!(c.refresh().services, ["ns/a", "ns/c"]);
        assert!(c.services()["ns/a"].endpoints.is_empty());
        assert_eq!(c.services()["ns/c"].endpoints.len(), 2);
        c.apply(Watched::Slice(Event::Delete(slice("a-1", "c", &[]))));
        assert_eq!(c.refresh().services, ["ns/c"]);
        assert_eq!(c.services()["ns/c"].endpoints.len(), 1);
    }

    #[test]
    fn a_node_update_recomputes_services_only_when_it_moves_endpoints() {
        let mut c = cluster();
        // A status update (another condition, the same addresses and CIDR): nothing.
        let mut n2 = node("node2", Some("10.244.2.0/24"));
        n2.metadata.labels = Some([("x".to_string(), "y".to_string())].into());
        c.apply(Watched::Node(Event::Apply(n2)));
        assert_eq!(c.refresh(), Changed::default());
        // node2 loses its pod CIDR: it is left out (reported once), and so are the
        // endpoints it held.
        c.apply(Watched::Node(Event::Apply(node("node2", None))));
        let ch = c.refresh();
        assert!(ch.nodes && c.nodes().is_empty());
        assert_eq!(ch.services, ["ns/a", "ns/b", "ns/c"]);
        assert!(ch
            .skipped
            .iter()
            .any(|s| s.kind == "Node" && s.reason.contains("pod CIDR")));
        c.apply(Watched::Node(Event::Apply(node("node2", None))));
        assert!(c.refresh().skipped.is_empty(), "a reason is reported once");
        // It appears again: programmed, and the Services get their endpoints back.
        c.apply(Watched::Node(Event::Apply(node(
            "node2",
            Some("10.244.2.0/24"),
        ))));
        let ch = c.refresh();
        assert!(ch.nodes);
        assert_eq!(ch.services.len(), 3);
        assert_eq!(c.services()["ns/a"].endpoints[0].node, "node2");
    }

    #[test]
    fn a_relist_forgets_what_the_server_no_longer_has() {
        let mut c = cluster();
        c.apply(Watched::Service(Event::Init));
        c.apply(Watched::Service(Event::InitApply(service(
            "a",
            "10.96.0.1",
        ))));
        c.apply(Watched::Service(Event::InitApply(service("v6", "fd00::1"))));
        c.apply(Watched::Service(Event::InitDone));
        let ch = c.refresh();
        assert_eq!(ch.services, ["ns/b", "ns/c"]);
        assert_eq!(c.services().keys().collect::<Vec<_>>(), ["ns/a"]);
        assert_eq!(ch.skipped.len(), 1, "{:?}", ch.skipped);
        assert!(ch.skipped[0].reason.contains("IPv6"));
        // Its reason is kept while it holds, and dropped with the Service.
        c.apply(Watched::Service(Event::Delete(service("v6", "fd00::1"))));
        c.refresh();
        assert!(c.service_skips.is_empty());
    }
}
