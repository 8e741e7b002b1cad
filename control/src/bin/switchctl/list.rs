//! `switchctl list KIND` and `switchctl get KIND NAME`: one table (or JSON document) per
//! kind of object switchd holds.

use super::{client, json, table, Cli, Failure, Format, Kind};
use control::pb;

/// A port's Maglev shares as a table.
fn shares_table(shares: &[pb::BackendShare]) {
    let rows: Vec<Vec<String>> = shares
        .iter()
        .map(|b| {
            vec![
                format!("{}:{}", b.ip, b.port),
                b.node.clone(),
                b.entries.to_string(),
                format!("{:.1}%", b.percent),
            ]
        })
        .collect();
    table(&["BACKEND", "NODE", "ENTRIES", "SHARE"], &rows);
}

fn endpoint_flags(e: &pb::Endpoint) -> String {
    let ready = e.ready.unwrap_or(true);
    let mut f = vec![if ready { "ready" } else { "not-ready" }];
    if e.serving.unwrap_or(ready) {
        f.push("serving");
    }
    if e.terminating.unwrap_or(false) {
        f.push("terminating");
    }
    f.join(",")
}

/// Lists the objects of `kind` (all, or the one called `name`).
pub(crate) async fn list(cli: &Cli, kind: Kind, name: &str) -> Result<(), Failure> {
    let mut c = client(cli).await?;
    let name = name.to_string();
    let js = cli.output == Format::Json;
    match kind {
        Kind::Nodes => {
            let r = c
                .list_nodes(pb::ListNodesRequest { name })
                .await?
                .into_inner();
            if js {
                json(&r);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = r
                .nodes
                .iter()
                .map(|n| {
                    vec![
                        n.name.clone(),
                        n.ip.clone(),
                        n.pod_cidr.clone(),
                        n.vtep_mac.clone(),
                        n.mac.clone(),
                        n.owner.clone(),
                    ]
                })
                .collect();
            table(
                &[
                    "NAME",
                    "IP",
                    "POD CIDR",
                    "VTEP MAC",
                    "NEXT-HOP MAC",
                    "OWNER",
                ],
                &rows,
            );
        }
        Kind::Pods => {
            let r = c
                .list_pods(pb::ListPodsRequest { name })
                .await?
                .into_inner();
            if js {
                json(&r);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = r
                .pods
                .iter()
                .map(|p| {
                    vec![
                        p.name.clone(),
                        p.ip.clone(),
                        p.mac.clone(),
                        p.port.clone(),
                        p.owner.clone(),
                    ]
                })
                .collect();
            table(&["NAME", "IP", "MAC", "PORT", "OWNER"], &rows);
        }
        Kind::Services => {
            let r = c
                .list_services(pb::ListServicesRequest { name: name.clone() })
                .await?
                .into_inner();
            if js {
                json(&r);
                return Ok(());
            }
            let mut rows = Vec::new();
            for si in &r.services {
                let Some(s) = &si.service else { continue };
                let ports: Vec<String> = s
                    .ports
                    .iter()
                    .map(|p| {
                        let np = if p.node_port != 0 {
                            format!(":{}", p.node_port)
                        } else {
                            String::new()
                        };
                        format!("{}{np}/{}", p.port, p.protocol)
                    })
                    .collect();
                let ext: Vec<String> = s
                    .load_balancer_ips
                    .iter()
                    .chain(&s.external_ips)
                    .cloned()
                    .collect();
                rows.push(vec![
                    s.name.clone(),
                    s.cluster_ip.clone(),
                    if ext.is_empty() {
                        "-".into()
                    } else {
                        ext.join(",")
                    },
                    ports.join(","),
                    s.endpoints.len().to_string(),
                    format!(
                        "{}/{}",
                        s.external_traffic_policy, s.internal_traffic_policy
                    ),
                    s.session_affinity.clone(),
                    s.owner.clone(),
                ]);
            }
            table(
                &[
                    "NAME",
                    "CLUSTER-IP",
                    "EXTERNAL",
                    "PORTS",
                    "ENDPOINTS",
                    "POLICY (EXT/INT)",
                    "AFFINITY",
                    "OWNER",
                ],
                &rows,
            );
            if !name.is_empty() {
                for si in &r.services {
                    for p in &si.ports {
                        println!();
                        println!(
                            "port {} {}/{} -> {}: Maglev table of {} entries",
                            if p.name.is_empty() { "-" } else { &p.name },
                            p.port,
                            p.protocol,
                            p.target_port,
                            p.table_size
                        );
                        shares_table(&p.cluster);
                        if !p.local.is_empty() {
                            println!("local endpoints (Local policy):");
                            shares_table(&p.local);
                        }
                    }
                }
            }
        }
        Kind::Endpoints => {
            let r = c
                .list_endpoints(pb::ListEndpointsRequest { name })
                .await?
                .into_inner();
            if js {
                json(&r);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = r
                .endpoints
                .iter()
                .filter_map(|e| {
                    let ep = e.endpoint.as_ref()?;
                    Some(vec![
                        e.service.clone(),
                        ep.ip.clone(),
                        ep.node.clone(),
                        endpoint_flags(ep),
                        if e.usable { "yes".into() } else { "no".into() },
                    ])
                })
                .collect();
            table(&["SERVICE", "IP", "NODE", "CONDITIONS", "IN TABLES"], &rows);
        }
    }
    Ok(())
}
