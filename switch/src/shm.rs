//! The conntrack region's file: shared memory that outlives switchd.
//!
//! Design: the table (`flowtable::conntrack::region`) lives in `RUN_DIR/conntrack`, a file
//! on tmpfs (`/run` by default), mapped shared. A process that stops, by SIGTERM or SIGKILL,
//! leaves the file and so every tracked connection; the next switchd maps it again and
//! `Conntrack::open` decides what to keep. The file is locked (`flock`) by the process that
//! maps it, so two switchds never own one table: a second waits for the first to exit (a
//! SIGTERM takes a moment) and gives up with an error naming the file. A file of the wrong
//! size (another capacity or layout) is emptied and sized anew. The mapping (and with it the
//! lock: a shared mapping keeps its file open) goes when the table that uses it is dropped.
//!
//! Also here: the clocks the region and the XDP program share (`CLOCK_MONOTONIC`, which
//! every process of one boot agrees on; the region records the boot).
//!
//! Thread-safety: [`open`] runs on the control thread before any worker starts; the
//! memory it returns is the table's, shared lock-free as `flowtable::conntrack` says.
#![allow(unsafe_code)]

use flowtable::conntrack::region::{layout, Header, Layout};
use flowtable::conntrack::{Entry, Identity, Memory};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU32;
use std::time::{Duration, Instant};

/// The region's file name inside the run directory.
pub const REGION_FILE: &str = "conntrack";
/// How long [`open`] waits for another process to let go of the region.
pub const LOCK_WAIT: Duration = Duration::from_secs(10);

/// Why the region could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("conntrack region {}: {what}: {source}", path.display())]
pub struct ShmError {
    path: PathBuf,
    what: String,
    #[source]
    source: io::Error,
}

fn fail(path: &Path, what: impl Into<String>) -> impl FnOnce(io::Error) -> ShmError + '_ {
    let what = what.into();
    move |source| ShmError {
        path: path.to_path_buf(),
        what,
        source,
    }
}

/// The mapping and its locked file: the table's memory, unmapped when the table that holds
/// it (as `Memory`'s owner, dropped after the slices into it) is dropped.
struct Region {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
    _file: File,
}

// SAFETY: the mapping is plain shared memory of atomics; the table decides who touches it.
unsafe impl Send for Region {}

// SAFETY: only the table reads or writes the memory, through atomics.
unsafe impl Sync for Region {}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: `map` created this mapping with this length; it is unmapped once, when
        // the table that owns it (and every slice into it) is gone.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// The locked, mapped region for a table of `capacity` entries; also says whether the file
/// had to be sized anew (and why).
pub fn open(dir: &Path, capacity: usize) -> Result<(Memory, Option<String>), ShmError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(fail(dir, "create the directory"))?;
    let path = dir.join(REGION_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(fail(&path, "open"))?;
    lock(&file, &path)?;
    let l = layout(capacity);
    let size = file.metadata().map_err(fail(&path, "stat"))?.len();
    let mut resized = None;
    if size != l.len as u64 {
        if size != 0 {
            resized = Some(format!(
                "the file has {size} bytes, a table of {} entries takes {}",
                l.capacity, l.len
            ));
            file.set_len(0).map_err(fail(&path, "empty"))?;
        }
        file.set_len(l.len as u64)
            .map_err(fail(&path, format!("size to {} bytes", l.len)))?;
    }
    let mem = map(&file, &l).map_err(fail(&path, "mmap"))?;
    Ok((mem, resized))
}

/// Empties the region (`--fresh`) or removes it (`cleanup`); fails while a switchd holds it.
pub fn remove(dir: &Path) -> Result<bool, ShmError> {
    let path = dir.join(REGION_FILE);
    let file = match OpenOptions::new().read(true).write(true).open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(fail(&path, "open")(e)),
    };
    try_lock(&file).map_err(fail(&path, "a running switchd holds it (stop it first)"))?;
    std::fs::remove_file(&path).map_err(fail(&path, "remove"))?;
    let _ = std::fs::remove_dir(dir);
    Ok(true)
}

/// Whether a running switchd holds the conntrack region in `dir` (its lock is taken).
pub fn held(dir: &Path) -> bool {
    let path = dir.join(REGION_FILE);
    let Ok(file) = OpenOptions::new().read(true).write(true).open(path) else {
        return false;
    };
    // (Taken and, as the file closes, released at once when free.)
    try_lock(&file).is_err()
}

fn try_lock(file: &File) -> io::Result<()> {
    // SAFETY: flock on a descriptor this function borrows; no memory is involved.
    let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn lock(file: &File, path: &Path) -> Result<(), ShmError> {
    let start = Instant::now();
    loop {
        match try_lock(file) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && start.elapsed() < LOCK_WAIT => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                return Err(fail(
                    path,
                    format!(
                        "another switchd holds it (waited {} s; two daemons on one host need \
                         two --run-dir)",
                        LOCK_WAIT.as_secs()
                    ),
                )(e))
            }
        }
    }
}

fn map(file: &File, l: &Layout) -> io::Result<Memory> {
    // SAFETY: a new shared mapping of the whole file (sized to `l.len` above) at an address
    // the kernel picks; nothing else in this process refers to it.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            l.len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let base = p.cast::<u8>();
    let owner = Region {
        ptr: std::ptr::NonNull::new(base).ok_or_else(io::Error::last_os_error)?,
        len: l.len,
        _file: file.try_clone()?,
    };
    // 'static below: the slices go into `Memory` together with `owner`, which keeps the
    // mapping until the table drops it after them, and no copy of them is kept here.
    // SAFETY: the header is at offset 0 of a page-aligned mapping of at least HEADER_BYTES;
    // `Header` is repr(C), made of atomics (any bit pattern is valid, and concurrent access
    // from another process is atomic access); mapped while `owner` lives (above).
    let header: &'static Header = unsafe { &*base.cast::<Header>() };
    // SAFETY: `layout` puts `capacity` entries at `entries_at` (page-aligned, so aligned for
    // `Entry`) inside the mapping; `Entry` is repr(C) atomics, valid for any bit pattern;
    // mapped while `owner` lives.
    let entries: &'static [Entry] = unsafe {
        std::slice::from_raw_parts(base.wrapping_add(l.entries_at).cast::<Entry>(), l.capacity)
    };
    // SAFETY: `slots` u32 atomics at `index_at` (64-byte aligned) inside the mapping, past
    // the entries; valid for any bit pattern; mapped while `owner` lives.
    let index: &'static [AtomicU32] = unsafe {
        std::slice::from_raw_parts(base.wrapping_add(l.index_at).cast::<AtomicU32>(), l.slots)
    };
    Memory::mapped(header, entries, index, Box::new(owner))
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
}

/// The identity a region is stamped with: the node, this boot, this process.
pub fn identity(node: &str) -> Identity {
    let mut boot = [0u8; 16];
    if let Ok(s) = std::fs::read_to_string("/proc/sys/kernel/random/boot_id") {
        let hex: Vec<u8> = s
            .bytes()
            .filter(u8::is_ascii_hexdigit)
            .map(|c| (c as char).to_digit(16).unwrap_or(0) as u8)
            .collect();
        for (i, b) in boot.iter_mut().enumerate() {
            let hi = hex.get(2 * i).copied().unwrap_or(0);
            let lo = hex.get(2 * i + 1).copied().unwrap_or(0);
            *b = (hi << 4) | lo;
        }
    }
    Identity {
        node: node.to_string(),
        boot,
        pid: std::process::id(),
    }
}

/// `CLOCK_MONOTONIC`: time since boot, the same in every process (and `bpf_ktime_get_ns`).
pub fn monotonic() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into memory this function owns.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if r != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The `f_type` of the filesystem `path` is on (`statfs`), if it can be read.
pub fn statfs_type(path: &std::ffi::CStr) -> Option<i64> {
    // SAFETY: an all-zero statfs is a valid value of this plain C struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated; statfs writes one struct into memory we own.
    let r = unsafe { libc::statfs(path.as_ptr(), &mut st) };
    (r == 0).then_some(st.f_type as i64)
}

/// Mounts a bpf filesystem on `at`.
pub fn mount_bpffs(at: &Path) -> io::Result<()> {
    let target = std::ffi::CString::new(at.as_os_str().as_encoded_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let fstype = c"bpf";
    // SAFETY: every pointer is a NUL-terminated string that outlives the call; no data.
    let r = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowtable::conntrack::{Conntrack, FlowKey, Opened, Timeouts};
    use std::net::Ipv4Addr;

    fn key(port: u16) -> FlowKey {
        FlowKey {
            src: Ipv4Addr::new(10, 244, 1, 2),
            dst: Ipv4Addr::new(10, 96, 0, 10),
            sport: port,
            dport: 53,
            proto: 17,
        }
    }

    fn table(dir: &Path, capacity: usize) -> (Conntrack, Opened, Option<String>) {
        let (mem, resized) = open(dir, capacity).unwrap();
        let (ct, opened) = Conntrack::open(mem, Timeouts::default(), &identity("node1"));
        ct.set_now(100);
        (ct, opened, resized)
    }

    #[test]
    fn a_table_outlives_its_process_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (ct, opened, resized) = table(dir.path(), 1000);
        assert_eq!((opened, resized), (Opened::Fresh, None));
        for p in 0..10 {
            ct.insert(key(p), key(p)).unwrap();
        }
        // While it is held, nobody else may take or remove it.
        let err = remove(dir.path()).unwrap_err().to_string();
        assert!(err.contains("a running switchd holds it"), "{err}");
        drop(ct); // the process goes: its lock with it, the file stays
        let (ct, opened, _) = table(dir.path(), 1000);
        let Opened::Resumed(r) = opened else {
            panic!("{opened:?}")
        };
        assert_eq!(r.kept, 10);
        assert!(ct.lookup(&key(3)).is_some());
        drop(ct);
        assert!(remove(dir.path()).unwrap());
        assert!(!dir.path().join(REGION_FILE).exists());
        assert!(!remove(dir.path()).unwrap(), "nothing left to remove");
    }

    #[test]
    fn another_capacity_or_garbage_starts_a_fresh_table() {
        let dir = tempfile::tempdir().unwrap();
        let (ct, _, _) = table(dir.path(), 1000);
        ct.insert(key(1), key(1)).unwrap();
        drop(ct);
        let (ct, opened, resized) = table(dir.path(), 2000);
        assert_eq!(opened, Opened::Fresh);
        let why = resized.unwrap();
        assert!(why.contains("a table of 2000 entries takes"), "{why}");
        assert!(ct.lookup(&key(1)).is_none());
        drop(ct);
        // A file of the right size that is not a table.
        let path = dir.path().join(REGION_FILE);
        let len = std::fs::metadata(&path).unwrap().len() as usize;
        std::fs::write(&path, vec![0x5a; len]).unwrap();
        let (ct, opened, resized) = table(dir.path(), 2000);
        assert_eq!(resized, None);
        let Opened::Replaced(why) = opened else {
            panic!("{opened:?}")
        };
        assert!(why.starts_with("not a conntrack region"), "{why}");
        assert!(ct.is_empty());
        ct.insert(key(2), key(2)).unwrap();
        assert_eq!(ct.len(), 1);
    }
}
