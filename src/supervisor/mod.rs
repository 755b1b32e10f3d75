//! The event loop: slots, restarts, readiness, reloads, shutdown.
//!
//! One task owns every slot. It reacts to these sources: a worker was
//! reaped, a worker said something (ready, watchdog, status), a control
//! came from a [`crate::Handle`], a signal reached the master, a slot's
//! timer fired (restart after backoff, start timeout, watchdog, SIGKILL
//! after the drain timeout). Decisions are delegated to the pure [`slot`],
//! [`policy`] and [`reload`] code; this file carries them out, and
//! `rolling.rs` carries out reloads.

mod config;
mod events;
mod handoff;
mod inbox;
mod monitors;
pub mod policy;
pub mod reload;
mod rolling;
mod scale;
mod setup;
pub mod slot;
mod spawn;
mod stop;
#[cfg(test)]
mod tests;
mod traffic;
mod workers;

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::unistd::Pid;
use tokio::sync::{mpsc, watch};

use crate::net::Listeners;
use crate::observe::event::{Event, Notice};
use crate::observe::log::Log;
use crate::process::cgroup::ClusterCgroup;
use crate::process::os::Processes;
use crate::process::sentinel::Sentinel;
use crate::proxy::plane::Plane;
use crate::ready::{Note, Readiness};
use crate::service::ServiceNotify;
use crate::types::{Error, Phase, Result, WorkerInfo};
pub(crate) use config::{Config, WorkerUser};
use inbox::{next_signal, MasterSignal, Reaped};
pub(crate) use inbox::{Control, Scale};
use reload::{ReloadRun, Target, Waiter};
use setup::Inbox;
use slot::{Role, Slot};
use workers::Worker;

/// The state a [`crate::Handle`] reads without asking the event loop.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    pub(crate) phase: Phase,
    pub(crate) workers: Vec<WorkerInfo>,
    /// Master upgrades in place this cluster has been through.
    pub(crate) upgrades: u32,
}

/// What the loop shares with every [`crate::Handle`]: the log, the proxy's
/// registry of backends and its counters, and the fds carried across a
/// master upgrade. One small value, so that the loop needs nothing of the
/// front.
#[derive(Debug, Clone)]
pub(crate) struct Shared {
    pub(crate) log: Log,
    pub(crate) backends: crate::proxy::Registry,
    pub(crate) counters: Arc<crate::proxy::Counters>,
    pub(crate) carried: Arc<crate::upgrade::Carried>,
}

impl Shared {
    /// The shared parts of a new cluster named `name`.
    pub(crate) fn new(name: Option<String>, log_events: bool) -> Shared {
        let log = Log::new(name, log_events);
        Shared {
            counters: Arc::new(crate::proxy::Counters::new(log.clone())),
            log,
            backends: Default::default(),
            carried: Default::default(),
        }
    }
}

/// How long a reaped worker's output pipes may take to reach EOF before the
/// exit is reported anyway (a grandchild that escaped the process group may
/// hold them open).
pub(super) const OUTPUT_GRACE: Duration = Duration::from_millis(500);
/// How readiness works for this cluster, resolved from the configuration.
#[derive(Debug, Clone, Copy)]
pub(super) struct ReadyPlan {
    mode: Readiness,
    slot: slot::Readiness,
    watchdog: Option<Duration>,
}

pub(super) struct Supervisor {
    config: Config,
    listeners: Listeners,
    shared: Shared,
    snapshot: watch::Sender<Snapshot>,
    slots: Vec<Slot>,
    phase: Phase,
    reaped_tx: mpsc::UnboundedSender<Reaped>,
    notes_tx: mpsc::UnboundedSender<Note>,
    notify_env: Option<String>,
    ready: ReadyPlan,
    /// Set when the cluster cannot start; returned once all is reaped.
    fatal: Option<Error>,
    /// How many slots there should be; slots past it are being removed.
    target: usize,
    reload: Option<ReloadRun>,
    /// Reload requests that arrived during a reload: run once it ends.
    queued: Vec<(Target, Option<Waiter>)>,
    /// Proxy mode: backends, rotation, private listeners.
    proxy: Option<Plane>,
    /// The notify socket's reader and the proxy's accept loops.
    background: Vec<tokio::task::JoinHandle<()>>,
    /// Tasks that notice a listening socket hanging up.
    listen_watch: Vec<tokio::task::JoinHandle<()>>,
    /// The relays of connections rescued from a slot without a worker.
    relays: Arc<crate::net::rescue::Relays>,
    listen_tx: mpsc::UnboundedSender<()>,
    /// Foreign notify messages are logged once a second at most.
    foreign_notes: crate::observe::throttle::LogThrottle,
    /// The cluster's cgroup, where cgroup v2 is writable: each worker's
    /// tree in a cgroup of its own, killed whole.
    cgroup: Option<ClusterCgroup>,
    /// What the loop keeps of each live worker process, by pid: a reap
    /// is one removal.
    workers: HashMap<Pid, Worker>,
    /// Starts, signals and reaps the workers.
    os: Arc<dyn Processes>,
    /// A graceful stop waiting out the pre-stop delay.
    pending_stop: Option<Instant>,
    /// The master's own service manager (systemd), if it listens.
    service: Option<ServiceNotify>,
    /// Kills the workers' groups if the master dies (None: they asked for
    /// the parent-death signal instead).
    sentinel: Option<Sentinel>,
    /// A duplicate of the workers' notify socket, for an upgrade.
    notify_fd: Option<std::os::fd::OwnedFd>,
    /// Upgrade requests waiting for the cluster to settle, and since when.
    upgrade_requests: Vec<Option<tokio::sync::oneshot::Sender<Result<()>>>>,
    upgrade_since: Option<Instant>,
    /// Master upgrades this cluster has been through.
    upgrades: u32,
}

pub(crate) async fn run(
    config: Config,
    listeners: Listeners,
    inherited: Option<crate::upgrade::Adopted>,
    shared: Shared,
    mut control_rx: mpsc::UnboundedReceiver<Control>,
    snapshot: watch::Sender<Snapshot>,
    os: Arc<dyn Processes>,
) -> Result<()> {
    let _running = handoff::Running::new();
    let (mut sup, inbox, adopting) =
        Supervisor::set_up(config, listeners, inherited, shared, snapshot, os)?;
    let Inbox {
        mut signals,
        reaped: mut reaped_rx,
        notes: mut notes_rx,
        idle: mut idle_rx,
        listen: mut listen_rx,
        refusing: mut refusing_rx,
    } = inbox;

    // Controls sent before run() wait for it: a stop means nothing is
    // started; the others are carried out once the first workers are.
    let mut early = Vec::new();
    for i in 0..sup.slots.len() {
        if adopting {
            break;
        }
        let mut stop = None;
        while let Ok(control) = control_rx.try_recv() {
            match control {
                Control::Stop { graceful } => stop = Some(graceful),
                other => early.push(other),
            }
        }
        if let Some(graceful) = stop {
            sup.stop(graceful);
            break;
        }
        if let Err(e) = sup.start(i, Role::Current).await {
            // The program cannot start at all: undo what did start.
            sup.fatal = Some(e);
            sup.stop(false);
            break;
        }
    }

    let mut service_watchdog = sup
        .service
        .as_ref()
        .and_then(|_| crate::service::watchdog_every())
        .map(tokio::time::interval);
    let mut sampling = sup.config.sample_interval.map(|every| {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick
    });
    for control in early {
        sup.on_control(control).await;
    }
    while !sup.finished() {
        let ping = async {
            match &mut service_watchdog {
                Some(tick) => {
                    tick.tick().await;
                }
                None => std::future::pending().await,
            }
        };
        let sample = async {
            match &mut sampling {
                Some(tick) => {
                    tick.tick().await;
                }
                None => std::future::pending().await,
            }
        };
        let deadline = sup
            .slots
            .iter()
            .filter_map(Slot::next_deadline)
            .chain(sup.pending_stop)
            .min();
        let timer = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            Some(r) = reaped_rx.recv() => sup.on_reaped(r).await,
            Some(n) = notes_rx.recv() => sup.on_note(n).await,
            Some(pid) = idle_rx.recv() => sup.on_idle(Pid::from_raw(pid as i32)),
            Some(()) = listen_rx.recv() => sup.on_listener_hangup().await,
            Some(pid) = refusing_rx.recv() => sup.on_refusing(Pid::from_raw(pid as i32)),
            Some(c) = control_rx.recv() => sup.on_control(c).await,
            sig = next_signal(&mut signals) => match sig {
                MasterSignal::Term => sup.stop(true),
                // A second Ctrl-C means "now".
                MasterSignal::Int => {
                    let graceful = sup.phase != Phase::Stopping;
                    sup.stop(graceful);
                }
                MasterSignal::Quit => sup.stop(false),
                MasterSignal::Hup => sup.request_reload(Target::All, None).await,
                MasterSignal::Ttin => sup.scale_or_notice(Scale::By(1)).await,
                MasterSignal::Ttou => sup.scale_or_notice(Scale::By(-1)).await,
                MasterSignal::Usr2 => sup.request_upgrade(None),
            },
            () = timer => sup.on_timers().await,
            () = sample => sup.on_sample().await,
            // The loop itself answers: a hung master misses its pings.
            () = ping => {
                if let Some(s) = &sup.service {
                    s.watchdog();
                }
            }
        }
        if !sup.upgrade_requests.is_empty() {
            sup.try_upgrade(&reaped_rx).await;
        }
    }
    sup.finish().await
}

/// The supervisor's clock: tokio's, so that its unit tests run on a paused
/// clock; the same instant as `std::time::Instant::now()` otherwise.
pub(super) fn clock() -> Instant {
    tokio::time::Instant::now().into_std()
}

impl Supervisor {
    /// True when nothing is running and nothing will start by itself.
    pub(super) fn finished(&self) -> bool {
        !self.slots.iter().any(|s| s.is_live() || s.is_pending())
    }

    pub(super) fn emit(&self, event: Event) {
        self.shared.log.event(event);
    }

    pub(super) fn notice(&self, slot: Option<usize>, notice: Notice, message: String) {
        self.shared.log.notice(slot, notice, message);
    }

    pub(super) fn publish_snapshot(&self) {
        let workers = self.slots.iter().map(Slot::info).collect();
        self.snapshot.send_replace(Snapshot {
            phase: self.phase,
            workers,
            upgrades: self.upgrades,
        });
    }

    pub(super) fn slot_of(&self, pid: Pid) -> Option<(usize, Role)> {
        self.slots
            .iter()
            .find_map(|s| s.role_of(pid).map(|r| (s.index, r)))
    }

    // ---------------------------------------------------------- stopping
}

/// A random number in `[0, 1)` for backoff jitter, without a dependency:
/// every `RandomState` is seeded differently.
pub(super) fn random_unit() -> f64 {
    let bits = RandomState::new().build_hasher().finish() >> 11;
    bits as f64 / (1u64 << 53) as f64
}
