//! What the workers tell the loop: notes (ready, watchdog, status, where
//! the app runs), exits, and the slots' timers coming due.

use nix::unistd::Pid;

use super::policy::Decision;
use super::slot::{Due, ExitOutcome, Role};
use crate::observe::event::{Event, Notice};
use crate::process::output;
use crate::process::process_group_of;
use crate::ready::Note;
use crate::types::{Exit, Millis, Phase, Readiness};

use super::inbox::Reaped;
use super::workers::{NEVER_READY, START_TIMEOUT, WATCHDOG};
use super::{clock, random_unit, Supervisor};

impl Supervisor {
    pub(super) async fn on_note(&mut self, note: Note) {
        let pid = match &note {
            Note::Ready(p)
            | Note::Watchdog(p)
            | Note::Stopping(p)
            | Note::Status(p, _)
            | Note::Parked(p) => *p,
            Note::Serving { worker, .. } => *worker,
        };
        let Some((index, _)) = self.slot_of(pid) else {
            if let Some(line) = self.foreign_notes.line(clock(), || {
                format!(
                    "ignored a readiness message from pid {pid}, which is not a worker's main \
                     process"
                )
            }) {
                self.notice(None, Notice::ForeignMessage, line);
            }
            return;
        };
        match note {
            Note::Ready(pid) => self.on_ready(index, pid).await,
            Note::Watchdog(pid) => {
                self.slots[index].on_watchdog(pid, self.ready.watchdog, clock());
            }
            Note::Stopping(pid) => {
                self.notice(
                    Some(index),
                    Notice::WorkerStopping,
                    format!("pid {pid} says it is stopping"),
                );
            }
            Note::Status(pid, text) => {
                self.notice(
                    Some(index),
                    Notice::WorkerStatus,
                    format!("pid {pid} status: {text}"),
                );
            }
            Note::Parked(pid) => self.worker(pid).parked = true,
            Note::Serving { worker, app } => {
                // Only a process of the worker's own group: the stop signal
                // must never reach a stranger.
                if app == worker || process_group_of(app) == Some(worker) {
                    self.worker(worker).app = Some(app);
                }
            }
        }
    }

    pub(super) async fn on_ready(&mut self, index: usize, pid: Pid) {
        let role = self.slots[index].on_ready(pid, self.ready.watchdog, clock());
        let Some(role) = role else {
            return;
        };
        self.changed();
        self.emit(Event::Ready {
            slot: index,
            pid: pid.as_raw() as u32,
        });
        if role == Role::Successor {
            self.take_over(index);
            self.advance_reload().await;
        }
    }

    pub(super) async fn on_reaped(&mut self, r: Reaped) {
        let stopping = self.phase == Phase::Stopping;
        let exit = match r.result {
            Ok(exit) => exit,
            Err(e) => {
                self.notice(
                    Some(r.slot),
                    Notice::ReapFailed,
                    format!("cannot reap pid {}: {e}", r.pid),
                );
                Exit::Signal(crate::Signal::KILL)
            }
        };
        let gone = self.workers.remove(&r.pid).unwrap_or_default();
        if let Some(sentinel) = &self.sentinel {
            sentinel.untrack(r.pid);
        }
        let killed_for = gone.killed_for;
        let passed = self.proxy.as_mut().map_or(0, |p| p.reaped(r.pid));
        self.passed_on(r.slot, passed);
        let now = clock();
        let slot = &mut self.slots[r.slot];
        let Some(started) = slot.started_of(r.pid) else {
            return;
        };
        let uptime = now.saturating_duration_since(started);
        let outcome = slot.on_exit(
            r.pid,
            &self.config.supervision,
            now,
            exit,
            stopping,
            random_unit(),
        );
        self.changed();
        self.emit(Event::Exited {
            slot: r.slot,
            generation: r.generation,
            pid: r.pid.as_raw() as u32,
            exit,
            uptime,
            expected: matches!(outcome, ExitOutcome::Expected),
        });
        if !matches!(outcome, ExitOutcome::Expected | ExitOutcome::Unknown) {
            if let Some(port) = output::port_conflict(&r.tail, &self.listeners.ports()) {
                self.emit(Event::PortConflict {
                    slot: r.slot,
                    pid: r.pid.as_raw() as u32,
                    port,
                });
            }
        }
        match outcome {
            ExitOutcome::Current(Decision::Restart(_)) if killed_for == Some(NEVER_READY) => {
                let decision = self.slots[r.slot].give_up(exit);
                self.report(r.slot, decision, r.tail)
            }
            ExitOutcome::Current(decision) => {
                if matches!(decision, Decision::Restart(_)) {
                    let reason = killed_for.unwrap_or("exit");
                    crate::observe::metrics::restart(r.slot, reason);
                    self.slots[r.slot].restarts_by.bump(reason);
                }
                self.report(r.slot, decision, r.tail)
            }
            ExitOutcome::Successor => {
                let reason = if killed_for == Some(START_TIMEOUT) {
                    format!(
                        "not ready within {} (start timeout)",
                        Millis(self.config.start_timeout)
                    )
                } else {
                    format!("{exit} before it was ready")
                };
                self.successor_failed(r.slot, reason, r.tail).await;
            }
            ExitOutcome::Expected => {
                if let Some(run) = self.reload.as_mut() {
                    if run.is_active(r.slot) && self.slots[r.slot].successor_pid().is_none() {
                        run.abandoned(r.slot);
                        self.advance_reload().await;
                    }
                }
            }
            ExitOutcome::Unknown => {}
        }
        // A removed slot goes once its last process has.
        self.trim_slots();
    }

    pub(super) fn report(&mut self, slot: usize, decision: Decision, tail: Vec<String>) {
        let event = match decision {
            Decision::Restart(delay) => Event::RestartScheduled { slot, delay },
            Decision::Done => Event::SlotDone { slot },
            Decision::Failed { exits, window } => {
                if let Some(failure) = self.slots[slot].failure.as_mut() {
                    failure.last_output.clone_from(&tail);
                }
                Event::SlotFailed {
                    slot,
                    exits,
                    window,
                    last_output: tail,
                }
            }
        };
        self.emit(event);
        // Whatever comes next for the slot (a restart after a backoff, a
        // start that takes its time, nothing), the connections queued on
        // its socket are passed on now: a slot without a ready worker
        // holds nobody.
        self.rescue_queue(slot);
    }

    pub(super) async fn on_timers(&mut self) {
        let now = clock();
        if self.pending_stop.is_some_and(|at| at <= now) {
            self.pending_stop = None;
            self.stop_now(true);
        }
        for index in 0..self.slots.len() {
            for due in self.slots[index].take_due(now) {
                self.on_due(index, due).await;
            }
        }
        self.changed();
    }

    pub(super) async fn on_due(&mut self, index: usize, due: Due) {
        match due {
            Due::Restart => {
                if let Err(e) = self.start(index, Role::Current).await {
                    self.on_spawn_failure(index, e);
                }
            }
            Due::Kill(pid) => {
                self.emit(Event::DrainTimeout {
                    slot: index,
                    pid: pid.as_raw() as u32,
                });
                self.kill_tree(pid);
            }
            Due::DelayReady(pid) => self.on_ready(index, pid).await,
            Due::StartTimeout(pid, _) if self.config.serve_on_start_timeout => {
                let t = Millis(self.config.start_timeout);
                let what = match self.ready.mode {
                    Readiness::Ipc => "never called process.send('ready')",
                    Readiness::Notify => "never sent READY=1",
                    _ => "did not report ready",
                };
                self.notice(
                    Some(index),
                    Notice::ReadyAssumed,
                    format!(
                        "pid {pid} {what} within {t}: serving with it anyway \
                         (--on-start-timeout serve, PM2's listen_timeout)"
                    ),
                );
                self.on_ready(index, pid).await;
            }
            Due::StartTimeout(pid, _) => {
                let parked = self.ready.mode == Readiness::Ipc && self.worker(pid).parked;
                if parked {
                    // It listens and waits for a message it will never
                    // send: restarting it would only repeat the outage.
                    self.notice(
                        Some(index),
                        Notice::NeverReady,
                        format!(
                            "pid {pid} listens but never called process.send('ready') within {} \
                             (--wait-ready): the slot is not restarted. Call it once the app \
                             serves, or drop --wait-ready (--on-start-timeout serve serves \
                             anyway, as PM2's listen_timeout does)",
                            Millis(self.config.start_timeout)
                        ),
                    );
                }
                self.emit(Event::StartTimeout {
                    slot: index,
                    pid: pid.as_raw() as u32,
                    timeout: self.config.start_timeout,
                    readiness: self.ready.mode,
                });
                self.worker(pid).killed_for =
                    Some(if parked { NEVER_READY } else { START_TIMEOUT });
                self.kill_tree(pid);
            }
            Due::Signal(pid) => {
                let open = self
                    .proxy
                    .as_ref()
                    .and_then(|p| p.backend(pid))
                    .map_or(0, |b| b.active());
                self.emit(Event::DrainSignal {
                    slot: index,
                    pid: pid.as_raw() as u32,
                    open,
                });
                self.ask_to_stop(pid);
            }
            Due::Watchdog(pid) => {
                self.emit(Event::WatchdogTimeout {
                    slot: index,
                    pid: pid.as_raw() as u32,
                });
                self.worker(pid).killed_for = Some(WATCHDOG);
                self.kill_tree(pid);
            }
        }
    }
}
