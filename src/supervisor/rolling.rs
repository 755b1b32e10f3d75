//! Carrying out rolling reloads: starting successors, handing slots over,
//! aborting on a failed successor. The bookkeeping (which slots are left,
//! the report) is the pure [`super::reload`]; this is the part with effects.

use super::reload::{self, ReloadRun, Target, Waiter};
use super::slot::Role;
use super::{clock, Supervisor};
use crate::observe::event::{Event, Notice};
use crate::types::{Error, Phase, ReloadFailure, Replacement};

impl Supervisor {
    /// A reload's successor is ready: it takes the slot, the predecessor
    /// gets the stop signal and drains.
    pub(super) fn take_over(&mut self, index: usize) {
        let now = clock();
        let new_pid = self.slots[index].successor_pid();
        let defer = self.defers_stop_signal();
        let old = self.slots[index].promote(now, self.config.drain_timeout, defer);
        // Out of rotation first (proxy mode), then stopped.
        self.changed();
        if let (Some(old), Some(new)) = (old, new_pid) {
            let slot = &mut self.slots[index];
            let reason = slot.replace_reason.take().unwrap_or("reload");
            slot.restarts_by.bump(reason);
            self.emit(Event::Replaced {
                slot: index,
                old_pid: old.as_raw() as u32,
                new_pid: new.as_raw() as u32,
            });
        }
        if let Some(old) = old {
            self.retire(old);
        }
        let (Some(new_pid), Some(run)) = (new_pid, self.reload.as_mut()) else {
            return;
        };
        run.replaced(Replacement {
            slot: index,
            old_pid: old.map(|p| p.as_raw() as u32),
            new_pid: new_pid.as_raw() as u32,
            generation: self.slots[index].generation,
        });
    }

    pub(super) async fn request_reload(&mut self, target: Target, reply: Option<Waiter>) {
        if self.phase != Phase::Running {
            if let Some(reply) = reply {
                let _ = reply.send(Err(Error::NotRunning));
            }
            return;
        }
        if let Target::Slot(s) = target {
            if s >= self.slots.len() {
                if let Some(reply) = reply {
                    let _ = reply.send(Err(Error::NoSuchSlot {
                        slot: s,
                        slots: self.slots.len(),
                    }));
                }
                return;
            }
        }
        if self.reload.is_some() {
            // One more run after this one, not a parallel one, not lost.
            if self.queued.is_empty() {
                self.notice(
                    None,
                    Notice::ReloadQueued,
                    "reload requested during a reload: it runs when this one ends".into(),
                );
            }
            self.queued.push((target, reply));
            return;
        }
        self.start_reload(vec![(target, reply)]).await;
    }

    pub(super) async fn start_reload(&mut self, requests: Vec<(Target, Option<Waiter>)>) {
        self.begin_run(requests);
        self.advance_reload().await;
    }

    pub(super) fn begin_run(&mut self, requests: Vec<(Target, Option<Waiter>)>) {
        let targets: Vec<Target> = requests.iter().map(|(t, _)| t.clone()).collect();
        let waiters: Vec<Waiter> = requests.into_iter().filter_map(|(_, w)| w).collect();
        let slots = reload::merge(&targets, self.target.min(self.slots.len()));
        if let Some(s) = &mut self.service {
            s.reloading();
        }
        self.emit(Event::ReloadStarted {
            slots: slots.clone(),
        });
        self.reload = Some(ReloadRun::new(
            slots,
            self.config.reload_parallel,
            waiters,
            clock(),
        ));
    }

    /// Starts successors while the run allows, ends the run when nothing is
    /// left to do, and starts the queued run after it.
    pub(super) async fn advance_reload(&mut self) {
        loop {
            let Some(run) = self.reload.as_mut() else {
                return;
            };
            if run.is_done() {
                let run = self.reload.take().expect("checked above");
                let (report, waiters) = run.finish(clock());
                crate::observe::metrics::reload(report.is_complete(), report.duration);
                if let Some(s) = &mut self.service {
                    s.reloaded();
                }
                self.emit(Event::ReloadFinished {
                    report: report.clone(),
                });
                for w in waiters {
                    let _ = w.send(Ok(report.clone()));
                }
                if self.queued.is_empty() || self.phase != Phase::Running {
                    return;
                }
                let next = std::mem::take(&mut self.queued);
                self.begin_run(next);
                continue;
            }
            let Some(slot) = run.next_slot() else {
                return;
            };
            match self.start(slot, Role::Successor).await {
                // Ready at exec: it takes over at once.
                Ok(()) => {
                    if self.slots[slot].successor_ready() {
                        self.take_over(slot);
                    }
                }
                Err(e) => self.record_successor_failure(slot, e.chain(), Vec::new()),
            }
        }
    }

    /// A successor did not make it: the reload stops here; other
    /// successors still starting are killed, their predecessors keep
    /// serving.
    pub(super) async fn successor_failed(
        &mut self,
        slot: usize,
        reason: String,
        tail: Vec<String>,
    ) {
        // No replacement happened: the next one is counted for its own
        // reason.
        self.slots[slot].replace_reason = None;
        self.record_successor_failure(slot, reason, tail);
        self.advance_reload().await;
    }

    pub(super) fn record_successor_failure(
        &mut self,
        slot: usize,
        reason: String,
        tail: Vec<String>,
    ) {
        let Some(run) = self.reload.as_mut() else {
            return;
        };
        run.failed(ReloadFailure {
            slot,
            reason,
            last_output: tail,
        });
        let others: Vec<usize> = run.active().to_vec();
        let now = clock();
        for other in others {
            if let Some(pid) = self.slots[other].successor_pid() {
                // Killed now; the drain timer only backs that up.
                self.slots[other].stop_proc(pid, now, self.config.drain_timeout, false);
                self.kill_tree(pid);
            }
        }
    }
}
