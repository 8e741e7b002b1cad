//! The uplink's next hops, learned from the node's routing and neighbour tables over netlink.
//!
//! Design: one thread ("nexthops") with its own single-threaded tokio runtime. It dumps the
//! main table's IPv4 routes out of the uplink and the uplink's resolved IPv4 neighbours,
//! builds a [`NextHops`] and publishes it in the [`NextHopsCell`] the workers read, whenever
//! what it dumped differs from the last. Routes are taken as the kernel chooses them: per
//! prefix the lowest metric; a prefix routed elsewhere (another interface, blackhole,
//! unreachable) shadows the uplink's shorter ones; of a multipath route the first uplink
//! hop. It dumps again when the kernel announces a route or neighbour change (rtnetlink
//! multicast), and every [`REFRESH`] in any case (a missed announcement costs at most that).
//! Route gateways are added to the kernel's table as *managed* entries (`NTF_EXT_MANAGED`):
//! the kernel resolves them and keeps them resolved, as it would for its own traffic. Other
//! neighbours the workers could not resolve (the cell's miss log, read every [`MISS_POLL`])
//! are asked for once (`NTF_USE`: an ordinary entry the kernel ages out), at most
//! [`MAX_ASKS`] a second, so a pod scanning the uplink's subnet cannot fill the node's
//! neighbour table.
//! Thread-safety: the thread owns its netlink sockets; it shares only the cell (lock-free)
//! and a stop flag.

use flowtable::cidr::Ipv4Cidr;
use flowtable::egress::{NextHops, NextHopsCell, Via};
use flowtable::wire::MacAddr;
use futures::{StreamExt, TryStreamExt};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourExtFlags, NeighbourFlags, NeighbourMessage,
    NeighbourState,
};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteType};
use rtnetlink::{Handle, IpVersion, MulticastGroup, RouteMessageBuilder};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest between two dumps.
pub const REFRESH: Duration = Duration::from_secs(5);
/// How often the miss log is read.
pub const MISS_POLL: Duration = Duration::from_millis(50);
/// The main routing table.
const MAIN_TABLE: u8 = 254;
/// How long an asked-for neighbour is not asked for again.
const ASK_AGAIN: Duration = Duration::from_secs(1);
/// Most on-link neighbours asked for per [`ASK_AGAIN`].
pub const MAX_ASKS: usize = 64;

/// What a dump found: routes out of the uplink and its resolved neighbours.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Tables {
    routes: Vec<(Ipv4Cidr, Via)>,
    neighbours: BTreeMap<Ipv4Addr, MacAddr>,
}

/// The running watcher; dropping it stops the thread.
pub struct Watcher {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts watching the uplink `ifindex` for `cell`; the first table is published before this
/// returns (an error if netlink cannot be used at all).
pub fn start(ifindex: u32, cell: NextHopsCell) -> std::io::Result<Watcher> {
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let s = Arc::clone(&stop);
    let thread = std::thread::Builder::new()
        .name("nexthops".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            rt.block_on(watch(ifindex, cell, s, ready_tx));
        })?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(Watcher {
            stop,
            thread: Some(thread),
        }),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => Err(std::io::Error::other("the next-hop thread stopped")),
    }
}

async fn watch(
    ifindex: u32,
    cell: NextHopsCell,
    stop: Arc<AtomicBool>,
    ready: std::sync::mpsc::Sender<std::io::Result<()>>,
) {
    let opened = rtnetlink::new_connection().and_then(|(c, h, _)| {
        let (mc, _, events) = rtnetlink::new_multicast_connection(&[
            MulticastGroup::Neigh,
            MulticastGroup::Ipv4Route,
        ])?;
        Ok((c, h, mc, events))
    });
    let (conn, handle, mconn, mut events) = match opened {
        Ok(x) => x,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    tokio::spawn(conn);
    tokio::spawn(mconn);
    let mut last = None::<Tables>;
    let mut asked: BTreeMap<Ipv4Addr, Instant> = BTreeMap::new();
    let mut dirty = true;
    let mut next_refresh = Instant::now();
    let mut ready = Some(ready);
    let mut announcements = true;
    while !stop.load(Ordering::Relaxed) {
        if dirty || Instant::now() >= next_refresh {
            dirty = false;
            next_refresh = Instant::now() + REFRESH;
            match dump(&handle, ifindex).await {
                Ok(t) => {
                    if last.as_ref() != Some(&t) {
                        publish(&cell, &t);
                        // Gateways the kernel has not resolved: ask now.
                        let missing: BTreeSet<Ipv4Addr> = t
                            .routes
                            .iter()
                            .filter_map(|(_, v)| match v {
                                Via::Gateway(g) => Some(*g),
                                _ => None,
                            })
                            .filter(|g| !t.neighbours.contains_key(g))
                            .collect();
                        for g in missing {
                            ask(&handle, ifindex, g, true, &mut asked).await;
                        }
                        last = Some(t);
                    }
                }
                Err(e) => log(format!("reading the uplink's routes and neighbours: {e}")),
            }
            if let Some(r) = ready.take() {
                let _ = r.send(Ok(()));
            }
        }
        asked.retain(|_, t| t.elapsed() < ASK_AGAIN);
        for ip in cell.load().take_missed() {
            let gateway = last
                .as_ref()
                .is_some_and(|t| t.routes.iter().any(|(_, v)| *v == Via::Gateway(ip)));
            if gateway || asked.len() < MAX_ASKS {
                ask(&handle, ifindex, ip, gateway, &mut asked).await;
            }
        }
        // Wait for an announcement or the next miss poll.
        if !announcements {
            tokio::time::sleep(MISS_POLL).await;
            continue;
        }
        match tokio::time::timeout(MISS_POLL, events.next()).await {
            Ok(Some(_)) => {
                dirty = true;
                // Take the burst that usually follows at once.
                while let Ok(Some(_)) = tokio::time::timeout(Duration::ZERO, events.next()).await {}
            }
            Ok(None) => {
                log("route and neighbour announcements stopped: reading them every 5 s".into());
                announcements = false;
            }
            Err(_) => {}
        }
    }
}

fn publish(cell: &NextHopsCell, t: &Tables) {
    let neighbours: Vec<(Ipv4Addr, MacAddr)> = t.neighbours.iter().map(|(i, m)| (*i, *m)).collect();
    let prev = cell.load();
    cell.store(NextHops::new(&t.routes, &neighbours, Some(&prev)));
}

/// Asks the kernel to resolve `ip` on the uplink: a gateway as a managed entry (kept
/// resolved), anything else once.
async fn ask(
    h: &Handle,
    ifindex: u32,
    ip: Ipv4Addr,
    gateway: bool,
    asked: &mut BTreeMap<Ipv4Addr, Instant>,
) {
    if asked.contains_key(&ip) {
        return;
    }
    asked.insert(ip, Instant::now());
    let mut req = h.neighbours().add(ifindex, IpAddr::V4(ip));
    req.message_mut().header.state = NeighbourState::None;
    if gateway {
        req.message_mut()
            .attributes
            .push(NeighbourAttribute::ExtFlags(NeighbourExtFlags::Managed));
    } else {
        req.message_mut().header.flags = NeighbourFlags::Use;
    }
    if let Err(e) = req.replace().execute().await {
        log(format!("asking the kernel to resolve {ip}: {e}"));
    }
}

async fn dump(h: &Handle, ifindex: u32) -> Result<Tables, rtnetlink::Error> {
    let routes: Vec<RouteMessage> = h
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await?;
    let mut t = Tables::default();
    // Per prefix, the route of the lowest metric (the one the kernel uses).
    let mut best: BTreeMap<Ipv4Cidr, (u32, Via)> = BTreeMap::new();
    for r in &routes {
        if let Some((cidr, metric, via)) = route_of(r, ifindex) {
            match best.get(&cidr) {
                Some((m, _)) if *m <= metric => {}
                _ => {
                    best.insert(cidr, (metric, via));
                }
            }
        }
    }
    t.routes = best.into_iter().map(|(c, (_, v))| (c, v)).collect();
    let neighbours: Vec<NeighbourMessage> = h
        .neighbours()
        .get()
        .set_family(IpVersion::V4)
        .execute()
        .try_collect()
        .await?;
    for n in &neighbours {
        if let Some((ip, mac)) = neighbour_of(n, ifindex) {
            t.neighbours.insert(ip, mac);
        }
    }
    Ok(t)
}

/// A route of the main table: (destination, metric, where it goes).
fn route_of(r: &RouteMessage, ifindex: u32) -> Option<(Ipv4Cidr, u32, Via)> {
    let table = r
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(r.header.table));
    if table != u32::from(MAIN_TABLE) {
        return None;
    }
    let mut oif = None;
    let mut dst = Ipv4Addr::UNSPECIFIED;
    let mut gw = None;
    let mut metric = 0;
    for a in &r.attributes {
        match a {
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = *d,
            RouteAttribute::Gateway(RouteAddress::Inet(g)) => gw = Some(*g),
            RouteAttribute::Priority(p) => metric = *p,
            RouteAttribute::MultiPath(hops) if oif.is_none() => {
                // The first hop out of the uplink (the switch does not balance paths).
                if let Some(h) = hops.iter().find(|h| h.interface_index == ifindex) {
                    oif = Some(ifindex);
                    gw = h.attributes.iter().find_map(|a| match a {
                        RouteAttribute::Gateway(RouteAddress::Inet(g)) => Some(*g),
                        _ => None,
                    });
                }
            }
            _ => {}
        }
    }
    let cidr = Ipv4Cidr::new(dst, r.header.destination_prefix_length)?;
    let via = match (r.header.kind, oif, gw) {
        (RouteType::Unicast, Some(i), Some(g)) if i == ifindex => Via::Gateway(g),
        (RouteType::Unicast, Some(i), None) if i == ifindex => Via::OnLink,
        // Broadcast, local, anycast and multicast routes live in other tables or are not
        // forwarding decisions; the rest (another interface, blackhole, unreachable,
        // prohibit) is not the uplink's.
        (
            RouteType::Broadcast | RouteType::Local | RouteType::Anycast | RouteType::Multicast,
            ..,
        ) => return None,
        _ => Via::Elsewhere,
    };
    Some((cidr, metric, via))
}

/// A resolved IPv4 neighbour on the uplink: (address, MAC).
fn neighbour_of(n: &NeighbourMessage, ifindex: u32) -> Option<(Ipv4Addr, MacAddr)> {
    if n.header.ifindex != ifindex {
        return None;
    }
    let usable = matches!(
        n.header.state,
        NeighbourState::Reachable
            | NeighbourState::Stale
            | NeighbourState::Delay
            | NeighbourState::Probe
            | NeighbourState::Permanent
            | NeighbourState::Noarp
    );
    if !usable {
        return None;
    }
    let mut ip = None;
    let mut mac = None;
    for a in &n.attributes {
        match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(i)) => ip = Some(*i),
            NeighbourAttribute::LinkLayerAddress(l) if l.len() == 6 => {
                let mut m = [0u8; 6];
                m.copy_from_slice(l);
                mac = Some(MacAddr(m));
            }
            _ => {}
        }
    }
    let mac = mac.filter(|m| !m.is_multicast() && *m != MacAddr::default())?;
    Some((ip?, mac))
}

fn log(msg: String) {
    eprintln!("switchd: {msg}");
}
