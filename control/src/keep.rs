//! What the writers other than the node's config gave (the CNI plugin's pods, an agent's
//! Services), kept in a file so that a restart of switchd keeps it.
//!
//! Design: the state file holds the config's objects; every other writer's objects live only
//! in switchd's memory, and a runtime does not ADD its pods again after a restart. They are
//! kept as a snapshot, `RUN_DIR/NODE/objects.json` (`{"format": 1, "owners": {"cni":
//! {"pods": [...], "nodes": [...], "services": [...]}}}`, the objects in the state file's
//! schema, written by a temporary file, fsync and rename: a reader finds the old file or the
//! new one, never a part of one), and a journal, `objects.journal`: before a change that
//! changes them is published, the objects it creates, changes or deletes are appended to the
//! journal as JSON lines and synced, so the cost of a change is the size of the change, not
//! of everything kept (an agent's 10,000 Services). Once the journal outgrows the snapshot
//! (and 1 MiB), the next change writes a new snapshot and empties the journal. Reading
//! replays the journal over the snapshot; a last line without its newline (a write cut short
//! by a crash, never acknowledged) is ignored, any other bad line makes the whole unreadable.
//! Replaying twice gives the same objects (each line says what an object is, or that it is
//! gone), so a crash between a new snapshot and emptying the journal loses nothing. At
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
/// The journal's name, next to it.
pub const JOURNAL: &str = "objects.journal";
/// The journal is compacted into the snapshot once it is larger than this and the snapshot.
const JOURNAL_MIN: u64 = 1 << 20;

/// One line of the journal: an object as it is now (with its owner), or its removal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum Record {
    Pod(String, PodSpec),
    Node(String, RemoteNodeSpec),
    Service(String, ServiceSpec),
    DeletePod(String),
    DeleteNode(String),
    DeleteService(String),
}

/// The journal next to the snapshot at `path`.
pub fn journal_path(path: &Path) -> PathBuf {
    path.with_file_name(JOURNAL)
}

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

    /// Reads the snapshot at `path` and replays its journal: `Ok(None)` if there is neither.
    pub fn load(path: &Path) -> Result<Option<Kept>, String> {
        let snapshot = Kept::load_snapshot(path)?;
        let jpath = journal_path(path);
        let text = match std::fs::read(&jpath) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(snapshot),
            Err(e) => return Err(format!("{}: {e}", jpath.display())),
        };
        if text.len() as u64 > MAX_FILE {
            return Err(format!("{}: larger than {MAX_FILE} bytes", jpath.display()));
        }
        // A last line without its newline was cut short by a crash: never acknowledged.
        let whole = text
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(&text[..0], |i| &text[..=i]);
        let mut records = Vec::new();
        for (i, line) in whole.split(|b| *b == b'\n').enumerate() {
            if line.is_empty() {
                continue;
            }
            let r: Record = serde_json::from_slice(line)
                .map_err(|e| format!("{} line {}: {e}", jpath.display(), i + 1))?;
            records.push(r);
        }
        if snapshot.is_none() && records.is_empty() {
            return Ok(None);
        }
        Ok(Some(snapshot.unwrap_or_default().replay(records)?))
    }

    /// The objects after `records`, in order.
    fn replay(self, records: Vec<Record>) -> Result<Kept, String> {
        let mut pods: BTreeMap<String, (String, PodSpec)> = BTreeMap::new();
        let mut nodes: BTreeMap<String, (String, RemoteNodeSpec)> = BTreeMap::new();
        let mut services: BTreeMap<String, (String, ServiceSpec)> = BTreeMap::new();
        for (owner, o) in self.owners {
            for p in o.pods {
                pods.insert(p.name.clone(), (owner.clone(), p));
            }
            for n in o.nodes {
                nodes.insert(n.name.clone(), (owner.clone(), n));
            }
            for x in o.services {
                services.insert(x.name.clone(), (owner.clone(), x));
            }
        }
        for r in records {
            match r {
                Record::Pod(o, p) => {
                    pods.insert(p.name.clone(), (o, p));
                }
                Record::Node(o, n) => {
                    nodes.insert(n.name.clone(), (o, n));
                }
                Record::Service(o, x) => {
                    services.insert(x.name.clone(), (o, x));
                }
                Record::DeletePod(n) => {
                    pods.remove(&n);
                }
                Record::DeleteNode(n) => {
                    nodes.remove(&n);
                }
                Record::DeleteService(n) => {
                    services.remove(&n);
                }
            }
        }
        let mut out = Kept::default();
        for (o, p) in pods.into_values() {
            out.owners.entry(o).or_default().pods.push(p);
        }
        for (o, n) in nodes.into_values() {
            out.owners.entry(o).or_default().nodes.push(n);
        }
        for (o, x) in services.into_values() {
            out.owners.entry(o).or_default().services.push(x);
        }
        // Owners and objects are checked as a snapshot's are.
        let text = serde_json::to_string(&out).map_err(|e| e.to_string())?;
        Kept::parse(&text)
    }

    /// Reads the snapshot alone: `Ok(None)` if there is none.
    fn load_snapshot(path: &Path) -> Result<Option<Kept>, String> {
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
pub fn write(path: &Path, kept: &Kept) -> std::io::Result<u64> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let gone = |p: &Path| match std::fs::remove_file(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    };
    if kept.owners.values().all(Objects::is_empty) {
        gone(path)?;
        gone(&journal_path(path))?;
        return Ok(0);
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
    // The snapshot holds what the journal said: it is emptied (replaying it again would
    // change nothing, so a crash before this loses nothing).
    gone(&journal_path(path))?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(text.len() as u64)
}

/// Where the server keeps other writers' objects: the snapshot and the journal.
#[derive(Debug)]
pub struct Keep {
    path: PathBuf,
    inner: Mutex<Journal>,
}

/// The open journal and the sizes that decide when it is compacted.
#[derive(Debug, Default)]
struct Journal {
    file: Option<std::fs::File>,
    bytes: u64,
    snapshot: u64,
}

fn owned(owner: &str) -> bool {
    !owner.is_empty()
}

impl Keep {
    /// Keeps objects in `path` (and its journal).
    pub fn new(path: PathBuf) -> Keep {
        let bytes = std::fs::metadata(journal_path(&path)).map_or(0, |m| m.len());
        let snapshot = std::fs::metadata(&path).map_or(0, |m| m.len());
        Keep {
            path,
            inner: Mutex::new(Journal {
                file: None,
                bytes,
                snapshot,
            }),
        }
    }

    /// The snapshot's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `now` as the snapshot and empties the journal (at start, so that the files say
    /// what this switchd has, and after a refused change).
    pub fn write(&self, now: &Kept) -> Result<(), String> {
        let mut j = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        j.file = None;
        let n = write(&self.path, now).map_err(|e| format!("{}: {e}", self.path.display()))?;
        j.bytes = 0;
        j.snapshot = n;
        Ok(())
    }

    /// Records what `plan` changes of the objects kept (those whose owner is not the
    /// config), before it is published: appended to the journal and synced, or, once the
    /// journal has outgrown the snapshot, a new snapshot.
    pub fn save(&self, engine: &Engine, plan: &Plan) -> Result<(), String> {
        let records = changes(engine, plan);
        if records.is_empty() {
            return Ok(());
        }
        let mut text = Vec::new();
        for r in &records {
            serde_json::to_writer(&mut text, r).map_err(|e| e.to_string())?;
            text.push(b'\n');
        }
        let deletes = records.iter().any(|r| {
            matches!(
                r,
                Record::DeletePod(_) | Record::DeleteNode(_) | Record::DeleteService(_)
            )
        });
        let mut j = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if j.bytes + text.len() as u64 > JOURNAL_MIN.max(j.snapshot)
            || (deletes && nothing_after(engine, plan))
        {
            drop(j);
            return self.write(&Kept::after(engine, plan));
        }
        let jpath = journal_path(&self.path);
        let err = |e: std::io::Error| format!("{}: {e}", jpath.display());
        if j.file.is_none() {
            if let Some(dir) = jpath.parent() {
                std::fs::create_dir_all(dir).map_err(err)?;
            }
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&jpath)
                .map_err(err)?;
            j.file = Some(f);
        }
        let r = j
            .file
            .as_mut()
            .map_or(Ok(()), |f| f.write_all(&text).and_then(|()| f.sync_data()));
        if let Err(e) = r {
            // A part of a line may be there: a snapshot makes the files whole again.
            j.file = None;
            drop(j);
            let msg = err(e);
            return self
                .write(&Kept::after(engine, plan))
                .map_err(|w| format!("{msg}; {w}"));
        }
        j.bytes += text.len() as u64;
        Ok(())
    }
}

/// Whether nothing is kept once `plan` is committed (the files then go).
fn nothing_after(engine: &Engine, plan: &Plan) -> bool {
    let base = plan.base().unwrap_or(engine.base());
    let changed = plan.service_changes();
    let names: BTreeSet<&str> = changed.iter().map(|(n, _)| n.as_str()).collect();
    !base.pods.iter().any(|p| owned(&p.owner))
        && !base.nodes.iter().any(|n| owned(&n.owner))
        && !changed
            .iter()
            .any(|(_, s)| s.as_ref().is_some_and(|s| owned(&s.owner)))
        && !engine
            .services()
            .iter()
            .any(|(n, s)| owned(&s.owner) && !names.contains(n.as_str()))
}

/// The journal lines for what `plan` changes of the objects not the config's.
fn changes(engine: &Engine, plan: &Plan) -> Vec<Record> {
    let mut out = Vec::new();
    if let Some(b) = plan.base() {
        let old = engine.base();
        for p in &b.pods {
            let before = old.pods.iter().find(|x| x.name == p.name);
            if owned(&p.owner) && before != Some(p) {
                out.push(Record::Pod(p.owner.clone(), p.clone()));
            } else if !owned(&p.owner) && before.is_some_and(|x| owned(&x.owner)) {
                out.push(Record::DeletePod(p.name.clone()));
            }
        }
        for p in old.pods.iter().filter(|p| owned(&p.owner)) {
            if !b.pods.iter().any(|x| x.name == p.name) {
                out.push(Record::DeletePod(p.name.clone()));
            }
        }
        for n in &b.nodes {
            let before = old.nodes.iter().find(|x| x.name == n.name);
            if owned(&n.owner) && before != Some(n) {
                out.push(Record::Node(n.owner.clone(), n.clone()));
            } else if !owned(&n.owner) && before.is_some_and(|x| owned(&x.owner)) {
                out.push(Record::DeleteNode(n.name.clone()));
            }
        }
        for n in old.nodes.iter().filter(|n| owned(&n.owner)) {
            if !b.nodes.iter().any(|x| x.name == n.name) {
                out.push(Record::DeleteNode(n.name.clone()));
            }
        }
    }
    for (name, s) in plan.service_changes() {
        let was = engine.services().get(name).is_some_and(|x| owned(&x.owner));
        match s {
            Some(s) if owned(&s.owner) => out.push(Record::Service(s.owner.clone(), s.clone())),
            _ if was => out.push(Record::DeleteService(name.clone())),
            _ => {}
        }
    }
    out
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
        let keep = Keep::new(path.clone());
        keep.write(&Kept::of(&e)).unwrap();
        assert_eq!(Kept::load(&path).unwrap().unwrap(), Kept::of(&e));
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|d| d.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(FILE)]);
        let (_, none) = owned("");
        keep.write(&Kept::of(&none)).unwrap();
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
