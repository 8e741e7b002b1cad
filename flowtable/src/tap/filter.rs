//! Capture and monitor filters: `host IP`, `net CIDR`, `port N`, `proto tcp|udp|icmp|arp|N`
//! (also `tcp`, `udp`, `icmp`, `arp` alone), all of which must match; `and` between terms is
//! allowed and means the same.
//!
//! Design: a filter is parsed once, where a session opens (the one parser for the API and
//! `switchctl`), into at most [`MAX_TERMS`] terms; a frame matches when every term matches
//! its outer packet, or every term matches the inner packet of a VXLAN frame (so
//! `host POD_IP` finds a pod's traffic on the uplink too). Matching allocates nothing.

use super::flow::{Flow, Layers};
use crate::cidr::Ipv4Cidr;
use crate::names::quote;
use std::fmt;
use std::net::Ipv4Addr;

/// Most terms in one filter.
pub const MAX_TERMS: usize = 8;
/// Longest filter text, in bytes.
pub const MAX_FILTER_LEN: usize = 256;

/// One condition on a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Term {
    /// Source or destination address.
    Host(Ipv4Addr),
    /// Source or destination address within the prefix.
    Net(Ipv4Cidr),
    /// TCP or UDP source or destination port.
    Port(u16),
    /// IP protocol number.
    Proto(u8),
    /// An ARP frame.
    Arp,
}

impl Term {
    fn matches(&self, f: &Flow) -> bool {
        match *self {
            Term::Host(a) => f.src == a || f.dst == a,
            Term::Net(n) => n.contains(f.src) || n.contains(f.dst),
            Term::Port(p) => f.has_ports() && (f.sport == p || f.dport == p),
            Term::Proto(p) => !f.arp && f.proto == p,
            Term::Arp => f.arp,
        }
    }
}

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Term::Host(a) => write!(f, "host {a}"),
            Term::Net(n) => write!(f, "net {n}"),
            Term::Port(p) => write!(f, "port {p}"),
            Term::Proto(6) => f.write_str("tcp"),
            Term::Proto(17) => f.write_str("udp"),
            Term::Proto(1) => f.write_str("icmp"),
            Term::Proto(p) => write!(f, "proto {p}"),
            Term::Arp => f.write_str("arp"),
        }
    }
}

/// A parsed filter; the empty filter matches every frame.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    terms: Vec<Term>,
}

impl Filter {
    /// Parses `text`; the error names the term that is wrong and what was expected (the
    /// caller says it is about the filter).
    pub fn parse(text: &str) -> Result<Filter, String> {
        if text.len() > MAX_FILTER_LEN {
            return Err(format!(
                "{} bytes long; at most {MAX_FILTER_LEN}",
                text.len()
            ));
        }
        let mut words = text.split_whitespace().filter(|w| *w != "and");
        let mut terms = Vec::new();
        while let Some(w) = words.next() {
            let mut arg = |what: &str| {
                words
                    .next()
                    .ok_or_else(|| format!("{} needs {what} after it", quote(w)))
            };
            let term = match w {
                "host" => {
                    let a = arg("an IPv4 address")?;
                    Term::Host(a.parse().map_err(|_| {
                        format!("host {}: not an IPv4 address", quote(a))
                    })?)
                }
                "net" => {
                    let a = arg("a prefix such as 10.244.0.0/16")?;
                    Term::Net(
                        a.parse()
                            .map_err(|e| format!("net {}: {e}", quote(a)))?,
                    )
                }
                "port" => {
                    let a = arg("a port number")?;
                    match a.parse::<u16>() {
                        Ok(p) if p > 0 => Term::Port(p),
                        _ => return Err(format!("port {}: not a port (1-65535)", quote(a))),
                    }
                }
                "proto" => proto(arg("tcp, udp, icmp, arp or a protocol number")?)?,
                "tcp" | "udp" | "icmp" | "arp" => proto(w)?,
                _ => {
                    return Err(format!(
                        "filter: {} is not a term; expected host IP, net CIDR, port N, proto P, tcp, udp, icmp or arp",
                        quote(w)
                    ))
                }
            };
            if terms.len() == MAX_TERMS {
                return Err(format!("more than {MAX_TERMS} terms"));
            }
            terms.push(term);
        }
        Ok(Filter { terms })
    }

    /// The terms, in order.
    pub fn terms(&self) -> &[Term] {
        &self.terms
    }

    /// Whether every term matches `flow`.
    pub fn matches_flow(&self, flow: &Flow) -> bool {
        self.terms.iter().all(|t| t.matches(flow))
    }

    /// Whether the frame with these layers matches: its outer packet, or its inner one.
    pub fn matches(&self, l: &Layers) -> bool {
        if self.terms.is_empty() {
            return true;
        }
        l.outer.is_some_and(|f| self.matches_flow(&f))
            || l.inner.is_some_and(|f| self.matches_flow(&f))
    }
}

impl fmt::Display for Filter {
    /// The canonical text (`host 10.0.0.1 and tcp`); empty for the empty filter.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, t) in self.terms.iter().enumerate() {
            if i > 0 {
                f.write_str(" and ")?;
            }
            write!(f, "{t}")?;
        }
        Ok(())
    }
}

fn proto(a: &str) -> Result<Term, String> {
    Ok(match a {
        "tcp" => Term::Proto(6),
        "udp" => Term::Proto(17),
        "icmp" => Term::Proto(1),
        "arp" => Term::Arp,
        n => Term::Proto(n.parse().map_err(|_| {
            format!(
                "filter: proto {}: expected tcp, udp, icmp, arp or a number 0-255",
                quote(n)
            )
        })?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tap::flow::layers;

    fn flow(proto: u8, src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Flow {
        Flow {
            arp: false,
            proto,
            src: src.into(),
            dst: dst.into(),
            sport,
            dport,
        }
    }

    #[test]
    fn terms_parse_and_print_back() {
        let f =
            Filter::parse("host 10.0.0.1 and port 80 tcp net 10.244.0.0/16 proto 47 arp").unwrap();
        assert_eq!(
            f.to_string(),
            "host 10.0.0.1 and port 80 and tcp and net 10.244.0.0/16 and proto 47 and arp"
        );
        assert_eq!(Filter::parse(&f.to_string()).unwrap(), f);
        assert!(Filter::parse("  ").unwrap().terms().is_empty());
    }

    #[test]
    fn bad_filters_are_refused_naming_the_term() {
        for (text, want) in [
            ("host", "'host' needs an IPv4 address"),
            ("host 10.0.0.300", "host '10.0.0.300': not an IPv4 address"),
            ("port 0", "port '0': not a port"),
            ("port 70000", "port '70000'"),
            ("proto gre", "proto 'gre'"),
            ("src 10.0.0.1", "'src' is not a term"),
            ("net 10.0.0.0/33", "net '10.0.0.0/33'"),
            ("host\u{1b}[2J", "'host\\u{1b}[2J' is not a term"),
        ] {
            let e = Filter::parse(text).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
        }
        let many = "tcp ".repeat(MAX_TERMS + 1);
        assert!(Filter::parse(&many)
            .unwrap_err()
            .contains("more than 8 terms"));
        let long = format!("host {}", "1".repeat(MAX_FILTER_LEN));
        assert!(Filter::parse(&long).unwrap_err().contains("at most 256"));
    }

    #[test]
    fn every_term_must_match_the_same_packet() {
        let f = Filter::parse("host 10.0.0.1 port 80").unwrap();
        assert!(f.matches_flow(&flow(6, [10, 0, 0, 1], 80, [10, 0, 0, 2], 4000)));
        assert!(f.matches_flow(&flow(17, [10, 0, 0, 2], 4000, [10, 0, 0, 1], 80)));
        assert!(!f.matches_flow(&flow(6, [10, 0, 0, 3], 80, [10, 0, 0, 2], 4000)));
        assert!(
            !f.matches_flow(&flow(1, [10, 0, 0, 1], 80, [10, 0, 0, 2], 0)),
            "ICMP has no ports"
        );
        let arp = Flow {
            arp: true,
            ..flow(0, [10, 0, 0, 1], 0, [10, 0, 0, 9], 0)
        };
        assert!(Filter::parse("arp host 10.0.0.9")
            .unwrap()
            .matches_flow(&arp));
        assert!(!Filter::parse("proto 0").unwrap().matches_flow(&arp));
    }

    #[test]
    fn a_vxlan_frame_matches_by_its_outer_or_its_inner_packet() {
        let inner = crate::tap::flow::tests::udp([10, 244, 1, 5], [10, 244, 2, 7], 1234, 80, b"x");
        let mut vx = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
        vx.extend_from_slice(&inner);
        let frame =
            crate::tap::flow::tests::udp([192, 168, 0, 1], [192, 168, 0, 2], 50000, 4789, &vx);
        let l = layers(&frame, 4789);
        for yes in [
            "host 10.244.2.7 port 80",
            "host 192.168.0.1 port 4789",
            "udp",
            "",
        ] {
            assert!(Filter::parse(yes).unwrap().matches(&l), "{yes}");
        }
        for no in ["host 10.244.2.7 port 4789", "tcp", "host 10.9.9.9"] {
            assert!(!Filter::parse(no).unwrap().matches(&l), "{no}");
        }
        assert!(!Filter::parse("udp").unwrap().matches(&Layers::default()));
        assert!(
            Filter::default().matches(&Layers::default()),
            "the empty filter takes all"
        );
    }
}
