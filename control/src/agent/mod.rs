//! nodeswitch-agent's logic: the Kubernetes API's Nodes, Services and EndpointSlices turned
//! into what this node's switchd programs, as kube-proxy and Flannel's daemon do for theirs.
//!
//! Design: [`model`] is a pure function from the cluster's objects (k8s-openapi's types, the
//! shapes the API server emits) to the agent's desired objects (other nodes, Services with
//! their endpoints), owned by `agent`, plus the objects it left out and why; it does no I/O
//! and is tested in memory. [`cluster`] holds the objects and keeps the desired state up to
//! date one object at a time (with [`model`]'s per-object functions). [`sync`] watches the API server and keeps switchd in step.
//! Thread-safety: the model is plain data; the loop is one task (see [`sync`]).

pub mod cluster;
pub mod health;
pub mod model;
pub mod nodeconfig;
pub mod sync;
