//! Other writers' objects kept for a restart (`control::keep`) through the server: what a
//! change leaves is on disk before the change is live, a refused change leaves the file as it
//! was, and a restart's merge gives the objects back to their owners.
#![allow(missing_docs)]

use control::engine::{Engine, Op};
use control::error::ApiError;
use control::keep::{restore, Keep, Kept, FILE};
use control::local::LocalPlane;
use control::server::{Control, Dataplane};
use flowtable::conntrack::{Conntrack, Timeouts};
use flowtable::snapshot::Snapshot;
use flowtable::state::{PodSpec, StateFile};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const STATE: &str = include_str!("../../examples/node1.toml");

/// A local plane whose publish can be made to fail (as switchd's does when a new pod's
/// interface cannot be bound).
struct Plane {
    local: LocalPlane,
    fail: AtomicBool,
}

impl Dataplane for Plane {
    fn publish(&self, next: Snapshot) -> Result<u64, ApiError> {
        if self.fail.load(Ordering::Relaxed) {
            return Err(ApiError::Precondition(
                "the interface cannot be bound".into(),
            ));
        }
        self.local.publish(next)
    }
    fn wait_programmed(&self, g: u64, t: Duration) -> Result<(), ApiError> {
        self.local.wait_programmed(g, t)
    }
    fn current(&self) -> Arc<Snapshot> {
        self.local.current()
    }
    fn conntrack(&self) -> Option<Arc<Conntrack>> {
        self.local.conntrack()
    }
    fn stats(&self) -> control::pb::Stats {
        self.local.stats()
    }
}

fn cni_pod(name: &str, ip: &str, port: &str) -> PodSpec {
    PodSpec {
        name: name.into(),
        ip: ip.parse().unwrap(),
        mac: format!(
            "02:00:0a:f4:01:{:02x}",
            ip.rsplit('.').next().unwrap().parse::<u8>().unwrap()
        )
        .parse()
        .unwrap(),
        port: port.into(),
        owner: "cni".into(),
    }
}

fn control(dir: &std::path::Path) -> Arc<Control<Plane>> {
    let (engine, snap) = Engine::new(StateFile::parse(STATE).unwrap()).unwrap();
    let plane = Plane {
        local: LocalPlane::new(snap, Arc::new(Conntrack::new(1024, Timeouts::default()))),
        fail: AtomicBool::new(false),
    };
    let keep = Keep::new(dir.join(FILE));
    Control::kept(engine, plane, Some(keep))
}

fn kept_pods(dir: &std::path::Path) -> Vec<(String, String)> {
    let Some(k) = Kept::load(&dir.join(FILE)).unwrap() else {
        return Vec::new();
    };
    k.owners
        .iter()
        .flat_map(|(o, objs)| objs.pods.iter().map(move |p| (o.clone(), p.name.clone())))
        .collect()
}

#[test]
fn a_cni_pod_is_on_disk_once_added_and_survives_a_config_replace_and_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = control(dir.path());
    let pod = cni_pod("default/q", "10.244.1.100", "nswq");
    ctl.apply(&[("changes[0]".into(), Op::UpsertPod(pod.clone()))], false)
        .unwrap();
    assert_eq!(
        kept_pods(dir.path()),
        vec![("cni".to_string(), "default/q".to_string())]
    );
    // A dry run writes nothing.
    let other = cni_pod("default/r", "10.244.1.101", "nswr");
    ctl.apply(&[("changes[0]".into(), Op::UpsertPod(other.clone()))], true)
        .unwrap();
    assert_eq!(kept_pods(dir.path()).len(), 1);
    // SIGHUP with a state file that does not list it: still there, still kept.
    ctl.replace(StateFile::parse(STATE).unwrap(), false)
        .unwrap();
    assert!(ctl.state().unwrap().pods.iter().any(|p| p.name == pod.name));
    assert_eq!(kept_pods(dir.path()).len(), 1);

    // A refused change leaves the file as it was.
    ctl.plane().fail.store(true, Ordering::Relaxed);
    let e = ctl
        .apply(&[("changes[0]".into(), Op::UpsertPod(other))], false)
        .unwrap_err();
    assert!(e.to_string().contains("cannot be bound"), "{e}");
    assert_eq!(kept_pods(dir.path()).len(), 1);
    ctl.plane().fail.store(false, Ordering::Relaxed);

    // The restart: the state file plus what was kept; the pod is the CNI plugin's again.
    let kept = Kept::load(&dir.path().join(FILE)).unwrap().unwrap();
    let (state, notes) = restore(StateFile::parse(STATE).unwrap(), kept, |_| true);
    assert!(notes.is_empty(), "{notes:?}");
    let (engine, _) = Engine::new(state).unwrap();
    let back = engine.base().pods.iter().find(|p| p.name == pod.name);
    assert_eq!(back, Some(&pod));

    // Deleted by its writer: the file goes (nothing is left to keep).
    ctl.apply(
        &[("changes[0]".into(), Op::DeletePod(pod.name.clone()))],
        false,
    )
    .unwrap();
    assert!(!dir.path().join(FILE).exists());
    assert!(!dir.path().join(control::keep::JOURNAL).exists());
}

#[test]
fn a_change_that_cannot_be_kept_is_not_applied() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = control(dir.path());
    // The files' places are directories: the writes fail.
    std::fs::create_dir_all(dir.path().join(FILE).join("x")).unwrap();
    std::fs::create_dir_all(dir.path().join(control::keep::JOURNAL).join("x")).unwrap();
    let pod = cni_pod("default/q", "10.244.1.100", "nswq");
    let e = ctl
        .apply(&[("changes[0]".into(), Op::UpsertPod(pod.clone()))], false)
        .unwrap_err();
    assert!(matches!(e, ApiError::Unavailable(_)), "{e:?}");
    assert!(e.to_string().contains("not applied"), "{e}");
    assert!(!ctl.state().unwrap().pods.iter().any(|p| p.name == pod.name));
    // Config changes that leave the kept objects alone are not held up by it.
    let mut s = StateFile::parse(STATE).unwrap();
    s.pods.pop();
    ctl.replace(s, false).unwrap();
}

/// An agent's Service `i` with `eps` endpoints on node1 (the config's node).
fn agent_service(i: u32, ready: bool) -> flowtable::state::ServiceSpec {
    let mut s: flowtable::state::ServiceSpec = serde_json::from_value(serde_json::json!({
        "name": format!("bench/svc-{i}"),
        "cluster_ip": std::net::Ipv4Addr::from(0x0a60_1000 + i).to_string(),
        "ports": [{"name": "http", "port": 80, "target_port": 8080}],
        "endpoints": [{"ip": "10.244.1.3", "node": "node1", "ready": ready}]
    }))
    .unwrap();
    s.owner = "agent".into();
    s
}

#[test]
fn a_change_appends_only_itself_and_the_journal_replays_over_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = control(dir.path());
    let all: Vec<(String, Op)> = (0..2000)
        .map(|i| {
            (
                format!("changes[{i}]"),
                Op::UpsertService(agent_service(i, true)),
            )
        })
        .collect();
    ctl.apply(&all, false).unwrap();
    let journal = dir.path().join(control::keep::JOURNAL);
    let size = |p: &std::path::Path| std::fs::metadata(p).map_or(0, |m| m.len());
    let (snap0, j0) = (size(&dir.path().join(FILE)), size(&journal));
    assert!(
        snap0 + j0 > 200_000,
        "2000 Services are kept ({snap0} + {j0} bytes)"
    );
    // 100 single changes: each adds one line of its own size, the rest is not rewritten.
    for n in 0..100u32 {
        let before = size(&journal);
        let op = Op::UpsertService(agent_service(n, false));
        ctl.apply(&[("changes[0]".into(), op)], false).unwrap();
        let grew = size(&journal) - before;
        assert!(grew > 0 && grew < 1000, "change {n} wrote {grew} bytes");
    }
    assert_eq!(
        size(&dir.path().join(FILE)),
        snap0,
        "the snapshot is not rewritten"
    );
    ctl.apply(
        &[("changes[0]".into(), Op::DeleteService("bench/svc-7".into()))],
        false,
    )
    .unwrap();
    // What is read back is what the engine holds.
    let want: Vec<flowtable::state::ServiceSpec> = ctl
        .state()
        .unwrap()
        .services
        .into_iter()
        .filter(|s| s.owner == "agent")
        .collect();
    let read = |dir: &std::path::Path| {
        let k = Kept::load(&dir.join(FILE)).unwrap().unwrap();
        k.owners["agent"].services.clone()
    };
    assert_eq!(read(dir.path()).len(), 1999);
    assert_eq!(read(dir.path()), want);
    // A crash in the middle of an append: the cut line was never acknowledged, and is
    // ignored; a bad line before the last is not (the whole is refused, by name).
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&journal)
        .unwrap();
    std::io::Write::write_all(&mut f, br#"{"delete_service":"bench/svc-1"#).unwrap();
    assert_eq!(read(dir.path()), want);
    std::io::Write::write_all(&mut f, b"\n{}\n").unwrap();
    let e = Kept::load(&dir.path().join(FILE)).unwrap_err();
    assert!(e.contains("objects.journal line"), "{e}");
}

#[test]
fn the_journal_is_compacted_once_it_outgrows_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = control(dir.path());
    let journal = dir.path().join(control::keep::JOURNAL);
    // One small Service changed over and over: past 1 MiB the journal becomes a snapshot.
    let mut emptied = false;
    let mut last = 0;
    for n in 0..6000u32 {
        let op = Op::UpsertService(agent_service(0, n % 2 == 0));
        ctl.apply(&[("changes[0]".into(), op)], false).unwrap();
        let now = std::fs::metadata(&journal).map_or(0, |m| m.len());
        assert!(now <= 1 << 20, "the journal stays under 1 MiB ({now})");
        emptied |= now < last;
        last = now;
    }
    assert!(emptied, "compacted at least once");
    let k = Kept::load(&dir.path().join(FILE)).unwrap().unwrap();
    assert_eq!(k.owners["agent"].services, vec![agent_service(0, false)]);
}
