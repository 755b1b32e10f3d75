//! Stopping: one worker (its stop signal now, or once its proxied
//! connections end; its process tree), a slot's signal from a handle, the
//! whole cluster gracefully or at once, and the end of `run()`.

use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::observe::event::Event;
use crate::types::{Error, Exit, KillMode, Phase, ReloadFailure, Result};

use super::{clock, Supervisor};

/// How long `run()` waits for queued output lines to be written at the end.
pub(super) const FINAL_FLUSH: Duration = Duration::from_secs(2);

impl Supervisor {
    /// A process leaves service: its stop signal now, or, in proxy mode,
    /// once its proxied connections end (or at the drain timeout).
    pub(super) fn retire(&mut self, pid: Pid) {
        let backend = self.proxy.as_ref().and_then(|p| p.backend(pid));
        match backend {
            Some(backend) if self.defers_stop_signal() => {
                if backend.start_draining() {
                    self.on_idle(pid);
                }
            }
            Some(backend) => {
                // Out of rotation already; its idle pooled connections go
                // now, and none is kept after its last answers.
                backend.start_draining();
                self.ask_to_stop(pid);
            }
            None => self.ask_to_stop(pid),
        }
    }

    /// Sends `signal` to the process that runs slot `slot`'s app (its
    /// worker's main process, or the app's under a launcher).
    pub(super) fn signal_slot(&self, slot: usize, signal: Signal) -> Result<u32> {
        let Some(s) = self.slots.get(slot) else {
            return Err(Error::NoSuchSlot {
                slot,
                slots: self.slots.len(),
            });
        };
        let Some(pid) = s.pid() else {
            return Err(Error::NoWorker { slot });
        };
        let target = self.app_of(pid).unwrap_or(pid);
        self.os.signal(target, signal);
        Ok(target.as_raw() as u32)
    }

    /// SIGKILLs a worker's whole tree: its process group, and its cgroup
    /// (which also holds descendants that left the group).
    pub(super) fn kill_tree(&self, pid: Pid) {
        self.os.signal_group(pid, Signal::SIGKILL);
        if let Some(w) = self.workers.get(&pid).and_then(|w| w.cgroup.as_ref()) {
            w.kill();
        }
    }

    /// Sends the stop signal to a worker: to the process that runs its app
    /// ([`KillMode::Mixed`]; the rest of the group goes when the main
    /// process has exited or at the drain timeout), or to its whole group.
    pub(super) fn ask_to_stop(&self, pid: Pid) {
        let app = self.app_of(pid);
        match (self.config.kill_mode, app) {
            (KillMode::Group, _) => self.os.signal_group(pid, self.config.stop_signal),
            (_, Some(app)) => self.os.signal(app, self.config.stop_signal),
            // A Node app under a launcher that has not said where it runs
            // (it is not ready yet): the launcher would not pass the signal
            // on, so the whole tree hears it.
            (_, None) if self.config.command.preload.is_some() => {
                self.os.signal_group(pid, self.config.stop_signal)
            }
            (_, None) => self.os.signal(pid, self.config.stop_signal),
        }
    }

    /// Stops every worker: gracefully (stop signal now, SIGKILL at the drain
    /// timeout) or at once.
    pub(super) fn stop(&mut self, graceful: bool) {
        if graceful && self.phase == Phase::Stopping {
            return;
        }
        let delay = self.config.pre_stop_delay.filter(|_| graceful);
        let announced = self.phase == Phase::Stopping;
        self.phase = Phase::Stopping;
        self.pending_stop = None;
        if !announced {
            if let Some(s) = &self.service {
                s.stopping();
            }
            self.changed();
        }
        // A second, forceful stop is news too.
        if !announced || !graceful {
            self.emit(Event::Stopping { graceful });
        }
        if let Some(delay) = delay {
            // Load balancers see the cluster not ready (and take it out of
            // their endpoints) while the workers still serve.
            self.pending_stop = Some(clock() + delay);
            return;
        }
        self.stop_now(graceful);
    }

    /// The stop itself: the workers hear their stop signal and drain.
    pub(super) fn stop_now(&mut self, graceful: bool) {
        let now = clock();
        let defer = graceful && self.defers_stop_signal();
        let mut held_back = Vec::new();
        let mut ask = Vec::new();
        let mut killed = Vec::new();
        for slot in &mut self.slots {
            let newly = slot.begin_stop(now, self.config.drain_timeout, defer);
            if defer {
                held_back.extend(slot.pids());
            } else if graceful {
                ask.extend(newly);
            } else {
                killed.extend(slot.pids());
            }
        }
        for pid in ask {
            self.ask_to_stop(pid);
        }
        for pid in killed {
            self.kill_tree(pid);
        }
        // Proxy mode: out of rotation now, stopped once idle.
        self.changed();
        for pid in held_back {
            self.retire(pid);
        }
        // A reload in progress ends here; queued ones never start.
        if let Some(run) = self.reload.take() {
            let (mut report, waiters) = run.finish(now);
            report.failure.get_or_insert(ReloadFailure {
                slot: 0,
                reason: "the cluster is stopping".into(),
                last_output: Vec::new(),
            });
            for w in waiters {
                let _ = w.send(Ok(report.clone()));
            }
        }
        for (_, w) in self.queued.drain(..) {
            if let Some(w) = w {
                let _ = w.send(Err(Error::NotRunning));
            }
        }
        self.changed();
    }

    pub(super) async fn finish(mut self) -> Result<()> {
        let failures: Vec<_> = self
            .slots
            .iter()
            .filter_map(|s| s.failure.clone())
            .collect();
        let stopped_by_request = self.phase == Phase::Stopping;
        let exits_failed: Vec<(usize, Exit)> = self
            .slots
            .iter()
            .filter_map(|s| s.last_exit.filter(|e| !e.success()).map(|e| (s.index, e)))
            .collect();
        for task in self.listen_watch.drain(..) {
            task.abort();
        }
        for task in &self.background {
            task.abort();
        }
        // Wait until each is dropped, so that its sockets are closed when
        // run() returns.
        for task in self.background.drain(..) {
            let _ = task.await;
        }
        if let Some(cgroup) = self.cgroup.take() {
            let _ = tokio::task::spawn_blocking(move || cgroup.finish()).await;
        }
        if let Some(sentinel) = self.sentinel.take() {
            let _ = tokio::task::spawn_blocking(move || sentinel.finish()).await;
        }
        self.answer_upgrades(|| Err(Error::NotRunning));
        self.phase = Phase::Stopped;
        self.emit(Event::Stopped);
        self.shared.log.close();
        let _ = tokio::time::timeout(FINAL_FLUSH, crate::observe::writer::flush()).await;
        // Last: Handle::shutdown resolves on this, after the final lines.
        self.publish_snapshot();
        if let Some(e) = self.fatal.take() {
            return Err(e);
        }
        if !stopped_by_request && !failures.is_empty() {
            return Err(Error::AllSlotsFailed { slots: failures });
        }
        // The workers ended by themselves and none is restarted: the
        // cluster failed if any of them failed (systemd and Kubernetes
        // read the exit status).
        if !stopped_by_request && !exits_failed.is_empty() {
            return Err(Error::WorkersFailed {
                slots: exits_failed,
            });
        }
        Ok(())
    }
}
impl Drop for Supervisor {
    /// `run()` was dropped before it finished (the losing arm of a
    /// `select!`, a timeout): like tokio's `kill_on_drop`, nothing it started
    /// may go on without supervision. Every worker's process group is
    /// killed (their reaper tasks still reap them), every background task
    /// stops, and handles see the cluster stopped.
    fn drop(&mut self) {
        if self.phase == Phase::Stopped {
            return;
        }
        for slot in &self.slots {
            for pid in slot.pids() {
                self.kill_tree(pid);
            }
        }
        for task in self.background.iter().chain(&self.listen_watch) {
            task.abort();
        }
        self.phase = Phase::Stopped;
        self.publish_snapshot();
        self.shared.log.close();
    }
}

impl Supervisor {
    /// Proxy and HTTP modes hold a retiring worker's stop signal back until
    /// its proxied connections (in HTTP mode: its requests) end, because
    /// the stop signal makes many servers cut idle keep-alive connections.
    /// Not for Node apps with the preload: they drain safely by themselves
    /// (requests in flight are answered), and must hear the signal to end
    /// what would otherwise hold them until the drain timeout: WebSockets,
    /// event streams, socket.io's long-polling requests.
    pub(super) fn defers_stop_signal(&self) -> bool {
        self.proxy.is_some() && self.config.command.preload.is_none()
    }

    /// A draining backend has no connections left: it gets the stop signal.
    pub(super) fn on_idle(&mut self, pid: Pid) {
        let Some((index, _)) = self.slot_of(pid) else {
            return;
        };
        if self.slots[index].signal_now(pid, clock(), self.config.drain_timeout) {
            self.emit(Event::Idle {
                slot: index,
                pid: pid.as_raw() as u32,
            });
            self.ask_to_stop(pid);
        }
    }
}
