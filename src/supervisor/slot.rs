//! One worker slot's state machine.
//!
//! Pure: the event loop feeds it what happened and when, and it answers
//! with what to do (which pid to signal, when to restart). Tests drive it
//! without spawning anything.

use std::fmt;
use std::time::{Duration, Instant};

use nix::unistd::Pid;

use super::policy::{Decision, RestartTracker, Supervision};
use crate::error::SlotFailure;
use crate::process::Exit;

/// Where a slot is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WorkerState {
    /// Being spawned; not yet serving.
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

/// What a timer of a slot asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Due {
    /// The backoff is over: start the next generation.
    Restart,
    /// The drain timeout passed: SIGKILL this worker's process group.
    Kill(Pid),
}

#[derive(Debug, Clone)]
pub(crate) struct Slot {
    pub(crate) index: usize,
    pub(crate) state: WorkerState,
    /// Generation of the current (or last) worker; the first is 0.
    pub(crate) generation: u64,
    /// How many workers this slot has had.
    spawns: u64,
    pub(crate) pid: Option<Pid>,
    pub(crate) started: Option<Instant>,
    pub(crate) restarts: u32,
    pub(crate) last_exit: Option<Exit>,
    pub(crate) failure: Option<SlotFailure>,
    restart_at: Option<Instant>,
    kill_at: Option<Instant>,
    tracker: RestartTracker,
}

impl Slot {
    pub(crate) fn new(index: usize) -> Self {
        Slot {
            index,
            state: WorkerState::Starting,
            generation: 0,
            spawns: 0,
            pid: None,
            started: None,
            restarts: 0,
            last_exit: None,
            failure: None,
            restart_at: None,
            kill_at: None,
            tracker: RestartTracker::default(),
        }
    }

    /// A process occupies the slot (running or draining).
    pub(crate) fn is_live(&self) -> bool {
        self.pid.is_some()
    }

    /// The slot will hold a worker again without outside help.
    pub(crate) fn is_pending(&self) -> bool {
        self.state == WorkerState::Backoff
    }

    /// The generation the next spawn gets.
    pub(crate) fn next_generation(&self) -> u64 {
        self.spawns
    }

    pub(crate) fn on_spawned(&mut self, pid: Pid, generation: u64, now: Instant) {
        self.pid = Some(pid);
        self.generation = generation;
        self.spawns = generation + 1;
        self.started = Some(now);
        self.restart_at = None;
        // No readiness protocol yet: a worker that exec'd is serving.
        self.state = WorkerState::Ready;
    }

    /// The worker of this slot exited. `stopping` is true while the cluster
    /// shuts down, when no exit is restarted.
    pub(crate) fn on_exit(
        &mut self,
        policy: &Supervision,
        now: Instant,
        exit: Exit,
        stopping: bool,
        sample: f64,
    ) -> Option<Decision> {
        let uptime = self
            .started
            .map(|s| now.saturating_duration_since(s))
            .unwrap_or_default();
        self.pid = None;
        self.kill_at = None;
        self.last_exit = Some(exit);
        if stopping || self.state == WorkerState::Stopping {
            self.state = WorkerState::Exited;
            return None;
        }
        let decision = self.tracker.on_exit(policy, now, uptime, exit, sample);
        match decision {
            Decision::Restart(delay) => {
                self.state = WorkerState::Backoff;
                self.restart_at = Some(now + delay);
                self.restarts += 1;
            }
            Decision::Done => self.state = WorkerState::Exited,
            Decision::Failed { exits, window } => {
                self.state = WorkerState::Failed;
                self.failure = Some(SlotFailure {
                    slot: self.index,
                    exits,
                    window,
                });
            }
        }
        Some(decision)
    }

    /// Starts a graceful stop: returns the pid whose group gets the stop
    /// signal, and arms the drain timer. A slot in backoff just ends.
    pub(crate) fn begin_stop(&mut self, now: Instant, drain: Duration) -> Option<Pid> {
        self.restart_at = None;
        match self.pid {
            Some(pid) if self.state != WorkerState::Stopping => {
                self.state = WorkerState::Stopping;
                self.kill_at = Some(now + drain);
                Some(pid)
            }
            Some(_) => None,
            None => {
                if self.state == WorkerState::Backoff || self.state == WorkerState::Starting {
                    self.state = WorkerState::Exited;
                }
                None
            }
        }
    }

    /// The earliest moment a timer of this slot fires.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        match (self.restart_at, self.kill_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Takes the timer that is due at `now`, if any.
    pub(crate) fn take_due(&mut self, now: Instant) -> Option<Due> {
        if let (Some(at), Some(pid)) = (self.kill_at, self.pid) {
            if at <= now {
                self.kill_at = None;
                return Some(Due::Kill(pid));
            }
        }
        if let Some(at) = self.restart_at {
            if at <= now {
                self.restart_at = None;
                self.state = WorkerState::Starting;
                return Some(Due::Restart);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Supervision {
        let mut s = Supervision::new();
        s.backoff.jitter = 0.0;
        s
    }

    #[test]
    fn a_crash_schedules_a_restart_of_the_next_generation() {
        let p = policy();
        let t0 = Instant::now();
        let mut slot = Slot::new(1);
        assert_eq!(slot.next_generation(), 0);
        slot.on_spawned(Pid::from_raw(100), 0, t0);
        assert_eq!(slot.state, WorkerState::Ready);
        let d = slot.on_exit(
            &p,
            t0 + Duration::from_millis(50),
            Exit::Code(1),
            false,
            0.0,
        );
        assert_eq!(d, Some(Decision::Restart(Duration::from_millis(100))));
        assert_eq!(slot.state, WorkerState::Backoff);
        assert!(!slot.is_live() && slot.is_pending());
        assert_eq!(slot.take_due(t0 + Duration::from_millis(100)), None);
        assert_eq!(
            slot.take_due(t0 + Duration::from_millis(150)),
            Some(Due::Restart)
        );
        assert_eq!(slot.state, WorkerState::Starting);
        assert_eq!(slot.next_generation(), 1);
        assert_eq!(slot.restarts, 1);
    }

    #[test]
    fn stopping_arms_the_drain_timer_and_the_exit_is_not_restarted() {
        let p = policy();
        let t0 = Instant::now();
        let mut slot = Slot::new(0);
        slot.on_spawned(Pid::from_raw(7), 0, t0);
        let drain = Duration::from_secs(2);
        assert_eq!(slot.begin_stop(t0, drain), Some(Pid::from_raw(7)));
        assert_eq!(slot.begin_stop(t0, drain), None, "signalled once");
        assert_eq!(slot.next_deadline(), Some(t0 + drain));
        assert_eq!(slot.take_due(t0 + drain), Some(Due::Kill(Pid::from_raw(7))));
        assert_eq!(slot.on_exit(&p, t0 + drain, Exit::Code(0), true, 0.0), None);
        assert_eq!(slot.state, WorkerState::Exited);
        assert_eq!(slot.next_deadline(), None);
    }

    #[test]
    fn stopping_a_slot_in_backoff_cancels_the_restart() {
        let p = policy();
        let t0 = Instant::now();
        let mut slot = Slot::new(0);
        slot.on_spawned(Pid::from_raw(7), 0, t0);
        slot.on_exit(&p, t0, Exit::Code(1), false, 0.0);
        assert_eq!(slot.begin_stop(t0, Duration::from_secs(1)), None);
        assert_eq!(slot.state, WorkerState::Exited);
        assert_eq!(slot.take_due(t0 + Duration::from_secs(60)), None);
    }

    #[test]
    fn the_crash_loop_marks_the_slot_failed_with_a_report() {
        let p = policy();
        let t0 = Instant::now();
        let mut slot = Slot::new(3);
        let mut last = None;
        for i in 0..5 {
            slot.on_spawned(Pid::from_raw(10 + i), i as u64, t0);
            last = slot.on_exit(&p, t0, Exit::Code(2), false, 0.0);
        }
        assert!(matches!(last, Some(Decision::Failed { exits: 5, .. })));
        assert_eq!(slot.state, WorkerState::Failed);
        assert_eq!(slot.failure.as_ref().map(|f| f.slot), Some(3));
        assert!(!slot.is_pending() && !slot.is_live());
    }
}
