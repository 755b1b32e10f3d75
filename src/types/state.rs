//! Where a slot is in its life, and the point-in-time view of one.

use std::fmt;

use super::exit::Exit;

/// A point-in-time view of one worker slot.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct WorkerInfo {
    /// The slot index (also the worker's `NODE_APP_INSTANCE`).
    pub slot: usize,
    /// The generation of the current or last worker.
    pub generation: u64,
    /// The pid of the live worker, if any.
    pub pid: Option<u32>,
    /// Where the slot is in its life.
    pub state: WorkerState,
    /// How many times the slot was restarted after an unexpected exit.
    pub restarts: u32,
    /// Every replacement of the slot's worker since the master started,
    /// by reason: exits, missed start timeouts and watchdogs, memory and
    /// request limits, reloads and soft restarts.
    #[cfg_attr(feature = "serde", serde(default))]
    pub restarts_by: RestartCounts,
    /// How the previous worker of this slot ended.
    pub last_exit: Option<Exit>,
    /// Predecessors still draining after a reload.
    pub draining: Vec<u32>,
    /// When the current worker was started (uptime is `started.elapsed()`).
    #[cfg_attr(
        feature = "serde",
        serde(
            rename = "uptime_ms",
            serialize_with = "crate::types::serde_impl::elapsed_ms",
            deserialize_with = "crate::types::serde_impl::de_elapsed_ms"
        )
    )]
    pub started: Option<std::time::Instant>,
    /// CPU time the current worker has used (its cgroup's, else its own and
    /// its app's), as of the last sample ([`crate::Builder::sample_interval`]).
    #[cfg_attr(
        feature = "serde",
        serde(
            rename = "cpu_ms",
            serialize_with = "crate::types::serde_impl::opt_millis",
            deserialize_with = "crate::types::serde_impl::de_opt_millis"
        )
    )]
    pub cpu_time: Option<std::time::Duration>,
    /// Its CPU use over the last sampling interval, in percent of one core.
    pub cpu_percent: Option<u32>,
    /// Its resident memory, in bytes, as of the last sample.
    #[cfg_attr(feature = "serde", serde(rename = "memory_bytes"))]
    pub memory: Option<u64>,
    /// When the current worker became ready, if it is.
    #[cfg_attr(
        feature = "serde",
        serde(
            rename = "ready_for_ms",
            serialize_with = "crate::types::serde_impl::elapsed_ms",
            deserialize_with = "crate::types::serde_impl::de_elapsed_ms"
        )
    )]
    pub ready_since: Option<std::time::Instant>,
    /// A reload's successor that is still starting next to the current
    /// worker.
    pub successor: Option<u32>,
}
/// How many times a slot's worker was replaced, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct RestartCounts {
    /// It exited (or was killed) without being asked to, and was restarted.
    pub exit: u32,
    /// It missed its start timeout and was killed and restarted.
    pub start_timeout: u32,
    /// It missed its watchdog and was killed and restarted.
    pub watchdog: u32,
    /// It stayed over the memory limit and was replaced, successor first.
    pub memory: u32,
    /// It reached the request limit and was replaced, successor first.
    pub requests: u32,
    /// A reload or a soft restart replaced it.
    pub reload: u32,
}

impl RestartCounts {
    /// Every replacement, whatever the reason.
    pub fn total(&self) -> u32 {
        self.exit + self.start_timeout + self.watchdog + self.memory + self.requests + self.reload
    }

    /// Counts one replacement for `reason` (`exit`, `start_timeout`,
    /// `watchdog`, `memory`, `requests`, `reload`).
    pub(crate) fn bump(&mut self, reason: &str) {
        let n = match reason {
            "start_timeout" => &mut self.start_timeout,
            "watchdog" => &mut self.watchdog,
            "memory" => &mut self.memory,
            "requests" => &mut self.requests,
            "reload" => &mut self.reload,
            _ => &mut self.exit,
        };
        *n += 1;
    }
}

/// Where a slot is in its life (the state of its current worker).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum WorkerState {
    /// Spawned, not ready yet (readiness not reported).
    Starting,
    /// Running and serving.
    Ready,
    /// Told to stop; draining until it exits or the drain timeout passes.
    Stopping,
    /// Empty, waiting out the backoff delay before the next start.
    Backoff,
    /// Empty for good: stopped, or its exit is not restarted by the policy.
    Exited,
    /// Given up on: the crash-loop limit tripped.
    Failed,
}

impl fmt::Display for WorkerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WorkerState::Starting => "starting",
            WorkerState::Ready => "ready",
            WorkerState::Stopping => "stopping",
            WorkerState::Backoff => "backoff",
            WorkerState::Exited => "exited",
            WorkerState::Failed => "failed",
        })
    }
}

/// Where a cluster is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum Phase {
    /// Built and bound; `run()` not called yet.
    Created,
    /// Workers are supervised.
    Running,
    /// Workers are being stopped.
    Stopping,
    /// Every worker has been reaped.
    Stopped,
}
