//! Watching a worker: the tasks that read its output and readiness
//! channel and wait for its exit, and (for real processes) a duplicate of
//! each fd those tasks own. An upgrade stops the tasks first, so that no
//! exit is reaped and no line read by a master about to be replaced, then
//! hands the duplicates on (see `handoff.rs`). The new master, or this one
//! if the exec fails, starts the same tasks again from them.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use nix::unistd::Pid;
use tokio::task::{AbortHandle, JoinHandle};

use super::{Reaped, Supervisor, OUTPUT_GRACE};
use crate::process::cgroup::WorkerCgroup;
use crate::process::output::{self, Sink, Stream, Tail};
use crate::process::{os, reap};
use crate::ready::{ipc, pipe, Readiness};
use crate::upgrade::ChannelKind;
/// The master's fds of one worker, kept for an upgrade.
pub(super) struct Carry {
    pub(super) pidfd: OwnedFd,
    pub(super) output: Option<(OwnedFd, OwnedFd)>,
    pub(super) channel: Option<(ChannelKind, OwnedFd)>,
}

/// A live worker's tasks and its carried fds.
pub(super) struct Monitor {
    /// Waits for the exit, then reports it.
    pub(super) watcher: JoinHandle<()>,
    /// Output pumps and the readiness reader.
    pub(super) readers: Vec<AbortHandle>,
    pub(super) carry: Option<Carry>,
}

/// What watching a worker starts from; the tasks own these fds.
pub(super) struct Attachment {
    pub(super) reaped: os::Reaped,
    pub(super) output: Option<(OwnedFd, OwnedFd)>,
    pub(super) channel: Option<(ChannelKind, OwnedFd)>,
    pub(super) cgroup: Option<WorkerCgroup>,
}

fn dup(fd: &OwnedFd) -> io::Result<OwnedFd> {
    fd.try_clone()
}

impl Carry {
    /// The master's copies of a new worker's fds: `pidfd` (None for a fake
    /// process, which cannot be handed on) and duplicates of the tasks'.
    pub(super) fn of(pidfd: Option<OwnedFd>, a: &Attachment) -> Option<Carry> {
        Some(Carry {
            pidfd: pidfd?,
            output: match &a.output {
                Some((o, e)) => Some((dup(o).ok()?, dup(e).ok()?)),
                None => None,
            },
            channel: match &a.channel {
                Some((k, fd)) => Some((*k, dup(fd).ok()?)),
                None => None,
            },
        })
    }

    /// Duplicates for a new set of tasks, reaping through `pidfd`.
    pub(super) fn attachment(
        &self,
        pid: Pid,
        cgroup: Option<WorkerCgroup>,
    ) -> io::Result<Attachment> {
        Ok(Attachment {
            reaped: Box::pin(reap::wait(pid, dup(&self.pidfd)?)),
            output: match &self.output {
                Some((o, e)) => Some((dup(o)?, dup(e)?)),
                None => None,
            },
            channel: match &self.channel {
                Some((k, fd)) => Some((*k, dup(fd)?)),
                None => None,
            },
            cgroup,
        })
    }
}

impl Supervisor {
    /// Starts watching worker `pid` of slot `index`: its readiness
    /// channel, its output, its exit. `carry` is kept for an upgrade.
    pub(super) fn attach(
        &mut self,
        index: usize,
        generation: u64,
        pid: Pid,
        a: Attachment,
        carry: Option<Carry>,
    ) {
        let mut readers = Vec::new();
        if let Some((kind, master_end)) = a.channel {
            let task = match kind {
                ChannelKind::Pipe => {
                    let counts = matches!(self.ready.mode, Readiness::Listen | Readiness::Ipc);
                    tokio::spawn(pipe::serve(master_end, pid, counts, self.notes_tx.clone()))
                }
                ChannelKind::Ipc => {
                    tokio::spawn(ipc::serve(master_end, pid, self.notes_tx.clone()))
                }
            };
            readers.push(task.abort_handle());
        }
        let tail = Tail::default();
        let sink = Arc::new(Sink {
            prefix: match self.shared.log.name() {
                Some(name) => format!("[{name} slot {index} pid {pid}] "),
                None => format!("[slot {index} pid {pid}] "),
            }
            .into(),
            tail: tail.clone(),
            forward: self.config.forward_output,
            log: self.shared.log.clone(),
            slot: index,
            pid: pid.as_raw() as u32,
        });
        let pumps = a.output.map(|(stdout, stderr)| {
            (
                tokio::spawn(output::pump(stdout, Stream::Stdout, sink.clone())),
                tokio::spawn(output::pump(stderr, Stream::Stderr, sink)),
            )
        });
        if let Some((out, err)) = &pumps {
            readers.extend([out.abort_handle(), err.abort_handle()]);
        }
        let tx = self.reaped_tx.clone();
        let reaped = a.reaped;
        let worker_cgroup = a.cgroup;
        let watcher = tokio::spawn(async move {
            let result = reaped.await;
            // The main process is gone: so is everything it started, in
            // its group or not.
            if let Some(w) = worker_cgroup {
                w.remove().await;
            }
            // Let the last lines through before the exit is reported, so
            // the log reads in order.
            if let Some((out, err)) = pumps {
                let _ = tokio::time::timeout(OUTPUT_GRACE, async {
                    let _ = out.await;
                    let _ = err.await;
                })
                .await;
            }
            let _ = tx.send(Reaped {
                slot: index,
                generation,
                pid,
                result,
                tail: tail.lines(),
            });
        });
        self.worker(pid).monitor = Some(Monitor {
            watcher,
            readers,
            carry,
        });
    }

    /// Stops every worker's tasks. False if one of them had already seen
    /// its worker exit (the exit is on its way to the loop).
    pub(super) async fn detach_all(&mut self) -> bool {
        let mut clean = true;
        for monitor in self.workers.values_mut().filter_map(|w| w.monitor.as_mut()) {
            for r in &monitor.readers {
                r.abort();
            }
            monitor.watcher.abort();
            if let Ok(()) = (&mut monitor.watcher).await {
                clean = false;
            }
        }
        clean
    }

    /// Starts every worker's tasks again from the carried fds (an upgrade
    /// that did not happen).
    pub(super) fn reattach_all(&mut self) {
        let monitors: Vec<(Pid, Monitor)> = self
            .workers
            .iter_mut()
            .filter_map(|(&pid, w)| Some((pid, w.monitor.take()?)))
            .collect();
        for (pid, monitor) in monitors {
            let Some(carry) = monitor.carry else {
                continue;
            };
            let Some((index, _)) = self.slot_of(pid) else {
                continue;
            };
            let generation = self.slots[index].generation;
            self.attach_carried(index, generation, pid, carry);
        }
    }

    /// Watches a worker from its carried fds (after an upgrade, or one that
    /// did not happen). A worker whose fds cannot be duplicated any more is
    /// SIGKILLed: it could not be supervised.
    pub(super) fn attach_carried(&mut self, index: usize, generation: u64, pid: Pid, carry: Carry) {
        let cgroup = self.workers.get(&pid).and_then(|w| w.cgroup.clone());
        let attachment = match carry.attachment(pid, cgroup) {
            Ok(a) => a,
            Err(e) => {
                self.notice(
                    Some(index),
                    crate::Notice::ReapFailed,
                    format!("cannot watch pid {pid} any more ({e}): killing it"),
                );
                self.kill_tree(pid);
                // Reaped by nobody else: wait for it here.
                let _ = nix::sys::wait::waitpid(pid, None);
                return;
            }
        };
        self.attach(index, generation, pid, attachment, Some(carry));
    }
}
