//! The control API end to end over its Unix socket: a real tonic server and client, an
//! in-process dataplane (snapshot cell, pipelines on threads), no root needed.
#![allow(missing_docs)]

mod common;

use common::{certificates, Fixture, STATE};
use control::client::{connect, spawn_unix};
use control::pb::switch_service_client::SwitchServiceClient as SwitchClient;
use control::pb::{self, change::Change as C};
use etherparse::{NetSlice, PacketBuilder, SlicedPacket};
use flowtable::conntrack::{Conntrack, Timeouts};
use flowtable::packet::{Packet, PortId, DEFAULT_HEADROOM};
use flowtable::pipeline::{Pipeline, Verdict, BATCH_SIZE};
use flowtable::state::StateFile;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tonic::Code;

/// The state as the switch keeps it: Services by name.
fn sorted(mut s: StateFile) -> StateFile {
    s.services.sort_by(|a, b| a.name.cmp(&b.name));
    s
}

fn change(c: C) -> pb::Change {
    pb::Change { change: Some(c) }
}

fn pod(name: &str, ip: &str, mac: &str, port: &str) -> pb::Pod {
    pb::Pod {
        owner: "config".into(),
        name: name.into(),
        ip: ip.into(),
        mac: mac.into(),
        port: port.into(),
    }
}

fn node(name: &str, ip: &str, cidr: &str) -> pb::Node {
    pb::Node {
        owner: "config".into(),
        name: name.into(),
        ip: ip.into(),
        pod_cidr: cidr.into(),
        vtep_mac: "02:00:00:00:ff:09".into(),
        mac: "02:00:c6:12:00:09".into(),
    }
}

fn ep(ip: &str, node: &str) -> pb::Endpoint {
    pb::Endpoint {
        ip: ip.into(),
        node: node.into(),
        ..Default::default()
    }
}

fn service(name: &str, ip: &str, port: u32, eps: Vec<pb::Endpoint>) -> pb::Service {
    pb::Service {
        name: name.into(),
        cluster_ip: ip.into(),
        ports: vec![pb::ServicePort {
            name: "http".into(),
            protocol: "TCP".into(),
            port,
            target_port: 8080,
            node_port: 0,
        }],
        endpoints: eps,
        owner: "config".into(),
        ..Default::default()
    }
}

#[test]
fn every_object_round_trips() {
    let f = Fixture::new();
    let mut c = f.client();
    f.rt.block_on(async {
        let g0 = c
            .version(pb::VersionRequest {})
            .await
            .unwrap()
            .into_inner()
            .generation;

        let n = node("node3", "198.18.0.3", "10.244.3.0/24");
        let r = c
            .upsert_node(pb::UpsertNodeRequest {
                node: Some(n.clone()),
            })
            .await
            .unwrap()
            .into_inner()
            .result
            .unwrap();
        assert!(r.changed && r.generation == g0 + 1, "{r:?}");
        assert_eq!(r.changes[0].action, "created");
        let got = c
            .list_nodes(pb::ListNodesRequest {
                name: "node3".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got.nodes, vec![n.clone()]);
        assert_eq!(
            got.generation,
            g0 + 1,
            "a reply names the generation it describes"
        );

        let p = pod("default/pod-x", "10.244.1.9", "02:00:0a:f4:01:09", "veth-x");
        c.upsert_pod(pb::UpsertPodRequest {
            pod: Some(p.clone()),
        })
        .await
        .unwrap();
        let got = c
            .list_pods(pb::ListPodsRequest {
                name: p.name.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got.pods, vec![p.clone()]);

        let s = service(
            "default/api",
            "10.96.0.77",
            443,
            vec![ep("10.244.3.5", "node3"), ep("10.244.1.9", "node1")],
        );
        c.upsert_service(pb::UpsertServiceRequest {
            service: Some(s.clone()),
        })
        .await
        .unwrap();
        let got = c
            .list_services(pb::ListServicesRequest {
                name: s.name.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        let info = &got.services[0];
        let back = info.service.clone().unwrap();
        assert_eq!(back.name, s.name);
        assert_eq!(back.cluster_ip, s.cluster_ip);
        assert_eq!(back.ports, s.ports);
        assert_eq!(back.endpoints.len(), 2);
        // The Maglev distribution: every entry owned, each backend about half.
        let shares = &info.ports[0].cluster;
        assert_eq!(shares.len(), 2);
        let total: u32 = shares.iter().map(|b| b.entries).sum();
        assert_eq!(total, info.ports[0].table_size);
        assert!(
            shares.iter().all(|b| (b.percent - 50.0).abs() < 2.0),
            "{shares:?}"
        );

        let r = c
            .set_endpoints(pb::SetEndpointsRequest {
                service: s.name.clone(),
                endpoints: vec![
                    pb::Endpoint {
                        ready: Some(false),
                        ..ep("10.244.3.5", "node3")
                    },
                    // The address as a number (what switchctl and the agent send); replies
                    // give it as text.
                    pb::Endpoint {
                        ipv4: 0x0af4_0306,
                        ..ep("", "node3")
                    },
                ],
            })
            .await
            .unwrap()
            .into_inner()
            .result
            .unwrap();
        assert_eq!(r.changes[0].action, "configured");
        let eps = c
            .list_endpoints(pb::ListEndpointsRequest {
                name: s.name.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        let usable: Vec<(String, bool)> = eps
            .endpoints
            .iter()
            .map(|e| (e.endpoint.as_ref().unwrap().ip.clone(), e.usable))
            .collect();
        assert_eq!(
            usable,
            vec![("10.244.3.5".into(), false), ("10.244.3.6".into(), true)]
        );

        // GetState and Replace speak the same schema: replacing with it changes nothing.
        let state = c
            .get_state(pb::GetStateRequest::default())
            .await
            .unwrap()
            .into_inner()
            .state
            .unwrap();
        let r = c
            .replace(pb::ReplaceRequest {
                owner: String::new(),
                state: Some(state),
                dry_run: false,
            })
            .await
            .unwrap()
            .into_inner()
            .result
            .unwrap();
        assert!(!r.changed && r.changes.is_empty(), "{r:?}");

        for (kind, name) in [("service", &s.name), ("pod", &p.name), ("node", &n.name)] {
            let name = name.clone();
            let r = match kind {
                "service" => c
                    .delete_service(pb::DeleteServiceRequest { name })
                    .await
                    .map(|r| r.into_inner().result),
                "pod" => c
                    .delete_pod(pb::DeletePodRequest { name })
                    .await
                    .map(|r| r.into_inner().result),
                _ => c
                    .delete_node(pb::DeleteNodeRequest { name })
                    .await
                    .map(|r| r.into_inner().result),
            }
            .unwrap()
            .unwrap();
            assert_eq!(
                (r.changes[0].kind.as_str(), r.changes[0].action.as_str()),
                (kind, "deleted")
            );
        }
        let e = c
            .list_pods(pb::ListPodsRequest {
                name: p.name.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
        let e = c
            .delete_pod(pb::DeletePodRequest {
                name: p.name.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
        assert!(
            e.message().contains("there is no pod 'default/pod-x'"),
            "{}",
            e.message()
        );
    });
    assert_eq!(
        f.ctl.state().unwrap(),
        sorted(StateFile::parse(STATE).unwrap())
    );
}

/// Every validation error: the code, and a message with the field and the reason.
#[test]
fn invalid_changes_are_refused_with_field_and_reason() {
    let f = Fixture::new();
    let mut c = f.client();
    let good = || pod("default/pod-x", "10.244.1.9", "02:00:0a:f4:01:09", "veth-x");
    let cases: Vec<(pb::Change, &str)> = vec![
        (change(C::UpsertNode(node("n3", "198.18.0.3", "10.244.3.0/33"))), "changes[0].upsert_node.pod_cidr: "),
        (change(C::UpsertNode(node("n3", "198.18.0.3", "10.244.3.1/24"))), "host bits"),
        (change(C::UpsertNode(node("n3", "198.18.0.3", "10.244.2.128/25"))), "nodes[n3].pod_cidr: 10.244.2.128/25 overlaps nodes[node2].pod_cidr"),
        (change(C::UpsertNode(node("n3", "198.18.0.3", "10.244.0.0/16"))), "overlaps this node's pod CIDR"),
        (change(C::UpsertNode(node("n3", "198.18.0.2", "10.244.3.0/24"))), "nodes[n3].ip: 198.18.0.2 is also the address of nodes[node2]"),
        (change(C::UpsertNode(node("node1", "198.18.0.3", "10.244.3.0/24"))), "nodes[node1].name: 'node1' is also the name of this node"),
        (change(C::UpsertNode(node("n3", "198.18.0.3", "0.0.0.0/0"))), "nodes[n3].pod_cidr: 0.0.0.0/0 overlaps"),
        (change(C::UpsertNode(pb::Node { vtep_mac: "ff:ff:ff:ff:ff:ff".into(), ..node("n3", "198.18.0.3", "10.244.3.0/24") })), "nodes[n3].vtep_mac: ff:ff:ff:ff:ff:ff is not a unicast MAC address"),
        (change(C::UpsertNode(node("n3", "198.18.0", "10.244.3.0/24"))), "changes[0].upsert_node.ip: '198.18.0' is not an IPv4 address"),
        (change(C::UpsertPod(pb::Pod { ip: "10.244.1.2".into(), ..good() })), "pods[default/pod-x].ip: 10.244.1.2 is also the address of pods[default/pod-a]"),
        (change(C::UpsertPod(pb::Pod { ip: "10.244.2.9".into(), ..good() })), "pods[default/pod-x].ip: 10.244.2.9 is outside the node's pod CIDR"),
        (change(C::UpsertPod(pb::Pod { mac: "02:00:0a:f4:01:02".into(), ..good() })), "pods[default/pod-x].mac: 02:00:0a:f4:01:02 is also the MAC of pods[default/pod-a]"),
        (change(C::UpsertPod(pb::Pod { mac: "zz".into(), ..good() })), "changes[0].upsert_pod.mac: "),
        (change(C::UpsertPod(pb::Pod { port: "veth-a".into(), ..good() })), "pods[default/pod-x].port: 'veth-a' is already used by pods[default/pod-a]"),
        (change(C::UpsertPod(pb::Pod { port: "a name way too long".into(), ..good() })), "pods[default/pod-x].port: 'a name way too long' is not a usable interface name"),
        (change(C::UpsertPod(pb::Pod { port: "lo".into(), ..good() })), "pods[default/pod-x].port: 'lo' cannot be a switch port"),
        (change(C::UpsertPod(pb::Pod { name: "default/pod\nx".into(), ..good() })), "pods['default/pod\\nx'].name: name 'pod\\nx' is not a DNS-1123 subdomain"),
        (change(C::UpsertPod(pb::Pod { name: "pod-x".into(), ..good() })), "'pod-x' is not namespace/name"),
        (change(C::UpsertService(pb::Service { ports: vec![pb::ServicePort { name: "x".repeat(100_000), port: 80, ..Default::default() }], ..service("default/x", "10.97.0.1", 80, vec![]) })), "services[default/x].ports[0].name: 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'... (100000 characters) is not an IANA service name"),
        (change(C::UpsertService(service("default/X", "10.97.0.1", 80, vec![]))), "services['default/X'].name: name 'X' is not a DNS-1035 label"),
        (change(C::UpsertPod(pb::Pod { name: "".into(), ..good() })), "changes[0].upsert_pod.name: is required"),
        (change(C::UpsertService(service("default/x", "10.97.0.1", 70000, vec![]))), "changes[0].upsert_service.ports[0].port: 70000 is outside 1..=65535"),
        (change(C::UpsertService(service("default/x", "10.97.0.1", 0, vec![]))), "changes[0].upsert_service.ports[0].port: 0 is outside 1..=65535"),
        (change(C::UpsertService(pb::Service { ports: vec![pb::ServicePort { protocol: "ICMP".into(), port: 80, ..Default::default() }], ..service("default/x", "10.97.0.1", 80, vec![]) })), "changes[0].upsert_service.ports[0].protocol: unknown protocol 'ICMP' (TCP, UDP or SCTP)"),
        (change(C::UpsertService(pb::Service { ports: vec![pb::ServicePort { port: 80, node_port: 80, ..Default::default() }], ..service("default/x", "10.97.0.1", 80, vec![]) })), "services[default/x].ports[0].node_port: 80 is outside the NodePort range 30000-32767"),
        (change(C::UpsertService(service("default/x", "10.97.0.1", 80, vec![ep("10.244.7.1", "node7")]))), "services[default/x].endpoints[0].node: 'node7' is not this node nor a known node"),
        (change(C::UpsertService(service("default/x", "10.97.0.1", 80, vec![ep("10.244.1.5", "node2")]))), "services[default/x].endpoints[0].ip: 10.244.1.5 is neither in the pod CIDR 10.244.2.0/24 of node node2 nor that node's IP"),
        (change(C::UpsertService(service("default/x", "10.97.0.1", 80, vec![ep("10.244.2.5", "node2"), ep("10.244.2.5", "node2")]))), "services[default/x].endpoints[1].ip: 10.244.2.5 is also endpoints[0]"),
        (change(C::UpsertService(service("default/x", "10.97.0.1", 80, vec![pb::Endpoint { ipv4: 0x0af4_0205, ..ep("10.244.2.5", "node2") }]))), "changes[0].upsert_service.endpoints[0].ipv4: is set beside ip: give one of them"),
        (change(C::UpsertService(service("default/x", "10.244.1.50", 80, vec![]))), "services[default/x].cluster_ip: 10.244.1.50 is outside the Service CIDR 10.96.0.0/12"),
        (change(C::UpsertService(service("default/x", "10.96.0.10", 80, vec![]))), "services[default/x].ports[0].port: 10.96.0.10:80/TCP is already served by Service default/web"),
        (change(C::UpsertService(pb::Service { session_affinity: "Sticky".into(), ..service("default/x", "10.97.0.1", 80, vec![]) })), "changes[0].upsert_service.session_affinity: unknown session affinity 'Sticky'"),
        (change(C::UpsertService(pb::Service { health_check_node_port: 70000, external_traffic_policy: "Local".into(), ..service("default/x", "10.97.0.1", 80, vec![]) })), "changes[0].upsert_service.health_check_node_port: 70000 is outside 1..=65535"),
        (change(C::UpsertService(pb::Service { health_check_node_port: 32000, ..service("default/x", "10.97.0.1", 80, vec![]) })), "services[default/x].health_check_node_port: needs external_traffic_policy = \"Local\""),
        (change(C::UpsertService(pb::Service { external_traffic_policy: "Nearest".into(), ..service("default/x", "10.97.0.1", 80, vec![]) })), "changes[0].upsert_service.external_traffic_policy: unknown traffic policy 'Nearest'"),
        (change(C::UpsertService(pb::Service { load_balancer_ips: vec!["198.18.0.2".into()], ..service("default/x", "10.97.0.1", 80, vec![]) })), "services[default/x].load_balancer_ips[0]: 198.18.0.2 is a node's address"),
        (change(C::SetEndpoints(pb::SetEndpointsRequest { service: "default/web".into(), endpoints: vec![ep("10.244.2.5", "")] })), "changes[0].set_endpoints.endpoints[0].node: is required"),
        (pb::Change { change: None }, "changes[0]: is empty"),
    ];
    let g0 = f.generation();
    f.rt.block_on(async {
        for (ch, want) in cases {
            let e = c
                .apply(pb::ApplyRequest {
                    changes: vec![ch.clone()],
                    dry_run: false,
                })
                .await
                .expect_err(want);
            assert_eq!(e.code(), Code::InvalidArgument, "{want}: {}", e.message());
            assert!(
                e.message().contains(want),
                "message {:?} should contain {want:?}",
                e.message()
            );
            assert!(
                e.message().len() < 600,
                "a bounded message: {}",
                e.message().len()
            );
        }
        for (ch, want) in [
            (
                change(C::DeletePod("nope".into())),
                "changes[0]: there is no pod 'nope'",
            ),
            (
                change(C::DeleteNode("nope".into())),
                "changes[0]: there is no node 'nope'",
            ),
            (
                change(C::DeleteService("nope".into())),
                "changes[0]: there is no Service 'nope'",
            ),
            (
                change(C::SetEndpoints(pb::SetEndpointsRequest {
                    service: "nope".into(),
                    endpoints: vec![],
                })),
                "changes[0]: there is no Service 'nope'",
            ),
        ] {
            let e = c
                .apply(pb::ApplyRequest {
                    changes: vec![ch],
                    dry_run: false,
                })
                .await
                .unwrap_err();
            assert_eq!((e.code(), e.message()), (Code::NotFound, want));
        }
        // The one-object shorthands are checked as the same change in a batch.
        let e = c
            .delete_pod(pb::DeletePodRequest { name: "".into() })
            .await
            .unwrap_err();
        assert_eq!(
            (e.code(), e.message()),
            (Code::InvalidArgument, "request.delete_pod: is required")
        );
        let e = c
            .upsert_pod(pb::UpsertPodRequest {
                pod: Some(pb::Pod {
                    ip: "10.244.1.2".into(),
                    ..good()
                }),
            })
            .await
            .unwrap_err();
        assert!(
            e.message().contains(
                "pods[default/pod-x].ip: 10.244.1.2 is also the address of pods[default/pod-a]"
            ),
            "{}",
            e.message()
        );
        // Deleting a node that endpoints still name.
        let e = c
            .delete_node(pb::DeleteNodeRequest {
                name: "node2".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(
            e.message()
                .contains("endpoints[1].node: 'node2' is not this node nor a known node"),
            "{}",
            e.message()
        );
        // A state without its node.
        let e = c
            .replace(pb::ReplaceRequest {
                owner: String::new(),
                state: Some(pb::State::default()),
                dry_run: false,
            })
            .await
            .unwrap_err();
        assert_eq!(
            (e.code(), e.message()),
            (Code::InvalidArgument, "state.node: is required")
        );
    });
    assert_eq!(f.generation(), g0, "nothing refused was published");
    assert_eq!(
        f.ctl.state().unwrap(),
        sorted(StateFile::parse(STATE).unwrap())
    );
}

#[test]
fn a_failing_batch_changes_nothing() {
    let f = Fixture::new();
    let mut c = f.client();
    let before = f.ctl.state().unwrap();
    let g0 = f.generation();
    let tables = Arc::clone(&f.ctl.plane().cell.load().services);
    f.rt.block_on(async {
        let batch = vec![
            change(C::UpsertNode(node("node3", "198.18.0.3", "10.244.3.0/24"))),
            change(C::UpsertPod(pod(
                "default/pod-x",
                "10.244.1.9",
                "02:00:0a:f4:01:09",
                "veth-x",
            ))),
            change(C::DeleteService("default/sticky".into())),
            change(C::UpsertService(service(
                "default/new",
                "10.96.5.5",
                80,
                vec![ep("10.244.3.4", "node3")],
            ))),
            // The fifth is wrong: the four before it must not be applied either.
            change(C::UpsertService(service(
                "default/bad",
                "10.96.5.6",
                80,
                vec![ep("10.244.9.4", "node9")],
            ))),
        ];
        let e = c
            .apply(pb::ApplyRequest {
                changes: batch.clone(),
                dry_run: false,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(
            e.message()
                .starts_with("services[default/bad].endpoints[0].node"),
            "{}",
            e.message()
        );
        assert_eq!(f.ctl.state().unwrap(), before);
        assert_eq!(f.generation(), g0);
        assert!(Arc::ptr_eq(&tables, &f.ctl.plane().cell.load().services));

        // Without the bad one it applies whole, as one generation; a dry run first changes nothing.
        let good = batch[..4].to_vec();
        let r = c
            .apply(pb::ApplyRequest {
                changes: good.clone(),
                dry_run: true,
            })
            .await
            .unwrap()
            .into_inner()
            .result
            .unwrap();
        assert!(r.dry_run && r.changed && r.changes.len() == 4, "{r:?}");
        assert_eq!(f.generation(), g0);
        let r = c
            .apply(pb::ApplyRequest {
                changes: good,
                dry_run: false,
            })
            .await
            .unwrap()
            .into_inner()
            .result
            .unwrap();
        assert_eq!(r.generation, g0 + 1);
        let mut actions: Vec<String> = r
            .changes
            .iter()
            .map(|c| format!("{} {} {}", c.kind, c.name, c.action))
            .collect();
        actions.sort();
        assert_eq!(
            actions,
            vec![
                "node node3 created",
                "pod default/pod-x created",
                "service default/new created",
                "service default/sticky deleted",
            ]
        );
    });
}

#[test]
fn replace_is_idempotent_and_changes_only_what_differs() {
    let f = Fixture::new();
    let mut c = f.client();
    let state = StateFile::parse(STATE).unwrap();
    let snap0 = f.ctl.plane().cell.load();
    f.rt.block_on(async {
        for _ in 0..3 {
            let r = c
                .replace(pb::ReplaceRequest {
                    owner: String::new(),
                    state: Some(control::convert::state_pb(&state, 0)),
                    dry_run: false,
                })
                .await
                .unwrap()
                .into_inner()
                .result
                .unwrap();
            assert!(!r.changed, "{r:?}");
            assert_eq!(r.generation, snap0.generation);
        }
        // Nothing was published: the workers keep the very same snapshot (no churn).
        assert!(Arc::ptr_eq(&snap0, &f.ctl.plane().cell.load()));

        // One endpoint differs: one Service changes, every other Service's tables are shared.
        let mut next = state.clone();
        next.services[0].endpoints[1].ready = false;
        let r = c
            .replace(pb::ReplaceRequest {
                owner: String::new(),
                state: Some(control::convert::state_pb(&next, 0)),
                dry_run: false,
            })
            .await
            .unwrap()
            .into_inner()
            .result
            .unwrap();
        assert_eq!(r.changes.len(), 1, "{r:?}");
        assert_eq!(
            (r.changes[0].name.as_str(), r.changes[0].action.as_str()),
            ("default/web", "configured")
        );
        assert_eq!(
            r.unchanged as usize,
            state.services.len() - 1 + state.pods.len() + state.nodes.len()
        );
        let snap1 = f.ctl.plane().cell.load();
        let t0 = &snap0.services;
        let t1 = &snap1.services;
        for s in t0.iter().filter(|s| s.name != "default/web") {
            for &p in &s.ports {
                let a = t0.ports.get(p as usize).unwrap();
                let b = t1.ports.get(p as usize).unwrap();
                assert!(std::ptr::eq(a, b), "{} was rebuilt", s.name);
            }
        }
    });
}

#[test]
fn a_controller_can_go_away_and_come_back() {
    let mut f = Fixture::new();
    let n = node("node3", "198.18.0.3", "10.244.3.0/24");
    {
        let mut c = f.client();
        f.rt.block_on(c.upsert_node(pb::UpsertNodeRequest {
            node: Some(n.clone()),
        }))
        .unwrap();
        // A watcher left open when the client goes.
        let mut stream =
            f.rt.block_on(c.watch_stats(pb::WatchStatsRequest {
                interval_ms: 10,
                count: 0,
            }))
            .unwrap()
            .into_inner();
        let s = f.rt.block_on(stream.message()).unwrap().unwrap();
        assert_eq!(s.stats.unwrap().node, "node1");
    }
    // A new controller sees the state the old one left, and can change it.
    let mut c = f.client();
    let got =
        f.rt.block_on(c.list_nodes(pb::ListNodesRequest::default()))
            .unwrap()
            .into_inner();
    assert!(got.nodes.contains(&n));
    let g = f.generation();
    let r =
        f.rt.block_on(c.delete_node(pb::DeleteNodeRequest {
            name: "node3".into(),
        }))
        .unwrap()
        .into_inner()
        .result
        .unwrap();
    assert_eq!(r.generation, g + 1);
    // With the server gone, the dataplane keeps the last state.
    f.server.take();
    assert!(
        f.rt.block_on(connect(&f.path)).is_err(),
        "the socket is gone"
    );
    assert_eq!(f.generation(), g + 1);
    // Counting streams end when asked to.
    let server = spawn_unix(Arc::clone(&f.ctl), &f.path).unwrap();
    let mut c = f.client();
    let mut stream =
        f.rt.block_on(c.watch_stats(pb::WatchStatsRequest {
            interval_ms: 10,
            count: 3,
        }))
        .unwrap()
        .into_inner();
    let mut k = 0;
    while f.rt.block_on(stream.message()).unwrap().is_some() {
        k += 1;
    }
    assert_eq!(k, 3);
    drop(server);
}

#[test]
fn a_second_server_on_the_socket_is_refused_and_the_socket_is_root_only() {
    use std::os::unix::fs::PermissionsExt;
    let f = Fixture::new();
    let mode = std::fs::metadata(&f.path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let e = spawn_unix(Arc::clone(&f.ctl), &f.path)
        .err()
        .expect("in use");
    assert!(
        e.to_string().contains("another switchd is listening"),
        "{e}"
    );
}

/// Builds a TCP SYN from pod-a (10.244.1.2, port 1) to `vip:80`.
fn syn(vip: Ipv4Addr, sport: u16) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2([2, 0, 10, 244, 1, 2], [2, 0, 10, 244, 1, 1])
        .ipv4([10, 244, 1, 2], vip.octets(), 64)
        .tcp(sport, 80, 1, 64240)
        .syn()
        .write(&mut v, &[])
        .unwrap();
    v
}

fn inner_dst(frame: &[u8]) -> Ipv4Addr {
    // Remote backends: VXLAN (outer Ethernet/IP/UDP + 8), then the inner frame.
    let p = SlicedPacket::from_ethernet(frame).unwrap();
    let inner = match p.transport {
        Some(etherparse::TransportSlice::Udp(u)) if u.destination_port() == 8472 => {
            SlicedPacket::from_ethernet(&u.payload()[8..]).unwrap()
        }
        _ => p,
    };
    match inner.net {
        Some(NetSlice::Ipv4(i)) => i.header().destination_addr(),
        _ => panic!("not IPv4"),
    }
}

/// Changes through the API while pipelines run on other threads: every batch is decided by
/// one whole generation (both Services' backends always from the same change), and every
/// frame is forwarded.
#[test]
fn concurrent_changes_never_tear_a_batch() {
    let f = Fixture::new();
    let mut c = f.client();
    let a = Ipv4Addr::new(10, 96, 1, 1);
    let b = Ipv4Addr::new(10, 96, 1, 2);
    let backend = |k: u64| format!("10.244.2.{}", 10 + k % 200);
    let batch = |k: u64| pb::ApplyRequest {
        changes: vec![
            change(C::UpsertService(service(
                "t/a",
                "10.96.1.1",
                80,
                vec![ep(&backend(k), "node2")],
            ))),
            change(C::UpsertService(service(
                "t/b",
                "10.96.1.2",
                80,
                vec![ep(&backend(k), "node2")],
            ))),
        ],
        dry_run: false,
    };
    f.rt.block_on(c.apply(batch(0))).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let frames = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..2)
        .map(|w| {
            let mut reader = f.ctl.plane().cell.reader();
            let stop = Arc::clone(&stop);
            let frames = Arc::clone(&frames);
            std::thread::spawn(move || {
                let fresh = || {
                    Pipeline::with_conntrack(Arc::new(Conntrack::new(1 << 17, Timeouts::default())))
                };
                let mut pipeline = fresh();
                let mut bufs = vec![[0u8; 2048]; BATCH_SIZE];
                let mut sport = 1024u16 + w * 30000;
                let mut seen = std::collections::BTreeSet::new();
                let mut rounds = 0u64;
                while !stop.load(Ordering::Relaxed) || rounds < 10 {
                    rounds += 1;
                    let snap = Arc::clone(reader.load());
                    let expect = snap
                        .services
                        .service("t/a")
                        .and_then(|s| snap.services.ports.get(s.ports[0] as usize))
                        .map(|p| p.backends[0].ip)
                        .unwrap();
                    let frames_in: Vec<Vec<u8>> = (0..BATCH_SIZE)
                        .map(|i| {
                            sport = if sport >= 60000 { 1024 } else { sport + 1 };
                            syn(if i % 2 == 0 { a } else { b }, sport)
                        })
                        .collect();
                    if sport < 1100 {
                        pipeline = fresh(); // fresh flows, not conntrack hits
                    }
                    let mut it = bufs.iter_mut().zip(&frames_in);
                    let mut pkts: Vec<Packet<'_>> = (0..BATCH_SIZE)
                        .map(|_| {
                            let (buf, fr) = it.next().unwrap();
                            buf[DEFAULT_HEADROOM..DEFAULT_HEADROOM + fr.len()].copy_from_slice(fr);
                            Packet::new(buf, DEFAULT_HEADROOM, fr.len(), PortId(1)).unwrap()
                        })
                        .collect();
                    let mut verdicts = [Verdict::default(); BATCH_SIZE];
                    pipeline.process(&snap, &mut pkts, &mut verdicts);
                    for (p, v) in pkts.iter().zip(verdicts) {
                        assert_eq!(
                            v,
                            Verdict::Transmit(PortId::UPLINK),
                            "generation {}",
                            snap.generation
                        );
                        assert_eq!(
                            inner_dst(p.data()),
                            expect,
                            "a frame of generation {} went elsewhere",
                            snap.generation
                        );
                    }
                    seen.insert(snap.generation);
                    frames.fetch_add(BATCH_SIZE as u64, Ordering::Relaxed);
                }
                assert_eq!(pipeline.counters().total_drops(), 0);
                seen.len()
            })
        })
        .collect();
    let g0 = f.generation();
    let changes = 300u64;
    for k in 1..=changes {
        let r =
            f.rt.block_on(c.apply(batch(k)))
                .unwrap()
                .into_inner()
                .result
                .unwrap();
        assert_eq!(r.generation, g0 + k);
        // Programmed means every pipeline thread has loaded it.
        assert!(f
            .ctl
            .plane()
            .cell
            .running()
            .iter()
            .all(|&g| g >= r.generation));
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let seen = w.join().expect("no torn batch, nothing dropped");
        assert!(seen > 10, "the pipeline saw only {seen} generations");
    }
    assert!(frames.load(Ordering::Relaxed) > 0);
}

/// TCP serves only TLS with a client certificate from the configured CA.
#[test]
fn tcp_requires_tls_with_a_client_certificate() {
    use control::client::{connect_tcp, spawn_tcp, TlsFiles};
    let f = Fixture::new();
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let p = |n: &str| dir.path().join(n);
    let server = spawn_tcp(
        Arc::clone(&f.ctl),
        "127.0.0.1:0".parse().unwrap(),
        &TlsFiles {
            cert: p("server.pem"),
            key: p("server.key"),
            ca: p("ca.pem"),
        },
    )
    .unwrap();
    let addr = server.addr().unwrap().to_string();
    f.rt.block_on(async {
        let good = TlsFiles {
            cert: p("client.pem"),
            key: p("client.key"),
            ca: p("ca.pem"),
        };
        let mut c = connect_tcp(&addr, &good, None)
            .await
            .expect("a client the CA signed");
        let v = c.version(pb::VersionRequest {}).await.unwrap().into_inner();
        assert_eq!(v.node, "node1");

        let rogue = TlsFiles {
            cert: p("rogue.pem"),
            key: p("rogue.key"),
            ca: p("ca.pem"),
        };
        let refused = match connect_tcp(&addr, &rogue, None).await {
            Err(_) => true,
            Ok(mut c) => c.version(pb::VersionRequest {}).await.is_err(),
        };
        assert!(refused, "a certificate from another CA is refused");

        // No client certificate at all.
        let ca = tonic::transport::Certificate::from_pem(std::fs::read(p("ca.pem")).unwrap());
        let anonymous = async {
            let ch = tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
                .ok()?
                .tls_config(tonic::transport::ClientTlsConfig::new().ca_certificate(ca))
                .ok()?
                .connect()
                .await
                .ok()?;
            SwitchClient::new(ch)
                .version(pb::VersionRequest {})
                .await
                .ok()
        };
        assert!(
            anonymous.await.is_none(),
            "a client without a certificate is refused"
        );

        // Plain HTTP/2 on the TLS port.
        let plain = async {
            let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .ok()?
                .connect()
                .await
                .ok()?;
            SwitchClient::new(ch)
                .version(pb::VersionRequest {})
                .await
                .ok()
        };
        assert!(plain.await.is_none(), "no TCP without TLS");
    });
}

/// The state file (switchd's start and SIGHUP), a controller's Replace of the whole state
/// (what `switchctl apply -f` sends) and the one-object writes apply the same rules: each bad
/// state is refused by all three with the same reason.
#[test]
fn every_input_applies_the_same_rules() {
    use control::convert;
    let cases: Vec<(&str, String, String)> = vec![
        (
            "a pod name with a newline",
            "name = \"default/pod-b\"".into(),
            "name = \"default/pod-b\\nX\"".into(),
        ),
        (
            "a 300-character pod name",
            "name = \"default/pod-b\"".into(),
            format!("name = \"default/{}\"", "p".repeat(300)),
        ),
        (
            "a pod on the loopback",
            "port = \"veth-b\"".into(),
            "port = \"lo\"".into(),
        ),
        (
            "a remote node named in capitals",
            "\"node2\"".into(),
            "\"Node2\"".into(),
        ),
        (
            "a Service name in capitals",
            "name = \"default/web\"".into(),
            "name = \"default/Web\"".into(),
        ),
        (
            "a long Service port name",
            "name = \"http\"".into(),
            format!("name = \"{}\"", "h".repeat(1000)),
        ),
    ];
    let f = Fixture::new();
    let mut c = f.client();
    for (what, from, to) in cases {
        // (A node's name is replaced everywhere it is referred to.)
        let times = if from == "\"node2\"" { usize::MAX } else { 1 };
        let text = STATE.replacen(&from, &to, times);
        assert_ne!(text, STATE, "{what}: the case changes the state");
        // 1. The state file, as switchd reads it at start and on SIGHUP.
        let parsed = StateFile::parse(&text).unwrap_or_else(|e| panic!("{what}: {e}"));
        let file = match control::engine::Engine::new(parsed.clone()) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("{what}: the state file was accepted"),
        };
        // 2. The whole state through the API (a resync, switchctl apply -f).
        let replace =
            f.rt.block_on(c.replace(pb::ReplaceRequest {
                owner: String::new(),
                state: Some(convert::state_pb(&parsed, 0)),
                dry_run: true,
            }))
            .expect_err(what);
        // 3. The one object through its own write.
        let one =
            f.rt.block_on(async {
                if let Some(p) = parsed
                    .pods
                    .iter()
                    .find(|p| !STATE.contains(&format!("\"{}\"", p.name)) || to.contains(&p.port))
                {
                    c.upsert_pod(pb::UpsertPodRequest {
                        pod: Some(convert::pod_pb(p)),
                    })
                    .await
                    .map(|_| ())
                } else if let Some(n) = parsed.nodes.iter().find(|n| n.name == "Node2") {
                    c.upsert_node(pb::UpsertNodeRequest {
                        node: Some(convert::node_pb(n)),
                    })
                    .await
                    .map(|_| ())
                } else {
                    let s = parsed
                        .services
                        .iter()
                        .find(|s| {
                            s.name == "default/Web" || s.ports.iter().any(|p| p.name.len() > 100)
                        })
                        .expect(what);
                    c.upsert_service(pb::UpsertServiceRequest {
                        service: Some(convert::service_pb(s)),
                    })
                    .await
                    .map(|_| ())
                }
            })
            .expect_err(what);
        let reason = |m: &str| {
            m.split_once(": ")
                .map(|(_, r)| r.to_string())
                .unwrap_or_default()
        };
        assert_eq!(replace.code(), Code::InvalidArgument, "{what}");
        assert_eq!(one.code(), Code::InvalidArgument, "{what}");
        assert_eq!(
            reason(&file),
            reason(replace.message()),
            "{what}: file {file:?}, replace {replace:?}"
        );
        assert_eq!(
            reason(&file),
            reason(one.message()),
            "{what}: file {file:?}, upsert {one:?}"
        );
        assert!(file.len() < 600, "{what}: {file}");
    }
}

/// Each writer's Replace covers its own objects: the node config's resync (SIGHUP, `switchctl
/// apply`) keeps the CNI plugin's pods, and a writer's Replace deletes only what it owns.
#[test]
fn a_replace_covers_only_its_writers_objects() {
    let f = Fixture::new();
    let mut c = f.client();
    let state = StateFile::parse(STATE).unwrap();
    let replace = |owner: &str, state: pb::State| pb::ReplaceRequest {
        owner: owner.into(),
        state: Some(state),
        dry_run: false,
    };
    f.rt.block_on(async {
        let mut p = pod(
            "default/from-cni",
            "10.244.1.9",
            "02:00:0a:f4:01:09",
            "nsw0123",
        );
        p.owner = "cni".into();
        c.upsert_pod(pb::UpsertPodRequest { pod: Some(p) })
            .await
            .unwrap();
        let pods = |r: pb::ListPodsResponse| -> Vec<(String, String)> {
            r.pods.into_iter().map(|p| (p.name, p.owner)).collect()
        };
        let all = pods(
            c.list_pods(pb::ListPodsRequest::default())
                .await
                .unwrap()
                .into_inner(),
        );
        assert!(
            all.contains(&("default/from-cni".into(), "cni".into())),
            "{all:?}"
        );
        assert!(
            all.contains(&("default/pod-a".into(), "config".into())),
            "{all:?}"
        );

        // The config's resync with its state file, which does not list the CNI pod.
        let r = c
            .replace(replace("", control::convert::state_pb(&state, 0)))
            .await
            .unwrap()
            .into_inner()
            .result
            .unwrap();
        assert!(!r.changed, "{r:?}");
        let mut fewer = state.clone();
        fewer.pods.retain(|p| p.name != "default/pod-b");
        c.replace(replace("config", control::convert::state_pb(&fewer, 0)))
            .await
            .unwrap();
        let all = pods(
            c.list_pods(pb::ListPodsRequest::default())
                .await
                .unwrap()
                .into_inner(),
        );
        assert!(all.iter().any(|p| p.0 == "default/from-cni"), "{all:?}");
        assert!(!all.iter().any(|p| p.0 == "default/pod-b"), "{all:?}");

        // What a writer sees of its own, and replaces.
        let mine = c
            .get_state(pb::GetStateRequest {
                owner: "cni".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .state
            .unwrap();
        assert!(mine.node.is_none() && mine.services.is_empty() && mine.nodes.is_empty());
        assert_eq!(mine.pods.len(), 1, "{mine:?}");
        let empty = pb::State::default();
        let r = c
            .replace(replace("cni", empty.clone()))
            .await
            .unwrap()
            .into_inner()
            .result
            .unwrap();
        assert_eq!(r.changes.len(), 1, "{r:?}");
        assert_eq!(
            (r.changes[0].name.as_str(), r.changes[0].action.as_str()),
            ("default/from-cni", "deleted")
        );
        let all = pods(
            c.list_pods(pb::ListPodsRequest::default())
                .await
                .unwrap()
                .into_inner(),
        );
        assert_eq!(
            all,
            vec![("default/pod-a".to_string(), "config".to_string())]
        );
        // The CNI plugin's Replace of nothing leaves the config's Services.
        let svcs = c
            .list_services(pb::ListServicesRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(svcs.services.len(), state.services.len());

        // Refused: a node section from another writer, an object of a third, a bad name.
        let mut with_node = empty.clone();
        with_node.node = control::convert::state_pb(&state, 0).node;
        let mut foreign = empty.clone();
        let mut p = pod("default/x", "10.244.1.10", "02:00:0a:f4:01:0a", "nsw0124");
        p.owner = "agent".into();
        foreign.pods.push(p);
        for (owner, st, field) in [
            ("cni", with_node, "state.node"),
            ("cni", foreign, "state.pods[0].owner"),
            ("Not_A_Label", empty.clone(), "owner"),
        ] {
            let e = c.replace(replace(owner, st)).await.unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
            assert!(
                e.message().starts_with(&format!("{field}:")),
                "{}",
                e.message()
            );
        }
    });
}

/// The egress settings switchd holds now.
async fn egress_of(c: &mut SwitchClient<tonic::transport::Channel>) -> pb::Egress {
    let state = c
        .get_state(pb::GetStateRequest::default())
        .await
        .unwrap()
        .into_inner()
        .state
        .unwrap();
    state.egress.expect("GetState gives the egress settings")
}

/// `[egress]` through the API: what a Replace gives is what GetState returns, and every bad
/// value is refused naming its field, as the state file refuses it.
#[test]
fn egress_settings_round_trip_and_are_refused_by_field() {
    let f = Fixture::new();
    let mut c = f.client();
    let base = StateFile::parse(STATE).unwrap();
    let with = |e: pb::Egress| {
        let mut s = control::convert::state_pb(&base, 0);
        s.egress = Some(e);
        pb::ReplaceRequest {
            owner: String::new(),
            state: Some(s),
            dry_run: false,
        }
    };
    f.rt.block_on(async {
        let want = pb::Egress {
            masquerade: Some(false),
            non_masquerade_cidrs: vec!["192.168.0.0/16".into(), "10.244.0.0/16".into()],
            port_range: "62000-63000".into(),
        };
        c.replace(with(want.clone())).await.unwrap();
        let got = egress_of(&mut c).await;
        assert_eq!(got, want);
        // Unset fields are the defaults.
        c.replace(with(pb::Egress::default())).await.unwrap();
        let got = egress_of(&mut c).await;
        assert_eq!(
            (got.masquerade, got.port_range.as_str()),
            (Some(true), "61000-65535")
        );

        for (e, field, why) in [
            (
                pb::Egress {
                    port_range: "100-200".into(),
                    ..Default::default()
                },
                "state.egress.port_range",
                "1024 <= FIRST",
            ),
            (
                pb::Egress {
                    port_range: "30000-40000".into(),
                    ..Default::default()
                },
                "egress.port_range",
                "NodePort range",
            ),
            (
                pb::Egress {
                    non_masquerade_cidrs: vec!["10.0.0.1/8".into()],
                    ..Default::default()
                },
                "state.egress.non_masquerade_cidrs[0]",
                "10.0.0.0/8",
            ),
            (
                pb::Egress {
                    non_masquerade_cidrs: vec!["10.0.0.0/8".into(); 257],
                    ..Default::default()
                },
                "egress.non_masquerade_cidrs",
                "at most 256",
            ),
        ] {
            let err = c.replace(with(e)).await.unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{field}");
            assert!(err.message().contains(field), "{field}: {}", err.message());
            assert!(err.message().contains(why), "{why}: {}", err.message());
        }
        // Another owner's Replace leaves it unset.
        let s = pb::State {
            egress: Some(pb::Egress::default()),
            ..Default::default()
        };
        let err = c
            .replace(pb::ReplaceRequest {
                owner: "agent".into(),
                state: Some(s),
                dry_run: false,
            })
            .await
            .unwrap_err();
        assert!(err.message().contains("state.egress"), "{}", err.message());
    });
    // The state file refuses the same as the API.
    let text = format!("{STATE}\n[egress]\nport_range = \"30000-40000\"\n");
    let e = control::engine::Engine::new(StateFile::parse(&text).unwrap()).unwrap_err();
    assert!(e.to_string().contains("egress.port_range"), "{e}");
}
