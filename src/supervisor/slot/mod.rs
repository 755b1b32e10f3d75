//! One worker slot's state machine.
//!
//! Pure: the event loop feeds it what happened and when, and it answers
//! with what to do (which pid to signal, when to restart). Tests drive it
//! without spawning anything.
//!
//! A slot holds up to three kinds of process: the *current* worker (the one
//! that serves, or is starting after a crash), a reload's *successor*
//! (starting next to the current one on the same sockets), and *retiring*
//! predecessors that were told to stop and are draining.

use std::time::{Duration, Instant};

use nix::unistd::Pid;

use super::policy::{Decision, RestartTracker, Supervision};
use crate::process::usage::Usage;
use crate::types::{Exit, SlotFailure, WorkerState};

/// After a held-back stop signal (sent when the worker's connections
/// ended, or at the drain timeout), how long the worker has to exit before
/// SIGKILL, at most (never more than the drain timeout itself).
pub(crate) const DEFERRED_STOP_GRACE: Duration = Duration::from_secs(5);

/// Which place in the slot a process holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// The slot's worker.
    Current,
    /// A reload's candidate for the slot.
    Successor,
    /// A predecessor that is draining.
    Retiring,
}

/// One process of a slot.
#[derive(Debug, Clone)]
pub(crate) struct Proc {
    pub(crate) pid: Pid,
    pub(crate) generation: u64,
    pub(crate) started: Instant,
    pub(crate) ready: bool,
    /// When it became ready.
    pub(crate) ready_since: Option<Instant>,
    /// Becomes ready by itself at this moment (readiness by delay).
    ready_at: Option<Instant>,
    /// Must be ready by this moment (start timeout).
    ready_by: Option<Instant>,
    /// Must ping the watchdog by this moment.
    watchdog_by: Option<Instant>,
    /// Out of service, its stop signal held back until its proxied
    /// connections end or this moment passes (proxy mode).
    signal_at: Option<Instant>,
    /// Told to stop; SIGKILLed at this moment.
    kill_at: Option<Instant>,
    stopping: bool,
    /// The last usage reading, and when it was taken.
    usage: Option<(Instant, Usage)>,
    /// CPU over the last sampling interval, in percent of one core.
    cpu_percent: Option<u32>,
    /// Consecutive readings over the memory limit.
    over_memory: u32,
}

/// Readings over the memory limit in a row before the worker is replaced:
/// one spike (a big request) is not a leak.
pub(crate) const MEMORY_STRIKES: u32 = 3;

impl Proc {
    /// A process started at `started`, not ready, with no deadline.
    fn new(pid: Pid, generation: u64, started: Instant) -> Proc {
        Proc {
            pid,
            generation,
            started,
            ready: false,
            ready_since: None,
            ready_at: None,
            ready_by: None,
            watchdog_by: None,
            signal_at: None,
            kill_at: None,
            stopping: false,
            usage: None,
            cpu_percent: None,
            over_memory: 0,
        }
    }

    fn deadlines(&self) -> impl Iterator<Item = Instant> {
        [
            self.ready_at,
            self.ready_by,
            self.watchdog_by,
            self.signal_at,
            self.kill_at,
        ]
        .into_iter()
        .flatten()
    }

    /// Marks the process as stopping. With `defer`, the stop signal waits
    /// up to `drain` for its connections to end, and SIGKILL comes `drain`
    /// after that.
    fn retire(&mut self, now: Instant, drain: Duration, defer: bool) {
        self.stopping = true;
        self.ready_by = None;
        self.ready_at = None;
        self.watchdog_by = None;
        if defer {
            // The drain timeout is the whole budget: the stop signal at
            // the latest when it ends, SIGKILL a short grace later (not a
            // second drain timeout, which a service manager's own stop
            // timeout would cut first).
            self.signal_at = Some(now + drain);
            self.kill_at = Some(now + drain + drain.min(DEFERRED_STOP_GRACE));
        } else {
            self.kill_at = Some(now + drain);
        }
    }
}

/// How a new process becomes ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Readiness {
    /// None: ready once exec'd. Some(d): ready d after exec, if nothing
    /// else said so first.
    pub(crate) after: Option<Duration>,
    /// Whether the worker reports readiness itself (notify, IPC).
    pub(crate) reported: bool,
    /// Deadline for a reported readiness.
    pub(crate) start_timeout: Duration,
    /// For a reload's successor that would be ready at exec: it counts as
    /// ready only after this, so that one that dies at start-up (an import
    /// error) aborts the reload instead of replacing a working worker.
    pub(crate) settle: Option<Duration>,
}

impl Readiness {
    /// Ready as soon as exec'd.
    #[cfg(test)]
    pub(crate) const IMMEDIATE: Readiness = Readiness {
        after: None,
        reported: false,
        start_timeout: Duration::from_secs(30),
        settle: None,
    };
}

/// What a timer of a slot asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Due {
    /// The backoff is over: start the next generation.
    Restart,
    /// The drain timeout passed: SIGKILL this process group.
    Kill(Pid),
    /// The process did not become ready within the start timeout.
    StartTimeout(Pid, Role),
    /// The readiness delay passed: the process counts as ready.
    DelayReady(Pid),
    /// The process missed its watchdog deadline.
    Watchdog(Pid),
    /// A held-back stop signal is due now.
    Signal(Pid),
}

/// What an exit meant for the slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ExitOutcome {
    /// The current worker exited on its own; the policy decided this.
    Current(Decision),
    /// A process exited because it was told to (stop, drain, kill).
    Expected,
    /// A reload's successor exited before it took over.
    Successor,
    /// Not a process of this slot (already handled).
    Unknown,
}

#[derive(Debug, Clone)]
pub(crate) struct Slot {
    pub(crate) index: usize,
    pub(crate) state: WorkerState,
    pub(crate) current: Option<Proc>,
    pub(crate) successor: Option<Proc>,
    pub(crate) retiring: Vec<Proc>,
    /// Generation of the current (or last) worker; the first is 0.
    pub(crate) generation: u64,
    /// How many workers this slot has had.
    spawns: u64,
    pub(crate) restarts: u32,
    /// Every replacement, by reason.
    pub(crate) restarts_by: crate::types::RestartCounts,
    /// Why the pending replacement of the current worker was asked for
    /// (`memory`, `requests`); a reload when none.
    pub(crate) replace_reason: Option<&'static str>,
    pub(crate) last_exit: Option<Exit>,
    pub(crate) failure: Option<SlotFailure>,
    restart_at: Option<Instant>,
    tracker: RestartTracker,
}

impl Slot {
    pub(crate) fn new(index: usize) -> Self {
        Slot {
            index,
            state: WorkerState::Starting,
            current: None,
            successor: None,
            retiring: Vec::new(),
            generation: 0,
            spawns: 0,
            restarts: 0,
            restarts_by: Default::default(),
            replace_reason: None,
            last_exit: None,
            failure: None,
            restart_at: None,
            tracker: RestartTracker::default(),
        }
    }

    /// A slot as a previous master described it (an upgrade): its
    /// counters, its state, and its ready worker if it has one, started at
    /// `started` and ready since `ready_since`.
    pub(crate) fn adopted(
        state: &crate::upgrade::SlotState,
        worker: Option<(Pid, Instant, Option<Instant>)>,
        watchdog: Option<Duration>,
        now: Instant,
    ) -> Self {
        let mut slot = Slot::new(state.index);
        slot.state = state.state;
        slot.generation = state.generation;
        slot.spawns = state.spawns;
        slot.restarts = state.restarts;
        slot.last_exit = state.last_exit;
        slot.current = worker.map(|(pid, started, ready_since)| Proc {
            ready: true,
            ready_since: Some(ready_since.unwrap_or(now)),
            watchdog_by: watchdog.map(|w| now + w),
            ..Proc::new(pid, state.generation, started)
        });
        slot
    }

    /// What an upgrade hands on of this slot, if it is settled: one ready
    /// worker and nothing else, or empty for good. None while anything
    /// starts, drains or waits.
    pub(crate) fn settled_state(&self) -> Option<crate::upgrade::SlotState> {
        let settled = match self.state {
            WorkerState::Ready => {
                self.current
                    .as_ref()
                    .is_some_and(|p| p.ready && !p.stopping)
                    && self.successor.is_none()
                    && self.retiring.is_empty()
            }
            WorkerState::Exited | WorkerState::Failed => !self.is_live(),
            _ => false,
        };
        settled.then_some(crate::upgrade::SlotState {
            index: self.index,
            spawns: self.spawns,
            restarts: self.restarts,
            generation: self.generation,
            state: self.state,
            last_exit: self.last_exit,
        })
    }

    /// The current worker's pid.
    pub(crate) fn pid(&self) -> Option<Pid> {
        self.current.as_ref().map(|p| p.pid)
    }

    /// The slot as [`crate::Handle::workers`] shows it.
    pub(crate) fn info(&self) -> crate::types::WorkerInfo {
        crate::types::WorkerInfo {
            slot: self.index,
            generation: self.generation,
            pid: self.pid().map(|p| p.as_raw() as u32),
            state: self.state,
            restarts: self.restarts,
            restarts_by: self.restarts_by,
            last_exit: self.last_exit,
            draining: self
                .retiring_pids()
                .iter()
                .map(|p| p.as_raw() as u32)
                .collect(),
            started: self.current.as_ref().map(|p| p.started),
            cpu_time: self
                .current
                .as_ref()
                .and_then(|p| p.usage)
                .map(|(_, u)| u.cpu),
            cpu_percent: self.current.as_ref().and_then(|p| p.cpu_percent),
            memory: self
                .current
                .as_ref()
                .and_then(|p| p.usage)
                .map(|(_, u)| u.memory),
            ready_since: self.current.as_ref().and_then(|p| p.ready_since),
            successor: self.successor_pid().map(|p| p.as_raw() as u32),
        }
    }

    /// Records a usage reading of the current worker `pid`. Returns true
    /// when it has just been over `limit` for [`MEMORY_STRIKES`] readings
    /// in a row (once per worker).
    pub(crate) fn record_usage(
        &mut self,
        pid: Pid,
        usage: Option<Usage>,
        now: Instant,
        limit: Option<u64>,
    ) -> bool {
        let Some(proc) = self.current.as_mut().filter(|p| p.pid == pid) else {
            return false;
        };
        let Some(usage) = usage else {
            return false;
        };
        if let Some((at, before)) = proc.usage {
            let wall = now.saturating_duration_since(at).as_secs_f64();
            if wall > 0.0 {
                let cpu = usage.cpu.saturating_sub(before.cpu).as_secs_f64();
                proc.cpu_percent = Some((cpu / wall * 100.0).round() as u32);
            }
        }
        proc.usage = Some((now, usage));
        match limit {
            Some(limit) if usage.memory > limit && !proc.stopping => {
                proc.over_memory += 1;
                proc.over_memory == MEMORY_STRIKES
            }
            _ => {
                proc.over_memory = 0;
                false
            }
        }
    }

    /// The pid of a reload's successor that has not taken over yet.
    pub(crate) fn successor_pid(&self) -> Option<Pid> {
        self.successor.as_ref().map(|p| p.pid)
    }

    /// Whether that successor is ready (and so may take over).
    pub(crate) fn successor_ready(&self) -> bool {
        self.successor.as_ref().is_some_and(|p| p.ready)
    }

    /// Any process of this slot is alive.
    pub(crate) fn is_live(&self) -> bool {
        self.current.is_some() || self.successor.is_some() || !self.retiring.is_empty()
    }

    /// The slot's current worker accepts connections.
    pub(crate) fn is_serving(&self) -> bool {
        self.state == WorkerState::Ready
    }

    /// The slot will hold a worker again without outside help.
    pub(crate) fn is_pending(&self) -> bool {
        self.state == WorkerState::Backoff
    }

    /// The generation the next spawn gets.
    pub(crate) fn next_generation(&self) -> u64 {
        self.spawns
    }

    /// Every process of the slot with its role.
    fn procs(&self) -> impl Iterator<Item = (Role, &Proc)> {
        let current = self.current.iter().map(|p| (Role::Current, p));
        let successor = self.successor.iter().map(|p| (Role::Successor, p));
        let retiring = self.retiring.iter().map(|p| (Role::Retiring, p));
        current.chain(successor).chain(retiring)
    }

    fn procs_mut(&mut self) -> impl Iterator<Item = (Role, &mut Proc)> {
        let current = self.current.iter_mut().map(|p| (Role::Current, p));
        let successor = self.successor.iter_mut().map(|p| (Role::Successor, p));
        let retiring = self.retiring.iter_mut().map(|p| (Role::Retiring, p));
        current.chain(successor).chain(retiring)
    }

    /// Which role `pid` holds here.
    pub(crate) fn role_of(&self, pid: Pid) -> Option<Role> {
        self.procs().find(|(_, p)| p.pid == pid).map(|(r, _)| r)
    }

    /// When `pid` was started, if it is a process of this slot.
    pub(crate) fn started_of(&self, pid: Pid) -> Option<Instant> {
        self.procs()
            .find(|(_, p)| p.pid == pid)
            .map(|(_, p)| p.started)
    }

    fn proc_mut(&mut self, pid: Pid) -> Option<&mut Proc> {
        self.procs_mut().find(|(_, p)| p.pid == pid).map(|(_, p)| p)
    }

    /// A process was spawned into `role` (Current or Successor).
    pub(crate) fn on_spawned(
        &mut self,
        pid: Pid,
        generation: u64,
        role: Role,
        readiness: Readiness,
        now: Instant,
    ) {
        self.spawns = generation + 1;
        let after = match role {
            Role::Successor if readiness.after.is_none() && !readiness.reported => readiness.settle,
            _ => readiness.after,
        };
        let immediate = after.is_none() && !readiness.reported;
        let proc = Proc {
            ready: immediate,
            ready_since: immediate.then_some(now),
            ready_at: after.map(|d| now + d),
            ready_by: (readiness.reported && readiness.after.is_none())
                .then(|| now + readiness.start_timeout),
            ..Proc::new(pid, generation, now)
        };
        match role {
            Role::Successor => self.successor = Some(proc),
            _ => {
                self.restart_at = None;
                self.generation = generation;
                self.state = if immediate {
                    WorkerState::Ready
                } else {
                    WorkerState::Starting
                };
                self.current = Some(proc);
            }
        }
    }

    /// `pid` reported (or was deemed) ready. Returns its role when this
    /// changed anything. A successor stays a successor until
    /// [`Slot::promote`].
    pub(crate) fn on_ready(
        &mut self,
        pid: Pid,
        watchdog: Option<Duration>,
        now: Instant,
    ) -> Option<Role> {
        let role = self.role_of(pid)?;
        let proc = self.proc_mut(pid)?;
        if proc.ready || proc.stopping {
            return None;
        }
        proc.ready = true;
        proc.ready_since = Some(now);
        proc.ready_at = None;
        proc.ready_by = None;
        proc.watchdog_by = watchdog.map(|w| now + w);
        if role == Role::Current {
            self.state = WorkerState::Ready;
        }
        Some(role)
    }

    /// A watchdog ping from `pid`: its deadline moves on.
    pub(crate) fn on_watchdog(&mut self, pid: Pid, watchdog: Option<Duration>, now: Instant) {
        if let (Some(w), Some(p)) = (watchdog, self.proc_mut(pid)) {
            if p.ready && !p.stopping {
                p.watchdog_by = Some(now + w);
            }
        }
    }

    /// The successor takes over: it becomes current, the old current
    /// retires (its pid is returned, to get the stop signal). A failed or
    /// backing-off slot is revived with a clean restart history.
    /// With `defer` (proxy mode) the predecessor's stop signal is held
    /// back until [`Slot::signal_now`] or the drain timeout.
    pub(crate) fn promote(&mut self, now: Instant, drain: Duration, defer: bool) -> Option<Pid> {
        let successor = self.successor.take()?;
        let old = self.current.take().map(|mut p| {
            p.retire(now, drain, defer);
            let pid = p.pid;
            self.retiring.push(p);
            pid
        });
        self.generation = successor.generation;
        self.state = if successor.ready {
            WorkerState::Ready
        } else {
            WorkerState::Starting
        };
        self.current = Some(successor);
        self.restart_at = None;
        self.failure = None;
        self.tracker = RestartTracker::default();
        old
    }

    /// A process of this slot exited. `stopping` is true while the cluster
    /// shuts down, when no exit is restarted.
    pub(crate) fn on_exit(
        &mut self,
        pid: Pid,
        policy: &Supervision,
        now: Instant,
        exit: Exit,
        stopping: bool,
        sample: f64,
    ) -> ExitOutcome {
        match self.role_of(pid) {
            None => ExitOutcome::Unknown,
            Some(Role::Retiring) => {
                self.retiring.retain(|p| p.pid != pid);
                ExitOutcome::Expected
            }
            Some(Role::Successor) => {
                let was_stopping = self.successor.as_ref().is_some_and(|p| p.stopping);
                self.successor = None;
                if stopping || was_stopping {
                    ExitOutcome::Expected
                } else {
                    ExitOutcome::Successor
                }
            }
            Some(Role::Current) => {
                let proc = self.current.take().expect("role_of found it");
                self.last_exit = Some(exit);
                if stopping || proc.stopping {
                    self.state = WorkerState::Exited;
                    return ExitOutcome::Expected;
                }
                let uptime = now.saturating_duration_since(proc.started);
                self.decide(policy, now, uptime, exit, sample)
            }
        }
    }

    /// The worker that just exited is not to be restarted, whatever the
    /// policy decided (it never said ready and never would): the slot
    /// fails now, its one exit counted.
    pub(crate) fn give_up(&mut self, exit: Exit) -> Decision {
        if self.state == WorkerState::Backoff {
            self.restarts = self.restarts.saturating_sub(1);
        }
        self.restart_at = None;
        self.state = WorkerState::Failed;
        let decision = Decision::Failed {
            exits: 1,
            window: Duration::ZERO,
        };
        self.failure = Some(SlotFailure {
            slot: self.index,
            exits: 1,
            window: Duration::ZERO,
            last_exit: Some(exit),
            last_output: Vec::new(),
        });
        decision
    }

    /// Starting the slot's worker failed for want of the master's own
    /// resources: try again after `delay`, counting nothing.
    pub(crate) fn retry_start(&mut self, now: Instant, delay: Duration) {
        self.state = WorkerState::Backoff;
        self.restart_at = Some(now + delay);
    }

    /// Starting the slot's worker failed before it ran (exec failed after
    /// start-up): counted like an exit at once.
    pub(crate) fn on_start_failed(
        &mut self,
        policy: &Supervision,
        now: Instant,
        exit: Exit,
        stopping: bool,
        sample: f64,
    ) -> ExitOutcome {
        self.last_exit = Some(exit);
        if stopping {
            self.state = WorkerState::Exited;
            return ExitOutcome::Expected;
        }
        self.decide(policy, now, Duration::ZERO, exit, sample)
    }

    fn decide(
        &mut self,
        policy: &Supervision,
        now: Instant,
        uptime: Duration,
        exit: Exit,
        sample: f64,
    ) -> ExitOutcome {
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
                    last_exit: Some(exit),
                    last_output: Vec::new(),
                });
            }
        }
        ExitOutcome::Current(decision)
    }

    /// Tells `pid` to stop: arms its drain timer. Returns false if it was
    /// already stopping or is not ours.
    pub(crate) fn stop_proc(
        &mut self,
        pid: Pid,
        now: Instant,
        drain: Duration,
        defer: bool,
    ) -> bool {
        let is_current = self.current.as_ref().is_some_and(|p| p.pid == pid);
        let Some(p) = self.proc_mut(pid) else {
            return false;
        };
        if p.stopping {
            return false;
        }
        p.retire(now, drain, defer);
        if is_current {
            self.state = WorkerState::Stopping;
        }
        true
    }

    /// A process whose stop signal was held back may get it now (its
    /// connections ended): returns true if it was waiting. Its SIGKILL
    /// stays where the retirement put it (the drain timeout and a grace
    /// from the start), at least a grace from now.
    pub(crate) fn signal_now(&mut self, pid: Pid, now: Instant, drain: Duration) -> bool {
        match self.proc_mut(pid) {
            Some(p) if p.signal_at.is_some() => {
                p.signal_at = None;
                let grace = now + drain.min(DEFERRED_STOP_GRACE);
                p.kill_at = Some(p.kill_at.map_or(grace, |at| at.max(grace)));
                true
            }
            _ => false,
        }
    }

    /// Starts a graceful stop of the whole slot: returns the pids that get
    /// the stop signal now (with `defer`, they wait for
    /// [`Slot::signal_now`] instead). A slot in backoff just ends.
    pub(crate) fn begin_stop(&mut self, now: Instant, drain: Duration, defer: bool) -> Vec<Pid> {
        self.restart_at = None;
        let pids = self.pids();
        let newly: Vec<Pid> = pids
            .into_iter()
            .filter(|&pid| self.stop_proc(pid, now, drain, defer))
            .collect();
        if self.current.is_none()
            && matches!(self.state, WorkerState::Backoff | WorkerState::Starting)
        {
            self.state = WorkerState::Exited;
        }
        if defer {
            Vec::new()
        } else {
            newly
        }
    }

    /// Every live pid of the slot.
    pub(crate) fn pids(&self) -> Vec<Pid> {
        self.procs().map(|(_, p)| p.pid).collect()
    }

    /// Pids of the retiring predecessors.
    pub(crate) fn retiring_pids(&self) -> Vec<Pid> {
        self.retiring.iter().map(|p| p.pid).collect()
    }

    /// The earliest moment a timer of this slot fires.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.procs()
            .flat_map(|(_, p)| p.deadlines())
            .chain(self.restart_at)
            .min()
    }

    /// Takes every timer that is due at `now`.
    pub(crate) fn take_due(&mut self, now: Instant) -> Vec<Due> {
        let mut due = Vec::new();
        for (role, p) in self.procs_mut() {
            let pid = p.pid;
            if p.kill_at.is_some_and(|at| at <= now) {
                p.kill_at = None;
                due.push(Due::Kill(pid));
            }
            if p.ready_at.is_some_and(|at| at <= now) {
                p.ready_at = None;
                due.push(Due::DelayReady(pid));
            }
            if p.ready_by.is_some_and(|at| at <= now) {
                p.ready_by = None;
                due.push(Due::StartTimeout(pid, role));
            }
            if p.watchdog_by.is_some_and(|at| at <= now) {
                p.watchdog_by = None;
                due.push(Due::Watchdog(pid));
            }
            if p.signal_at.is_some_and(|at| at <= now) {
                p.signal_at = None;
                due.push(Due::Signal(pid));
            }
        }
        if self.restart_at.is_some_and(|at| at <= now) {
            self.restart_at = None;
            // A reload's successor is about to take the slot over anyway.
            if self.successor.is_none() && self.current.is_none() {
                self.state = WorkerState::Starting;
                due.push(Due::Restart);
            }
        }
        due
    }
}

#[cfg(test)]
mod tests;
