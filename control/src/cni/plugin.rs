//! The plugin's commands: ADD, DEL, CHECK, VERSION, STATUS and GC, from a checked
//! environment and config to the spec's reply.
//!
//! Design: ADD takes its steps in order (switchd's node settings, IPAM, netlink, switchd's
//! pod) and undoes every step done when a later one fails, so a failed ADD leaves no veth,
//! no address reservation and no pod. DEL does each step whatever the others found and
//! succeeds when there is nothing left to remove. Pods are written to switchd as owner
//! [`OWNER`], with the host veth as their port: a DEL or GC removes a switchd pod only if its
//! port is that attachment's veth (a newer sandbox of the same pod keeps its entry).
//! Thread-safety: one call per process; switchd is reached over its socket on a runtime of
//! the call's own.

use super::config::NetConf;
use super::ipam::Delegate;
use super::link::{self, Pod};
use super::naming::{host_ifname, is_host_ifname, pod_mac, HOST_PREFIX};
use super::result::{CniResult, Interface, IpConfig, Ipam, Route};
use super::spec::{code, version_info, Command, Env, Error};
use crate::pb;
use crate::pb::switch_service_client::SwitchServiceClient;
use flowtable::wire::MacAddr;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;
use tonic::transport::Channel;

/// The owner the plugin's pods have in switchd.
pub const OWNER: &str = "cni";

/// How long a call to switchd may take (connecting, or a change until programmed).
pub const SWITCH_TIMEOUT: Duration = Duration::from_secs(10);

/// What switchd says about this node that ADD needs.
#[derive(Debug, Clone, Copy)]
struct NodeInfo {
    gateway_mac: MacAddr,
    uplink_mtu: u32,
}

fn status_error(what: &str, s: &tonic::Status) -> Error {
    use tonic::Code as C;
    let busy = matches!(
        s.code(),
        C::Unavailable | C::DeadlineExceeded | C::ResourceExhausted | C::Aborted | C::Unknown
    );
    let code = if busy {
        code::TRY_AGAIN_LATER
    } else {
        code::SWITCH_REFUSED
    };
    Error::new(code, format!("switchd {what}: {}", s.message()))
        .details(format!("gRPC status {:?}", s.code()))
}

/// A connection to switchd and the runtime its calls run on.
struct Switch {
    rt: tokio::runtime::Runtime,
    client: SwitchServiceClient<Channel>,
}

impl Switch {
    fn connect(socket: &Path) -> Result<Switch, Error> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::new(code::IO_FAILURE, format!("starting a runtime: {e}")))?;
        let unreachable = |why: String| {
            Error::new(
                code::TRY_AGAIN_LATER,
                format!("switchd does not answer on {}", socket.display()),
            )
            .details(why)
        };
        let client = rt
            .block_on(async {
                tokio::time::timeout(SWITCH_TIMEOUT, crate::client::connect(socket)).await
            })
            .map_err(|_| unreachable(format!("no connection within {SWITCH_TIMEOUT:?}")))?
            .map_err(|e| unreachable(e.to_string()))?;
        Ok(Switch { rt, client })
    }

    /// One call: switchd's answer (a reply or its status), or an error if none came in time.
    fn try_call<T, F, Fut>(&mut self, what: &str, f: F) -> Result<Result<T, tonic::Status>, Error>
    where
        F: FnOnce(SwitchServiceClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let c = self.client.clone();
        match self
            .rt
            .block_on(async { tokio::time::timeout(SWITCH_TIMEOUT, f(c)).await })
        {
            Err(_) => Err(Error::new(
                code::TRY_AGAIN_LATER,
                format!("switchd {what}: no answer within {SWITCH_TIMEOUT:?}"),
            )),
            Ok(r) => Ok(r.map(tonic::Response::into_inner)),
        }
    }

    fn call<T, F, Fut>(&mut self, what: &str, f: F) -> Result<T, Error>
    where
        F: FnOnce(SwitchServiceClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.try_call(what, f)?.map_err(|s| status_error(what, &s))
    }

    fn node(&mut self) -> Result<NodeInfo, Error> {
        let st = self.call("GetState", |mut c| async move {
            c.get_state(pb::GetStateRequest {
                owner: "config".into(),
            })
            .await
        })?;
        let n = st
            .state
            .and_then(|s| s.node)
            .ok_or_else(|| Error::new(code::SWITCH_REFUSED, "switchd gave no node settings"))?;
        let gateway_mac: MacAddr = n.gateway_mac.parse().map_err(|_| {
            Error::new(
                code::SWITCH_REFUSED,
                format!("switchd's gateway_mac {} is not a MAC", n.gateway_mac),
            )
        })?;
        Ok(NodeInfo {
            gateway_mac,
            uplink_mtu: if n.uplink_mtu == 0 {
                1500
            } else {
                n.uplink_mtu
            },
        })
    }

    fn pod(&mut self, name: &str) -> Result<Option<pb::Pod>, Error> {
        let n = name.to_string();
        let r = self.try_call("ListPods", |mut c| async move {
            c.list_pods(pb::ListPodsRequest { name: n }).await
        })?;
        match r {
            Ok(r) => Ok(r.pods.into_iter().next()),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
            Err(s) => Err(status_error("ListPods", &s)),
        }
    }

    fn pods(&mut self) -> Result<Vec<pb::Pod>, Error> {
        Ok(self
            .call("ListPods", |mut c| async move {
                c.list_pods(pb::ListPodsRequest::default()).await
            })?
            .pods)
    }

    fn delete_pod(&mut self, name: &str) -> Result<(), Error> {
        let n = name.to_string();
        let r = self.try_call("DeletePod", |mut c| async move {
            c.delete_pod(pb::DeletePodRequest { name: n }).await
        })?;
        match r {
            // Already gone: DEL is idempotent.
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
            Err(s) => Err(status_error("DeletePod", &s)),
        }
    }
}

fn attachment(env: &Env, conf: &NetConf, node: NodeInfo, ipam: Ipam) -> Result<Pod, Error> {
    let overlay = conf.mtu.unwrap_or(node.uplink_mtu.saturating_sub(50));
    let (mtu, route_mtu) = match conf.local_mtu {
        Some(l) if l < overlay => {
            return Err(Error::new(
                code::INVALID_CONFIG,
                format!(
                "localMtu: {l} is below the pod MTU {overlay} (switchd's uplink MTU - 50 or mtu)"
            ),
            ))
        }
        Some(l) if l > overlay => (l, Some(overlay)),
        _ => (overlay, None),
    };
    Ok(Pod {
        host: host_ifname(&env.container_id, &env.ifname),
        ifname: env.ifname.clone(),
        netns: env.netns.clone().unwrap_or_default(),
        mac: pod_mac(ipam.ip),
        gateway_mac: node.gateway_mac,
        ip: ipam.ip,
        prefix: ipam.prefix,
        gateway: ipam.gateway,
        mtu,
        route_mtu,
    })
}

fn result(conf: &NetConf, pod: &Pod, ipam_result: &CniResult) -> CniResult {
    CniResult {
        cni_version: conf.cni_version.clone(),
        interfaces: vec![
            Interface {
                name: pod.host.clone(),
                mac: pod.gateway_mac.to_string(),
                mtu: Some(pod.mtu),
                sandbox: None,
            },
            Interface {
                name: pod.ifname.clone(),
                mac: pod.mac.to_string(),
                mtu: Some(pod.mtu),
                sandbox: Some(pod.netns.display().to_string()),
            },
        ],
        ips: vec![IpConfig {
            address: format!("{}/{}", pod.ip, pod.prefix),
            gateway: Some(pod.gateway.to_string()),
            interface: Some(1),
        }],
        routes: vec![Route {
            dst: "0.0.0.0/0".into(),
            gw: Some(pod.gateway.to_string()),
        }],
        dns: if conf.dns.is_empty() {
            ipam_result.dns.clone()
        } else {
            conf.dns.clone()
        },
    }
}

fn add(env: &Env, conf: &NetConf) -> Result<Value, Error> {
    let mut sw = Switch::connect(&conf.socket)?;
    let node = sw.node()?;
    let delegate = Delegate::new(conf, env)?;
    let ipam_result = delegate.add()?;
    let undo_ipam = |e: Error| {
        let _ = delegate.call("DEL");
        e
    };
    let ipam = Ipam::from_result(&ipam_result).map_err(undo_ipam)?;
    let pod = attachment(env, conf, node, ipam).map_err(undo_ipam)?;
    link::add(&pod).map_err(undo_ipam)?;
    let spec = pb::Pod {
        name: env.pod_name(),
        ip: pod.ip.to_string(),
        mac: pod.mac.to_string(),
        port: pod.host.clone(),
        owner: OWNER.into(),
    };
    if let Err(e) = sw.call("UpsertPod", |mut c| async move {
        c.upsert_pod(pb::UpsertPodRequest { pod: Some(spec) }).await
    }) {
        let _ = link::del(&pod.host);
        return Err(undo_ipam(e));
    }
    serde_json::to_value(result(conf, &pod, &ipam_result))
        .map_err(|e| Error::new(code::IO_FAILURE, format!("encoding the result: {e}")))
}

fn del(env: &Env, conf: &NetConf) -> Result<(), Error> {
    let host = host_ifname(&env.container_id, &env.ifname);
    let name = env.pod_name();
    // switchd first (traffic stops), then the veth, then the address. The address is
    // released only once switchd has let the pod go: while switchd still has it, another
    // pod given the same address would be refused. So with switchd unreachable the DEL
    // fails (11) and the runtime's retry finishes it.
    let switch = Switch::connect(&conf.socket).and_then(|mut sw| match sw.pod(&name)? {
        Some(p) if p.port == host => sw.delete_pod(&name),
        _ => Ok(()),
    });
    let veth = link::del(&host).map(|_| ());
    switch?;
    let ipam = Delegate::new(conf, env).and_then(|d| d.call("DEL"));
    veth.and(ipam)
}

fn check(env: &Env, conf: &NetConf) -> Result<(), Error> {
    let prev = conf
        .prev_result
        .clone()
        .ok_or_else(|| Error::new(code::INVALID_CONFIG, "prevResult: is required by CHECK"))?;
    let prev: CniResult = serde_json::from_value(prev).map_err(|e| {
        Error::new(code::DECODE_FAILURE, "prevResult: is not a CNI result").details(e.to_string())
    })?;
    let ipam = Ipam::from_result(&prev)
        .map_err(|e| Error::new(code::INVALID_CONFIG, format!("prevResult: {}", e.msg)))?;
    let mut sw = Switch::connect(&conf.socket)?;
    let node = sw.node()?;
    let pod = attachment(env, conf, node, ipam)?;
    link::check(&pod)?;
    let name = env.pod_name();
    match sw.pod(&name)? {
        None => Err(Error::new(
            code::CHECK_MISMATCH,
            format!("switchd has no pod {name}"),
        )),
        Some(p) if p.port != pod.host || p.ip != pod.ip.to_string() => Err(Error::new(
            code::CHECK_MISMATCH,
            format!(
                "switchd's pod {name} is {} on {}, not {} on {}",
                p.ip, p.port, pod.ip, pod.host
            ),
        )),
        Some(_) => Delegate::new(conf, env)?.call("CHECK"),
    }
}

fn status(conf: &NetConf) -> Result<(), Error> {
    let mut sw = Switch::connect(&conf.socket)
        .map_err(|e| Error::new(code::NOT_AVAILABLE, e.msg).details(e.details))?;
    sw.call("Version", |mut c| async move {
        c.version(pb::VersionRequest {}).await
    })
    .map(|_| ())
    .map_err(|e| Error::new(code::NOT_AVAILABLE, e.msg).details(e.details))
}

fn gc(env: &Env, conf: &NetConf) -> Result<(), Error> {
    let valid: BTreeSet<String> = conf
        .valid_attachments
        .iter()
        .flatten()
        .map(|a| host_ifname(&a.container_id, &a.ifname))
        .collect();
    let mut first: Option<Error> = None;
    let mut keep = |r: Result<(), Error>| {
        if let Err(e) = r {
            first.get_or_insert(e);
        }
    };
    match Switch::connect(&conf.socket) {
        Ok(mut sw) => match sw.pods() {
            Ok(pods) => {
                for p in pods {
                    if p.owner == OWNER && is_host_ifname(&p.port) && !valid.contains(&p.port) {
                        keep(sw.delete_pod(&p.name));
                    }
                }
            }
            Err(e) => keep(Err(e)),
        },
        Err(e) => keep(Err(e)),
    }
    match link::host_links(HOST_PREFIX) {
        Ok(links) => {
            for l in links {
                if is_host_ifname(&l) && !valid.contains(&l) {
                    keep(link::del(&l).map(|_| ()));
                }
            }
        }
        Err(e) => keep(Err(e)),
    }
    // The IPAM's own GC, when it speaks 1.1 (Debian's host-local 1.1.1 does not).
    match Delegate::new(conf, env) {
        Ok(d) if d.version == "1.1.0" => keep(d.call("GC")),
        Ok(_) => {}
        Err(e) => keep(Err(e)),
    }
    first.map_or(Ok(()), Err)
}

/// Runs one call: `Some` is the JSON to print on success.
pub fn run(env: &Env, stdin: &[u8]) -> Result<Option<Value>, Error> {
    if env.command == Command::Version {
        return serde_json::to_value(version_info())
            .map(Some)
            .map_err(|e| Error::new(code::IO_FAILURE, e.to_string()));
    }
    let conf = NetConf::parse(stdin)?;
    match env.command {
        Command::Add => add(env, &conf).map(Some),
        Command::Del => del(env, &conf).map(|()| None),
        Command::Check => check(env, &conf).map(|()| None),
        Command::Status => status(&conf).map(|()| None),
        Command::Gc => gc(env, &conf).map(|()| None),
        Command::Version => Ok(None),
    }
}
