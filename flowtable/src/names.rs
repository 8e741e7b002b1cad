//! The rules for names, the same for every input (state file, SIGHUP, `switchctl apply`, the
//! API): Kubernetes' for object names, Linux's for interface names; and how an error quotes
//! a bad value (a short, escaped prefix, never the whole of it).
//!
//! Design: pure functions returning the reason a name is refused; `snapshot` and `services`
//! call them while validating, so whatever builds a snapshot applies them. Thread-safety:
//! no state.

/// Longest prefix of a bad value an error message quotes (characters).
pub const QUOTE_CHARS: usize = 40;
/// Longest namespace (a DNS-1123 label).
pub const MAX_NAMESPACE: usize = 63;
/// Longest pod or node name (a DNS-1123 subdomain).
pub const MAX_SUBDOMAIN: usize = 253;
/// Longest Service name (a DNS-1035 label).
pub const MAX_SERVICE_NAME: usize = 63;
/// Longest Service port name (an IANA service name).
pub const MAX_PORT_NAME: usize = 15;
/// Longest interface name (Linux: IFNAMSIZ - 1).
pub const MAX_INTERFACE: usize = 15;

/// `s` for an error message: single-quoted, control characters and quotes escaped, at most
/// [`QUOTE_CHARS`] characters of it, and its length when it was cut.
pub fn quote(s: &str) -> String {
    let mut out = String::from("'");
    for c in s.chars().take(QUOTE_CHARS) {
        out.extend(c.escape_default());
    }
    out.push('\'');
    let n = s.chars().count();
    if n > QUOTE_CHARS {
        out.push_str(&format!("... ({n} characters)"));
    }
    out
}

fn label_chars(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn ends_alnum(s: &str) -> bool {
    let ok = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    ok(s.bytes().next()) && ok(s.bytes().last())
}

/// A DNS-1123 label (a namespace): 1-63 of a-z, 0-9 and '-', starting and ending with a
/// letter or digit.
pub fn dns1123_label(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > MAX_NAMESPACE || !label_chars(s) || !ends_alnum(s) {
        return Err(format!(
            "{} is not a DNS-1123 label (1-{MAX_NAMESPACE} of a-z, 0-9 and '-', starting and \
             ending with a letter or digit)",
            quote(s)
        ));
    }
    Ok(())
}

/// The owner the node's config (state file, SIGHUP) writes as; stored as "".
pub const CONFIG_OWNER: &str = "config";

/// A writer's name as given in a request: "" or `config` (the node's config), else a
/// DNS-1123 label (`cni`, `agent`). Returns the stored form ("" for the config).
pub fn owner(s: &str) -> Result<&str, String> {
    if s.is_empty() || s == CONFIG_OWNER {
        return Ok("");
    }
    dns1123_label(s).map(|()| s)
}

/// The name shown for a stored owner ("" is `config`).
pub fn owner_shown(s: &str) -> &str {
    if s.is_empty() {
        CONFIG_OWNER
    } else {
        s
    }
}

/// A DNS-1123 subdomain (a node or pod name): at most 253 characters, DNS-1123 labels
/// joined by '.'.
pub fn dns1123_subdomain(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= MAX_SUBDOMAIN
        && s.split('.')
            .all(|l| !l.is_empty() && label_chars(l) && ends_alnum(l));
    if !ok {
        return Err(format!(
            "{} is not a DNS-1123 subdomain (at most {MAX_SUBDOMAIN} characters: labels of a-z, \
             0-9 and '-' joined by '.')",
            quote(s)
        ));
    }
    Ok(())
}

/// A DNS-1035 label (a Service name): 1-63 of a-z, 0-9 and '-', starting with a letter and
/// ending with a letter or digit.
pub fn dns1035_label(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= MAX_SERVICE_NAME
        && label_chars(s)
        && ends_alnum(s)
        && s.starts_with(|c: char| c.is_ascii_lowercase());
    if !ok {
        return Err(format!(
            "{} is not a DNS-1035 label (1-{MAX_SERVICE_NAME} of a-z, 0-9 and '-', starting with \
             a letter, ending with a letter or digit)",
            quote(s)
        ));
    }
    Ok(())
}

/// `namespace/name`: the namespace a DNS-1123 label, the name checked by `name`.
fn namespaced(s: &str, what: &str, name: fn(&str) -> Result<(), String>) -> Result<(), String> {
    let Some((ns, n)) = s.split_once('/') else {
        return Err(format!(
            "{} is not namespace/name (a {what} is named in its namespace)",
            quote(s)
        ));
    };
    dns1123_label(ns).map_err(|e| format!("namespace {e}"))?;
    name(n).map_err(|e| format!("name {e}"))
}

/// A pod's name: `namespace/name`, the name a DNS-1123 subdomain.
pub fn pod_name(s: &str) -> Result<(), String> {
    namespaced(s, "pod", dns1123_subdomain)
}

/// A Service's name: `namespace/name`, the name a DNS-1035 label.
pub fn service_name(s: &str) -> Result<(), String> {
    namespaced(s, "Service", dns1035_label)
}

/// A node's name: a DNS-1123 subdomain.
pub fn node_name(s: &str) -> Result<(), String> {
    dns1123_subdomain(s)
}

/// A Service port's name (an IANA service name, Kubernetes' `IANA_SVC_NAME`): 1-15 of a-z,
/// 0-9 and '-', at least one letter, no '-' at either end or twice in a row. Empty (an
/// unnamed port) is allowed.
pub fn port_name(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Ok(());
    }
    let ok = s.len() <= MAX_PORT_NAME
        && label_chars(s)
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--");
    if !ok {
        return Err(format!(
            "{} is not an IANA service name (1-{MAX_PORT_NAME} of a-z, 0-9 and '-', a letter \
             among them, no '-' at an end or twice in a row)",
            quote(s)
        ));
    }
    Ok(())
}

/// A Linux interface name a port may use: 1-15 characters, no '/', ':', whitespace or
/// control characters, not `.` or `..`, not the loopback (`lo`) nor `kernel` (the name the
/// replay gives the kernel's side).
pub fn interface_name(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= MAX_INTERFACE
        && !s
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
        && s != "."
        && s != "..";
    if !ok {
        return Err(format!(
            "{} is not a usable interface name (1-{MAX_INTERFACE} characters, no '/', ':', \
             spaces or control characters)",
            quote(s)
        ));
    }
    if s == "lo" || s == "kernel" {
        return Err(format!(
            "{} cannot be a switch port (the loopback or the kernel's side)",
            quote(s)
        ));
    }
    Ok(())
}

/// Every node's name (this node's, `node.name`, and the others', `nodes[i].name`) follows
/// [`node_name`], and no two are the same: the first offence as (field, reason). Checked
/// before anything that looks nodes up by name (Services' endpoints do).
pub fn check_nodes(state: &crate::state::StateFile) -> Result<(), (String, String)> {
    node_name(&state.node.name).map_err(|r| ("node.name".to_string(), r))?;
    let mut seen: std::collections::HashMap<&str, Option<usize>> = std::collections::HashMap::new();
    seen.insert(state.node.name.as_str(), None);
    for (i, r) in state.nodes.iter().enumerate() {
        let field = format!("nodes[{i}].name");
        node_name(&r.name).map_err(|e| (field.clone(), e))?;
        if let Some(j) = seen.insert(r.name.as_str(), Some(i)) {
            let other = j.map_or("this node".to_string(), |j| format!("nodes[{j}]"));
            return Err((field, format!("'{}' is also the name of {other}", r.name)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_are_short_and_escaped() {
        assert_eq!(quote("web"), "'web'");
        assert_eq!(quote("a\nb'c"), "'a\\nb\\'c'");
        let long = "x".repeat(300);
        let q = quote(&long);
        assert!(q.starts_with(&format!("'{}'", "x".repeat(QUOTE_CHARS))));
        assert!(q.ends_with("(300 characters)"), "{q}");
        assert!(quote(&"\u{7}".repeat(1 << 20)).len() < 400);
    }

    #[test]
    fn kubernetes_names() {
        for ok in ["default/web", "kube-system/kube-dns", "a/b1", "ns/a-b-c"] {
            assert_eq!(service_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "web",
            "default/Web",
            "default/1web",
            "default/web-",
            "Default/web",
            "default/we\nb",
            "default/",
            "/web",
            "default/a.b",
        ] {
            assert!(service_name(bad).is_err(), "{bad}");
        }
        let long_ns = format!("{}/web", "n".repeat(64));
        assert!(service_name(&long_ns)
            .unwrap_err()
            .starts_with("namespace "));
        assert_eq!(pod_name("default/pod-a.v2"), Ok(()));
        assert!(pod_name("default/pod_a").is_err());
        assert!(pod_name(&format!("default/{}", "p".repeat(254))).is_err());
        assert_eq!(node_name("node1.example.com"), Ok(()));
        for bad in ["", "Node1", "node 1", "-node", "node..1", &"n".repeat(254)] {
            assert!(node_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn port_and_interface_names() {
        for ok in ["", "http", "h2c", "dns-tcp", "a1"] {
            assert_eq!(port_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "HTTP",
            "123",
            "-http",
            "http-",
            "h--2",
            "sixteen-chars-xx",
            "a b",
        ] {
            assert!(port_name(bad).is_err(), "{bad}");
        }
        for ok in ["veth-a", "eth0", "nsw0", "cali1234567890a"] {
            assert_eq!(interface_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "lo",
            "kernel",
            "a/b",
            "a:b",
            "a b",
            "a\tb",
            ".",
            "..",
            "sixteen-chars-xx",
        ] {
            assert!(interface_name(bad).is_err(), "{bad:?}");
        }
        assert!(interface_name("lo").unwrap_err().contains("loopback"));
    }
}
