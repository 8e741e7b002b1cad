//! The plugin's IPAM delegation against the real host-local (Debian's
//! containernetworking-plugins, which `scripts/install-deps` installs): versions agreed,
//! addresses handed out and released, exhaustion reported with host-local's own error.
#![allow(missing_docs)]

use control::cni::config::NetConf;
use control::cni::ipam::Delegate;
use control::cni::result::Ipam;
use control::cni::spec::Env;
use std::net::Ipv4Addr;
use std::path::Path;

const HOST_LOCAL_DIR: &str = "/usr/lib/cni";

fn env(id: &str) -> Env {
    Env::from_lookup(|k| {
        Some(
            match k {
                "CNI_COMMAND" => "ADD",
                "CNI_CONTAINERID" => id,
                "CNI_NETNS" => "/run/netns/unused",
                "CNI_IFNAME" => "eth0",
                "CNI_PATH" => HOST_LOCAL_DIR,
                _ => return None,
            }
            .to_string(),
        )
    })
    .unwrap()
}

fn conf(data: &Path, subnet: &str) -> NetConf {
    NetConf::parse(
        serde_json::json!({
            "cniVersion": "1.1.0",
            "name": "nodeswitch-ipam-test",
            "type": "nodeswitch",
            "ipam": {
                "type": "host-local",
                "dataDir": data,
                "ranges": [[{"subnet": subnet}]]
            }
        })
        .to_string()
        .as_bytes(),
    )
    .unwrap()
}

#[test]
fn host_local_hands_out_and_takes_back_addresses() {
    assert!(
        Path::new(HOST_LOCAL_DIR).join("host-local").is_file(),
        "host-local is missing: run scripts/install-deps"
    );
    let data = tempfile::tempdir().unwrap();
    let c = conf(data.path(), "10.244.7.0/29");
    let add = |id: &str| {
        let d = Delegate::new(&c, &env(id)).unwrap();
        // Debian's host-local speaks up to 1.0.0: the config's 1.1.0 is negotiated down.
        assert_eq!(d.version, "1.0.0");
        d.add().map(|r| Ipam::from_result(&r).unwrap())
    };
    let a = add("pod-a").unwrap();
    let b = add("pod-b").unwrap();
    assert_eq!(a.gateway, Ipv4Addr::new(10, 244, 7, 1));
    assert_eq!(a.prefix, 29);
    assert_ne!(a.ip, b.ip);
    // A /29 has 5 addresses for pods (.2-.6): the sixth ADD fails with host-local's error.
    for id in ["pod-c", "pod-d", "pod-e"] {
        add(id).unwrap();
    }
    let e = add("pod-f").unwrap_err();
    assert!(e.msg.starts_with("IPAM plugin 'host-local' ADD: "), "{e}");
    assert!(e.msg.contains("no IP addresses available"), "{e}");
    // DEL releases pod-a's address (twice is fine), and the next ADD can have it.
    let del = Delegate::new(&c, &env("pod-a")).unwrap();
    del.call("DEL").unwrap();
    del.call("DEL").unwrap();
    let f = add("pod-f").unwrap();
    assert_eq!(f.ip, a.ip);
    let held = std::fs::read_dir(data.path().join("nodeswitch-ipam-test"))
        .unwrap()
        .filter(|e| {
            let n = e.as_ref().unwrap().file_name();
            n.to_string_lossy().starts_with("10.244.7.")
        })
        .count();
    assert_eq!(held, 5);
}
