//! What a cluster tells the world: lifecycle events and worker snapshots.
//!
//! Every event is published on a broadcast channel ([`crate::Handle::events`])
//! and, unless turned off, logged by the master as one line: its `Display`.

use std::fmt;
use std::time::Duration;

use crate::types::{Exit, Millis, Readiness, ReloadReport};

/// Something that happened to the cluster or one of its workers.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
#[cfg_attr(feature = "serde", serde(tag = "event", rename_all = "snake_case"))]
pub enum Event {
    /// A worker was forked and exec'd.
    Spawned {
        /// Its slot.
        slot: usize,
        /// Its generation within the slot (0 for the first).
        generation: u64,
        /// Its pid.
        pid: u32,
    },
    /// Starting a worker failed (the program vanished, a chdir failed, ...).
    SpawnFailed {
        /// The slot.
        slot: usize,
        /// What went wrong.
        error: String,
    },
    /// A worker reported (or was deemed) ready.
    Ready {
        /// Its slot.
        slot: usize,
        /// Its pid.
        pid: u32,
    },
    /// A worker did not become ready in time and is killed.
    StartTimeout {
        /// Its slot.
        slot: usize,
        /// Its pid.
        pid: u32,
        /// The start timeout.
        #[cfg_attr(
            feature = "serde",
            serde(
                rename = "timeout_ms",
                serialize_with = "crate::types::serde_impl::millis",
                deserialize_with = "crate::types::serde_impl::de_millis"
            )
        )]
        timeout: Duration,
        /// What it was expected to do to be ready.
        #[cfg_attr(
            feature = "serde",
            serde(
                serialize_with = "crate::types::serde_impl::display",
                deserialize_with = "crate::types::serde_impl::de_display"
            )
        )]
        readiness: Readiness,
    },
    /// A worker exited after failing to bind one of herd's ports itself
    /// (`EADDRINUSE`): it must use the socket herd passes instead.
    PortConflict {
        /// Its slot.
        slot: usize,
        /// Its pid.
        pid: u32,
        /// The port it tried to bind.
        port: u16,
    },
    /// A worker missed its watchdog deadline and is killed.
    WatchdogTimeout {
        /// Its slot.
        slot: usize,
        /// Its pid.
        pid: u32,
    },
    /// A reload's successor took over the slot; the predecessor got the
    /// stop signal and drains.
    Replaced {
        /// The slot.
        slot: usize,
        /// The predecessor, now draining.
        old_pid: u32,
        /// The successor, now serving.
        new_pid: u32,
    },
    /// A rolling reload (or soft restart) began.
    ReloadStarted {
        /// The slots it will replace, in order.
        slots: Vec<usize>,
    },
    /// A rolling reload ended, completely or aborted.
    ReloadFinished {
        /// What it did.
        report: ReloadReport,
    },
    /// A worker exited and was reaped.
    Exited {
        /// Its slot.
        slot: usize,
        /// Its generation.
        generation: u64,
        /// Its pid.
        pid: u32,
        /// How it ended.
        exit: Exit,
        /// How long it ran.
        #[cfg_attr(
            feature = "serde",
            serde(
                rename = "uptime_ms",
                serialize_with = "crate::types::serde_impl::millis",
                deserialize_with = "crate::types::serde_impl::de_millis"
            )
        )]
        uptime: Duration,
        /// False when it exited on its own, true when herd stopped it.
        expected: bool,
    },
    /// The slot will get a new worker after `delay`.
    RestartScheduled {
        /// The slot.
        slot: usize,
        /// The backoff delay.
        #[cfg_attr(
            feature = "serde",
            serde(
                rename = "delay_ms",
                serialize_with = "crate::types::serde_impl::millis",
                deserialize_with = "crate::types::serde_impl::de_millis"
            )
        )]
        delay: Duration,
    },
    /// The restart policy does not restart this exit; the slot stays empty.
    SlotDone {
        /// The slot.
        slot: usize,
    },
    /// The crash-loop limit tripped; the slot is given up on while the
    /// others keep serving.
    SlotFailed {
        /// The slot.
        slot: usize,
        /// Exits counted.
        exits: u32,
        /// Within this window.
        #[cfg_attr(
            feature = "serde",
            serde(
                rename = "window_ms",
                serialize_with = "crate::types::serde_impl::millis",
                deserialize_with = "crate::types::serde_impl::de_millis"
            )
        )]
        window: Duration,
        /// The worker's last output lines, oldest first.
        last_output: Vec<String>,
    },
    /// The cluster began to stop its workers.
    Stopping {
        /// True for a graceful stop (stop signal, drain timeout), false for
        /// an immediate SIGKILL.
        graceful: bool,
    },
    /// Proxy mode: a worker out of rotation has no connections left and
    /// gets its stop signal.
    Idle {
        /// The slot.
        slot: usize,
        /// The worker's pid.
        pid: u32,
    },
    /// Proxy mode: a worker out of rotation still has proxied connections
    /// at the drain timeout and gets its stop signal now.
    DrainSignal {
        /// The slot.
        slot: usize,
        /// The worker's pid.
        pid: u32,
        /// Connections still open.
        open: u32,
    },
    /// The drain timeout passed and the worker's process group is killed.
    DrainTimeout {
        /// The slot.
        slot: usize,
        /// The worker's pid.
        pid: u32,
    },
    /// A listening socket stopped listening (a worker shut its copy down)
    /// and the master put a new one in its place; the workers that had the
    /// old one are replaced as a reload replaces them.
    ListenerReplaced {
        /// The address.
        addr: std::net::SocketAddr,
        /// The slot whose socket it was (reuseport), or None (one socket
        /// for all).
        slot: Option<usize>,
    },
    /// Something an operator should know that is not a step of a
    /// worker's life: a degraded mode, a message ignored, connections
    /// passed on. `message` is for people and may be reworded; `notice`
    /// is the stable part.
    Notice {
        /// The slot it concerns, if one.
        slot: Option<usize>,
        /// What kind of notice it is.
        notice: Notice,
        /// A sentence for the log.
        message: String,
    },
    /// The number of slots changed ([`crate::Handle::scale`], SIGTTIN,
    /// SIGTTOU): new slots start now, removed ones drain.
    Scaled {
        /// Slots before.
        from: usize,
        /// Slots from now on.
        to: usize,
    },
    /// A worker stayed over the memory limit ([`crate::Builder::max_memory`])
    /// for several samples in a row: it is replaced as a reload replaces
    /// it, successor first.
    MemoryLimit {
        /// The slot.
        slot: usize,
        /// The worker's pid.
        pid: u32,
        /// What it uses, in bytes.
        memory: u64,
        /// The limit, in bytes.
        limit: u64,
    },
    /// A worker has been sent as many requests as
    /// [`crate::Builder::max_requests`] allows: it is replaced as a reload
    /// replaces it, successor first.
    RequestLimit {
        /// The slot.
        slot: usize,
        /// The worker's pid.
        pid: u32,
        /// Requests it was sent.
        requests: u64,
        /// The limit.
        limit: u64,
    },
    /// The new binary passed its pre-flight check: the master re-executes
    /// it now, in the same process, and the workers keep serving.
    Upgrading {
        /// The binary that takes over.
        binary: String,
    },
    /// A master upgrade did not happen; the master goes on as it was.
    UpgradeFailed {
        /// Why (the pre-flight's own words where it failed).
        reason: String,
    },
    /// This master took over from the one before it (an upgrade in place)
    /// and supervises the workers it handed on.
    Upgraded {
        /// Upgrades this cluster has been through.
        upgrades: u32,
        /// The workers taken over, by slot (their pids are unchanged).
        workers: Vec<u32>,
    },
    /// Every worker has been reaped; `run()` is about to return.
    Stopped,
}

/// A reader of [`crate::Handle::event_stream`] or
/// [`crate::Handle::output_stream`] fell behind: this many items were
/// missed, and the stream goes on with the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the reader fell behind and missed {0} items")]
pub struct Missed(pub u64);

/// How much an event matters to whoever runs the cluster: the log level
/// it deserves ([`Event::level`], [`Notice::level`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[non_exhaustive]
pub enum Level {
    /// Routine detail of draining (a worker went idle, got its signal).
    Debug,
    /// The cluster doing its job: a worker started, was replaced, a
    /// reload finished, a worker said it stops.
    Info,
    /// Something went wrong that herd handled (a crash it restarts, a
    /// start timeout, an aborted reload, a limit reached).
    Warn,
    /// Something herd could not mend (a slot given up, a failed upgrade,
    /// a worker that cannot be reaped).
    Error,
}

impl Event {
    /// The stable snake_case name of the event, as [`Event::to_json`]
    /// writes it under `event`.
    pub fn name(&self) -> &'static str {
        match self {
            Event::Spawned { .. } => "spawned",
            Event::SpawnFailed { .. } => "spawn_failed",
            Event::Ready { .. } => "ready",
            Event::StartTimeout { .. } => "start_timeout",
            Event::PortConflict { .. } => "port_conflict",
            Event::WatchdogTimeout { .. } => "watchdog_timeout",
            Event::Replaced { .. } => "replaced",
            Event::ReloadStarted { .. } => "reload_started",
            Event::ReloadFinished { .. } => "reload_finished",
            Event::Exited { .. } => "exited",
            Event::RestartScheduled { .. } => "restart_scheduled",
            Event::SlotDone { .. } => "slot_done",
            Event::SlotFailed { .. } => "slot_failed",
            Event::Stopping { .. } => "stopping",
            Event::Idle { .. } => "idle",
            Event::DrainSignal { .. } => "drain_signal",
            Event::DrainTimeout { .. } => "drain_timeout",
            Event::ListenerReplaced { .. } => "listener_replaced",
            Event::Notice { .. } => "notice",
            Event::Scaled { .. } => "scaled",
            Event::Upgrading { .. } => "upgrading",
            Event::UpgradeFailed { .. } => "upgrade_failed",
            Event::Upgraded { .. } => "upgraded",
            Event::MemoryLimit { .. } => "memory_limit",
            Event::RequestLimit { .. } => "request_limit",
            Event::Stopped => "stopped",
        }
    }

    /// The slot the event is about, if it is about one.
    pub fn slot(&self) -> Option<usize> {
        match self {
            Event::Spawned { slot, .. }
            | Event::SpawnFailed { slot, .. }
            | Event::Ready { slot, .. }
            | Event::StartTimeout { slot, .. }
            | Event::PortConflict { slot, .. }
            | Event::WatchdogTimeout { slot, .. }
            | Event::Replaced { slot, .. }
            | Event::Exited { slot, .. }
            | Event::RestartScheduled { slot, .. }
            | Event::SlotDone { slot, .. }
            | Event::SlotFailed { slot, .. }
            | Event::Idle { slot, .. }
            | Event::DrainSignal { slot, .. }
            | Event::DrainTimeout { slot, .. }
            | Event::MemoryLimit { slot, .. }
            | Event::RequestLimit { slot, .. } => Some(*slot),
            Event::ListenerReplaced { slot, .. } | Event::Notice { slot, .. } => *slot,
            _ => None,
        }
    }

    /// The worker process the event is about, if it is about one (for
    /// [`Event::Replaced`], the successor).
    pub fn pid(&self) -> Option<u32> {
        match self {
            Event::Spawned { pid, .. }
            | Event::Ready { pid, .. }
            | Event::StartTimeout { pid, .. }
            | Event::PortConflict { pid, .. }
            | Event::WatchdogTimeout { pid, .. }
            | Event::Exited { pid, .. }
            | Event::Idle { pid, .. }
            | Event::DrainSignal { pid, .. }
            | Event::DrainTimeout { pid, .. }
            | Event::MemoryLimit { pid, .. }
            | Event::RequestLimit { pid, .. } => Some(*pid),
            Event::Replaced { new_pid, .. } => Some(*new_pid),
            _ => None,
        }
    }

    /// The log level the event deserves.
    pub fn level(&self) -> Level {
        match self {
            Event::Idle { .. } | Event::DrainSignal { .. } => Level::Debug,
            Event::SpawnFailed { .. } | Event::SlotFailed { .. } | Event::UpgradeFailed { .. } => {
                Level::Error
            }
            Event::StartTimeout { .. }
            | Event::PortConflict { .. }
            | Event::WatchdogTimeout { .. }
            | Event::DrainTimeout { .. }
            | Event::ListenerReplaced { .. }
            | Event::MemoryLimit { .. } => Level::Warn,
            Event::Exited { expected, .. } => {
                if *expected {
                    Level::Info
                } else {
                    Level::Warn
                }
            }
            Event::ReloadFinished { report } => {
                if report.is_complete() {
                    Level::Info
                } else {
                    Level::Warn
                }
            }
            Event::Notice { notice, .. } => notice.level(),
            _ => Level::Info,
        }
    }
}

/// The kind of an [`Event::Notice`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum Notice {
    /// No writable cgroup v2: a worker's process group alone holds its
    /// tree.
    NoCgroup,
    /// A worker said `STOPPING=1`.
    WorkerStopping,
    /// A worker sent `STATUS=...`.
    WorkerStatus,
    /// A readiness message came from a process that is not a worker.
    ForeignMessage,
    /// A worker could not be reaped normally.
    ReapFailed,
    /// Connections cannot be steered away from empty reuseport slots.
    SteeringFailed,
    /// A listening socket stopped listening and could not be replaced.
    ListenerLost,
    /// Proxy mode: a worker closed its listener and gets no more
    /// connections.
    WorkerRefusing,
    /// Connections queued for a slot or a dead worker were passed on to
    /// another.
    ConnectionsPassedOn,
    /// A reload was asked for during a reload; it runs after.
    ReloadQueued,
    /// Proxy mode: the connection limit was reached and new clients wait.
    ConnectionLimit,
    /// HTTP mode answered a client itself with an error (502, 503, 504):
    /// at most one line a second, all counted in
    /// [`crate::Handle::proxy_stats`].
    HttpError,
    /// A scale asked for by signal (SIGTTIN, SIGTTOU) was refused.
    ScaleRefused,
    /// HTTP mode: a worker sent a response with no request outstanding;
    /// the connection it came on was closed so that no client gets it.
    /// At most one line a second, all counted in
    /// [`crate::proxy::ProxyStats::worker_protocol_errors`].
    WorkerProtocolError,
    /// A new worker did not report ready within the start timeout and is
    /// taken as ready (`serve_on_start_timeout`, PM2's `listen_timeout`).
    ReadyAssumed,
    /// A worker listens but never said `process.send('ready')`
    /// (`Readiness::Ipc`): its slot fails at once instead of restarting.
    NeverReady,
    /// A ready worker accepts nothing on herd's socket and listens on one
    /// of its own: its slot gets no more connections, and those waiting
    /// are passed on.
    NeverAccepts,
}

impl Notice {
    /// The log level a notice of this kind deserves: a worker that says
    /// it stops or reports its status is routine, a reap that failed is not.
    pub fn level(self) -> Level {
        match self {
            Notice::WorkerStopping
            | Notice::WorkerStatus
            | Notice::ConnectionsPassedOn
            | Notice::ReloadQueued => Level::Info,
            Notice::ReapFailed
            | Notice::ListenerLost
            | Notice::NeverReady
            | Notice::NeverAccepts => Level::Error,
            _ => Level::Warn,
        }
    }

    /// The stable snake_case name, as `to_json` writes it.
    pub fn name(self) -> &'static str {
        match self {
            Notice::NoCgroup => "no_cgroup",
            Notice::WorkerStopping => "worker_stopping",
            Notice::WorkerStatus => "worker_status",
            Notice::ForeignMessage => "foreign_message",
            Notice::ReapFailed => "reap_failed",
            Notice::SteeringFailed => "steering_failed",
            Notice::ListenerLost => "listener_lost",
            Notice::WorkerRefusing => "worker_refusing",
            Notice::ConnectionsPassedOn => "connections_passed_on",
            Notice::ReloadQueued => "reload_queued",
            Notice::ConnectionLimit => "connection_limit",
            Notice::HttpError => "http_error",
            Notice::ScaleRefused => "scale_refused",
            Notice::WorkerProtocolError => "worker_protocol_error",
            Notice::ReadyAssumed => "ready_assumed",
            Notice::NeverReady => "never_ready",
            Notice::NeverAccepts => "never_accepts",
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Spawned {
                slot,
                generation,
                pid,
            } => write!(f, "slot {slot}: spawned pid {pid} (generation {generation})"),
            Event::SpawnFailed { slot, error } => write!(f, "slot {slot}: {error}"),
            Event::Ready { slot, pid } => write!(f, "slot {slot}: pid {pid} is ready"),
            Event::StartTimeout {
                slot,
                pid,
                timeout,
                readiness,
            } => {
                let t = Millis(*timeout);
                match readiness {
                    Readiness::Ipc => write!(
                        f,
                        "slot {slot}: pid {pid} did not call process.send('ready') within {t} \
                         (--wait-ready); killing it. Send it once the app is ready, or raise \
                         --start-timeout"
                    ),
                    Readiness::Listen => write!(
                        f,
                        "slot {slot}: pid {pid} did not listen on herd's socket(s) within {t}; \
                         killing it"
                    ),
                    Readiness::Notify => write!(
                        f,
                        "slot {slot}: pid {pid} did not send READY=1 to NOTIFY_SOCKET within \
                         {t} (--ready notify); killing it"
                    ),
                    _ => write!(f, "slot {slot}: pid {pid} not ready within {t}; killing it"),
                }
            }
            Event::PortConflict { slot, pid, port } => write!(
                f,
                "slot {slot}: pid {pid} failed to bind port {port} itself (EADDRINUSE): herd \
                 already listens there and passes the socket as fd 3 (LISTEN_FDS). Serve on \
                 that fd (Node apps get it by the preload; Python: socket.socket(fileno=3); \
                 gunicorn takes it by itself when not given --bind), or let the worker bind a port \
                 of its own ($PORT) with --balance http --proxy-port (reloads lose nothing) or \
                 --balance proxy --proxy-port"
            ),
            Event::WatchdogTimeout { slot, pid } => write!(
                f,
                "slot {slot}: pid {pid} missed its watchdog deadline; killing it"
            ),
            Event::Replaced {
                slot,
                old_pid,
                new_pid,
            } => write!(
                f,
                "slot {slot}: pid {new_pid} took over; pid {old_pid} drains"
            ),
            Event::ReloadStarted { slots } => write!(
                f,
                "reload started for slot(s) {}",
                slots
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Event::ReloadFinished { report } => write!(f, "{report}"),
            Event::Exited {
                slot,
                pid,
                exit,
                uptime,
                expected,
                ..
            } => write!(
                f,
                "slot {slot}: pid {pid} {exit} after {}{}",
                Millis(*uptime),
                if *expected { "" } else { " (unexpected)" }
            ),
            Event::RestartScheduled { slot, delay } => {
                write!(f, "slot {slot}: restarting in {}", Millis(*delay))
            }
            Event::SlotDone { slot } => {
                write!(f, "slot {slot}: not restarted (restart policy)")
            }
            Event::SlotFailed {
                slot,
                exits,
                window,
                last_output,
            } => {
                write!(
                    f,
                    "slot {slot}: failed: crash loop, {exits} exits within {}; not restarting",
                    Millis(*window)
                )?;
                if !last_output.is_empty() {
                    write!(f, "; last output: {}", last_output.join(" | "))?;
                }
                Ok(())
            }
            Event::Stopping { graceful: true } => f.write_str("stopping workers gracefully"),
            Event::Stopping { graceful: false } => f.write_str("killing workers"),
            Event::DrainTimeout { slot, pid } => write!(
                f,
                "slot {slot}: pid {pid} still running at the drain timeout; killing its process group"
            ),
            Event::Idle { slot, pid } => write!(
                f,
                "slot {slot}: pid {pid} has no proxied connections left; stopping it"
            ),
            Event::DrainSignal { slot, pid, open } => write!(
                f,
                "slot {slot}: pid {pid} still has {open} proxied connection(s) at the drain timeout; \
                 sending the stop signal"
            ),
            Event::ListenerReplaced { addr, slot } => {
                write!(f, "the listening socket on {addr}")?;
                if let Some(slot) = slot {
                    write!(f, " of slot {slot}")?;
                }
                f.write_str(
                    " stopped listening (a worker shut it down); a new one takes its place and \
                     the workers move onto it",
                )
            }
            Event::Notice { slot, message, .. } => {
                if let Some(slot) = slot {
                    write!(f, "slot {slot}: ")?;
                }
                f.write_str(message)
            }
            Event::Scaled { from, to } => write!(f, "scaling from {from} to {to} worker(s)"),
            Event::Upgrading { binary } => {
                write!(f, "upgrading the master in place: executing {binary}")
            }
            Event::UpgradeFailed { reason } => {
                write!(f, "master upgrade abandoned, still running as before: {reason}")
            }
            Event::Upgraded { upgrades, workers } => write!(
                f,
                "master upgraded in place (upgrade {upgrades}), supervising {} worker(s) it took \
                 over",
                workers.len()
            ),
            Event::MemoryLimit {
                slot,
                pid,
                memory,
                limit,
            } => write!(
                f,
                "slot {slot}: pid {pid} uses {} MiB, over the {} MiB limit: replacing it",
                memory >> 20,
                limit >> 20
            ),
            Event::RequestLimit {
                slot,
                pid,
                requests,
                limit,
            } => write!(
                f,
                "slot {slot}: pid {pid} was sent {requests} requests, the limit is {limit}: \
                 replacing it"
            ),
            Event::Stopped => f.write_str("all workers stopped"),
        }
    }
}

/// One line a worker wrote (without its newline), as
/// [`crate::Handle::output`] delivers it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct OutputLine {
    /// The worker's slot.
    pub slot: usize,
    /// The worker's pid (its main process).
    pub pid: u32,
    /// Which stream it wrote to.
    pub stream: OutputStream,
    /// The line, as lossy UTF-8; a line over 16 KiB comes in pieces.
    pub line: String,
}

/// Which of a worker's streams an [`OutputLine`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum OutputStream {
    /// Its standard output.
    Stdout,
    /// Its standard error.
    Stderr,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_say_their_slot_pid_and_level() {
        let exited = |expected| Event::Exited {
            slot: 2,
            generation: 1,
            pid: 42,
            exit: Exit::Code(1),
            uptime: Duration::from_secs(3),
            expected,
        };
        assert_eq!(exited(false).name(), "exited");
        assert_eq!(
            (exited(false).slot(), exited(false).pid()),
            (Some(2), Some(42))
        );
        assert_eq!(exited(false).level(), Level::Warn);
        assert_eq!(exited(true).level(), Level::Info);
        let stopping = Event::Notice {
            slot: Some(0),
            notice: Notice::WorkerStopping,
            message: "worker said STOPPING=1".into(),
        };
        // A worker that says it stops is routine, not a warning.
        assert_eq!(stopping.level(), Level::Info);
        assert_eq!(Notice::ReapFailed.level(), Level::Error);
        assert_eq!(Event::Stopped.slot(), None);
        assert_eq!(Event::Stopped.pid(), None);
        assert!(Level::Debug < Level::Info && Level::Warn < Level::Error);
    }

    #[test]
    fn events_have_a_stable_json_form() {
        let e = Event::Exited {
            slot: 1,
            generation: 2,
            pid: 42,
            exit: Exit::Signal(crate::Signal::KILL),
            uptime: Duration::from_millis(20),
            expected: true,
        };
        assert_eq!(
            e.to_json(),
            r#"{"event":"exited","slot":1,"generation":2,"pid":42,"exit":{"signal":"SIGKILL"},"uptime_ms":20,"expected":true}"#
        );
        let failed = Event::SlotFailed {
            slot: 0,
            exits: 5,
            window: Duration::from_secs(60),
            last_output: vec!["Error: \"x\"\tat\\".into()],
        };
        assert_eq!(
            failed.to_json(),
            r#"{"event":"slot_failed","slot":0,"exits":5,"window_ms":60000,"last_output":["Error: \"x\"\tat\\"]}"#
        );
        assert_eq!(Event::Stopped.to_json(), r#"{"event":"stopped"}"#);
    }

    #[test]
    fn lifecycle_lines_name_slot_and_pid() {
        let e = Event::Exited {
            slot: 1,
            generation: 2,
            pid: 42,
            exit: Exit::Code(3),
            uptime: Duration::from_millis(20),
            expected: false,
        };
        assert_eq!(
            e.to_string(),
            "slot 1: pid 42 exited with code 3 after 20ms (unexpected)"
        );
    }
}
