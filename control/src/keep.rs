//! What the writers other than the node's config gave (the CNI plugin's pods, an agent's
//! Services), kept in a file so that a restart of switchd keeps it.
//!
//! Design: the state file holds the config's objects; every other writer's objects live only
//! in switchd's memory, and a runtime does not ADD its pods again after a restart. So after
//! every committed change that changes them, the server writes them whole to
//! `RUN_DIR/NODE/objects.json` (`{"format": 1, "owners": {"cni": {"pods": [...], "nodes":
//! [...], "services": [...]}}}`, the objects in the state file's schema), by a temporary file,
//! fsync and rename: a reader finds the old file or the new one, never a part of one. At
//! start, [`restore`] adds them to the state file's: an object the config names is the
//! config's (as after a SIGHUP that lists it), a pod whose interface is gone is dropped (its
//! runtime removed the sandbox while switchd was down), and a writer whose objects no longer
//! fit the config (an address now outside the pod CIDR, say) is left out whole with the reason.
//! Every object is validated again by the engine, like any request: the file is input.
//!
//! Thread-safety: plain data and functions; the server calls [`Keep::save`] under its engine
//! lock, so writes are in commit order and one at a time.

use crate::engine::{Engine, Plan};
use flowtable::state::{PodSpec, RemoteNodeSpec, ServiceSpec, StateFile};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The file's name under the node's run directory.
pub const FILE: &str = "objects.json";

/// Largest file read back (a whole cluster's Services fit many times over).
pub const MAX_FILE: u64 = 256 << 20;

const FORMAT: u32 = 1;

/// One writer's objects.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Objects {
    /// Its pods.
    #[serde(default)]
    pub pods: Vec<PodSpec>,
    /// Its other nodes.
    #[serde(default)]
    pub nodes: Vec<RemoteNodeSpec>,
    /// Its Services.
    #[serde(default)]
    pub services: Vec<ServiceSpec>,
}

impl Objects {
    fn is_empty(&self) -> bool {
        self.pods.is_empty() && self.nodes.is_empty() && self.services.is_empty()
    }
}

/// Every writer's objects but the config's, by owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kept {
    /// The file's format (1).
    pub format: u32,
    /// Objects by owner name.
    pub owners: BTreeMap<String, Objects>,
}

impl Default for Kept {
    fn default() -> Kept {
        Kept {
            format: FORMAT,
            owners: BTreeMap::new(),
        }
    }
}

impl Kept {
    /// The objects of `engine`'s desired state that are not the config's.
    pub fn of(engine: &Engine) -> Kept {
        let mut k = Kept::of_base(engine.base());
        k.add_services(engine.services().values());
        k
    }

    fn of_base(base: &StateFile) -> Kept {
        let mut owners: BTreeMap<String, Objects> = BTreeMap::new();
        for p in base.pods.iter().filter(|p| !p.owner.is_empty()) {
            owners
                .entry(p.owner.clone())
                .or_default()
                .pods
                .push(p.clone());
        }
        for n in base.nodes.iter().filter(|n| !n.owner.is_empty()) {
            owners
                .entry(n.owner.clone())
                .or_default()
                .nodes
                .push(n.clone());
        }
        Kept {
            format: FORMAT,
            owners,
        }
    }

    fn add_services<'a>(&mut self, services: impl Iterator<Item = &'a ServiceSpec>) {
        for s in services.filter(|s| !s.owner.is_empty()) {
            self.owners
                .entry(s.owner.clone())
                .or_default()
                .services
                .push(s.clone());
        }
        for o in self.owners.values_mut() {
            o.services.sort_by(|a, b| a.name.cmp(&b.name));
        }
    }

    /// The objects not the config's in `engine`'s desired state once `plan` is committed.
    pub fn after(engine: &Engine, plan: &Plan) -> Kept {
        let mut k = Kept::of_base(plan.base().unwrap_or(engine.base()));
        let changed = plan.service_changes();
        let names: BTreeSet<&str> = changed.iter().map(|(n, _)| n.as_str()).collect();
        let services = engine
            .services()
            .values()
            .filter(|s| !names.contains(s.name.as_str()))
            .chain(changed.iter().filter_map(|(_, s)| s.as_ref()));
        k.add_services(services);
        k
    }

    /// Parses a file's text; the error names what is wrong.
    pub fn parse(text: &str) -> Result<Kept, String> {
        let mut k: Kept = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if k.format != FORMAT {
            return Err(format!(
                "format {} (this switchd reads format {FORMAT})",
                k.format
            ));
        }
        for (owner, objs) in &mut k.owners {
            let stored = flowtable::names::owner(owner)
                .map_err(|e| format!("owners.{}: {e}", flowtable::names::quote(owner)))?;
            if stored.is_empty() {
                return Err("owners.config: the config's objects belong in the state file".into());
            }
            for p in &mut objs.pods {
                p.owner.clone_from(owner);
            }
            for n in &mut objs.nodes {
                n.owner.clone_from(owner);
            }
            for s in &mut objs.services {
                s.owner.clone_from(owner);
            }
        }
        Ok(k)
    }

    /// Reads `path`: `Ok(None)` if there is no file.
    pub fn load(path: &Path) -> Result<Option<Kept>, String> {
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::Read::take(file, MAX_FILE + 1), &mut text)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if text.len() as u64 > MAX_FILE {
            return Err(format!("{}: larger than {MAX_FILE} bytes", path.display()));
        }
        Kept::parse(&text)
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// Writes `kept` to `path` atomically (temporary file in the same directory, fsync, rename,
/// fsync of the directory); with no objects the file is removed.
pub fn write(path: &Path, kept: &Kept) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    if kept.owners.values().all(Objects::is_empty) {
        return match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
    }
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{FILE}.tmp"));
    let text = serde_json::to_vec(kept).map_err(std::io::Error::other)?;
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&text)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Where the server keeps other writers' objects, and what it last wrote there.
#[derive(Debug)]
pub struct Keep {
    path: PathBuf,
    last: Mutex<Kept>,
}

impl Keep {
    /// Keeps objects in `path`; `written` is what the file holds now.
    pub fn new(path: PathBuf, written: Kept) -> Keep {
        Keep {
            path,
            last: Mutex::new(written),
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `now` whatever the file holds (at start, so that it says what this switchd
    /// has).
    pub fn write(&self, now: &Kept) -> Result<(), String> {
        write(&self.path, now).map_err(|e| format!("{}: {e}", self.path.display()))?;
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        last.clone_from(now);
        Ok(())
    }

    /// Writes `now` if it differs from what was last written.
    pub fn save(&self, now: Kept) -> Result<(), String> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if *last == now {
            return Ok(());
        }
        write(&self.path, &now).map_err(|e| format!("{}: {e}", self.path.display()))?;
        *last = now;
        Ok(())
    }
}

/// The state to start with: the config's `state` and the `kept` objects that still apply.
/// `port_exists` tells whether a pod's interface is there. Returns the merged state and a
/// line for every object or writer left out, and why.
pub fn restore(
    state: StateFile,
    kept: Kept,
    port_exists: impl Fn(&str) -> bool,
) -> (StateFile, Vec<String>) {
    let mut notes = Vec::new();
    let pods: BTreeSet<String> = state.pods.iter().map(|p| p.name.clone()).collect();
    let nodes: BTreeSet<String> = state.nodes.iter().map(|n| n.name.clone()).collect();
    let services: BTreeSet<String> = state.services.iter().map(|s| s.name.clone()).collect();
    let mut owners = Vec::new();
    for (owner, mut objs) in kept.owners {
        objs.pods.retain(|p| {
            if pods.contains(&p.name) {
                notes.push(format!("pod {} ({owner}): the state file has it", p.name));
                false
            } else if !port_exists(&p.port) {
                notes.push(format!(
                    "pod {} ({owner}): its interface {} is gone",
                    p.name, p.port
                ));
                false
            } else {
                true
            }
        });
        objs.nodes.retain(|n| {
            let keep = !nodes.contains(&n.name);
            if !keep {
                notes.push(format!("node {} ({owner}): the state file has it", n.name));
            }
            keep
        });
        objs.services.retain(|s| {
            let keep = !services.contains(&s.name);
            if !keep {
                notes.push(format!(
                    "service {} ({owner}): the state file has it",
                    s.name
                ));
            }
            keep
        });
        owners.push((owner, objs));
    }
    let with = |base: &StateFile, objs: &[&Objects]| {
        let mut s = base.clone();
        for o in objs {
            s.pods.extend(o.pods.iter().cloned());
            s.nodes.extend(o.nodes.iter().cloned());
            s.services.extend(o.services.iter().cloned());
        }
        s
    };
    // Usually everything fits: one validation. Else writer by writer.
    let all: Vec<&Objects> = owners.iter().map(|(_, o)| o).collect();
    let merged = with(&state, &all);
    if Engine::new(merged.clone()).is_ok() {
        return (merged, notes);
    }
    let mut state = state;
    for (owner, objs) in &owners {
        let next = with(&state, &[objs]);
        match Engine::new(next.clone()) {
            Ok(_) => state = next,
            Err(e) => notes.push(format!("every object of {owner}: {e}")),
        }
    }
    (state, notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATE: &str = include_str!("../../examples/node1.toml");

    fn config() -> StateFile {
        StateFile::parse(STATE).unwrap()
    }

    /// node1's state with its last pod moved to `owner`.
    fn owned(owner: &str) -> (StateFile, Engine) {
        let mut s = config();
        let p = s.pods.last_mut().unwrap();
        p.owner = owner.into();
        let e = Engine::new(s.clone()).unwrap().0;
        (s, e)
    }

    #[test]
    fn only_other_writers_objects_are_kept_and_they_read_back_with_their_owner() {
        let (s, e) = owned("cni");
        let k = Kept::of(&e);
        assert_eq!(k.owners.len(), 1);
        let cni = &k.owners["cni"];
        assert_eq!(cni.pods.len(), 1);
        assert_eq!(cni.pods[0].name, s.pods.last().unwrap().name);
        let text = serde_json::to_string(&k).unwrap();
        assert!(!text.contains("\"owner\""), "{text}");
        let back = Kept::parse(&text).unwrap();
        assert_eq!(back, k);
        assert_eq!(back.owners["cni"].pods[0].owner, "cni");
    }

    #[test]
    fn a_bad_file_is_refused_with_what_is_wrong() {
        for (text, want) in [
            ("{", "EOF"),
            (r#"{"format": 2, "owners": {}}"#, "format 2"),
            (
                r#"{"format": 1, "owners": {"config": {}}}"#,
                "owners.config",
            ),
            (
                r#"{"format": 1, "owners": {"Bad_Name": {}}}"#,
                "owners.'Bad_Name'",
            ),
            (
                r#"{"format": 1, "owners": {}, "extra": 1}"#,
                "unknown field",
            ),
            (
                r#"{"format": 1, "owners": {"cni": {"pods": [{"name": 3}]}}}"#,
                "invalid type",
            ),
        ] {
            let e = Kept::parse(text).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn writing_replaces_the_file_whole_and_no_objects_removes_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node1").join(FILE);
        let (_, e) = owned("cni");
        let keep = Keep::new(path.clone(), Kept::default());
        keep.save(Kept::of(&e)).unwrap();
        assert_eq!(Kept::load(&path).unwrap().unwrap(), Kept::of(&e));
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|d| d.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(FILE)]);
        let (_, none) = owned("");
        keep.save(Kept::of(&none)).unwrap();
        assert!(!path.exists());
        assert_eq!(Kept::load(&path).unwrap(), None);
    }

    #[test]
    fn restore_adds_kept_objects_but_the_config_wins_and_gone_ports_are_dropped() {
        let (s, e) = owned("cni");
        let kept = Kept::of(&e);
        let pod = s.pods.last().unwrap().clone();
        let mut cfg = config();
        cfg.pods.pop();
        // The pod comes back as the CNI plugin's.
        let (merged, notes) = restore(cfg.clone(), kept.clone(), |_| true);
        assert!(notes.is_empty(), "{notes:?}");
        let back = merged.pods.iter().find(|p| p.name == pod.name).unwrap();
        assert_eq!(back.owner, "cni");
        // Its interface is gone: dropped, and said so.
        let (merged, notes) = restore(cfg.clone(), kept.clone(), |p| p != pod.port);
        assert!(!merged.pods.iter().any(|p| p.name == pod.name));
        assert_eq!(notes.len(), 1);
        assert!(notes[0].contains("is gone"), "{notes:?}");
        // The state file lists it again: the config's.
        let (merged, notes) = restore(config(), kept.clone(), |_| true);
        assert_eq!(merged.pods.iter().filter(|p| p.name == pod.name).count(), 1);
        assert!(merged.pods.iter().all(|p| p.owner.is_empty()));
        assert!(notes[0].contains("the state file has it"), "{notes:?}");
        // The config changed so that the pod no longer fits: left out, with the reason.
        let mut narrow = cfg.clone();
        narrow.node.pod_cidr = "10.99.0.0/24".parse().unwrap();
        narrow.pods.clear();
        let (merged, notes) = restore(narrow, kept, |_| true);
        assert!(merged.pods.is_empty());
        assert!(notes[0].starts_with("every object of cni"), "{notes:?}");
    }
}
