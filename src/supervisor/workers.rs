//! What the loop keeps of each live worker process, in one table keyed by
//! pid, so that a reap is one removal and nothing is left behind.

use nix::unistd::Pid;

use super::monitors::Monitor;
use super::Supervisor;
use crate::process::cgroup::WorkerCgroup;

/// Why the master killed a worker: it missed its start timeout.
pub(super) const START_TIMEOUT: &str = "start_timeout";
/// Why the master killed a worker: it listened but never said ready
/// (`--wait-ready`), which a restart would only repeat.
pub(super) const NEVER_READY: &str = "never_ready";
/// Why the master killed a worker: it missed its watchdog.
pub(super) const WATCHDOG: &str = "watchdog";

/// One live worker process, as the loop knows it besides its slot.
#[derive(Default)]
pub(super) struct Worker {
    /// Its tasks, and the master's fds for an upgrade.
    pub(super) monitor: Option<Monitor>,
    /// Its cgroup, where cgroup v2 is writable.
    pub(super) cgroup: Option<WorkerCgroup>,
    /// Where its app runs, as the preload reported it, when that is
    /// another process of its tree (`npm start`): the stop signal goes
    /// there.
    pub(super) app: Option<Pid>,
    /// Why the master killed it ([`START_TIMEOUT`], [`WATCHDOG`]), for the
    /// restart or the failed reload that follows.
    pub(super) killed_for: Option<&'static str>,
    /// Its app listens and waits to say ready (the preload said so).
    pub(super) parked: bool,
    /// Since when connections wait on its slot's socket without one being
    /// accepted, and how many waited then.
    pub(super) stuck: Option<(std::time::Instant, u32)>,
    /// It was found listening on a socket of its own while herd's waited:
    /// its slot gets no more connections.
    pub(super) never_accepts: bool,
    /// Replaced for its request count (`max_requests`): once is enough.
    pub(super) request_limited: bool,
}

impl Supervisor {
    /// The entry of worker `pid`, made if it has none yet.
    pub(super) fn worker(&mut self, pid: Pid) -> &mut Worker {
        self.workers.entry(pid).or_default()
    }

    /// The process of worker `pid`'s tree that runs its app, if the
    /// preload named one.
    pub(super) fn app_of(&self, pid: Pid) -> Option<Pid> {
        self.workers.get(&pid).and_then(|w| w.app)
    }

    /// Every live worker's monitor.
    pub(super) fn monitors(&self) -> impl Iterator<Item = (Pid, &Monitor)> {
        self.workers
            .iter()
            .filter_map(|(&pid, w)| Some((pid, w.monitor.as_ref()?)))
    }
}
