//! The event loop: slots, restarts, shutdown.
//!
//! One task owns every slot. It reacts to four sources: a worker was reaped,
//! a control came from a [`crate::Handle`], a signal reached the master, a
//! slot's timer (restart after backoff, SIGKILL after the drain timeout)
//! fired. Decisions are delegated to the pure [`slot`] and [`policy`] code;
//! this file only carries them out.

pub mod policy;
pub mod slot;

use std::collections::hash_map::RandomState;
use std::ffi::OsString;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch};

use crate::cluster::{Config, Handle, Phase, Snapshot};
use crate::error::{Error, Result};
use crate::event::{Event, WorkerInfo};
use crate::net::Listeners;
use crate::process::output::{self, Stream, Tail};
use crate::process::spawn::SpawnRequest;
use crate::process::{reap, signal_group, spawner, Exit};
use policy::Decision;
use slot::{Due, Slot, WorkerState};

/// How long a reaped worker's output pipes may take to reach EOF before the
/// exit is reported anyway (a grandchild that escaped the process group may
/// hold them open).
const OUTPUT_GRACE: Duration = Duration::from_millis(500);
/// How long `run()` waits for queued output lines to be written at the end.
const FINAL_FLUSH: Duration = Duration::from_secs(2);
/// A slot whose next worker is further away than this has the connections
/// queued on its socket passed on to live slots instead of waiting.
const RESCUE_AFTER: Duration = Duration::from_secs(1);
/// The exit reported for a spawn that failed after start-up, so that it
/// counts towards the crash-loop limit like any failed start.
const SPAWN_FAILURE_EXIT: Exit = Exit::Code(127);

/// A request from a [`Handle`].
#[derive(Debug)]
pub(crate) enum Control {
    Stop { graceful: bool },
}

/// A worker that exited and was reaped.
struct Reaped {
    slot: usize,
    generation: u64,
    pid: Pid,
    result: io::Result<Exit>,
    tail: Vec<String>,
}

/// The master's signals, when `run()` handles them.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    quit: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Self> {
        let kind = |k: SignalKind, name: &str| {
            signal(k).map_err(|e| Error::io(format!("installing the {name} handler"), e))
        };
        Ok(Signals {
            term: kind(SignalKind::terminate(), "SIGTERM")?,
            int: kind(SignalKind::interrupt(), "SIGINT")?,
            quit: kind(SignalKind::quit(), "SIGQUIT")?,
        })
    }
}

/// Which master signal arrived.
enum MasterSignal {
    Term,
    Int,
    Quit,
}

async fn next_signal(signals: &mut Option<Signals>) -> MasterSignal {
    match signals {
        Some(s) => tokio::select! {
            _ = s.term.recv() => MasterSignal::Term,
            _ = s.int.recv() => MasterSignal::Int,
            _ = s.quit.recv() => MasterSignal::Quit,
        },
        None => std::future::pending().await,
    }
}

struct Supervisor {
    config: Config,
    listeners: Listeners,
    handle: Handle,
    snapshot: watch::Sender<Snapshot>,
    slots: Vec<Slot>,
    phase: Phase,
    reaped_tx: mpsc::UnboundedSender<Reaped>,
    /// Set when the cluster cannot start; returned once all is reaped.
    fatal: Option<Error>,
    /// The slots new connections are steered to now.
    steered: Vec<usize>,
    /// Steering failed once (old kernel, no permission): the kernel's own
    /// hash decides, and queues of empty slots wait for their next worker.
    steer_broken: bool,
}

pub(crate) async fn run(
    config: Config,
    listeners: Listeners,
    handle: Handle,
    mut control_rx: mpsc::UnboundedReceiver<Control>,
    snapshot: watch::Sender<Snapshot>,
) -> Result<()> {
    let mut signals = if config.handle_signals {
        Some(Signals::install()?)
    } else {
        None
    };
    let (reaped_tx, mut reaped_rx) = mpsc::unbounded_channel();
    let mut sup = Supervisor {
        slots: (0..config.workers).map(Slot::new).collect(),
        config,
        listeners,
        handle,
        snapshot,
        phase: Phase::Running,
        reaped_tx,
        fatal: None,
        steered: Vec::new(),
        steer_broken: false,
    };
    sup.changed().await;

    for i in 0..sup.slots.len() {
        // A stop may already be queued (shutdown() before run()).
        if let Ok(Control::Stop { graceful }) = control_rx.try_recv() {
            sup.stop(graceful).await;
            break;
        }
        if let Err(e) = sup.start(i).await {
            // The program cannot start at all: undo what did start.
            sup.fatal = Some(e);
            sup.stop(false).await;
            break;
        }
    }

    while !sup.finished() {
        let deadline = sup.slots.iter().filter_map(Slot::next_deadline).min();
        let timer = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            Some(r) = reaped_rx.recv() => sup.on_reaped(r).await,
            Some(Control::Stop { graceful }) = control_rx.recv() => sup.stop(graceful).await,
            sig = next_signal(&mut signals) => match sig {
                MasterSignal::Term => sup.stop(true).await,
                // A second Ctrl-C means "now".
                MasterSignal::Int => {
                    let graceful = sup.phase != Phase::Stopping;
                    sup.stop(graceful).await;
                }
                MasterSignal::Quit => sup.stop(false).await,
            },
            () = timer => sup.on_timers().await,
        }
    }
    sup.finish().await
}

impl Supervisor {
    /// True when nothing is running and nothing will start by itself.
    fn finished(&self) -> bool {
        !self.slots.iter().any(|s| s.is_live() || s.is_pending())
    }

    async fn emit(&self, event: Event) {
        if self.config.log_events {
            output::log_line(&event.to_string()).await;
        }
        self.handle.publish(event);
    }

    fn publish_snapshot(&self) {
        let workers = self
            .slots
            .iter()
            .map(|s| WorkerInfo {
                slot: s.index,
                generation: s.generation,
                pid: s.pid.map(|p| p.as_raw() as u32),
                state: s.state,
                restarts: s.restarts,
                last_exit: s.last_exit,
            })
            .collect();
        self.snapshot.send_replace(Snapshot {
            phase: self.phase,
            workers,
        });
    }

    fn spawn_request(&self, index: usize, generation: u64) -> SpawnRequest {
        let listen_fds = self.listeners.fds_for_slot(index);
        let mut env = self.config.env.clone();
        if !listen_fds.is_empty() {
            let names: Vec<String> = (0..listen_fds.len())
                .map(|i| format!("listen{i}"))
                .collect();
            env.push(("LISTEN_FDS".into(), listen_fds.len().to_string().into()));
            env.push(("LISTEN_FDNAMES".into(), names.join(":").into()));
        }
        let slot: OsString = index.to_string().into();
        env.push((crate::worker::SLOT_ENV.into(), slot.clone()));
        env.push((
            crate::worker::GENERATION_ENV.into(),
            generation.to_string().into(),
        ));
        // PM2 sets NODE_APP_INSTANCE to the instance index; apps use it to
        // run a job on one instance only.
        env.push(("NODE_APP_INSTANCE".into(), slot));
        SpawnRequest {
            path: self.config.path.clone(),
            argv: self.config.argv.clone(),
            env,
            listen_fds,
            cwd: self.config.cwd.clone(),
        }
    }

    /// Starts the next generation of slot `index`.
    async fn start(&mut self, index: usize) -> Result<()> {
        let generation = self.slots[index].next_generation();
        let req = self.spawn_request(index, generation);
        let spawned = match spawner::spawn(req).await {
            Ok(s) => s,
            Err(e) => {
                self.changed().await;
                return Err(Error::Spawn {
                    program: self.config.program.clone(),
                    slot: index,
                    stage: e.stage,
                    source: e.source,
                });
            }
        };
        let pid = spawned.pid;
        self.slots[index].on_spawned(pid, generation, Instant::now());
        // State first, then the event: a subscriber that reacts to the event
        // finds the snapshot already up to date.
        self.changed().await;
        self.emit(Event::Spawned {
            slot: index,
            generation,
            pid: pid.as_raw() as u32,
        })
        .await;

        let tx = self.reaped_tx.clone();
        tokio::spawn(async move {
            let tail = Tail::default();
            let prefix: std::sync::Arc<str> = format!("[slot {index} pid {pid}] ").into();
            let out = tokio::spawn(output::pump(
                spawned.stdout,
                Stream::Stdout,
                prefix.clone(),
                tail.clone(),
            ));
            let err = tokio::spawn(output::pump(
                spawned.stderr,
                Stream::Stderr,
                prefix,
                tail.clone(),
            ));
            let result = reap::wait(pid, spawned.pidfd).await;
            // Let the last lines through before the exit is reported, so
            // the log reads in order.
            let _ = tokio::time::timeout(OUTPUT_GRACE, async {
                let _ = out.await;
                let _ = err.await;
            })
            .await;
            let _ = tx.send(Reaped {
                slot: index,
                generation,
                pid,
                result,
                tail: tail.lines(),
            });
        });
        Ok(())
    }

    async fn on_reaped(&mut self, r: Reaped) {
        let stopping = self.phase == Phase::Stopping;
        let slot = &mut self.slots[r.slot];
        if slot.pid != Some(r.pid) {
            return;
        }
        let exit = match r.result {
            Ok(exit) => exit,
            Err(e) => {
                output::log_line(&format!("slot {}: cannot reap pid {}: {e}", r.slot, r.pid)).await;
                Exit::Signal(Signal::SIGKILL)
            }
        };
        let now = Instant::now();
        let uptime = slot
            .started
            .map(|s| now.saturating_duration_since(s))
            .unwrap_or_default();
        let expected = stopping || slot.state == WorkerState::Stopping;
        let decision = slot.on_exit(&self.config.supervision, now, exit, stopping, random_unit());
        self.changed().await;
        self.emit(Event::Exited {
            slot: r.slot,
            generation: r.generation,
            pid: r.pid.as_raw() as u32,
            exit,
            uptime,
            expected,
        })
        .await;
        if let Some(decision) = decision {
            self.report(r.slot, decision, r.tail).await;
        }
    }

    async fn report(&mut self, slot: usize, decision: Decision, tail: Vec<String>) {
        let rescue = match decision {
            Decision::Restart(delay) => delay >= RESCUE_AFTER,
            Decision::Done | Decision::Failed { .. } => true,
        };
        let event = match decision {
            Decision::Restart(delay) => Event::RestartScheduled { slot, delay },
            Decision::Done => Event::SlotDone { slot },
            Decision::Failed { exits, window } => Event::SlotFailed {
                slot,
                exits,
                window,
                last_output: tail,
            },
        };
        self.emit(event).await;
        if rescue {
            self.rescue_queue(slot).await;
        }
    }

    /// Steers new connections to the slots that have a ready worker, when
    /// that set changed, and publishes the new snapshot.
    async fn changed(&mut self) {
        let live: Vec<usize> = self
            .slots
            .iter()
            .filter(|s| s.state == WorkerState::Ready)
            .map(|s| s.index)
            .collect();
        if !self.steer_broken && !live.is_empty() && live != self.steered {
            match self.listeners.steer(&live) {
                Ok(()) => self.steered = live,
                Err(e) => {
                    self.steer_broken = true;
                    output::log_line(&format!(
                        "cannot steer connections away from empty slots ({e}); \
                         their queues wait for the next worker"
                    ))
                    .await;
                }
            }
        }
        self.publish_snapshot();
    }

    /// Passes the connections queued on an empty slot's socket on to the
    /// live slots, so that they do not wait for a worker that is far off.
    async fn rescue_queue(&mut self, slot: usize) {
        let slot_is_out = !self.steer_broken
            && !self.steered.is_empty()
            && !self.steered.contains(&slot)
            && !self.slots[slot].is_live();
        if !slot_is_out {
            return;
        }
        let queued = self.listeners.drain_slot(slot);
        if queued.is_empty() {
            return;
        }
        output::log_line(&format!(
            "slot {slot}: passing {} queued connection(s) on to live slots",
            queued.len()
        ))
        .await;
        for (conn, target) in queued {
            tokio::spawn(crate::net::rescue::forward(conn, target));
        }
    }

    async fn on_timers(&mut self) {
        let now = Instant::now();
        for index in 0..self.slots.len() {
            match self.slots[index].take_due(now) {
                Some(Due::Restart) => {
                    if let Err(e) = self.start(index).await {
                        self.on_spawn_failure(index, e).await;
                    }
                }
                Some(Due::Kill(pid)) => {
                    self.emit(Event::DrainTimeout {
                        slot: index,
                        pid: pid.as_raw() as u32,
                    })
                    .await;
                    signal_group(pid, Signal::SIGKILL);
                }
                None => {}
            }
        }
        self.changed().await;
    }

    /// A restart could not even exec: count it like a crash, so that a
    /// program deleted while running ends in a failed slot, not a hot loop.
    async fn on_spawn_failure(&mut self, index: usize, error: Error) {
        self.emit(Event::SpawnFailed {
            slot: index,
            error: error.to_string(),
        })
        .await;
        let decision = self.slots[index].on_exit(
            &self.config.supervision,
            Instant::now(),
            SPAWN_FAILURE_EXIT,
            self.phase == Phase::Stopping,
            random_unit(),
        );
        self.changed().await;
        if let Some(decision) = decision {
            self.report(index, decision, vec![error.to_string()]).await;
        }
    }

    /// Stops every worker: gracefully (stop signal now, SIGKILL at the drain
    /// timeout) or at once.
    async fn stop(&mut self, graceful: bool) {
        if graceful && self.phase == Phase::Stopping {
            return;
        }
        self.phase = Phase::Stopping;
        self.changed().await;
        self.emit(Event::Stopping { graceful }).await;
        let now = Instant::now();
        for slot in &mut self.slots {
            let newly = slot.begin_stop(now, self.config.drain_timeout);
            if graceful {
                if let Some(pid) = newly {
                    signal_group(pid, self.config.stop_signal);
                }
            } else if let Some(pid) = slot.pid {
                signal_group(pid, Signal::SIGKILL);
            }
        }
        self.changed().await;
    }

    async fn finish(mut self) -> Result<()> {
        let failures: Vec<_> = self
            .slots
            .iter()
            .filter_map(|s| s.failure.clone())
            .collect();
        let stopped_by_request = self.phase == Phase::Stopping;
        self.phase = Phase::Stopped;
        self.emit(Event::Stopped).await;
        let _ = tokio::time::timeout(FINAL_FLUSH, output::flush()).await;
        // Last: Handle::shutdown resolves on this, after the final lines.
        self.publish_snapshot();
        if let Some(e) = self.fatal.take() {
            return Err(e);
        }
        if !stopped_by_request && !failures.is_empty() {
            return Err(Error::AllSlotsFailed { slots: failures });
        }
        Ok(())
    }
}

/// A random number in `[0, 1)` for backoff jitter, without a dependency:
/// every `RandomState` is seeded differently.
fn random_unit() -> f64 {
    let bits = RandomState::new().build_hasher().finish() >> 11;
    bits as f64 / (1u64 << 53) as f64
}
