//! # herd: a supervised worker pool on master-owned sockets
//!
//! herd does the job of PM2's cluster mode, Node's `cluster` module and
//! systemd for a network service, as a library: a *master* binds the
//! listening sockets, starts N copies of any program (`node server.js`, a
//! Rust binary, ...) that share them, keeps them alive and stops them
//! gracefully.
//!
//! ```no_run
//! # async fn demo() -> herd::Result<()> {
//! let cluster = herd::Cluster::builder()
//!     .command("node").arg("server.js")
//!     .workers(4)
//!     .listen("0.0.0.0:3000".parse().unwrap())
//!     .build()?;            // validates and binds; errors name the culprit
//! let handle = cluster.handle();   // cloneable: reload(), workers(), events(), ...
//! cluster.run().await?;     // until handle.shutdown()
//! # Ok(()) }
//! ```
//!
//! A whole launcher: its events through `tracing` (feature `tracing`), a
//! rolling reload on SIGHUP, a graceful stop on SIGTERM or Ctrl-C, the
//! signals handled by the program itself (a library cluster takes none
//! unless asked with [`Builder::handle_signals`]).
//!
//! ```no_run
//! use tokio::signal::unix::{signal, SignalKind};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let cluster = herd::Cluster::builder()
//!         .command("node")
//!         .arg("server.js")
//!         .workers(4)
//!         .listen("0.0.0.0:3000".parse()?)
//!         .log_events(false) // they go to tracing instead
//!         .build()?;
//!     let handle = cluster.handle();
//!     let forwarding = herd::trace::forward(&handle, herd::trace::Forward { output: true });
//!     let run = tokio::spawn(cluster.run());
//!
//!     let (mut hup, mut term) = (signal(SignalKind::hangup())?, signal(SignalKind::terminate())?);
//!     loop {
//!         tokio::select! {
//!             _ = hup.recv() => {
//!                 let report = handle.reload().await?;
//!                 if let Some(failure) = &report.failure {
//!                     tracing::warn!(slot = failure.slot, "reload aborted: {}", failure.reason);
//!                 }
//!             }
//!             _ = term.recv() => break,
//!             _ = tokio::signal::ctrl_c() => break,
//!         }
//!     }
//!     handle.shutdown().await?; // stop signal, drain, SIGKILL at the drain timeout
//!     run.await??;
//!     forwarding.await?;
//!     Ok(())
//! }
//! ```
//!
//! ## Theory of operation
//!
//! **The master owns every listening socket.** [`Builder::build`] binds and
//! listens before anything is spawned, and the sockets stay open until
//! [`Cluster::run`] returns. Workers receive them as inherited fds 3, 4, ...
//! by the systemd socket-activation protocol (`LISTEN_FDS`, `LISTEN_PID`,
//! `LISTEN_FDNAMES`). Because the master keeps its copy, a connection the
//! kernel queued for a worker that then crashes is not reset: it waits in
//! the queue for the replacement, which inherits the very same socket.
//!
//! **Balance modes.** [`Balance::ReusePort`] (the default) gives each worker
//! *slot* its own `SO_REUSEPORT` socket, handed to every generation of that
//! slot, so the kernel's hash and the queue survive restarts; a BPF
//! program steers new connections away from a slot with no live worker.
//! [`Balance::Shared`] gives every worker the same socket. [`Balance::Proxy`]
//! has the master accept every connection and forward it to a worker's
//! private loopback listener, picked by a [`Strategy`] (round-robin,
//! least connections, power of two choices, client-IP hash); the master
//! then sees every connection, so it can hold clients while no worker is
//! ready, pass on what a dying worker never accepted, and retire a worker
//! only when its last connection ends. [`Balance::Http`] (feature `http`)
//! goes one step further: the master speaks HTTP/1.1, keeps every client's
//! connection and balances each request over pooled connections to the
//! workers, so a reload is invisible whatever the app does when told to
//! stop.
//!
//! **Spawning.** Workers are forked on one long-lived thread (so that the
//! parent-death signal is tied to the process, not a transient thread) and
//! exec'd with every string prepared before the fork; the child writes its
//! own pid into `LISTEN_PID`, moves the sockets to fds 3.., closes every
//! other fd on exec, starts its own process group and asks for SIGKILL when
//! the master dies. An exec failure comes back through a pipe as an error
//! naming the program, not as a crash loop. Each worker is reaped through
//! its pidfd; herd never calls `waitpid(-1)`, so an embedding program may
//! own other children.
//!
//! **Supervision.** One task owns every slot (see `supervisor`). Each slot
//! is a small state machine (starting, ready, stopping, backoff, exited,
//! failed) and a generation counter. When a worker exits on its own, the
//! [`RestartPolicy`] decides whether it restarts, the [`Backoff`] how long to
//! wait, and the [`CrashLoop`] limit when to give the slot up while the
//! others keep serving. Those decisions are pure functions of time, tested
//! with a fake clock.
//!
//! **Readiness.** A new worker counts as serving once it says so, by the
//! [`Readiness`] mode: `READY=1` on the `NOTIFY_SOCKET` (systemd's
//! protocol, [`worker::notify_ready`]), Node's `process.send('ready')`
//! ([`Readiness::Ipc`], PM2's `wait_ready`), the Node preload seeing the
//! app listen on every socket ([`Readiness::Listen`]), a fixed delay, or
//! nothing (ready at once, then a [`DEFAULT_SETTLE`] window it must
//! survive). A worker that does not get there within the start timeout is
//! killed and counted as a failed start.
//!
//! **Reload.** SIGHUP (when `run()` handles signals; see
//! [`Builder::handle_signals`]), [`Handle::reload`] or [`Handle::restart`]
//! replace workers one slot at a time ([`Builder::reload_parallel`]): the
//! successor starts beside its predecessor on the same sockets, and only
//! once it is ready is the predecessor sent the stop signal and drained.
//! The first successor that fails (exits, times out) aborts the reload;
//! the slots not reached keep their old workers, and the
//! [`ReloadReport`] says why with the successor's last output. A reload
//! asked for during a reload runs once after it. [`Handle::set_command`]
//! changes what the next reload starts.
//!
//! **Stopping.** SIGTERM or SIGINT (or [`Handle::shutdown`]) sends the stop
//! signal to each worker's main process ([`KillMode::Mixed`]; for a Node app
//! under a launcher such as `npm start`, to the app's process) and SIGKILLs
//! its process group at the drain timeout; a second SIGINT, or SIGQUIT,
//! kills at once. When a worker's main process exits, whatever is left of
//! its process group is killed before it is reaped, so no generation leaves
//! orphans behind.
//!
//! **Upgrading the master.** A program that opts in
//! ([`Builder::upgrade_in_place`]; a library takes no signal and never
//! re-executes itself unasked) upgrades on SIGUSR2 or [`Handle::upgrade`]:
//! its binary, as the file is now, runs once as a pre-flight check with
//! the same arguments (`HERD_UPGRADE=check:3`: [`upgrade_preflight`] says
//! so, [`Builder::build`] checks the configuration against the running
//! cluster, and [`Cluster::run`] prints a confirmation and returns), then
//! the program re-executes it in the same process. The sockets, the
//! workers' pidfds, output pipes and readiness channels, the notify socket
//! and what the program [`Handle::carry`]s cross `execve` with the slot
//! table in a memfd (`HERD_UPGRADE=state:FD`); `build()` in the new binary
//! takes them over instead of binding, and `run()` supervises the same
//! workers. Not in proxy mode.
//!
//! **Node apps.** For a program that runs Node (`node`, or a script whose
//! `#!` line starts it: npm, npx, tsx, `./app.js`), a preload injected with
//! `NODE_OPTIONS` finds herd's sockets by inode wherever the app runs in the
//! worker's tree, maps `listen(port)` onto them, reports readiness on a
//! per-worker pipe ([`Readiness::Listen`], or [`Readiness::Ipc`] for PM2's
//! `wait_ready`), and drains on the stop signal without cutting a
//! keep-alive client, whether or not the app handles the signal itself.
//!
//! **Observing.** Every lifecycle step and every notice is an [`Event`] on
//! [`Handle::events`] and, unless [`Builder::log_events`] is off, one line
//! on stderr ([`Event::to_json`] for programs). Worker output is forwarded
//! line by line with a `[slot N pid P]` prefix unless
//! [`Builder::forward_output`] is off, and is on [`Handle::output`] for a
//! program that wants it. [`Handle::workers`] is a snapshot of every slot.
//!
//! **Features.** Only `cli` is on by default; a library user who wants
//! none of its dependencies writes `default-features = false`.
//!
//! | feature | what it adds |
//! |---|---|
//! | `serde` | events, snapshots, reports and stats serialize |
//! | `hyper` | `worker::http`, a server for Rust workers that drains without losing a request |
//! | `control` | `control`, the JSON control API on a Unix socket that `herdctl` speaks |
//! | `metrics` | counters and gauges through the `metrics` facade |
//! | `http` | [`Balance::Http`]: the master balances each HTTP/1.1 request |
//! | `tracing` | `trace::forward`: every event and worker line as a `tracing` event |
//! | `cli` | the `herd` and `herdctl` commands ([`cli`]): `control`, `http`, `metrics` and `serde` with clap, TOML and YAML |
//!
//! Workers written in Rust use [`worker`] to pick up their sockets.
#![deny(missing_docs)]
// docs.rs builds with `--cfg docsrs` on nightly: each feature-gated item
// says which feature enables it.
#![cfg_attr(docsrs, feature(doc_cfg))]

// Say why, rather than build an empty crate: herd needs pidfds, cgroup v2,
// `SO_REUSEPORT` groups and `PR_SET_PDEATHSIG`.
#[cfg(not(target_os = "linux"))]
compile_error!(
    "herd runs on Linux only: it relies on pidfds, SO_REUSEPORT groups, cgroup v2 and PR_SET_PDEATHSIG"
);

pub mod balance;
#[cfg(feature = "cli")]
pub mod cli;
mod cluster;
#[cfg(feature = "control")]
pub mod control;
pub mod logfile;
pub mod net;
mod node;
mod observe;
mod private_dir;
mod process;
pub mod proxy;
pub mod ready;
mod service;
mod supervisor;
#[cfg(feature = "tracing")]
pub mod trace;
mod types;
mod upgrade;
pub mod worker;

pub use balance::Strategy;
pub use cluster::{
    Builder, Cluster, Handle, Update, WorkerCommand, DEFAULT_DRAIN_TIMEOUT,
    DEFAULT_SAMPLE_INTERVAL, DEFAULT_SETTLE, DEFAULT_STOP_SIGNAL,
};
pub use observe::{Event, Level, Missed, Notice, OutputLine, OutputStream};
pub use types::{
    Balance, Cidr, Error, ErrorKind, Exit, KillMode, Phase, Readiness, ReloadFailure, ReloadReport,
    Replacement, RestartCounts, Result, Signal, SlotFailure, WorkerInfo, WorkerState,
    DEFAULT_RELOAD_PARALLEL, DEFAULT_START_TIMEOUT,
};

/// Parses a duration as herd's flags take it: `250ms`, `30s`, `1.5s`,
/// `2m5s`, `1h` (what herd prints in its logs and events reads back).
///
/// # Errors
///
/// [`Error::Parse`] naming the text.
pub fn parse_duration(text: &str) -> Result<std::time::Duration> {
    types::duration::parse(text)
}

/// Whether this process is a new binary's pre-flight run during an upgrade
/// in place ([`Builder::upgrade_in_place`]): the running master starts the
/// new binary once with its arguments to learn whether it would take over.
/// Such a run builds its cluster as usual; [`Cluster::run`] then checks the
/// configuration against the running cluster, prints the confirmation the
/// master waits for and returns without starting anything. Call it at the
/// top of `main` to skip what a pre-flight must not do (bind an admin port
/// the running master holds, open log files, migrate a database).
pub fn upgrade_preflight() -> bool {
    upgrade::is_preflight()
}

/// Parses a memory size as the `--max-memory` flag takes it: `300M`,
/// `1.5G`, `512K`, `64MiB` (binary units), or bytes.
///
/// # Errors
///
/// [`Error::Parse`] naming the text.
pub fn parse_size(text: &str) -> Result<u64> {
    process::usage::parse_size(text).ok_or_else(|| Error::Parse {
        what: "memory size",
        input: text.to_owned(),
        reason: "expected a number with K, M or G, like 300M".into(),
    })
}
pub use supervisor::policy::{
    Backoff, CrashLoop, Decision, RestartPolicy, Supervision, DEFAULT_BACKOFF_FACTOR,
    DEFAULT_BACKOFF_INITIAL, DEFAULT_BACKOFF_JITTER, DEFAULT_BACKOFF_MAX, DEFAULT_CRASH_LIMIT,
    DEFAULT_CRASH_WINDOW, DEFAULT_MIN_UPTIME,
};
