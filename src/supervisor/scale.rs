//! Changing the number of workers and replacing them for what they use:
//! scaling, the resource samples, recycling by memory and requests, a
//! new command for the next workers.

use nix::unistd::Pid;

use super::reload::Target;
use super::slot::{Role, Slot};
use crate::observe::event::{Event, Notice};
use crate::process::cgroup::WorkerCgroup;
use crate::process::usage;
use crate::types::{Error, Phase, Result};

use super::inbox::Scale;
use super::{clock, Supervisor};

impl Supervisor {
    /// Scales to a number of slots: new slots get sockets (reuseport) and a
    /// worker at once; removed slots (the highest) drain like a stop, and
    /// are gone once their workers are, their queued connections passed on.
    /// Returns the number of slots asked for before and from now on.
    pub(super) async fn scale(&mut self, to: Scale) -> Result<(usize, usize)> {
        let from = self.target;
        let to = match to {
            Scale::To(n) => n,
            Scale::By(d) => from.saturating_add_signed(d).max(1),
        };
        let busy = |reason: String| Error::Busy {
            what: "scale",
            reason,
        };
        if to == 0 {
            return Err(Error::ZeroWorkers);
        }
        if self.phase != Phase::Running {
            return Err(Error::NotRunning);
        }
        if self.reload.is_some() {
            return Err(busy("a reload is running: scale when it has ended".into()));
        }
        if self.slots.len() > from {
            return Err(busy(format!(
                "slots {from} to {} are still draining: scale when they are gone",
                self.slots.len() - 1
            )));
        }
        if self.listeners.per_slot() && to > crate::net::steer::MAX_STEERED_SLOTS {
            return Err(Error::InvalidSetting {
                setting: "workers",
                reason: format!(
                    "reuseport steering takes at most {} slots",
                    crate::net::steer::MAX_STEERED_SLOTS
                ),
            });
        }
        if to == from {
            return Ok((from, to));
        }
        for added in 0..to.saturating_sub(from) {
            if let Err(e) = self.listeners.add_slot() {
                for _ in 0..added {
                    self.listeners.remove_last_slot();
                }
                return Err(e);
            }
        }
        self.target = to;
        self.emit(Event::Scaled { from, to });
        for index in from..to {
            self.slots.push(Slot::new(index));
            if let Err(e) = self.start(index, Role::Current).await {
                self.on_spawn_failure(index, e);
            }
        }
        for index in to..from {
            self.retire_slot(index);
        }
        self.watch_listeners();
        self.changed();
        self.trim_slots();
        Ok((from, to))
    }

    /// [`Supervisor::scale`] from a signal: a refusal is a notice.
    pub(super) async fn scale_or_notice(&mut self, by: Scale) {
        if let Err(e) = self.scale(by).await {
            self.notice(None, Notice::ScaleRefused, e.chain());
        }
    }

    /// Stops one slot's workers gracefully, for good.
    pub(super) fn retire_slot(&mut self, index: usize) {
        let defer = self.defers_stop_signal();
        let newly = self.slots[index].begin_stop(clock(), self.config.drain_timeout, defer);
        let held_back = if defer {
            self.slots[index].pids()
        } else {
            Vec::new()
        };
        // Out of steering and rotation first: no new connection is sent to
        // a worker that is about to stop accepting.
        self.changed();
        for pid in newly {
            self.ask_to_stop(pid);
        }
        for pid in held_back {
            self.retire(pid);
        }
    }

    /// Removes the slots past the target whose workers are all gone.
    pub(super) fn trim_slots(&mut self) {
        let mut removed = false;
        while self.slots.len() > self.target {
            let last = &self.slots[self.slots.len() - 1];
            if last.is_live() || last.is_pending() {
                break;
            }
            let index = last.index;
            self.slots.pop();
            let queued = self.listeners.remove_last_slot();
            self.forward_queued(index, queued);
            removed = true;
        }
        if removed {
            self.watch_listeners();
            self.changed();
        }
    }

    /// Reads every current worker's CPU and memory; replaces one that has
    /// stayed over the memory limit, successor first.
    pub(super) async fn on_sample(&mut self) {
        let now = clock();
        let mut over = Vec::new();
        for index in 0..self.slots.len() {
            let Some(pid) = self.slots[index].pid() else {
                continue;
            };
            let entry = self.workers.get(&pid);
            let cgroup = entry.and_then(|w| w.cgroup.as_ref()).map(WorkerCgroup::dir);
            let mut pids = vec![pid];
            pids.extend(entry.and_then(|w| w.app).filter(|&app| app != pid));
            let usage = usage::read(cgroup, &pids);
            let limit = self.config.max_memory;
            if self.slots[index].record_usage(pid, usage, now, limit) {
                over.push((index, pid, usage.map_or(0, |u| u.memory)));
            }
        }
        self.publish_snapshot();
        self.sample_metrics();
        self.check_accepting();
        for (slot, pid, memory) in over {
            let event = Event::MemoryLimit {
                slot,
                pid: pid.as_raw() as u32,
                memory,
                limit: self.config.max_memory.unwrap_or(0),
            };
            self.recycle(slot, event, "memory").await;
        }
        self.recycle_by_requests().await;
    }

    /// Replaces slot `slot`'s worker as a reload does, successor first,
    /// saying why with `event` (and `reason` in the restart metric).
    pub(super) async fn recycle(&mut self, slot: usize, event: Event, reason: &'static str) {
        if self.phase != Phase::Running {
            return;
        }
        self.emit(event);
        crate::observe::metrics::restart(slot, reason);
        // Counted when the successor takes over, under this reason.
        self.slots[slot].replace_reason = Some(reason);
        self.request_reload(Target::Slot(slot), None).await;
    }

    /// Replaces each current worker that has been sent `max_requests`
    /// requests (once each), successor first.
    pub(super) async fn recycle_by_requests(&mut self) {
        let (Some(limit), Some(proxy)) = (self.config.max_requests, self.proxy.as_ref()) else {
            return;
        };
        let current: Vec<(usize, Pid)> = (0..self.slots.len())
            .filter_map(|i| Some((i, self.slots[i].pid()?)))
            .collect();
        let mut over = Vec::new();
        for (slot, pid) in current {
            let Some(backend) = proxy.backend(pid) else {
                continue;
            };
            let requests = backend.total.load(std::sync::atomic::Ordering::Relaxed);
            let limited = self.workers.get(&pid).is_some_and(|w| w.request_limited);
            if requests >= limit && !limited {
                over.push((slot, pid, requests));
            }
        }
        for &(_, pid, _) in &over {
            self.worker(pid).request_limited = true;
        }
        for (slot, pid, requests) in over {
            let event = Event::RequestLimit {
                slot,
                pid: pid.as_raw() as u32,
                requests,
                limit,
            };
            self.recycle(slot, event, "requests").await;
        }
    }

    /// Hands the last sample to the `metrics` facade (a no-op without the
    /// feature).
    pub(super) fn sample_metrics(&self) {
        // Without the feature nothing would take the values: read nothing.
        if !cfg!(feature = "metrics") {
            return;
        }
        crate::observe::metrics::workers(self.target);
        for slot in &self.slots {
            let info = slot.info();
            crate::observe::metrics::worker(
                info.slot,
                slot.is_serving(),
                info.started.map(|s| s.elapsed()),
                info.cpu_time,
                info.memory,
            );
            let backend = slot
                .pid()
                .and_then(|pid| self.proxy.as_ref().and_then(|p| p.backend(pid)));
            if let Some(b) = backend {
                use std::sync::atomic::Ordering::Relaxed;
                crate::observe::metrics::proxy(
                    info.slot,
                    b.active(),
                    b.total.load(Relaxed),
                    b.connect_errors.load(Relaxed),
                );
            }
        }
        if let Some(me) = usage::read(None, &[nix::unistd::getpid()]) {
            crate::observe::metrics::master(me.cpu, me.memory);
        }
    }

    /// Every worker started from now on runs `command`. It must be Node
    /// if and only if the current one is: the readiness mode and the
    /// preload were chosen for that.
    pub(super) fn set_command(&mut self, command: crate::process::command::Command) -> Result<()> {
        let now = self.config.command.preload.is_some();
        if command.preload.is_some() != now {
            return Err(Error::InvalidSetting {
                setting: "command",
                reason: format!(
                    "`{}` {} a Node program and `{}` {}: the readiness and the Node preload \
                     were chosen for the first, so build a new cluster to switch",
                    command.program,
                    if command.runs_node { "is" } else { "is not" },
                    self.config.command.program,
                    if now { "is" } else { "is not" },
                ),
            });
        }
        self.config.command = command;
        Ok(())
    }
}
