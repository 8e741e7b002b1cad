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
    let keep = Keep::new(dir.join(FILE), Kept::default());
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
}

#[test]
fn a_change_that_cannot_be_kept_is_not_applied() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = control(dir.path());
    // The file's place is a directory: the write fails.
    std::fs::create_dir_all(dir.path().join(FILE).join("x")).unwrap();
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
