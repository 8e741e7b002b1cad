//! Health-check node ports: for every Service with a `health_check_node_port` (which needs
//! `externalTrafficPolicy: Local`) switchd answers HTTP on the node's IP at that port as
//! kube-proxy does, so that a cloud load balancer sends the Service's traffic only to nodes
//! that have an endpoint for it: 200 with `{"service": {"namespace", "name"},
//! "localEndpoints": N}` while the node has N > 0 ready local endpoints, 503 with N = 0.
//! Any path gets the same answer.
//!
//! Design: the control thread calls [`HealthChecks::sync`] with every snapshot it makes live;
//! a port new in it is opened, one gone is closed, and the others get their Service and count
//! updated in place (no listener is reopened for an endpoint change). The listeners are the
//! node's own TCP sockets: the XDP program passes the node's IP to the kernel on every port
//! that is no Service frontend, and a health-check port never is one (the snapshot refuses
//! a health-check port that is a TCP node port). All listeners share one thread
//! ([`control::http::HttpPool`]), started with the first. A port that cannot be bound (a
//! process of the node holds it) is logged, counted and retried at the next change.
//!
//! Thread-safety: [`HealthChecks`] belongs to the control thread; each port's answer is read
//! by its connection tasks under a mutex held for the copy.

use control::http::{HttpPool, Reply};
use flowtable::services::HealthCheck;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};

/// What one port answers: the Service and its ready local endpoints.
type Answer = Arc<Mutex<(String, u32)>>;

/// The health-check node ports served now.
#[derive(Default)]
pub struct HealthChecks {
    pool: Option<HttpPool>,
    ip: Option<Ipv4Addr>,
    open: BTreeMap<u16, Answer>,
    /// Ports that could not be bound, counted each time it was tried.
    pub bind_errors: u64,
}

/// The reply for `service` with `local` ready local endpoints.
pub fn reply(service: &str, local: u32) -> Reply {
    let (namespace, name) = service.split_once('/').unwrap_or(("", service));
    let body = serde_json::json!({
        "service": {"namespace": namespace, "name": name},
        "localEndpoints": local,
    });
    if local > 0 {
        Reply::json("200 OK", &body)
    } else {
        Reply::json("503 Service Unavailable", &body)
    }
}

impl HealthChecks {
    /// Serves `checks` on `ip`; returns what to log (ports opened, closed, not bound).
    pub fn sync(&mut self, ip: Ipv4Addr, checks: &[HealthCheck]) -> Vec<String> {
        let mut log = Vec::new();
        if self.ip != Some(ip) {
            // The node's address changed (or first call): every port anew.
            if let Some(pool) = &mut self.pool {
                for &port in self.open.keys() {
                    pool.close(addr(self.ip.unwrap_or(ip), port));
                }
            }
            self.open.clear();
            self.ip = Some(ip);
        }
        let want: BTreeMap<u16, &HealthCheck> = checks.iter().map(|c| (c.port, c)).collect();
        let gone: Vec<u16> = self
            .open
            .keys()
            .filter(|p| !want.contains_key(p))
            .copied()
            .collect();
        for port in gone {
            if let Some(pool) = &mut self.pool {
                pool.close(addr(ip, port));
            }
            self.open.remove(&port);
            log.push(format!("health-check node port {port} closed"));
        }
        for (port, c) in want {
            if let Some(a) = self.open.get(&port) {
                let mut a = a.lock().unwrap_or_else(|e| e.into_inner());
                *a = (c.service.clone(), c.local_endpoints);
                continue;
            }
            if self.pool.is_none() {
                match HttpPool::new("switchd-healthcheck") {
                    Ok(p) => self.pool = Some(p),
                    Err(e) => {
                        self.bind_errors += 1;
                        log.push(format!("health-check node ports not served: {e}"));
                        return log;
                    }
                }
            }
            let Some(pool) = &mut self.pool else {
                return log;
            };
            let answer: Answer = Arc::new(Mutex::new((c.service.clone(), c.local_endpoints)));
            let handler = {
                let answer = Arc::clone(&answer);
                Arc::new(move |_path: &str| {
                    let (service, local) = answer
                        .lock()
                        .map(|a| a.clone())
                        .unwrap_or_else(|e| e.into_inner().clone());
                    reply(&service, local)
                })
            };
            match pool.open(addr(ip, port), handler) {
                Ok(_) => {
                    self.open.insert(port, answer);
                    log.push(format!(
                        "health-check node port {ip}:{port} for Service {}",
                        c.service
                    ));
                }
                Err(e) => {
                    self.bind_errors += 1;
                    log.push(format!(
                        "health-check node port {ip}:{port} for Service {} not served: {e} \
                         (tried again at the next change)",
                        c.service
                    ));
                }
            }
        }
        log
    }

    /// The ports served now.
    pub fn ports(&self) -> Vec<u16> {
        self.open.keys().copied().collect()
    }
}

fn addr(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn get(port: u16) -> String {
        let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.write_all(b"GET /anything HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut s = String::new();
        c.read_to_string(&mut s).unwrap();
        s
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[test]
    fn answers_as_kube_proxy_and_follows_the_counts() {
        let lo = Ipv4Addr::LOCALHOST;
        let port = free_port();
        let check = |local| HealthCheck {
            port,
            service: "shop/lb".into(),
            local_endpoints: local,
        };
        let mut h = HealthChecks::default();
        let log = h.sync(lo, &[check(2)]);
        assert!(log[0].contains("for Service shop/lb"), "{log:?}");
        let r = get(port);
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.contains("Content-Type: application/json"), "{r}");
        let body: serde_json::Value =
            serde_json::from_str(r.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"service": {"namespace": "shop", "name": "lb"}, "localEndpoints": 2})
        );
        h.sync(lo, &[check(0)]);
        let r = get(port);
        assert!(r.starts_with("HTTP/1.1 503 "), "{r}");
        assert!(r.contains("\"localEndpoints\":0"), "{r}");
        // Gone: the port closes.
        let log = h.sync(lo, &[]);
        assert!(log[0].contains("closed"), "{log:?}");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            assert!(std::time::Instant::now() < deadline, "still listening");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // A port held by another socket is reported and counted, not fatal.
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let busy = held.local_addr().unwrap().port();
        let log = h.sync(
            lo,
            &[HealthCheck {
                port: busy,
                service: "shop/lb".into(),
                local_endpoints: 1,
            }],
        );
        assert!(log[0].contains("not served"), "{log:?}");
        assert_eq!(h.bind_errors, 1);
        assert!(h.ports().is_empty());
    }
}
