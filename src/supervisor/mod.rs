//! The event loop: slots, restarts, readiness, reloads, shutdown.
//!
//! One task owns every slot. It reacts to these sources: a worker was
//! reaped, a worker said something (ready, watchdog, status), a control
//! came from a [`crate::Handle`], a signal reached the master, a slot's
//! timer fired (restart after backoff, start timeout, watchdog, SIGKILL
//! after the drain timeout). Decisions are delegated to the pure [`slot`],
//! [`policy`] and [`reload`] code; this file carries them out, and
//! `rolling.rs` carries out reloads.

#[cfg(test)]
mod fake;
pub mod policy;
pub mod reload;
mod rolling;
pub mod slot;
mod upgrade;

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch};

use crate::cluster::{Config, Handle, Phase, Snapshot};
use crate::net::Listeners;
use crate::observe::event::{Event, Notice};
use crate::process::cgroup::{ClusterCgroup, WorkerCgroup};
use crate::process::os::Processes;
use crate::process::output;
use crate::process::sentinel::Sentinel;
use crate::process::spawn::SpawnRequest;
use crate::process::{process_group_of, usage};
use crate::proxy::plane::{self, Plane};
use crate::proxy::{self, ProxyConfig};
use crate::ready::notify::NotifySocket;
use crate::ready::{ipc, pipe, Note, Readiness};
use crate::service::ServiceNotify;
use crate::types::Millis;
use crate::types::ReloadFailure;
use crate::types::{Error, Result};
use crate::types::{Exit, KillMode};
use policy::Decision;
use reload::{ReloadRun, Target, Waiter};
use slot::{Due, ExitOutcome, Role, Slot};

/// How long a reaped worker's output pipes may take to reach EOF before the
/// exit is reported anyway (a grandchild that escaped the process group may
/// hold them open).
const OUTPUT_GRACE: Duration = Duration::from_millis(500);
/// How long `run()` waits for queued output lines to be written at the end.
const FINAL_FLUSH: Duration = Duration::from_secs(2);
/// How long a slot waits before trying again to start a worker that could
/// not be spawned for want of the master's resources (fds, processes).
const MASTER_LIMIT_RETRY: Duration = Duration::from_secs(1);
/// The exit reported for a spawn that failed after start-up, so that it
/// counts towards the crash-loop limit like any failed start.
const SPAWN_FAILURE_EXIT: Exit = Exit::Code(127);

/// A request from a [`Handle`].
#[derive(Debug)]
pub(crate) enum Control {
    Stop {
        graceful: bool,
    },
    Reload {
        target: Target,
        reply: Waiter,
    },
    Signal {
        slot: usize,
        signal: Signal,
        reply: tokio::sync::oneshot::Sender<Result<u32>>,
    },
    SetCommand {
        command: Box<crate::cluster::Command>,
        reply: tokio::sync::oneshot::Sender<Result<()>>,
    },
    Scale {
        to: Scale,
        reply: tokio::sync::oneshot::Sender<Result<(usize, usize)>>,
    },
    Upgrade {
        reply: tokio::sync::oneshot::Sender<Result<()>>,
    },
}

/// A number of workers to scale to.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Scale {
    To(usize),
    /// More or fewer than now (never below one).
    By(isize),
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
    hup: tokio::signal::unix::Signal,
    ttin: tokio::signal::unix::Signal,
    ttou: tokio::signal::unix::Signal,
    usr2: tokio::signal::unix::Signal,
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
            hup: kind(SignalKind::hangup(), "SIGHUP")?,
            // gunicorn's: one worker more, one fewer.
            ttin: kind(SignalKind::from_raw(nix::libc::SIGTTIN), "SIGTTIN")?,
            ttou: kind(SignalKind::from_raw(nix::libc::SIGTTOU), "SIGTTOU")?,
            // nginx's: upgrade the master in place.
            usr2: kind(SignalKind::user_defined2(), "SIGUSR2")?,
        })
    }
}

/// Which master signal arrived.
enum MasterSignal {
    Term,
    Int,
    Quit,
    Hup,
    Ttin,
    Ttou,
    Usr2,
}

async fn next_signal(signals: &mut Option<Signals>) -> MasterSignal {
    match signals {
        Some(s) => tokio::select! {
            _ = s.term.recv() => MasterSignal::Term,
            _ = s.int.recv() => MasterSignal::Int,
            _ = s.quit.recv() => MasterSignal::Quit,
            _ = s.hup.recv() => MasterSignal::Hup,
            _ = s.ttin.recv() => MasterSignal::Ttin,
            _ = s.ttou.recv() => MasterSignal::Ttou,
            _ = s.usr2.recv() => MasterSignal::Usr2,
        },
        None => std::future::pending().await,
    }
}

/// How readiness works for this cluster, resolved from the configuration.
#[derive(Debug, Clone, Copy)]
struct ReadyPlan {
    mode: Readiness,
    slot: slot::Readiness,
    watchdog: Option<Duration>,
}

struct Supervisor {
    config: Config,
    listeners: Listeners,
    handle: Handle,
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
    /// Successors killed for missing the start timeout.
    timed_out: HashSet<Pid>,
    /// Proxy mode: backends, rotation, private listeners.
    proxy: Option<Plane>,
    /// The notify socket's reader and the proxy's accept loops.
    background: Vec<tokio::task::JoinHandle<()>>,
    /// Tasks that notice a listening socket hanging up.
    listen_watch: Vec<tokio::task::JoinHandle<()>>,
    listen_tx: mpsc::UnboundedSender<()>,
    /// Foreign notify messages are logged once a second at most.
    foreign_notes: crate::observe::throttle::LogThrottle,
    /// The cluster's cgroup, where cgroup v2 is writable: each worker's
    /// tree in a cgroup of its own, killed whole.
    cgroup: Option<ClusterCgroup>,
    /// Each live worker's cgroup.
    worker_cgroups: HashMap<Pid, WorkerCgroup>,
    /// Where each Node worker's app runs, as the preload reported it: the
    /// worker itself, or another process of its tree (`npm start`). Worker
    /// pid -> the app's pid, which gets the stop signal.
    serving: HashMap<Pid, Pid>,
    /// Workers replaced for their request count (`max_requests`), so that
    /// each is replaced once.
    request_limited: HashSet<Pid>,
    /// Starts, signals and reaps the workers.
    os: Arc<dyn Processes>,
    /// Workers the master killed, and why (`watchdog`, `start_timeout`),
    /// for the restart that follows.
    killed_for: HashMap<Pid, &'static str>,
    /// A graceful stop waiting out the pre-stop delay.
    pending_stop: Option<Instant>,
    /// The master's own service manager (systemd), if it listens.
    service: Option<ServiceNotify>,
    /// Kills the workers' groups if the master dies (None: they asked for
    /// the parent-death signal instead).
    sentinel: Option<Sentinel>,
    /// Each live worker's tasks, and the master's fds for an upgrade.
    monitors: HashMap<Pid, upgrade::Monitor>,
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
    handle: Handle,
    mut control_rx: mpsc::UnboundedReceiver<Control>,
    snapshot: watch::Sender<Snapshot>,
    os: Arc<dyn Processes>,
) -> Result<()> {
    let _running = upgrade::Running::new();
    let mut signals = if config.handle_signals {
        Some(Signals::install()?)
    } else {
        None
    };
    let (reaped_tx, mut reaped_rx) = mpsc::unbounded_channel();
    let (notes_tx, mut notes_rx) = mpsc::unbounded_channel();
    let (idle_tx, mut idle_rx) = mpsc::unbounded_channel::<u32>();
    let (listen_tx, mut listen_rx) = mpsc::unbounded_channel::<()>();
    let (refusing_tx, mut refusing_rx) = mpsc::unbounded_channel::<u32>();

    let mode = match config.readiness {
        // A worker that binds PORT itself is ready when the port answers.
        Readiness::Auto if config.port_contract => Readiness::Probe,
        Readiness::Auto if config.command.preload.is_some() => Readiness::Listen,
        Readiness::Auto => Readiness::None,
        other => other,
    };
    // Tasks that live as long as the cluster runs, and no longer: an
    // embedding program's runtime may go on after run() returns.
    let mut background = Vec::new();
    let mut inherited = inherited;
    let mut notify_fd = None;
    let inherited_notify = inherited.as_mut().and_then(|a| a.notify.take());
    let notify_env = if mode == Readiness::Notify || config.watchdog.is_some() {
        // After an upgrade, the socket the workers already send to.
        let socket = match inherited_notify {
            Some((fd, name)) => NotifySocket::adopt(fd, name),
            None => NotifySocket::bind(),
        }
        .map_err(|e| Error::io("creating the notify socket", e))?;
        let env = socket.env_value.clone();
        notify_fd = socket.duplicate().ok();
        background.push(tokio::spawn(socket.serve(notes_tx.clone())));
        Some(env)
    } else {
        None
    };
    let ready = ReadyPlan {
        mode,
        slot: slot::Readiness {
            after: match mode {
                Readiness::Delay(d) => Some(d),
                _ => None,
            },
            reported: matches!(
                mode,
                Readiness::Notify | Readiness::Ipc | Readiness::Listen | Readiness::Probe
            ),
            start_timeout: config.start_timeout,
            settle: if mode == Readiness::None {
                config.settle
            } else {
                None
            },
        },
        watchdog: config.watchdog,
    };

    let proxy = match listeners.balance() {
        balance @ (crate::Balance::Proxy { strategy } | crate::Balance::Http { strategy }) => {
            let config = ProxyConfig {
                strategy,
                header: config.proxy_header,
                splice: config.proxy_splice,
                idle_timeout: config.proxy_idle_timeout,
                http: balance.is_http(),
                sticky: config.sticky_cookie,
                header_timeout: config.header_timeout,
                response_timeout: config.response_timeout,
            };
            Some(config)
        }
        _ => None,
    }
    .map(|proxy_config| {
        let limit = config.max_connections.unwrap_or_else(|| {
            default_connection_limit(config.workers, listeners.local_addrs().len())
        });
        let private_unix = config.proxy_header.is_some() && !config.port_contract;
        let settings = plane::Settings {
            config: proxy_config,
            limit,
            private_unix,
            seed: (random_unit() * u64::MAX as f64) as u64,
            trusted: config.trusted_proxies.clone().into(),
        };
        Plane::start(
            settings,
            &listeners,
            handle.backends(),
            handle.proxy_counters(),
            idle_tx.clone(),
            refusing_tx.clone(),
        )
    })
    .transpose()?
    .map(|started| {
        background.extend(started.tasks);
        started.plane
    });

    // A fake operating system's workers have no cgroups.
    let inherited_cgroup = inherited.as_mut().and_then(|a| a.cgroup.take());
    let cgroup = match inherited_cgroup {
        Some(dir) => Some(Ok(Some(ClusterCgroup::adopt(dir)))),
        None => os.cgroups().then(ClusterCgroup::create),
    };
    let cgroup = match cgroup {
        None => None,
        Some(Ok(c)) => c,
        Some(Err(e)) => {
            handle.log().notice(
                None,
                Notice::NoCgroup,
                format!(
                    "cannot create a cgroup for the workers ({e}); a descendant that leaves a \
                     worker's process group may outlive it"
                ),
            );
            None
        }
    };
    let inherited_sentinel = inherited.as_mut().and_then(|a| a.sentinel.take());
    let sentinel = match inherited_sentinel {
        Some((pipe, pid)) => Some(Sentinel::adopt(pipe, pid)),
        None if os.cgroups() => {
            match Sentinel::start(cgroup.as_ref().map(|c| c.kill_path()).as_deref()) {
                Ok(s) => Some(s),
                Err(e) => {
                    handle.log().notice(
                        None,
                        Notice::NoCgroup,
                        format!(
                            "cannot start the sentinel that ends the workers if the master is \
                             killed ({e}); they get the parent-death signal instead, and an \
                             upgrade in place would end them"
                        ),
                    );
                    None
                }
            }
        }
        None => None,
    };
    let workers = config.workers;
    let sup_config_notify = config.service_notify;
    let mut sup = Supervisor {
        slots: (0..config.workers).map(Slot::new).collect(),
        config,
        listeners,
        handle,
        snapshot,
        phase: Phase::Running,
        reaped_tx,
        notes_tx,
        notify_env,
        ready,
        fatal: None,
        target: workers,
        reload: None,
        queued: Vec::new(),
        timed_out: HashSet::new(),
        proxy,
        background,
        listen_watch: Vec::new(),
        listen_tx,
        foreign_notes: crate::observe::throttle::LogThrottle::default(),
        cgroup,
        worker_cgroups: HashMap::new(),
        serving: HashMap::new(),
        request_limited: HashSet::new(),
        pending_stop: None,
        killed_for: HashMap::new(),
        service: if sup_config_notify {
            ServiceNotify::from_env()
        } else {
            None
        },
        os,
        sentinel,
        monitors: HashMap::new(),
        notify_fd,
        upgrade_requests: Vec::new(),
        upgrade_since: None,
        upgrades: 0,
    };
    let adopting = inherited.is_some();
    if let Some(adopted) = inherited {
        sup.adopt(adopted);
    }
    sup.changed();
    sup.watch_listeners();

    for i in 0..sup.slots.len() {
        if adopting {
            break;
        }
        // A stop may already be queued (shutdown() before run()).
        if let Ok(Control::Stop { graceful }) = control_rx.try_recv() {
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
            Some(c) = control_rx.recv() => match c {
                Control::Stop { graceful } => sup.stop(graceful),
                Control::Signal { slot, signal, reply } => {
                    let _ = reply.send(sup.signal_slot(slot, signal));
                }
                Control::SetCommand { command, reply } => {
                    let _ = reply.send(sup.set_command(*command));
                }
                Control::Scale { to, reply } => {
                    let _ = reply.send(sup.scale(to).await);
                }
                Control::Reload { target, reply } => sup.request_reload(target, Some(reply)).await,
                Control::Upgrade { reply } => sup.request_upgrade(Some(reply)),
            },
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
    fn finished(&self) -> bool {
        !self.slots.iter().any(|s| s.is_live() || s.is_pending())
    }

    fn emit(&self, event: Event) {
        self.handle.log().event(event);
    }

    /// Scales to a number of slots: new slots get sockets (reuseport) and a
    /// worker at once; removed slots (the highest) drain like a stop, and
    /// are gone once their workers are, their queued connections passed on.
    /// Returns the number of slots asked for before and from now on.
    async fn scale(&mut self, to: Scale) -> Result<(usize, usize)> {
        let from = self.target;
        let to = match to {
            Scale::To(n) => n,
            Scale::By(d) => from.saturating_add_signed(d).max(1),
        };
        let refuse = |reason: String| Error::InvalidSetting {
            setting: "workers",
            reason,
        };
        if to == 0 {
            return Err(Error::ZeroWorkers);
        }
        if self.phase != Phase::Running {
            return Err(Error::NotRunning);
        }
        if self.reload.is_some() {
            return Err(refuse(
                "a reload is running: scale when it has ended".into(),
            ));
        }
        if self.slots.len() > from {
            return Err(refuse(format!(
                "slots {from} to {} are still draining: scale when they are gone",
                self.slots.len() - 1
            )));
        }
        if self.listeners.per_slot() && to > crate::net::steer::MAX_STEERED_SLOTS {
            return Err(refuse(format!(
                "reuseport steering takes at most {} slots",
                crate::net::steer::MAX_STEERED_SLOTS
            )));
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
    async fn scale_or_notice(&mut self, by: Scale) {
        if let Err(e) = self.scale(by).await {
            self.notice(None, Notice::ScaleRefused, e.chain());
        }
    }

    /// Reads every current worker's CPU and memory; replaces one that has
    /// stayed over the memory limit, successor first.
    async fn on_sample(&mut self) {
        let now = clock();
        let mut over = Vec::new();
        for index in 0..self.slots.len() {
            let Some(pid) = self.slots[index].pid() else {
                continue;
            };
            let cgroup = self.worker_cgroups.get(&pid).map(WorkerCgroup::dir);
            let mut pids = vec![pid];
            pids.extend(self.serving.get(&pid).filter(|&&app| app != pid));
            let usage = usage::read(cgroup, &pids);
            let limit = self.config.max_memory;
            if self.slots[index].record_usage(pid, usage, now, limit) {
                over.push((index, pid, usage.map_or(0, |u| u.memory)));
            }
        }
        self.publish_snapshot();
        self.sample_metrics();
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
    async fn recycle(&mut self, slot: usize, event: Event, reason: &'static str) {
        if self.phase != Phase::Running {
            return;
        }
        self.emit(event);
        crate::observe::metrics::restart(slot, reason);
        self.request_reload(Target::Slot(slot), None).await;
    }

    /// Replaces each current worker that has been sent `max_requests`
    /// requests (once each), successor first.
    async fn recycle_by_requests(&mut self) {
        let (Some(limit), Some(proxy)) = (self.config.max_requests, self.proxy.as_ref()) else {
            return;
        };
        let current: Vec<(usize, Pid)> = (0..self.slots.len())
            .filter_map(|i| Some((i, self.slots[i].pid()?)))
            .collect();
        self.request_limited
            .retain(|p| current.iter().any(|(_, c)| c == p));
        let mut over = Vec::new();
        for (slot, pid) in current {
            let Some(backend) = proxy.backend(pid) else {
                continue;
            };
            let requests = backend.total.load(std::sync::atomic::Ordering::Relaxed);
            if requests >= limit && self.request_limited.insert(pid) {
                over.push((slot, pid, requests));
            }
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
    fn sample_metrics(&self) {
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

    /// Stops one slot's workers gracefully, for good.
    fn retire_slot(&mut self, index: usize) {
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
    fn trim_slots(&mut self) {
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

    /// Every worker started from now on runs `command`. It must be Node
    /// if and only if the current one is: the readiness mode and the
    /// preload were chosen for that.
    fn set_command(&mut self, command: crate::cluster::Command) -> Result<()> {
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

    fn notice(&self, slot: Option<usize>, notice: Notice, message: String) {
        self.handle.log().notice(slot, notice, message);
    }

    fn publish_snapshot(&self) {
        let workers = self.slots.iter().map(Slot::info).collect();
        self.snapshot.send_replace(Snapshot {
            phase: self.phase,
            workers,
            upgrades: self.upgrades,
        });
    }

    fn slot_of(&self, pid: Pid) -> Option<(usize, Role)> {
        self.slots
            .iter()
            .find_map(|s| s.role_of(pid).map(|r| (s.index, r)))
    }

    fn spawn_request(
        &self,
        index: usize,
        generation: u64,
        listen_fds: Vec<std::os::fd::OwnedFd>,
        ipc_child: Option<std::os::fd::OwnedFd>,
        port: Option<u16>,
    ) -> SpawnRequest {
        use crate::process::contract::{Channel, Preload, Spawn};
        let public_ports = self.listeners.ports();
        let env = Spawn {
            slot: index,
            generation,
            sockets: &listen_fds,
            public_ports: &public_ports,
            port,
            notify_socket: self.notify_env.as_deref(),
            watchdog: self.ready.watchdog,
            channel: ipc_child.as_ref().map(|fd| {
                if self.config.command.preload.is_some() {
                    Channel::ReadyPipe(fd)
                } else {
                    Channel::NodeIpc
                }
            }),
            preload: self.config.command.preload.as_deref().map(|path| Preload {
                path,
                wait_ready: self.ready.mode == Readiness::Ipc,
                stop_signal: self.config.stop_signal,
            }),
        }
        .env(&self.config.command.env);
        // A worker run as another user finds that user's HOME, USER and
        // LOGNAME, not the master's.
        let mut env = env;
        if let Some(user) = &self.config.user {
            env.retain(|(k, _)| !user.env.iter().any(|(u, _)| u == k));
            env.extend(user.env.iter().cloned());
        }
        let extra_fds: Vec<_> = ipc_child.into_iter().collect();
        SpawnRequest {
            path: self.config.command.path.clone(),
            argv: self.config.command.argv.clone(),
            env,
            listen_fds,
            extra_fds,
            cwd: self.config.command.cwd.clone(),
            cgroup_procs: None,
            credentials: self.config.user.as_ref().map(|u| u.credentials.clone()),
            pdeathsig: self.sentinel.is_none(),
        }
    }

    fn spawn_error(&self, slot: usize, stage: &'static str, source: io::Error) -> Error {
        Error::Spawn {
            program: self.config.command.program.clone(),
            slot,
            stage,
            source,
        }
    }

    /// Starts the next generation of slot `index` in `role` (the slot's
    /// worker, or a reload's successor next to it).
    async fn start(&mut self, index: usize, role: Role) -> Result<()> {
        let generation = self.slots[index].next_generation();
        // The preload's pipe, or Node's IPC channel for a Node app without
        // the preload that says process.send('ready').
        let (ipc_master, ipc_child) = if self.config.command.preload.is_some() {
            let (m, c) = pipe::channel()
                .map_err(|e| self.spawn_error(index, "creating the readiness pipe", e))?;
            (Some(m), Some(c))
        } else if self.ready.mode == Readiness::Ipc {
            let (m, c) = ipc::channel()
                .map_err(|e| self.spawn_error(index, "creating the IPC channel", e))?;
            (Some(m), Some(c))
        } else {
            (None, None)
        };
        // Proxy mode: a private listener of its own, passed as fd 3, or
        // with the PORT contract a free port the worker binds itself.
        let port = if self.config.port_contract {
            Some(proxy::free_port().map_err(|e| self.spawn_error(index, "choosing a port", e))?)
        } else {
            None
        };
        // One private listener per public address, in the same order: the
        // accept loop of address i forwards to listener i.
        // With a PROXY header, which the worker believes, they are Unix
        // sockets only this user can reach; a loopback port would let any
        // local user connect and claim any client address.
        let private = match &self.proxy {
            Some(plane) if port.is_none() => Some(
                plane
                    .private_listeners(index, generation, self.listeners.local_addrs().len())
                    .map_err(|e| self.spawn_error(index, "creating the private listener", e))?,
            ),
            _ => None,
        };
        let raw_fds = match &private {
            Some(listeners) => listeners
                .iter()
                .map(|(socket, _)| std::os::fd::AsRawFd::as_raw_fd(socket))
                .collect(),
            None => self.listeners.fds_for_slot(index),
        };
        // The spawn request owns duplicates: if run() is dropped while the
        // spawner thread works on it, the master's sockets may close and
        // their numbers be reused, and the worker must not get another
        // socket under a reused number.
        let listen_fds = raw_fds
            .iter()
            .map(|&fd| {
                // SAFETY: every fd here is a socket the master (or `private`)
                // keeps open at least until this statement ends.
                unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }.try_clone_to_owned()
            })
            .collect::<io::Result<Vec<_>>>()
            .map_err(|e| self.spawn_error(index, "duplicating a listening socket", e))?;
        let mut req = self.spawn_request(
            index,
            generation,
            listen_fds,
            ipc_child,
            port.map(|a| a.port()),
        );
        let worker_cgroup = match &self.cgroup {
            Some(c) => match c.worker(index, generation) {
                Ok(w) => {
                    req.cgroup_procs = w.procs_fd().ok();
                    Some(w)
                }
                Err(e) => {
                    self.notice(
                        Some(index),
                        Notice::NoCgroup,
                        format!(
                            "cannot create the worker's cgroup ({e}); its process group alone \
                             holds its tree"
                        ),
                    );
                    None
                }
            },
            None => None,
        };
        let spawned = match self.os.spawn(req).await {
            Ok(s) => s,
            Err(e) => {
                self.changed();
                return Err(self.spawn_error(index, e.stage, e.source));
            }
        };
        let pid = spawned.pid;
        if let Some(w) = &worker_cgroup {
            self.worker_cgroups.insert(pid, w.clone());
        }
        if let Some(plane) = &mut self.proxy {
            if let (Readiness::Probe, Some(addr)) = (self.ready.mode, port) {
                tokio::spawn(proxy::probe(addr, pid, self.notes_tx.clone()));
            }
            // The master's copies of the private listeners stay open until
            // the worker is reaped: what is still queued then was never
            // accepted and is passed on.
            plane.add(index, pid, private, port);
        }
        self.slots[index].on_spawned(pid, generation, role, self.ready.slot, clock());
        // State first, then the event: a subscriber that reacts to the event
        // finds the snapshot already up to date.
        self.changed();
        self.emit(Event::Spawned {
            slot: index,
            generation,
            pid: pid.as_raw() as u32,
        });

        if let Some(sentinel) = &self.sentinel {
            sentinel.track(pid);
        }
        let channel = ipc_master.map(|fd| {
            let kind = if self.config.command.preload.is_some() {
                crate::upgrade::ChannelKind::Pipe
            } else {
                crate::upgrade::ChannelKind::Ipc
            };
            (kind, fd)
        });
        let attachment = upgrade::Attachment {
            reaped: spawned.reaped,
            output: spawned.output,
            channel,
            cgroup: worker_cgroup,
        };
        let carry = upgrade::Carry::of(spawned.pidfd, &attachment);
        self.attach(index, generation, pid, attachment, carry);
        Ok(())
    }

    async fn on_note(&mut self, note: Note) {
        let pid = match &note {
            Note::Ready(p) | Note::Watchdog(p) | Note::Stopping(p) | Note::Status(p, _) => *p,
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
            Note::Serving { worker, app } => {
                // Only a process of the worker's own group: the stop signal
                // must never reach a stranger.
                if app == worker || process_group_of(app) == Some(worker) {
                    self.serving.insert(worker, app);
                }
            }
        }
    }

    async fn on_ready(&mut self, index: usize, pid: Pid) {
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

    async fn on_reaped(&mut self, r: Reaped) {
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
        self.serving.remove(&r.pid);
        self.monitors.remove(&r.pid);
        if let Some(sentinel) = &self.sentinel {
            sentinel.untrack(r.pid);
        }
        let killed_for = self.killed_for.remove(&r.pid);
        self.worker_cgroups.remove(&r.pid);
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
            ExitOutcome::Current(decision) => {
                if matches!(decision, Decision::Restart(_)) {
                    let reason = killed_for.unwrap_or("exit");
                    crate::observe::metrics::restart(r.slot, reason);
                }
                self.report(r.slot, decision, r.tail)
            }
            ExitOutcome::Successor => {
                let reason = if self.timed_out.remove(&r.pid) {
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
                self.timed_out.remove(&r.pid);
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

    fn report(&mut self, slot: usize, decision: Decision, tail: Vec<String>) {
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

    /// Steers new connections to the slots that have a ready worker, when
    /// that set changed, and publishes the new snapshot.
    fn changed(&mut self) {
        let live: Vec<usize> = self
            .slots
            .iter()
            .filter(|s| s.is_serving())
            .map(|s| s.index)
            .collect();
        if let Some(service) = &mut self.service {
            let wanted = self.target.min(self.slots.len());
            let settled = self.phase == Phase::Running
                && self.slots[..wanted]
                    .iter()
                    .all(|s| s.is_serving() || s.state == crate::WorkerState::Failed);
            service.slots(live.len(), settled, wanted, self.reload.is_some());
        }
        if let Err(e) = self.listeners.steer_to(&live) {
            self.notice(
                None,
                Notice::SteeringFailed,
                format!(
                    "cannot steer connections away from empty slots ({e}); their queues wait \
                     for the next worker"
                ),
            );
        }
        if let Some(plane) = &self.proxy {
            plane.rotate(live.iter().filter_map(|&i| self.slots[i].pid()));
        }
        self.publish_snapshot();
    }

    /// A process leaves service: its stop signal now, or, in proxy mode,
    /// once its proxied connections end (or at the drain timeout).
    fn retire(&mut self, pid: Pid) {
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

    /// Watches every listening socket for a hang-up (from now on).
    fn watch_listeners(&mut self) {
        for task in self.listen_watch.drain(..) {
            task.abort();
        }
        // The proxy's public sockets are the master's alone.
        if self.proxy.is_none() {
            self.listen_watch =
                crate::net::watch::watch(self.listeners.duplicates(), &self.listen_tx);
        }
    }

    /// A listening socket hung up: each that no longer listens is replaced
    /// by a new one bound the same way, and the workers that held it are
    /// replaced (successor first) so that they serve on the new one.
    async fn on_listener_hangup(&mut self) {
        let dead = self.listeners.dead();
        if dead.is_empty() || self.phase != Phase::Running {
            self.watch_listeners();
            return;
        }
        let mut slots = Vec::new();
        for (a, k) in dead {
            let addr = self.listeners.local_addrs()[a];
            match self.listeners.replace(a, k) {
                Ok(()) => {
                    let slot = self.listeners.per_slot().then_some(k);
                    self.emit(Event::ListenerReplaced { addr, slot });
                    slots.push(slot);
                }
                Err(e) => self.notice(
                    None,
                    Notice::ListenerLost,
                    format!(
                        "the listening socket on {addr} stopped listening and cannot be \
                         replaced: {}",
                        e.chain()
                    ),
                ),
            }
        }
        self.changed();
        self.watch_listeners();
        let target = if slots.iter().any(Option::is_none) {
            Target::All
        } else {
            match slots.as_slice() {
                [Some(k)] => Target::Slot(*k),
                _ => Target::All,
            }
        };
        self.request_reload(target, None).await;
    }

    /// Sends `signal` to the process that runs slot `slot`'s app (its
    /// worker's main process, or the app's under a launcher).
    fn signal_slot(&self, slot: usize, signal: Signal) -> Result<u32> {
        let Some(s) = self.slots.get(slot) else {
            return Err(Error::NoSuchSlot {
                slot,
                slots: self.slots.len(),
            });
        };
        let Some(pid) = s.pid() else {
            return Err(Error::NoWorker { slot });
        };
        let target = self.serving.get(&pid).copied().unwrap_or(pid);
        self.os.signal(target, signal);
        Ok(target.as_raw() as u32)
    }

    /// SIGKILLs a worker's whole tree: its process group, and its cgroup
    /// (which also holds descendants that left the group).
    pub(super) fn kill_tree(&self, pid: Pid) {
        self.os.signal_group(pid, Signal::SIGKILL);
        if let Some(w) = self.worker_cgroups.get(&pid) {
            w.kill();
        }
    }

    /// Sends the stop signal to a worker: to the process that runs its app
    /// ([`KillMode::Mixed`]; the rest of the group goes when the main
    /// process has exited or at the drain timeout), or to its whole group.
    fn ask_to_stop(&self, pid: Pid) {
        let app = self.serving.get(&pid).copied();
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

    /// A draining backend has no connections left: it gets the stop signal.
    fn on_idle(&mut self, pid: Pid) {
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

    /// Proxy mode: a live worker closed its private listener. The master's
    /// copy would keep it listening and connections would queue there for
    /// nobody: what is queued is passed on and the copy closed, so the
    /// next connections are refused and go to another worker.
    fn on_refusing(&mut self, pid: Pid) {
        let Some((index, _)) = self.slot_of(pid) else {
            return;
        };
        self.notice(
            Some(index),
            Notice::WorkerRefusing,
            format!("pid {pid} closed its listener; it gets no more connections"),
        );
        let passed = self.proxy.as_mut().map_or(0, |p| p.refusing(pid));
        self.passed_on(index, passed);
    }

    /// Proxy mode: says that connections a worker never accepted were
    /// passed on to another.
    fn passed_on(&self, slot: usize, passed: usize) {
        if passed > 0 {
            self.notice(
                Some(slot),
                Notice::ConnectionsPassedOn,
                format!(
                    "passing {passed} connection(s) its worker never accepted on to another \
                     worker"
                ),
            );
        }
    }

    /// Passes the connections queued on an empty slot's socket on to the
    /// live slots, so that they do not wait for a worker that is far off.
    fn rescue_queue(&mut self, slot: usize) {
        let slot_is_out = self.listeners.steered_away(slot) && !self.slots[slot].is_live();
        if !slot_is_out {
            return;
        }
        let queued = self.listeners.drain_slot(slot);
        self.forward_queued(slot, queued);
    }

    /// Passes connections taken off `slot`'s socket on to the live slots.
    fn forward_queued(
        &self,
        slot: usize,
        queued: Vec<(std::net::TcpStream, std::net::SocketAddr)>,
    ) {
        if queued.is_empty() {
            return;
        }
        self.notice(
            Some(slot),
            Notice::ConnectionsPassedOn,
            format!(
                "passing {} queued connection(s) on to live slots",
                queued.len()
            ),
        );
        for (conn, target) in queued {
            tokio::spawn(crate::net::rescue::forward(conn, target));
        }
    }

    async fn on_timers(&mut self) {
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

    async fn on_due(&mut self, index: usize, due: Due) {
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
            Due::StartTimeout(pid, role) => {
                self.emit(Event::StartTimeout {
                    slot: index,
                    pid: pid.as_raw() as u32,
                    timeout: self.config.start_timeout,
                    readiness: self.ready.mode,
                });
                if role == Role::Successor {
                    self.timed_out.insert(pid);
                } else {
                    self.killed_for.insert(pid, "start_timeout");
                }
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
                self.killed_for.insert(pid, "watchdog");
                self.kill_tree(pid);
            }
        }
    }

    /// A restart could not even exec: count it like a crash, so that a
    /// program deleted while running ends in a failed slot, not a hot loop.
    fn on_spawn_failure(&mut self, index: usize, error: Error) {
        self.emit(Event::SpawnFailed {
            slot: index,
            error: error.chain(),
        });
        // Out of fds or processes is the master's (or the machine's)
        // state, not the worker's fault: retried, never counted as a
        // crash that could mark the slot failed.
        if is_master_limit(&error) && self.phase == Phase::Running {
            self.slots[index].retry_start(clock(), MASTER_LIMIT_RETRY);
            self.changed();
            self.rescue_queue(index);
            return;
        }
        let outcome = self.slots[index].on_start_failed(
            &self.config.supervision,
            clock(),
            SPAWN_FAILURE_EXIT,
            self.phase == Phase::Stopping,
            random_unit(),
        );
        self.changed();
        if let ExitOutcome::Current(decision) = outcome {
            self.report(index, decision, vec![error.chain()]);
        }
    }

    // ---------------------------------------------------------- stopping

    /// Stops every worker: gracefully (stop signal now, SIGKILL at the drain
    /// timeout) or at once.
    fn stop(&mut self, graceful: bool) {
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
    fn stop_now(&mut self, graceful: bool) {
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

    async fn finish(mut self) -> Result<()> {
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
        self.handle.log().close_events();
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
        self.handle.log().close_events();
    }
}

/// Whether a spawn failed for want of the master's (or the machine's)
/// resources rather than anything about the program.
fn is_master_limit(error: &Error) -> bool {
    let Error::Spawn { source, .. } = error else {
        return false;
    };
    matches!(
        source.raw_os_error(),
        Some(nix::libc::EMFILE | nix::libc::ENFILE | nix::libc::EAGAIN | nix::libc::ENOMEM)
    )
}

/// Proxy mode's default connection limit: what the master's fd limit
/// leaves after the workers' fds and a reserve for spawning (each client
/// connection takes two fds: the client's and the one to the worker).
fn default_connection_limit(workers: usize, addresses: usize) -> usize {
    let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(soft, _)| soft);
    let per_worker = 4 + 2 * addresses as u64;
    let reserve = 128 + workers as u64 * per_worker;
    usize::try_from(soft.saturating_sub(reserve) / 2)
        .unwrap_or(usize::MAX)
        .max(1)
}

/// A random number in `[0, 1)` for backoff jitter, without a dependency:
/// every `RandomState` is seeded differently.
fn random_unit() -> f64 {
    let bits = RandomState::new().build_hasher().finish() >> 11;
    bits as f64 / (1u64 << 53) as f64
}
