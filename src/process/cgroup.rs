//! A cgroup per worker, so that nothing a worker started outlives it.
//!
//! A process group is not enough: a worker's descendant that calls
//! `setsid` (or double-forks into a new session) leaves its group, keeps
//! the inherited listening socket, and survives every `killpg`. A cgroup
//! it cannot leave does hold it: where a cgroup v2 hierarchy is mounted
//! and the master may create cgroups below its own (root, or systemd's
//! `Delegate=yes`), each cluster gets `herd-<pid>-<n>/` below the master's
//! cgroup and each worker a `w<slot>-<generation>/` below that. The child
//! moves itself there between fork and exec (a write of "0" to an fd the
//! master opened), and `cgroup.kill` ends the worker's whole tree when its
//! main process has exited, at the drain timeout, or on a forced stop.
//!
//! The master itself may die by SIGKILL: then the sentinel (see
//! [`super::sentinel`]) writes `cgroup.kill` of the cluster's cgroup, which
//! ends every worker tree.
//!
//! Why not a child subreaper: orphans would become the master's children,
//! and an embedding program may own children of its own; telling them
//! apart, and reaping them without `waitpid(-1)`, is not possible.

use std::ffi::CString;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::libc;

/// How long a killed cgroup may take to empty before it is left behind.
const EMPTY_WAIT: Duration = Duration::from_secs(5);
/// How often an emptying cgroup is looked at.
const EMPTY_POLL: Duration = Duration::from_millis(10);

static CLUSTERS: AtomicU64 = AtomicU64::new(0);

/// The cgroup of one cluster.
#[derive(Debug)]
pub(crate) struct ClusterCgroup {
    dir: PathBuf,
    /// Removed when the cluster ends (not when an upgrade hands it on).
    owned: bool,
}

/// One worker's cgroup.
#[derive(Debug, Clone)]
pub(crate) struct WorkerCgroup {
    dir: PathBuf,
}

/// The cgroup v2 directory of this process, if cgroup v2 is mounted.
fn own_cgroup_dir() -> Option<PathBuf> {
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let rel = cgroup.lines().find_map(|l| l.strip_prefix("0::"))?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    // "... <mount point> <options> - cgroup2 <source> <options>"
    let mount = mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        if !right.starts_with("cgroup2 ") {
            return None;
        }
        let fields: Vec<&str> = left.split_whitespace().collect();
        let root = *fields.get(3)?;
        let point = *fields.get(4)?;
        // The mount shows the hierarchy from `root`; our path is relative
        // to the hierarchy's top.
        let rel_to_mount = Path::new(rel).strip_prefix(root).ok()?;
        Some(Path::new(point).join(rel_to_mount))
    })?;
    mount.is_dir().then_some(mount)
}

impl ClusterCgroup {
    /// Creates the cluster's cgroup. `Ok(None)`
    /// where cgroup v2 is not there or not writable: then only process
    /// groups hold the workers' trees.
    pub(crate) fn create() -> io::Result<Option<ClusterCgroup>> {
        let Some(base) = own_cgroup_dir() else {
            return Ok(None);
        };
        remove_stale(&base);
        let n = CLUSTERS.fetch_add(1, Ordering::Relaxed);
        let dir = base.join(format!("herd-{}-{n}", std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem
                ) || e.raw_os_error() == Some(libc::EROFS) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(e),
        }
        if !dir.join("cgroup.kill").exists() {
            // Linux before 5.14: no cgroup.kill.
            let _ = std::fs::remove_dir(&dir);
            return Ok(None);
        }
        Ok(Some(ClusterCgroup { dir, owned: true }))
    }

    /// The cgroup a previous master created (an upgrade).
    pub(crate) fn adopt(dir: PathBuf) -> ClusterCgroup {
        ClusterCgroup { dir, owned: true }
    }

    /// Its directory.
    pub(crate) fn path(&self) -> &Path {
        &self.dir
    }

    /// Its `cgroup.kill`, for the sentinel.
    pub(crate) fn kill_path(&self) -> PathBuf {
        self.dir.join("cgroup.kill")
    }

    /// Creates the cgroup of one worker.
    pub(crate) fn worker(&self, slot: usize, generation: u64) -> io::Result<WorkerCgroup> {
        let dir = self.dir.join(format!("w{slot}-{generation}"));
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            // Left over from a worker whose tree did not empty in time.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        Ok(WorkerCgroup { dir })
    }

    /// Kills whatever is left in the cluster's cgroup and removes it.
    /// Blocking for a moment: call it off the event loop.
    pub(crate) fn finish(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        self.owned = false;
        write_kill(&self.dir);
        if wait_empty_blocking(&self.dir) {
            remove_tree(&self.dir);
        }
    }
}

impl Drop for ClusterCgroup {
    fn drop(&mut self) {
        if self.owned {
            self.shut_down();
        }
    }
}

impl WorkerCgroup {
    /// The cgroup of a worker a previous master started (an upgrade).
    pub(crate) fn adopt(dir: PathBuf) -> WorkerCgroup {
        WorkerCgroup { dir }
    }

    /// The cgroup's directory (its `memory.stat`, `cpu.stat`).
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// An fd for the child to move itself into this cgroup (it writes "0").
    pub(crate) fn procs_fd(&self) -> io::Result<OwnedFd> {
        let path = CString::new(self.dir.join("cgroup.procs").as_os_str().as_bytes())
            .map_err(io::Error::other)?;
        Ok(nix::fcntl::open(
            path.as_c_str(),
            OFlag::O_WRONLY | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )?)
    }

    /// SIGKILLs every process in the worker's cgroup, whatever its session.
    pub(crate) fn kill(&self) {
        write_kill(&self.dir);
    }

    /// Kills what is left, waits until the cgroup is empty, removes it.
    pub(crate) async fn remove(self) {
        self.kill();
        let deadline = tokio::time::Instant::now() + EMPTY_WAIT;
        while populated(&self.dir) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(EMPTY_POLL).await;
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Removes the cgroups of clusters whose master is gone (killed by
/// SIGKILL: its sentinel killed their processes, but nobody removed the
/// directories).
fn remove_stale(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("herd-"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let dir = e.path();
        write_kill(&dir);
        if wait_empty_blocking(&dir) {
            remove_tree(&dir);
        }
    }
}

fn write_kill(dir: &Path) {
    let _ = std::fs::write(dir.join("cgroup.kill"), "1");
}

fn populated(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("cgroup.events"))
        .map(|e| e.lines().any(|l| l == "populated 1"))
        .unwrap_or(false)
}

fn wait_empty_blocking(dir: &Path) -> bool {
    let deadline = std::time::Instant::now() + EMPTY_WAIT;
    while populated(dir) {
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(EMPTY_POLL);
    }
    true
}

/// Removes `dir` and the worker cgroups below it (children first).
fn remove_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                let _ = std::fs::remove_dir(e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// Writes "0" to `fd` (the cgroup.procs of the worker's cgroup): moves the
/// calling process there.
///
/// # Safety
///
/// Async-signal-safe (one write); called in the child between fork and exec.
pub(crate) unsafe fn enter(fd: libc::c_int) -> bool {
    unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) == 1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_cgroup_is_created_and_removed_where_cgroup_v2_is_writable() {
        let Some(cluster) = ClusterCgroup::create().unwrap() else {
            eprintln!("no writable cgroup v2 here: nothing to test");
            return;
        };
        let dir = cluster.dir.clone();
        let w = cluster.worker(0, 0).unwrap();
        assert!(w.dir.is_dir());
        assert!(!populated(&w.dir));
        cluster.finish();
        assert!(!dir.exists(), "{} removed", dir.display());
    }
}
