//! The workers as the proxy sees them: a backend per worker process with
//! an exact count of its open connections, the rotation the supervisor
//! sets and the accept loops read, and the registry handles read.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::{mpsc, Notify};

use crate::balance::{ActiveCount, Candidate};

/// Where a worker's private listener is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// A loopback port (the PORT contract, or no PROXY header to trust).
    Tcp(SocketAddr),
    /// A Unix socket only the master's user can reach: with a PROXY header,
    /// which the worker believes, nobody else may connect.
    Unix(std::path::PathBuf),
}

/// One worker process as the proxy sees it.
#[derive(Debug)]
pub(crate) struct Backend {
    pub(crate) slot: usize,
    pub(crate) pid: u32,
    /// The worker's private listener for each public address, in order.
    pub(crate) addrs: Vec<Target>,
    /// The slot mixed into a hash key, stable across the slot's workers.
    key: u64,
    active: ActiveCount,
    /// Connections forwarded to it, ever.
    pub(crate) total: AtomicU64,
    /// Connections to it that could not be made.
    pub(crate) connect_errors: AtomicU64,
    /// Out of rotation and waiting for its connections to end.
    draining: AtomicBool,
    /// Told the supervisor it is idle (once), on this channel.
    idle_sent: AtomicBool,
    idle: mpsc::UnboundedSender<u32>,
    /// Inodes of its private listeners, to check that the worker still
    /// holds them (the master keeps copies, which keep them listening).
    inodes: Vec<u64>,
    /// When the worker was last seen holding them (ms since `EPOCH`).
    checked_at: AtomicU64,
    /// The worker closed its listener: it gets no more connections.
    refusing: AtomicBool,
    /// Where a refusing worker is reported (once).
    refusing_tx: mpsc::UnboundedSender<u32>,
    /// What the plane keeps for this worker besides the counts (HTTP
    /// mode: its kept-alive connections), made on first use.
    kept: OnceLock<Box<dyn Kept>>,
}

/// What a plane keeps for one worker besides the counts (HTTP mode: the
/// pool of kept-alive connections to it). The shared code knows only when
/// to let go of it.
pub(crate) trait Kept: std::any::Any + std::fmt::Debug + Send + Sync {
    /// The worker leaves the rotation: what is idle goes now.
    fn drain(&self);
    /// The worker is gone: everything goes, and nothing is kept from now
    /// on.
    fn close(&self);
    /// For the plane that made it to find its own type again.
    fn as_any(&self) -> &dyn std::any::Any;
}

/// How long a check that a worker still holds its listener is trusted.
const HOLD_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

pub(crate) fn now_ms() -> u64 {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    EPOCH
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

/// Whether process `pid` has an fd on the socket with this inode.
fn holds_socket(pid: u32, inode: u64) -> bool {
    let want = format!("socket:[{inode}]");
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        // Cannot look (gone, or no /proc): assume it does.
        return true;
    };
    dir.flatten()
        .any(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.as_os_str() == want.as_str()))
}

impl Backend {
    /// A backend for the worker `pid` listening on `addrs` (its private
    /// listeners, whose socket inodes are `inodes`); once it drains to zero
    /// connections its pid is sent on `idle`. The master keeps a copy of
    /// each private listener until the worker is reaped (then it passes on
    /// what the worker never accepted); a worker found to have closed its
    /// own is reported on `refusing_tx`, and skipped.
    pub(crate) fn new(
        slot: usize,
        pid: u32,
        addrs: Vec<Target>,
        inodes: Vec<u64>,
        idle: mpsc::UnboundedSender<u32>,
        refusing_tx: mpsc::UnboundedSender<u32>,
    ) -> Arc<Self> {
        Arc::new(Backend {
            slot,
            pid,
            addrs,
            inodes,
            // Checked at the first pick.
            checked_at: AtomicU64::new(0),
            refusing: AtomicBool::new(false),
            refusing_tx,
            key: (slot as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5851_f42d_4c95_7f2d,
            active: ActiveCount::default(),
            total: AtomicU64::new(0),
            connect_errors: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            idle_sent: AtomicBool::new(false),
            idle,
            kept: OnceLock::new(),
        })
    }

    /// Whether the worker has closed its private listener (checked at most
    /// once per [`HOLD_CHECK`]; reported to the supervisor once).
    pub(crate) fn refuses(&self) -> bool {
        if self.refusing.load(Ordering::Acquire) {
            return true;
        }
        let now = now_ms();
        let last = self.checked_at.load(Ordering::Relaxed);
        if self.inodes.is_empty()
            || (last != 0 && now.saturating_sub(last) < HOLD_CHECK.as_millis() as u64)
        {
            return false;
        }
        self.checked_at.store(now, Ordering::Relaxed);
        if self.inodes.iter().all(|&i| holds_socket(self.pid, i)) {
            return false;
        }
        if !self.refusing.swap(true, Ordering::AcqRel) {
            let _ = self.refusing_tx.send(self.pid);
        }
        true
    }

    /// Open connections.
    pub(crate) fn active(&self) -> u32 {
        self.active.get()
    }

    /// Takes the backend out of service: once its count is zero the
    /// supervisor hears of it on the idle channel. Returns true when it is
    /// idle already.
    pub(crate) fn start_draining(&self) -> bool {
        self.draining.store(true, Ordering::Release);
        // What the plane keeps idle for it goes now (HTTP mode: its idle
        // connections; busy ones close after their response).
        if let Some(kept) = self.kept.get() {
            kept.drain();
        }
        self.active() == 0 && !self.idle_sent.swap(true, Ordering::AcqRel)
    }
}

#[cfg(feature = "http")]
impl Backend {
    /// Out of rotation and waiting for its connections to end.
    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
}

impl Backend {
    /// What the plane keeps for this worker, made on first use. A backend
    /// belongs to one plane, so it is always of the plane's type.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) fn kept<K: Kept + Default>(&self) -> &K {
        let kept = self.kept.get_or_init(|| Box::new(K::default()));
        match kept.as_any().downcast_ref::<K>() {
            Some(k) => k,
            None => unreachable!("a backend serves one plane"),
        }
    }

    /// The worker is gone: what the plane kept for it is let go.
    pub(crate) fn close_kept(&self) {
        if let Some(kept) = self.kept.get() {
            kept.close();
        }
    }
}

impl Candidate for Arc<Backend> {
    #[inline]
    fn key(&self) -> u64 {
        self.key
    }
    #[inline]
    fn active(&self) -> u32 {
        self.active.get()
    }
}

/// A counted connection to a backend; the count drops with it, however the
/// connection ends, and a draining backend that reaches zero is reported.
pub(crate) struct Counted {
    pub(crate) backend: Arc<Backend>,
    /// Its position in the rotation it was picked from.
    pub(crate) index: usize,
}

impl Counted {
    pub(crate) fn new(backends: &[Arc<Backend>], index: usize) -> Self {
        let backend = backends[index].clone();
        backend.active.open();
        Counted { backend, index }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let left = self.backend.active.close();
        if left == 0
            && self.backend.draining.load(Ordering::Acquire)
            && !self.backend.idle_sent.swap(true, Ordering::AcqRel)
        {
            let _ = self.backend.idle.send(self.backend.pid);
        }
    }
}

/// The backends new connections may go to; the supervisor replaces the set,
/// the accept loops read it.
#[derive(Debug, Default)]
pub(crate) struct Rotation {
    set: Mutex<Arc<Vec<Arc<Backend>>>>,
    version: AtomicU64,
    changed: Notify,
}

impl Rotation {
    /// Replaces the set if it differs (by pid, in order).
    pub(crate) fn replace(&self, backends: Vec<Arc<Backend>>) {
        let mut set = self.set.lock().unwrap_or_else(|p| p.into_inner());
        let same =
            set.len() == backends.len() && set.iter().zip(&backends).all(|(a, b)| a.pid == b.pid);
        if same {
            return;
        }
        *set = Arc::new(backends);
        self.version.fetch_add(1, Ordering::AcqRel);
        self.changed.notify_waiters();
    }

    /// Bumped at each change of the set: an accept loop compares it with
    /// the version of its copy.
    pub(crate) fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    pub(crate) fn snapshot(&self) -> (u64, Arc<Vec<Arc<Backend>>>) {
        let set = self.set.lock().unwrap_or_else(|p| p.into_inner());
        (self.version.load(Ordering::Acquire), set.clone())
    }

    /// Resolves once the set is no longer the one of `version`.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) async fn changed_since(&self, version: u64) {
        loop {
            let notified = self.changed.notified();
            if self.version() != version {
                return;
            }
            notified.await;
        }
    }

    /// The set, once it is not empty.
    pub(crate) async fn serving(&self) -> (u64, Arc<Vec<Arc<Backend>>>) {
        loop {
            let notified = self.changed.notified();
            let (version, backends) = self.snapshot();
            if !backends.is_empty() {
                return (version, backends);
            }
            notified.await;
        }
    }
}

/// Every worker's backend by pid, shared by the supervisor (which adds and
/// removes) and handles (which read the counts).
pub(crate) type Registry = Arc<Mutex<std::collections::HashMap<u32, Arc<Backend>>>>;
