//! The pod's interfaces, addresses and routes, made over netlink (rtnetlink; no `ip`).
//!
//! Design: a veth pair is created on the host with the peer under a temporary name, the
//! peer moved into the container's netns by file descriptor, and configured from there. The
//! container side runs on a thread of its own that has joined the netns (`setns`), so the
//! netlink socket it opens belongs to that netns; the host side runs on another thread in
//! the plugin's own netns. Each side gets a current-thread runtime for rtnetlink. A failed
//! [`add`] deletes the host end (which takes the peer with it, wherever it is).
//! Thread-safety: every call opens its own sockets; nothing is shared.

use super::spec::{code, Error};
use flowtable::wire::MacAddr;
use futures::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteMetric, RouteScope,
};
use rtnetlink::{new_connection, Handle, LinkUnspec, LinkVeth, RouteMessageBuilder};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// One pod's attachment, as ADD makes it and CHECK expects it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    /// The host end of the veth (see [`super::naming::host_ifname`]).
    pub host: String,
    /// The container end's name (`CNI_IFNAME`).
    pub ifname: String,
    /// The container's netns (`CNI_NETNS`).
    pub netns: PathBuf,
    /// The container end's MAC.
    pub mac: MacAddr,
    /// The host end's MAC: the node's `gateway_mac`, which the switch answers for.
    pub gateway_mac: MacAddr,
    /// The pod's address.
    pub ip: Ipv4Addr,
    /// Its prefix length.
    pub prefix: u8,
    /// The pod's default gateway.
    pub gateway: Ipv4Addr,
    /// Both ends' MTU.
    pub mtu: u32,
    /// The default route's MTU when it is below the interfaces' (a node-local MTU: see
    /// `NetConf::local_mtu`).
    pub route_mtu: Option<u32>,
}

fn nl(what: &str, e: impl std::fmt::Display) -> Error {
    Error::new(code::NETLINK, format!("{what}: {e}"))
}

fn is_errno(e: &rtnetlink::Error, errno: i32) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -errno)
}

/// Runs `f` with a netlink handle in `netns` (the plugin's own when `None`), on a thread of
/// its own.
fn run_in<T, F, Fut>(netns: Option<&Path>, f: F) -> Result<T, Error>
where
    T: Send + 'static,
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, Error>>,
{
    let ns = match netns {
        Some(p) => Some(std::fs::File::open(p).map_err(|e| {
            Error::new(
                code::UNKNOWN_CONTAINER,
                format!("the container's netns {} cannot be opened", p.display()),
            )
            .details(e.to_string())
        })?),
        None => None,
    };
    std::thread::spawn(move || {
        if let Some(ns) = &ns {
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| nl("joining the container's netns", e))?;
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| nl("starting a runtime", e))?;
        rt.block_on(async move {
            let (conn, handle, _) = new_connection().map_err(|e| nl("opening netlink", e))?;
            tokio::spawn(conn);
            f(handle).await
        })
    })
    .join()
    .map_err(|_| nl("netlink thread", "panicked"))?
}

async fn link(h: &Handle, name: &str) -> Result<Option<LinkMessage>, Error> {
    match h
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await
    {
        Ok(m) => Ok(m),
        Err(e) if is_errno(&e, nix::errno::Errno::ENODEV as i32) => Ok(None),
        Err(e) => Err(nl(&format!("looking up {name}"), e)),
    }
}

fn attr_mac(m: &LinkMessage) -> Option<&[u8]> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(b) => Some(b.as_slice()),
        _ => None,
    })
}

fn attr_mtu(m: &LinkMessage) -> Option<u32> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::Mtu(v) => Some(*v),
        _ => None,
    })
}

/// The temporary name of the container end while it is still on the host.
fn peer_name(host: &str) -> String {
    format!("nsp{}", &host[host.len().min(3)..])
}

async fn host_side(h: Handle, p: Pod, netns: std::fs::File) -> Result<(), Error> {
    if let Some(old) = link(&h, &p.host).await? {
        // A leftover of an attachment with the same container ID and interface.
        h.link()
            .del(old.header.index)
            .execute()
            .await
            .map_err(|e| nl(&format!("deleting the leftover {}", p.host), e))?;
    }
    let peer = peer_name(&p.host);
    h.link()
        .add(
            LinkVeth::new(&p.host, &peer)
                .mtu(p.mtu)
                .address(p.gateway_mac.0.to_vec())
                .build(),
        )
        .execute()
        .await
        .map_err(|e| nl(&format!("creating the veth pair {}/{peer}", p.host), e))?;
    h.link()
        .set(
            LinkUnspec::new_with_name(&peer)
                .mtu(p.mtu)
                .setns_by_fd(netns.as_raw_fd())
                .build(),
        )
        .execute()
        .await
        .map_err(|e| nl(&format!("moving {peer} into the container"), e))?;
    let host = link(&h, &p.host)
        .await?
        .ok_or_else(|| nl(&p.host, "vanished after it was made"))?;
    h.link()
        .set(LinkUnspec::new_with_index(host.header.index).up().build())
        .execute()
        .await
        .map_err(|e| nl(&format!("setting {} up", p.host), e))?;
    h.route()
        .add(
            RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(p.ip, 32)
                .output_interface(host.header.index)
                .scope(RouteScope::Link)
                .build(),
        )
        .replace()
        .execute()
        .await
        .map_err(|e| nl(&format!("adding the route {}/32 dev {}", p.ip, p.host), e))?;
    Ok(())
}

async fn container_side(h: Handle, p: Pod) -> Result<(), Error> {
    let peer = peer_name(&p.host);
    let m = link(&h, &peer)
        .await?
        .ok_or_else(|| nl(&peer, "is not in the container"))?;
    let idx = m.header.index;
    h.link()
        .set(
            LinkUnspec::new_with_index(idx)
                .name(p.ifname.clone())
                .address(p.mac.0.to_vec())
                .mtu(p.mtu)
                .build(),
        )
        .execute()
        .await
        .map_err(|e| nl(&format!("naming {peer} {}", p.ifname), e))?;
    h.link()
        .set(LinkUnspec::new_with_index(idx).up().build())
        .execute()
        .await
        .map_err(|e| nl(&format!("setting {} up", p.ifname), e))?;
    if let Some(lo) = link(&h, "lo").await? {
        h.link()
            .set(LinkUnspec::new_with_index(lo.header.index).up().build())
            .execute()
            .await
            .map_err(|e| nl("setting lo up", e))?;
    }
    h.address()
        .add(idx, IpAddr::V4(p.ip), p.prefix)
        .execute()
        .await
        .map_err(|e| nl(&format!("adding {}/{} to {}", p.ip, p.prefix, p.ifname), e))?;
    let mut default = RouteMessageBuilder::<Ipv4Addr>::new()
        .gateway(p.gateway)
        .output_interface(idx)
        .build();
    if let Some(m) = p.route_mtu {
        default
            .attributes
            .push(RouteAttribute::Metrics(vec![RouteMetric::Mtu(m)]));
    }
    h.route()
        .add(default)
        .execute()
        .await
        .map_err(|e| nl(&format!("adding the default route via {}", p.gateway), e))?;
    Ok(())
}

/// Deletes the host end `host` if it exists (the container end goes with it). True if it did.
pub fn del(host: &str) -> Result<bool, Error> {
    let host = host.to_string();
    run_in(None, move |h| async move {
        let Some(m) = link(&h, &host).await? else {
            return Ok(false);
        };
        match h.link().del(m.header.index).execute().await {
            Ok(()) => Ok(true),
            Err(e) if is_errno(&e, nix::errno::Errno::ENODEV as i32) => Ok(false),
            Err(e) => Err(nl(&format!("deleting {host}"), e)),
        }
    })
}

/// Makes the attachment: veth, names, MACs, MTU, address and routes. Undone whole on failure.
pub fn add(p: &Pod) -> Result<(), Error> {
    let netns = std::fs::File::open(&p.netns).map_err(|e| {
        Error::new(
            code::UNKNOWN_CONTAINER,
            format!(
                "the container's netns {} cannot be opened",
                p.netns.display()
            ),
        )
        .details(e.to_string())
    })?;
    let done = {
        let hp = p.clone();
        run_in(None, move |h| host_side(h, hp, netns)).and_then(|()| {
            let cp = p.clone();
            run_in(Some(&p.netns), move |h| container_side(h, cp))
        })
    };
    if done.is_err() {
        let _ = del(&p.host);
    }
    done
}

fn has_route(
    routes: &[RouteMessage],
    dst: Option<(Ipv4Addr, u8)>,
    gw: Option<Ipv4Addr>,
    oif: u32,
) -> bool {
    routes.iter().any(|r| {
        let a = &r.attributes;
        let d = a.iter().find_map(|x| match x {
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(*ip),
            _ => None,
        });
        let g = a.iter().find_map(|x| match x {
            RouteAttribute::Gateway(RouteAddress::Inet(ip)) => Some(*ip),
            _ => None,
        });
        let o = a.iter().find_map(|x| match x {
            RouteAttribute::Oif(i) => Some(*i),
            _ => None,
        });
        let dst_ok = match dst {
            None => d.is_none() && r.header.destination_prefix_length == 0,
            Some((ip, len)) => d == Some(ip) && r.header.destination_prefix_length == len,
        };
        dst_ok && g == gw && o == Some(oif)
    })
}

async fn routes(h: &Handle) -> Result<Vec<RouteMessage>, Error> {
    h.route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(|e| nl("listing routes", e))
}

fn mismatch(what: String) -> Error {
    Error::new(code::CHECK_MISMATCH, what)
}

/// CHECK: the attachment is as [`add`] made it; the error names the first difference.
pub fn check(p: &Pod) -> Result<(), Error> {
    let hp = p.clone();
    run_in(None, move |h| async move {
        let m = link(&h, &hp.host)
            .await?
            .ok_or_else(|| mismatch(format!("the host interface {} is missing", hp.host)))?;
        let rs = routes(&h).await?;
        if !has_route(&rs, Some((hp.ip, 32)), None, m.header.index) {
            return Err(mismatch(format!(
                "the host route {}/32 dev {} is missing",
                hp.ip, hp.host
            )));
        }
        Ok(())
    })?;
    let cp = p.clone();
    run_in(Some(&p.netns), move |h| async move {
        let m = link(&h, &cp.ifname).await?.ok_or_else(|| {
            mismatch(format!(
                "the interface {} is missing in the container",
                cp.ifname
            ))
        })?;
        if attr_mac(&m) != Some(&cp.mac.0[..]) {
            return Err(mismatch(format!(
                "{} has another MAC than {}",
                cp.ifname, cp.mac
            )));
        }
        if attr_mtu(&m) != Some(cp.mtu) {
            return Err(mismatch(format!(
                "{} has MTU {:?}, not {}",
                cp.ifname,
                attr_mtu(&m),
                cp.mtu
            )));
        }
        let idx = m.header.index;
        let addrs: Vec<_> = h
            .address()
            .get()
            .set_link_index_filter(idx)
            .execute()
            .try_collect()
            .await
            .map_err(|e| nl("listing addresses", e))?;
        let has = addrs.iter().any(|a| {
            a.header.prefix_len == cp.prefix
                && a.attributes
                    .iter()
                    .any(|x| matches!(x, AddressAttribute::Address(IpAddr::V4(ip)) if *ip == cp.ip))
        });
        if !has {
            return Err(mismatch(format!(
                "the address {}/{} is missing on {}",
                cp.ip, cp.prefix, cp.ifname
            )));
        }
        let rs = routes(&h).await?;
        if !has_route(&rs, None, Some(cp.gateway), idx) {
            return Err(mismatch(format!(
                "the default route via {} dev {} is missing",
                cp.gateway, cp.ifname
            )));
        }
        Ok(())
    })
}

/// Names of the host's interfaces that start with `prefix` (GC's candidates).
pub fn host_links(prefix: &str) -> Result<Vec<String>, Error> {
    let prefix = prefix.to_string();
    run_in(None, move |h| async move {
        let all: Vec<LinkMessage> = h
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| nl("listing links", e))?;
        Ok(all
            .iter()
            .filter_map(|m| {
                m.attributes.iter().find_map(|a| match a {
                    LinkAttribute::IfName(n) if n.starts_with(&prefix) => Some(n.clone()),
                    _ => None,
                })
            })
            .collect())
    })
}
