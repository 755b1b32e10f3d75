//! What a cluster tells the world: lifecycle events and worker snapshots.
//!
//! Every event is published on a broadcast channel ([`crate::Handle::events`])
//! and, unless turned off, logged by the master as one line: its `Display`.

use std::fmt;
use std::time::Duration;

use crate::process::Exit;
use crate::supervisor::reload::ReloadReport;
use crate::supervisor::slot::WorkerState;

/// Something that happened to the cluster or one of its workers.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// A worker was forked and exec'd.
    Spawned {
        /// Its slot.
        slot: usize,
        /// Its generation within the slot (0 for the first).
        generation: u64,
        /// Its pid.
        pid: u32,
    },
    /// Starting a worker failed (the program vanished, a chdir failed, ...).
    SpawnFailed {
        /// The slot.
        slot: usize,
        /// What went wrong.
        error: String,
    },
    /// A worker reported (or was deemed) ready.
    Ready {
        /// Its slot.
        slot: usize,
        /// Its pid.
        pid: u32,
    },
    /// A worker did not become ready in time and is killed.
    StartTimeout {
        /// Its slot.
        slot: usize,
        /// Its pid.
        pid: u32,
        /// The start timeout.
        timeout: Duration,
    },
    /// A worker missed its watchdog deadline and is killed.
    WatchdogTimeout {
        /// Its slot.
        slot: usize,
        /// Its pid.
        pid: u32,
    },
    /// A reload's successor took over the slot; the predecessor got the
    /// stop signal and drains.
    Replaced {
        /// The slot.
        slot: usize,
        /// The predecessor, now draining.
        old_pid: u32,
        /// The successor, now serving.
        new_pid: u32,
    },
    /// A rolling reload (or soft restart) began.
    ReloadStarted {
        /// The slots it will replace, in order.
        slots: Vec<usize>,
    },
    /// A rolling reload ended, completely or aborted.
    ReloadFinished {
        /// What it did.
        report: ReloadReport,
    },
    /// A worker exited and was reaped.
    Exited {
        /// Its slot.
        slot: usize,
        /// Its generation.
        generation: u64,
        /// Its pid.
        pid: u32,
        /// How it ended.
        exit: Exit,
        /// How long it ran.
        uptime: Duration,
        /// False when it exited on its own, true when herd stopped it.
        expected: bool,
    },
    /// The slot will get a new worker after `delay`.
    RestartScheduled {
        /// The slot.
        slot: usize,
        /// The backoff delay.
        delay: Duration,
    },
    /// The restart policy does not restart this exit; the slot stays empty.
    SlotDone {
        /// The slot.
        slot: usize,
    },
    /// The crash-loop limit tripped; the slot is given up on while the
    /// others keep serving.
    SlotFailed {
        /// The slot.
        slot: usize,
        /// Exits counted.
        exits: u32,
        /// Within this window.
        window: Duration,
        /// The worker's last output lines, oldest first.
        last_output: Vec<String>,
    },
    /// The cluster began to stop its workers.
    Stopping {
        /// True for a graceful stop (stop signal, drain timeout), false for
        /// an immediate SIGKILL.
        graceful: bool,
    },
    /// Proxy mode: a worker out of rotation has no connections left and
    /// gets its stop signal.
    Idle {
        /// The slot.
        slot: usize,
        /// The worker's pid.
        pid: u32,
    },
    /// Proxy mode: a worker out of rotation still has proxied connections
    /// at the drain timeout and gets its stop signal now.
    DrainSignal {
        /// The slot.
        slot: usize,
        /// The worker's pid.
        pid: u32,
        /// Connections still open.
        open: u32,
    },
    /// The drain timeout passed and the worker's process group is killed.
    DrainTimeout {
        /// The slot.
        slot: usize,
        /// The worker's pid.
        pid: u32,
    },
    /// Every worker has been reaped; `run()` is about to return.
    Stopped,
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Spawned {
                slot,
                generation,
                pid,
            } => write!(f, "slot {slot}: spawned pid {pid} (generation {generation})"),
            Event::SpawnFailed { slot, error } => write!(f, "slot {slot}: {error}"),
            Event::Ready { slot, pid } => write!(f, "slot {slot}: pid {pid} is ready"),
            Event::StartTimeout { slot, pid, timeout } => write!(
                f,
                "slot {slot}: pid {pid} not ready within {}; killing it",
                Millis(*timeout)
            ),
            Event::WatchdogTimeout { slot, pid } => write!(
                f,
                "slot {slot}: pid {pid} missed its watchdog deadline; killing it"
            ),
            Event::Replaced {
                slot,
                old_pid,
                new_pid,
            } => write!(
                f,
                "slot {slot}: pid {new_pid} took over; pid {old_pid} drains"
            ),
            Event::ReloadStarted { slots } => write!(
                f,
                "reload started for slot(s) {}",
                slots
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Event::ReloadFinished { report } => write!(f, "{report}"),
            Event::Exited {
                slot,
                pid,
                exit,
                uptime,
                expected,
                ..
            } => write!(
                f,
                "slot {slot}: pid {pid} {exit} after {}{}",
                Millis(*uptime),
                if *expected { "" } else { " (unexpected)" }
            ),
            Event::RestartScheduled { slot, delay } => {
                write!(f, "slot {slot}: restarting in {}", Millis(*delay))
            }
            Event::SlotDone { slot } => {
                write!(f, "slot {slot}: not restarted (restart policy)")
            }
            Event::SlotFailed {
                slot,
                exits,
                window,
                last_output,
            } => {
                write!(
                    f,
                    "slot {slot}: failed: crash loop, {exits} exits within {}; not restarting",
                    Millis(*window)
                )?;
                if !last_output.is_empty() {
                    write!(f, "; last output: {}", last_output.join(" | "))?;
                }
                Ok(())
            }
            Event::Stopping { graceful: true } => f.write_str("stopping workers gracefully"),
            Event::Stopping { graceful: false } => f.write_str("killing workers"),
            Event::DrainTimeout { slot, pid } => write!(
                f,
                "slot {slot}: pid {pid} still running at the drain timeout; killing its process group"
            ),
            Event::Idle { slot, pid } => write!(
                f,
                "slot {slot}: pid {pid} has no proxied connections left; stopping it"
            ),
            Event::DrainSignal { slot, pid, open } => write!(
                f,
                "slot {slot}: pid {pid} still has {open} proxied connection(s) at the drain timeout; \
                 sending the stop signal"
            ),
            Event::Stopped => f.write_str("all workers stopped"),
        }
    }
}

/// Formats a duration the way the CLI takes it: `250ms`, `1.5s`, `2m5s`.
pub(crate) struct Millis(pub(crate) Duration);

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms < 1000 {
            write!(f, "{ms}ms")
        } else if ms < 60_000 {
            let tenths = (ms % 1000) / 100;
            if tenths == 0 {
                write!(f, "{}s", ms / 1000)
            } else {
                write!(f, "{}.{tenths}s", ms / 1000)
            }
        } else {
            let (m, s) = (ms / 60_000, (ms % 60_000) / 1000);
            if s == 0 {
                write!(f, "{m}m")
            } else {
                write!(f, "{m}m{s}s")
            }
        }
    }
}

/// A point-in-time view of one worker slot.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// How the previous worker of this slot ended.
    pub last_exit: Option<Exit>,
    /// Predecessors still draining after a reload.
    pub draining: Vec<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_as_the_cli_reads_them() {
        let s = |ms| Millis(Duration::from_millis(ms)).to_string();
        assert_eq!(s(250), "250ms");
        assert_eq!(s(1000), "1s");
        assert_eq!(s(1500), "1.5s");
        assert_eq!(s(125_000), "2m5s");
        assert_eq!(s(60_000), "1m");
    }

    #[test]
    fn lifecycle_lines_name_slot_and_pid() {
        let e = Event::Exited {
            slot: 1,
            generation: 2,
            pid: 42,
            exit: Exit::Code(3),
            uptime: Duration::from_millis(20),
            expected: false,
        };
        assert_eq!(
            e.to_string(),
            "slot 1: pid 42 exited with code 3 after 20ms (unexpected)"
        );
    }
}
