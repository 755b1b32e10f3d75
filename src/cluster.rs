//! The public front: [`Builder`] validates and binds, [`Cluster`] runs,
//! [`Handle`] controls and observes a running cluster from anywhere.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal as NixSignal;

use crate::types::Signal;
use tokio::sync::{broadcast, mpsc, watch};

use crate::net::{default_backlog, Balance, Bound, Listeners, Source};
use crate::observe::event::{Event, OutputLine};
use crate::process::command::prepare_command;
pub use crate::process::command::WorkerCommand;
use crate::proxy::ProxyProtocol;
use crate::ready::{Readiness, DEFAULT_START_TIMEOUT};
use crate::supervisor::policy::{Backoff, CrashLoop, RestartPolicy, Supervision};
use crate::supervisor::reload::Target;
use crate::supervisor::{self, Config, Control, Shared, Snapshot, WorkerUser};
use crate::types::WorkerInfo;
use crate::types::{Error, Result};
use crate::types::{KillMode, Phase};
use crate::types::{ReloadReport, DEFAULT_RELOAD_PARALLEL};

/// Default time a stopping worker gets to finish its requests before its
/// process group is SIGKILLed.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Default signal that asks a worker to stop.
pub const DEFAULT_STOP_SIGNAL: Signal = Signal::TERM;
/// Default settle window: how long a reload's successor must stay up when
/// it cannot report readiness ([`Readiness::None`]) before it replaces its
/// predecessor. A release that fails at start-up (an import error, a bad
/// configuration file) dies within it: Python and gunicorn with an
/// `ImportError` exit within about 0.5 s on the 2-core test machine, Node
/// with a missing module within 0.1 s.
pub const DEFAULT_SETTLE: Duration = Duration::from_secs(1);
/// How often workers' CPU and memory are read by default.
pub const DEFAULT_SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
/// The longest duration a setting takes: deadlines are `now + setting`
/// (the drain timeout and a grace in proxy mode), which must not overflow.
const MAX_SETTING: Duration = Duration::from_secs(365 * 24 * 3600);
/// File descriptors the master keeps per worker: its pidfd, the stdout and
/// stderr pipes, the readiness pipe or IPC channel, and one slot socket per
/// address (reuseport mode).
const FDS_PER_WORKER: u64 = 4;
/// File descriptors the master needs besides its workers' (runtime,
/// signals, the notify socket, forking), with room to spare.
const FDS_BASE: u64 = 64;

/// Resolves `--user` and `--group`.
///
/// # Errors
///
/// [`Error::InvalidSetting`] naming the user or group that does not exist,
/// or saying that only root can run workers as someone else.
fn resolve_user(user: Option<&str>, group: Option<&str>) -> Result<Option<WorkerUser>> {
    use nix::unistd::{Gid, Group, Uid, User};
    if user.is_none() && group.is_none() {
        return Ok(None);
    }
    let refuse = |setting: &'static str, reason: String| Error::InvalidSetting { setting, reason };
    if !Uid::effective().is_root() {
        return Err(refuse(
            if user.is_some() { "user" } else { "group" },
            format!(
                "running workers as another user or group needs a master started as root (this one runs as uid {})",
                Uid::effective()
            ),
        ));
    }
    let me = User::from_uid(Uid::effective()).ok().flatten();
    let account = match user {
        Some(name) => {
            let found = match name.parse::<u32>() {
                Ok(uid) => User::from_uid(Uid::from_raw(uid)),
                Err(_) => User::from_name(name),
            };
            found
                .ok()
                .flatten()
                .ok_or_else(|| refuse("user", format!("no user `{name}` on this system")))?
        }
        None => me.ok_or_else(|| refuse("group", "the master's own user is unknown".into()))?,
    };
    let gid = match group {
        Some(name) => {
            let found = match name.parse::<u32>() {
                Ok(gid) => Group::from_gid(Gid::from_raw(gid)),
                Err(_) => Group::from_name(name),
            };
            found
                .ok()
                .flatten()
                .ok_or_else(|| refuse("group", format!("no group `{name}` on this system")))?
                .gid
        }
        None => account.gid,
    };
    let name = std::ffi::CString::new(account.name.as_bytes())
        .map_err(|_| refuse("user", "the user name holds a NUL byte".into()))?;
    let groups = nix::unistd::getgrouplist(&name, gid).map_err(|e| {
        refuse(
            "user",
            format!("cannot read the groups of `{}`: {e}", account.name),
        )
    })?;
    Ok(Some(WorkerUser {
        credentials: crate::process::spawn::Credentials {
            uid: account.uid.as_raw(),
            gid: gid.as_raw(),
            groups: groups.iter().map(|g| g.as_raw()).collect(),
        },
        env: vec![
            ("HOME".into(), account.dir.into_os_string()),
            ("USER".into(), account.name.clone().into()),
            ("LOGNAME".into(), account.name.into()),
        ],
    }))
}

/// Configures a [`Cluster`]; [`Builder::build`] validates everything and
/// binds the listening sockets.
#[derive(Debug, Clone)]
pub struct Builder {
    /// The program is empty until [`Builder::command`] names one.
    command: WorkerCommand,
    workers: Option<usize>,
    listen: Vec<Source>,
    /// No address on purpose: workers that serve no socket.
    without_sockets: bool,
    balance: Balance,
    backlog: Option<u32>,
    supervision: Supervision,
    drain_timeout: Duration,
    stop_signal: Signal,
    kill_mode: KillMode,
    settle: Duration,
    handle_signals: bool,
    name: Option<String>,
    log_events: bool,
    forward_output: bool,
    readiness: Readiness,
    start_timeout: Duration,
    watchdog: Option<Duration>,
    reload_parallel: usize,
    sample_interval: Duration,
    max_memory: Option<u64>,
    max_requests: Option<u64>,
    service_notify: bool,
    pre_stop_delay: Duration,
    user: Option<String>,
    group: Option<String>,
    node_preload: bool,
    proxy_header: Option<ProxyProtocol>,
    port_contract: bool,
    proxy_splice: bool,
    max_connections: Option<usize>,
    proxy_idle_timeout: Duration,
    sticky_cookie: bool,
    trusted_proxies: Vec<crate::Cidr>,
    header_timeout: Option<Duration>,
    response_timeout: Option<Duration>,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            command: WorkerCommand::new(""),
            workers: None,
            listen: Vec::new(),
            without_sockets: false,
            balance: Balance::default(),
            backlog: None,
            supervision: Supervision::new(),
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            stop_signal: DEFAULT_STOP_SIGNAL,
            kill_mode: KillMode::default(),
            settle: DEFAULT_SETTLE,
            handle_signals: true,
            name: None,
            log_events: true,
            forward_output: true,
            readiness: Readiness::Auto,
            start_timeout: DEFAULT_START_TIMEOUT,
            watchdog: None,
            reload_parallel: DEFAULT_RELOAD_PARALLEL,
            sample_interval: DEFAULT_SAMPLE_INTERVAL,
            max_memory: None,
            max_requests: None,
            service_notify: true,
            pre_stop_delay: Duration::ZERO,
            user: None,
            group: None,
            node_preload: true,
            proxy_header: None,
            port_contract: false,
            proxy_splice: false,
            max_connections: None,
            proxy_idle_timeout: crate::proxy::DEFAULT_IDLE_TIMEOUT,
            sticky_cookie: false,
            trusted_proxies: Vec::new(),
            header_timeout: None,
            response_timeout: None,
        }
    }
}

impl Builder {
    /// The program every worker runs: a path, or a name looked up on `PATH`.
    #[must_use = "a builder method returns the changed builder"]
    pub fn command(mut self, program: impl AsRef<OsStr>) -> Self {
        self.command.program = program.as_ref().to_owned();
        self
    }

    /// Appends one argument.
    #[must_use = "a builder method returns the changed builder"]
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.command = self.command.arg(arg);
        self
    }

    /// Appends arguments.
    #[must_use = "a builder method returns the changed builder"]
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.command = self.command.args(args);
        self
    }

    /// Sets a variable in every worker's environment (which otherwise is the
    /// master's, less the socket-activation and systemd variables).
    #[must_use = "a builder method returns the changed builder"]
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.command = self.command.env(key, value);
        self
    }

    /// Removes a variable from every worker's environment.
    #[must_use = "a builder method returns the changed builder"]
    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> Self {
        self.command = self.command.env_remove(key);
        self
    }

    /// The workers' working directory (default: the master's).
    #[must_use = "a builder method returns the changed builder"]
    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.command = self.command.current_dir(dir);
        self
    }

    /// How many worker slots (default: the number of available CPUs).
    #[must_use = "a builder method returns the changed builder"]
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = Some(n);
        self
    }

    /// Adds a listening address; repeat for more. Port 0 lets the kernel
    /// choose ([`Cluster::local_addrs`] tells which).
    #[must_use = "a builder method returns the changed builder"]
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen.push(Source::Addr(addr));
        self
    }

    /// Adds a TCP socket the program already has (from systemd socket
    /// activation, a parent process or a test harness), in order with the
    /// [`Builder::listen`] addresses. It must be bound; herd listens on it
    /// if it does not listen yet. For [`Balance::ReusePort`] it must have
    /// `SO_REUSEPORT` set (systemd's `ReusePort=yes`): herd binds the other
    /// slots' sockets to its address. [`Builder::build`] refuses anything
    /// else with [`Error::BadListener`].
    ///
    /// ```no_run
    /// # fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// let cluster = herd::Cluster::builder()
    ///     .command("node").arg("server.js")
    ///     .balance(herd::Balance::Shared)
    ///     .listener(listener)
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    #[must_use = "a builder method returns the changed builder"]
    pub fn listener(mut self, socket: impl Into<OwnedFd>) -> Self {
        self.listen.push(Source::Fd(Arc::new(socket.into())));
        self
    }

    /// Builds a cluster with no listening socket at all, for workers that
    /// serve none (queue consumers, schedulers). Without this, a builder
    /// with no [`Builder::listen`] is refused: every server worker would
    /// bind its port itself and all but one would crash-loop.
    #[must_use = "a builder method returns the changed builder"]
    pub fn without_sockets(mut self) -> Self {
        self.without_sockets = true;
        self
    }

    /// How workers share each address (default [`Balance::ReusePort`]).
    #[must_use = "a builder method returns the changed builder"]
    pub fn balance(mut self, balance: Balance) -> Self {
        self.balance = balance;
        self
    }

    /// The listen backlog (default: the kernel's `somaxconn`).
    #[must_use = "a builder method returns the changed builder"]
    pub fn backlog(mut self, backlog: u32) -> Self {
        self.backlog = Some(backlog);
        self
    }

    /// Which exits are restarted (default [`RestartPolicy::Always`]).
    #[must_use = "a builder method returns the changed builder"]
    pub fn restart_policy(mut self, policy: RestartPolicy) -> Self {
        self.supervision.restart = policy;
        self
    }

    /// Delay between restarts.
    #[must_use = "a builder method returns the changed builder"]
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.supervision.backoff = backoff;
        self
    }

    /// When a slot is given up on.
    #[must_use = "a builder method returns the changed builder"]
    pub fn crash_loop(mut self, crash_loop: CrashLoop) -> Self {
        self.supervision.crash_loop = crash_loop;
        self
    }

    /// Uptime after which the backoff starts over.
    #[must_use = "a builder method returns the changed builder"]
    pub fn min_uptime(mut self, uptime: Duration) -> Self {
        self.supervision.min_uptime = uptime;
        self
    }

    /// How long a stopping worker may drain before its process group is
    /// SIGKILLed (default [`DEFAULT_DRAIN_TIMEOUT`]).
    #[must_use = "a builder method returns the changed builder"]
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// The signal that asks a worker to stop (default SIGTERM).
    #[must_use = "a builder method returns the changed builder"]
    pub fn stop_signal(mut self, signal: Signal) -> Self {
        self.stop_signal = signal;
        self
    }

    /// Which of a worker's processes get the stop signal (default
    /// [`KillMode::Mixed`]: the main process; the rest of its group is
    /// SIGKILLed when the main process has exited or at the drain timeout).
    #[must_use = "a builder method returns the changed builder"]
    pub fn kill_mode(mut self, mode: KillMode) -> Self {
        self.kill_mode = mode;
        self
    }

    /// How long a reload's successor that cannot report readiness
    /// ([`Readiness::None`]) must stay up before it replaces its predecessor
    /// (default [`DEFAULT_SETTLE`]; zero turns it off). One that exits
    /// within it aborts the reload.
    #[must_use = "a builder method returns the changed builder"]
    pub fn settle(mut self, window: Duration) -> Self {
        self.settle = window;
        self
    }

    /// PM2's `wait_ready`: a new worker is ready when the app calls
    /// `process.send('ready')`, not when it listens. The same as
    /// `readiness(Readiness::Ipc)`; Node programs only.
    #[must_use = "a builder method returns the changed builder"]
    pub fn wait_ready(self, on: bool) -> Self {
        if on {
            self.readiness(Readiness::Ipc)
        } else {
            self
        }
    }

    /// Whether `run()` handles SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGTTIN,
    /// SIGTTOU and SIGUSR2 sent to the master (default true): SIGTERM and
    /// SIGINT stop gracefully (a second SIGINT kills), SIGQUIT kills at
    /// once, SIGHUP starts a rolling reload (as [`Handle::reload`]),
    /// SIGTTIN and SIGTTOU scale by one (as [`Handle::scale_by`]), SIGUSR2
    /// upgrades the master in place (as [`Handle::upgrade`]). Turn off when
    /// the embedding program handles signals itself and calls the handle's
    /// methods.
    ///
    /// tokio never gives a signal back once it listened for it: after
    /// `run()` returns, these signals stay caught, and a SIGTERM or
    /// Ctrl-C does nothing to the process (a later `run()` in the same
    /// process still gets them). A program that goes on after its cluster
    /// and must stay stoppable by those signals handles them itself (and
    /// turns this off).
    #[must_use = "a builder method returns the changed builder"]
    pub fn handle_signals(mut self, on: bool) -> Self {
        self.handle_signals = on;
        self
    }

    /// A name for the cluster, in each of its log lines (`herd[api]: ...`)
    /// and each forwarded worker line (`[api slot 0 pid 12] ...`): two
    /// clusters in one process can be told apart. Letters, digits, `-`,
    /// `_` and `.`, at most 64.
    #[must_use = "a builder method returns the changed builder"]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Whether the master writes its events and notices to stderr, one
    /// line each (default true). Off, it writes nothing of its own; the
    /// same events still reach [`Handle::events`], so a program can route
    /// them where it likes (see [`Event::to_json`]).
    #[must_use = "a builder method returns the changed builder"]
    pub fn log_events(mut self, on: bool) -> Self {
        self.log_events = on;
        self
    }

    /// Whether worker output is written to the master's stdout and stderr
    /// with a `[slot N pid P]` prefix (default true). Off, it is still read
    /// (so workers never block on a full pipe), its last lines still go
    /// into crash and reload reports, and [`Handle::output`] still
    /// delivers every line to a program that wants them.
    #[must_use = "a builder method returns the changed builder"]
    pub fn forward_output(mut self, on: bool) -> Self {
        self.forward_output = on;
        self
    }

    /// How the master learns that a new worker serves (default
    /// [`Readiness::Auto`]). A reload waits for it before it stops the
    /// predecessor.
    #[must_use = "a builder method returns the changed builder"]
    pub fn readiness(mut self, readiness: Readiness) -> Self {
        self.readiness = readiness;
        self
    }

    /// How long a new worker may take to report readiness (default
    /// [`DEFAULT_START_TIMEOUT`]). A successor that misses it aborts the
    /// reload; a restarted worker that misses it is killed and restarted.
    #[must_use = "a builder method returns the changed builder"]
    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }

    /// Runs the workers as this user (a name or a uid), with its primary
    /// group unless [`Builder::group`] says otherwise, its supplementary
    /// groups, and its `HOME`, `USER` and `LOGNAME`. The master keeps its
    /// own privileges, and the privileged sockets it bound; it must run as
    /// root for this.
    #[must_use = "a builder method returns the changed builder"]
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }

    /// Runs the workers with this primary group (a name or a gid); needs
    /// [`Builder::user`] or root.
    #[must_use = "a builder method returns the changed builder"]
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = Some(group.into());
        self
    }

    /// On a graceful stop, waits this long with the cluster not ready
    /// ([`Phase::Stopping`], `/readyz` 503) while the workers go on
    /// serving, before they hear the stop signal (default 0): time for a
    /// load balancer or Kubernetes to take this host out of its endpoints,
    /// so that no new connection arrives while the listeners close. A
    /// second Ctrl-C or SIGQUIT still stops at once.
    #[must_use = "a builder method returns the changed builder"]
    pub fn pre_stop_delay(mut self, delay: Duration) -> Self {
        self.pre_stop_delay = delay;
        self
    }

    /// Whether the master speaks sd_notify to its own service manager when
    /// `NOTIFY_SOCKET` is set (default true): `READY=1` once every slot
    /// serves or has failed, `STATUS=`, `RELOADING=1` and `READY=1` around
    /// each reload (for `Type=notify-reload`), `STOPPING=1`, and
    /// `WATCHDOG=1` from the event loop when `WATCHDOG_USEC` asks for it.
    /// Turn it off when the embedding program reports for itself.
    #[must_use = "a builder method returns the changed builder"]
    pub fn service_notify(mut self, on: bool) -> Self {
        self.service_notify = on;
        self
    }

    /// How often each worker's CPU time and resident memory are read (from
    /// its cgroup, else `/proc`), for [`Handle::workers`] and
    /// [`Builder::max_memory`] (default 1 s; zero turns sampling off).
    #[must_use = "a builder method returns the changed builder"]
    pub fn sample_interval(mut self, interval: Duration) -> Self {
        self.sample_interval = interval;
        self
    }

    /// Replaces a worker whose resident memory (its whole tree, with
    /// cgroups) stays over `bytes` for three samples in a row, the way a
    /// reload replaces it: successor first, then a drain, so no request in
    /// flight is cut (PM2's `max_memory_restart` kills it). See
    /// [`crate::parse_size`] for `300M`.
    #[must_use = "a builder method returns the changed builder"]
    pub fn max_memory(mut self, bytes: u64) -> Self {
        self.max_memory = Some(bytes);
        self
    }

    /// HTTP mode: replaces a worker once it has been sent `n` requests,
    /// the way a reload replaces it (successor first, then a drain), so an
    /// app that leaks or fragments its memory is recycled before it
    /// matters (gunicorn's `max_requests`). Checked at each sample
    /// ([`Builder::sample_interval`]); the master counts requests only in
    /// [`Balance::Http`].
    #[must_use = "a builder method returns the changed builder"]
    pub fn max_requests(mut self, n: u64) -> Self {
        self.max_requests = Some(n);
        self
    }

    /// Requires `WATCHDOG=1` pings on the notify socket at least this often
    /// once a worker is ready (workers see `WATCHDOG_USEC`); a worker that
    /// misses one is killed and restarted.
    #[must_use = "a builder method returns the changed builder"]
    pub fn watchdog(mut self, interval: Duration) -> Self {
        self.watchdog = Some(interval);
        self
    }

    /// How many slots a reload replaces at the same time (default 1).
    #[must_use = "a builder method returns the changed builder"]
    pub fn reload_parallel(mut self, n: usize) -> Self {
        self.reload_parallel = n;
        self
    }

    /// Whether Node workers get herd's preload (default true): it lets an
    /// app that calls `listen(port)` serve on the inherited socket, reports
    /// readiness when it listens, and drains on the stop signal.
    #[must_use = "a builder method returns the changed builder"]
    pub fn node_preload(mut self, on: bool) -> Self {
        self.node_preload = on;
        self
    }

    /// Proxy mode: send a PROXY protocol header before the client's bytes,
    /// so that apps see the real client address.
    #[must_use = "a builder method returns the changed builder"]
    pub fn proxy_protocol(mut self, version: ProxyProtocol) -> Self {
        self.proxy_header = Some(version);
        self
    }

    /// Proxy mode, for programs that can only bind a port themselves: each
    /// worker gets `PORT` set to a free loopback port instead of an
    /// inherited listener, and is ready once that port answers (unless
    /// another readiness is chosen).
    #[must_use = "a builder method returns the changed builder"]
    pub fn port_contract(mut self, on: bool) -> Self {
        self.port_contract = on;
        self
    }

    /// Proxy mode: move bytes with splice(2) through a pipe instead of
    /// copying them through the master (default off: it pays off for large
    /// transfers only; see `benches/throughput.rs`).
    #[must_use = "a builder method returns the changed builder"]
    pub fn proxy_splice(mut self, on: bool) -> Self {
        self.proxy_splice = on;
        self
    }

    /// Proxy mode: the most client connections open at once (default:
    /// what the master's fd limit leaves after its workers and a reserve,
    /// so that it can always restart a worker). At the limit new clients
    /// wait in the listen queue; [`Handle::proxy_stats`] counts it.
    #[must_use = "a builder method returns the changed builder"]
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = Some(n);
        self
    }

    /// Proxy mode: a client connection on which nothing moved either way
    /// for this long is closed (default
    /// [`crate::proxy::DEFAULT_IDLE_TIMEOUT`]; zero: never).
    #[must_use = "a builder method returns the changed builder"]
    pub fn proxy_idle_timeout(mut self, timeout: Duration) -> Self {
        self.proxy_idle_timeout = timeout;
        self
    }

    /// HTTP mode: pin each client to a slot with a cookie (`herd_slot`, set
    /// on its first answer), as HAProxy's `cookie ... insert` does. The
    /// slot's next worker takes its clients over after a reload; a client
    /// whose slot has no ready worker goes to another and gets a new
    /// cookie. For session and socket.io apps behind a NAT, where every
    /// client has the same address and `IpHash` cannot tell them apart.
    #[must_use = "a builder method returns the changed builder"]
    pub fn sticky_cookie(mut self, on: bool) -> Self {
        self.sticky_cookie = on;
        self
    }

    /// HTTP mode: believe the `X-Forwarded-For`, `-Proto` and `-Host` that
    /// peers in `range` send (a load balancer in front of herd): the
    /// client's chain is kept, the peer appended. Everybody else's are
    /// replaced, since a client could claim any address.
    #[must_use = "a builder method returns the changed builder"]
    pub fn trust_proxy(mut self, range: crate::Cidr) -> Self {
        self.trusted_proxies.push(range);
        self
    }

    /// HTTP mode: how long a client may take to send a request's head (a
    /// slowloris is cut off then), and an idle keep-alive client connection
    /// is kept (default [`crate::proxy::DEFAULT_HEADER_TIMEOUT`]).
    #[must_use = "a builder method returns the changed builder"]
    pub fn header_timeout(mut self, timeout: Duration) -> Self {
        self.header_timeout = Some(timeout);
        self
    }

    /// HTTP mode: how long a worker may take to send a response's head
    /// before the client gets `504 Gateway Timeout` (default
    /// [`crate::proxy::DEFAULT_RESPONSE_TIMEOUT`]).
    #[must_use = "a builder method returns the changed builder"]
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = Some(timeout);
        self
    }

    /// Validates the configuration and binds every listening address.
    /// Nothing is spawned yet.
    ///
    /// # Errors
    ///
    /// [`Error::NoProgram`], [`Error::ProgramNotFound`],
    /// [`Error::ProgramNotExecutable`], [`Error::BadWorkingDirectory`],
    /// [`Error::ZeroWorkers`], [`Error::InvalidSetting`] for bad values, and
    /// [`Error::AddressInUse`] or [`Error::Listen`] naming the address that
    /// could not be bound.
    pub fn build(self) -> Result<Cluster> {
        crate::upgrade::remember_exe();
        // A master started by an upgrade (or its pre-flight) takes over
        // the sockets and workers described to it instead of binding.
        let inherited = crate::upgrade::inherited()?;
        if self.command.program.is_empty() {
            return Err(Error::NoProgram);
        }
        let program = self.command.program.clone();
        let workers = match self.workers {
            Some(0) => return Err(Error::ZeroWorkers),
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        self.supervision.validate()?;
        if let Some(name) = &self.name {
            let allowed = |c: char| c.is_ascii_alphanumeric() || "-_.".contains(c);
            if name.is_empty() || name.len() > 64 || !name.chars().all(allowed) {
                return Err(Error::InvalidSetting {
                    setting: "name",
                    reason: format!(
                        "`{name}` must be 1 to 64 letters, digits, `-`, `_` or `.` (it prefixes \
                         every log line)"
                    ),
                });
            }
        }
        let durations = [
            ("drain-timeout", self.drain_timeout),
            ("start-timeout", self.start_timeout),
            ("settle", self.settle),
            ("pre-stop-delay", self.pre_stop_delay),
            ("proxy-idle-timeout", self.proxy_idle_timeout),
            ("restart-delay", self.supervision.backoff.initial),
            ("restart-delay-max", self.supervision.backoff.max),
            ("crash-window", self.supervision.crash_loop.window),
            ("min-uptime", self.supervision.min_uptime),
            ("watchdog", self.watchdog.unwrap_or_default()),
            (
                "ready",
                match self.readiness {
                    Readiness::Delay(d) => d,
                    _ => Duration::ZERO,
                },
            ),
        ];
        for (setting, d) in durations {
            if d > MAX_SETTING {
                return Err(Error::InvalidSetting {
                    setting,
                    reason: format!("{} is longer than a year", crate::types::Millis(d)),
                });
            }
        }
        if self.balance == Balance::ReusePort && workers > crate::net::steer::MAX_STEERED_SLOTS {
            return Err(Error::InvalidSetting {
                setting: "workers",
                reason: format!(
                    "reuseport mode steers connections between at most {} slots, not {workers}; \
                     use fewer workers or --balance shared",
                    crate::net::steer::MAX_STEERED_SLOTS
                ),
            });
        }
        let listens = self.listen.len().max(1) as u64;
        ensure_fd_limit(
            workers as u64 * (FDS_PER_WORKER + listens) + FDS_BASE,
            workers,
        )?;
        if self.max_connections == Some(0) {
            return Err(Error::InvalidSetting {
                setting: "max-connections",
                reason: "must be at least 1".into(),
            });
        }
        let mut seen = std::collections::HashSet::new();
        let addrs = self.listen.iter().filter_map(|s| match s {
            Source::Addr(a) => Some(a),
            Source::Fd(_) => None,
        });
        for addr in addrs.filter(|a| a.port() != 0) {
            if !seen.insert(addr) {
                return Err(Error::InvalidSetting {
                    setting: "listen",
                    reason: format!("{addr} is listed twice"),
                });
            }
        }
        if IGNORED_BY_DEFAULT.contains(&self.stop_signal.to_nix()) {
            return Err(Error::InvalidSetting {
                setting: "stop-signal",
                reason: format!(
                    "{} does nothing to a program that does not handle it, so it could not stop \
                     a worker",
                    self.stop_signal.name()
                ),
            });
        }
        if self.stop_signal == Signal::KILL || self.stop_signal == Signal::STOP {
            return Err(Error::InvalidSetting {
                setting: "stop-signal",
                reason: format!(
                    "{} cannot be caught, so a worker could not drain",
                    self.stop_signal.name()
                ),
            });
        }

        if self.start_timeout.is_zero() {
            return Err(Error::InvalidSetting {
                setting: "start-timeout",
                reason: "must be longer than zero".into(),
            });
        }
        if self.watchdog.is_some_and(|w| w.is_zero()) {
            return Err(Error::InvalidSetting {
                setting: "watchdog",
                reason: "must be longer than zero".into(),
            });
        }
        // What only proxy mode does.
        for (asked, setting, what) in [
            (
                self.proxy_header.is_some(),
                "proxy-protocol",
                "a PROXY header",
            ),
            (self.port_contract, "proxy-port", "the PORT contract"),
            (self.proxy_splice, "proxy-splice", "splice forwarding"),
            (
                self.max_connections.is_some(),
                "max-connections",
                "a connection limit",
            ),
        ] {
            if asked && !self.balance.is_proxy() {
                return Err(Error::InvalidSetting {
                    setting,
                    reason: format!("{what} needs --balance proxy, not {}", self.balance),
                });
            }
        }
        for (given, setting) in [
            (self.header_timeout, "header-timeout"),
            (self.response_timeout, "response-timeout"),
        ] {
            match given {
                Some(d) if !self.balance.is_http() => {
                    return Err(Error::InvalidSetting {
                        setting,
                        reason: format!(
                            "{} is for --balance http, not {}",
                            crate::types::Millis(d),
                            self.balance
                        ),
                    })
                }
                Some(d) if d.is_zero() || d > MAX_SETTING => {
                    return Err(Error::InvalidSetting {
                        setting,
                        reason: "must be longer than zero and at most a year".into(),
                    })
                }
                _ => {}
            }
        }
        if !self.trusted_proxies.is_empty() && !self.balance.is_http() {
            return Err(Error::InvalidSetting {
                setting: "trust-proxy",
                reason: format!(
                    "trusted proxies need --balance http, not {} (only http mode reads and \
                     writes X-Forwarded-For)",
                    self.balance
                ),
            });
        }
        if self.sticky_cookie && !self.balance.is_http() {
            return Err(Error::InvalidSetting {
                setting: "sticky",
                reason: format!(
                    "a sticky cookie needs --balance http, not {} (the master must read each \
                     request's cookies)",
                    self.balance
                ),
            });
        }
        if self.balance.is_http() {
            if !cfg!(feature = "http") {
                return Err(Error::InvalidSetting {
                    setting: "balance",
                    reason: "http mode needs herd's `http` feature".into(),
                });
            }
            for (asked, setting, what) in [
                (
                    self.proxy_header.is_some(),
                    "proxy-protocol",
                    "a PROXY header",
                ),
                (self.proxy_splice, "proxy-splice", "splice forwarding"),
            ] {
                if asked {
                    return Err(Error::InvalidSetting {
                        setting,
                        reason: format!(
                            "{what} is for --balance proxy: http mode reads each request and \
                             tells the worker the client's address in X-Forwarded-For"
                        ),
                    });
                }
            }
        }
        if self.port_contract && self.listen.len() > 1 {
            return Err(Error::InvalidSetting {
                setting: "proxy-port",
                reason: format!(
                    "a worker binds one PORT, and {} addresses are listed; without \
                     --proxy-port each address gets a private listener of its own (fd 3, 4, ...)",
                    self.listen.len()
                ),
            });
        }
        if self.readiness == Readiness::Probe && !self.port_contract {
            return Err(Error::InvalidSetting {
                setting: "ready",
                reason: "probe readiness needs the PORT contract (--proxy-port)".into(),
            });
        }
        if self.max_memory.is_some() && self.sample_interval.is_zero() {
            return Err(Error::InvalidSetting {
                setting: "max-memory",
                reason: "a memory limit needs sampling: a sample interval above zero".into(),
            });
        }
        if let Some(n) = self.max_requests {
            let reason = if !self.balance.is_http() {
                Some(format!(
                    "the master counts requests only with --balance http, not {}",
                    self.balance
                ))
            } else if n == 0 {
                Some("must be at least 1".into())
            } else if self.sample_interval.is_zero() {
                Some("a request limit needs sampling: a sample interval above zero".into())
            } else {
                None
            };
            if let Some(reason) = reason {
                return Err(Error::InvalidSetting {
                    setting: "max-requests",
                    reason,
                });
            }
        }
        if self.max_memory == Some(0) {
            return Err(Error::InvalidSetting {
                setting: "max-memory",
                reason: "must be more than 0 bytes".into(),
            });
        }
        if self.reload_parallel == 0 {
            return Err(Error::InvalidSetting {
                setting: "reload-parallel",
                reason: "must be at least 1".into(),
            });
        }
        let worker_user = resolve_user(self.user.as_deref(), self.group.as_deref())?;
        // Workers of another user read the preload from a directory they
        // may enter.
        let preload = self.node_preload.then_some(worker_user.is_some());
        let command = prepare_command(&self.command, preload)?;
        let runs_node = command.runs_node;
        if self.readiness == Readiness::Ipc && !runs_node {
            return Err(Error::InvalidSetting {
                setting: "wait-ready",
                reason: format!(
                    "waiting for process.send('ready') needs a Node program, and `{}` is not \
                     node, a Node launcher or a script that runs node",
                    program.to_string_lossy()
                ),
            });
        }
        if self.readiness == Readiness::Listen && command.preload.is_none() {
            return Err(Error::InvalidSetting {
                setting: "ready",
                reason: format!(
                    "listen readiness needs the Node preload, and `{}` {}",
                    program.to_string_lossy(),
                    if runs_node {
                        "runs with the preload turned off"
                    } else {
                        "does not run node"
                    }
                ),
            });
        }
        let mut config = Config {
            command,
            node_preload: self.node_preload,
            workers,
            supervision: self.supervision,
            drain_timeout: self.drain_timeout,
            stop_signal: self.stop_signal.to_nix(),
            kill_mode: self.kill_mode,
            settle: (!self.settle.is_zero()).then_some(self.settle),
            handle_signals: self.handle_signals,
            name: self.name.clone(),
            log_events: self.log_events,
            forward_output: self.forward_output,
            readiness: self.readiness,
            start_timeout: self.start_timeout,
            watchdog: self.watchdog,
            reload_parallel: self.reload_parallel,
            sample_interval: (!self.sample_interval.is_zero()).then_some(self.sample_interval),
            max_memory: self.max_memory,
            max_requests: self.max_requests,
            service_notify: self.service_notify,
            pre_stop_delay: (!self.pre_stop_delay.is_zero()).then_some(self.pre_stop_delay),
            user: worker_user,
            proxy_header: self.proxy_header,
            port_contract: self.port_contract,
            proxy_splice: self.proxy_splice,
            max_connections: self.max_connections,
            proxy_idle_timeout: (!self.proxy_idle_timeout.is_zero())
                .then_some(self.proxy_idle_timeout),
            sticky_cookie: self.sticky_cookie,
            trusted_proxies: self.trusted_proxies.clone(),
            header_timeout: self
                .header_timeout
                .unwrap_or(crate::proxy::DEFAULT_HEADER_TIMEOUT),
            response_timeout: self
                .response_timeout
                .unwrap_or(crate::proxy::DEFAULT_RESPONSE_TIMEOUT),
        };

        if self.listen.is_empty() && !self.without_sockets {
            return Err(Error::InvalidSetting {
                setting: "listen",
                reason: "no address to listen on: call Builder::listen, or \
                         Builder::without_sockets for workers that serve nothing"
                    .into(),
            });
        }
        if !self.listen.is_empty() && self.without_sockets {
            return Err(Error::InvalidSetting {
                setting: "listen",
                reason: "addresses given together with Builder::without_sockets".into(),
            });
        }
        let backlog = self.backlog.unwrap_or_else(default_backlog);
        if backlog == 0 {
            return Err(Error::InvalidSetting {
                setting: "backlog",
                reason: "must be at least 1".into(),
            });
        }
        match inherited {
            Some(crate::upgrade::Inherited::Check(state)) => {
                // The pre-flight of an upgrade: this binary would take over.
                state.compatible(self.balance)?;
                println!("{}", crate::upgrade::CHECK_OK);
                std::process::exit(0);
            }
            Some(crate::upgrade::Inherited::Adopt(state)) => {
                state.compatible(self.balance)?;
                // The running cluster's sockets, mode and number of slots
                // carry over; the rest of the configuration is this one.
                let (sockets, adopted) = state.into_parts();
                let listeners = Listeners::inherited(sockets)?;
                config.workers = adopted.slots.len();
                return Ok(Cluster::new(config, listeners, Some(adopted)));
            }
            None => {}
        }
        let mut sources = Vec::with_capacity(self.listen.len());
        for source in &self.listen {
            sources.push(match source {
                Source::Addr(a) => Bound::Addr(*a),
                Source::Fd(fd) => crate::net::adopt(fd, self.balance, backlog)?,
            });
        }
        let listeners = Listeners::bind(sources, self.balance, workers, backlog)?;
        Ok(Cluster::new(config, listeners, None))
    }
}

/// Signals whose default action is to do nothing (or to stop, not end, the
/// process): a worker that does not handle them would never stop.
const IGNORED_BY_DEFAULT: &[NixSignal] = &[
    NixSignal::SIGCHLD,
    NixSignal::SIGCONT,
    NixSignal::SIGURG,
    NixSignal::SIGWINCH,
    NixSignal::SIGTSTP,
    NixSignal::SIGTTIN,
    NixSignal::SIGTTOU,
];

/// Makes sure the master may open `needed` file descriptors, raising its
/// soft limit towards the hard one if it must (as nginx and systemd do),
/// so that a large cluster fails at build time, not halfway through
/// spawning.
fn ensure_fd_limit(needed: u64, workers: usize) -> Result<()> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return Ok(());
    };
    if needed <= soft {
        return Ok(());
    }
    if needed <= hard && setrlimit(Resource::RLIMIT_NOFILE, hard.min(needed * 2), hard).is_ok() {
        return Ok(());
    }
    Err(Error::InvalidSetting {
        setting: "workers",
        reason: format!(
            "{workers} workers need about {needed} file descriptors in the master, and its limit \
             is {} (ulimit -n); raise it or use fewer workers",
            soft.max(hard.min(needed))
        ),
    })
}

/// A built cluster: its sockets are bound, its workers not yet started.
#[derive(Debug)]
pub struct Cluster {
    config: Config,
    listeners: Listeners,
    /// What a previous master handed on (an upgrade in place).
    inherited: Option<crate::upgrade::Adopted>,
    handle: Handle,
    control_rx: mpsc::UnboundedReceiver<Control>,
    snapshot_tx: watch::Sender<Snapshot>,
}

impl Cluster {
    /// Starts configuring a cluster.
    pub fn builder() -> Builder {
        Builder::default()
    }

    fn new(
        config: Config,
        listeners: Listeners,
        inherited: Option<crate::upgrade::Adopted>,
    ) -> Self {
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let (snapshot_tx, snapshot_rx) = watch::channel(Snapshot {
            phase: Phase::Created,
            workers: Vec::new(),
            upgrades: 0,
        });
        let handle = Handle {
            control: control_tx,
            snapshot: snapshot_rx,
            shared: Shared::new(config.name.clone(), config.log_events),
            node_preload: config.node_preload.then_some(config.user.is_some()),
            addrs: listeners.local_addrs().into(),
        };
        let mut inherited = inherited;
        if let Some(adopted) = &mut inherited {
            let mut incoming = handle
                .shared
                .carried
                .incoming
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            incoming.extend(std::mem::take(&mut adopted.carried));
        }
        Cluster {
            config,
            listeners,
            inherited,
            handle,
            control_rx,
            snapshot_tx,
        }
    }

    /// A handle to control and observe the cluster; cheap to clone.
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// The number of worker slots.
    pub fn worker_count(&self) -> usize {
        self.config.workers
    }

    /// The bound addresses, in the order they were configured (with the
    /// kernel's port where port 0 was given).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        self.listeners.local_addrs()
    }

    /// Starts the workers and supervises them until the cluster is stopped
    /// (by a signal or [`Handle::shutdown`]) and every worker is reaped.
    ///
    /// # Errors
    ///
    /// [`Error::Spawn`] if a first worker cannot be started (every worker
    /// already started is stopped again), [`Error::AllSlotsFailed`] when
    /// every slot has tripped its crash-loop limit, [`Error::Io`] if the
    /// signal handlers cannot be installed.
    pub async fn run(self) -> Result<()> {
        self.run_on(Arc::new(crate::process::os::Real)).await
    }

    /// [`Cluster::run`] with worker processes started, signalled and
    /// reaped by `os` (a fake in the supervisor's unit tests).
    pub(crate) async fn run_on(self, os: Arc<dyn crate::process::os::Processes>) -> Result<()> {
        supervisor::run(
            self.config,
            self.listeners,
            self.inherited,
            self.handle.shared,
            self.control_rx,
            self.snapshot_tx,
            os,
        )
        .await
    }
}

/// Controls and observes a cluster. Cheap to clone; usable from any task.
#[derive(Debug, Clone)]
pub struct Handle {
    control: mpsc::UnboundedSender<Control>,
    snapshot: watch::Receiver<Snapshot>,
    /// What the event loop shares with every handle.
    shared: Shared,
    /// Whether Node programs get the preload, and whether another user's
    /// workers must read it (for [`Handle::set_command`]).
    node_preload: Option<bool>,
    addrs: Arc<[SocketAddr]>,
}

impl Handle {
    /// Proxy mode: the connections the master forwards to each worker now,
    /// draining workers included, by slot and pid. Empty in the other modes.
    pub fn proxied_connections(&self) -> Vec<crate::proxy::Proxied> {
        let backends = self
            .shared
            .backends
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<_> = backends
            .values()
            .map(|b| crate::proxy::Proxied {
                slot: b.slot,
                pid: b.pid,
                open: b.active(),
            })
            .collect();
        v.sort_unstable_by_key(|p| (p.slot, p.pid));
        v
    }

    /// Sends `signal` to slot `slot`'s worker (to its app's process when a
    /// launcher such as npm runs it) and returns the pid signalled, as
    /// `pm2 sendSignal` does: for apps that reopen logs on SIGUSR1, dump
    /// state on SIGUSR2, and the like.
    ///
    /// # Errors
    ///
    /// [`Error::NoSuchSlot`] for a slot out of range, [`Error::NoWorker`]
    /// when the slot has no worker now, [`Error::NotRunning`] if the
    /// cluster is not running.
    pub async fn signal(&self, slot: usize, signal: Signal) -> Result<u32> {
        self.ask(|reply| Control::Signal {
            slot,
            signal: signal.to_nix(),
            reply,
        })
        .await
    }

    /// Resolves once the cluster has stopped and every worker is reaped,
    /// however the stop came (a signal, [`Handle::shutdown`], every slot
    /// failing), without asking for it.
    pub async fn stopped(&self) {
        let mut rx = self.snapshot.clone();
        let _ = rx.wait_for(|s| s.phase == Phase::Stopped).await;
    }

    /// Proxy mode: the connection limit and how often it and the idle
    /// timeout bit. All zero in the other modes.
    pub fn proxy_stats(&self) -> crate::proxy::ProxyStats {
        self.shared.counters.stats()
    }

    /// Stops every worker gracefully (stop signal, drain timeout, SIGKILL)
    /// and resolves when all are reaped.
    ///
    /// # Errors
    ///
    /// [`Error::NotRunning`] if the cluster was dropped without stopping.
    pub async fn shutdown(&self) -> Result<()> {
        self.send_and_wait(Control::Stop { graceful: true }).await
    }

    /// SIGKILLs every worker's process group at once and resolves when all
    /// are reaped.
    ///
    /// # Errors
    ///
    /// [`Error::NotRunning`] if the cluster was dropped without stopping.
    pub async fn kill(&self) -> Result<()> {
        self.send_and_wait(Control::Stop { graceful: false }).await
    }

    /// Rolling reload: slot by slot, a successor starts on the same
    /// sockets, and only once it is ready does the predecessor get the stop
    /// signal and drain. Resolves to what happened. A reload asked for
    /// during a reload runs once after it (requests are merged), never in
    /// parallel. A successor that exits or misses the start timeout aborts
    /// the reload: its predecessor and every slot not yet reached keep
    /// their workers.
    ///
    /// # Errors
    ///
    /// [`Error::NotRunning`] if the cluster is not running or stops first.
    pub async fn reload(&self) -> Result<ReloadReport> {
        self.reload_target(Target::All).await
    }

    /// Soft restart of one slot, successor first, as a reload does.
    ///
    /// # Errors
    ///
    /// [`Error::NoSuchSlot`] for a slot out of range, [`Error::NotRunning`]
    /// if the cluster is not running.
    pub async fn restart(&self, slot: usize) -> Result<ReloadReport> {
        self.reload_target(Target::Slot(slot)).await
    }

    async fn reload_target(&self, target: Target) -> Result<ReloadReport> {
        self.ask(|reply| Control::Reload { target, reply }).await
    }

    /// Sends a control that carries its reply channel and waits for it.
    async fn ask<T>(
        &self,
        control: impl FnOnce(tokio::sync::oneshot::Sender<Result<T>>) -> Control,
    ) -> Result<T> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.control
            .send(control(reply))
            .map_err(|_| Error::NotRunning)?;
        rx.await.map_err(|_| Error::NotRunning)?
    }

    async fn send_and_wait(&self, control: Control) -> Result<()> {
        let _ = self.control.send(control);
        let mut rx = self.snapshot.clone();
        rx.wait_for(|s| s.phase == Phase::Stopped)
            .await
            .map(|_| ())
            .map_err(|_| Error::NotRunning)
    }

    /// A snapshot of every slot.
    pub fn workers(&self) -> Vec<WorkerInfo> {
        self.snapshot.borrow().workers.clone()
    }

    /// Where the cluster is in its life.
    pub fn phase(&self) -> Phase {
        self.snapshot.borrow().phase
    }

    /// Subscribes to lifecycle events from now on. The stream ends
    /// ([`broadcast::error::RecvError::Closed`]) after
    /// [`Event::Stopped`].
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.shared.log.subscribe()
    }

    /// Subscribes to every line the workers write from now on, with slot,
    /// pid and stream, whether or not it is also forwarded
    /// ([`Builder::forward_output`]). A subscriber more than 4096 lines
    /// behind misses lines ([`broadcast::error::RecvError::Lagged`]); the
    /// workers are never held back for it. Lines are copied only while
    /// somebody subscribes.
    pub fn output(&self) -> broadcast::Receiver<OutputLine> {
        self.shared.log.subscribe_output()
    }

    /// Sets what every worker started from now on runs (the next reload or
    /// restart): a new release directory, new arguments, a new
    /// environment. It is checked as [`Builder::build`] checks the first
    /// (the program found, the directory present); running workers are left
    /// alone. Follow it with [`Handle::reload`].
    ///
    /// ```no_run
    /// # async fn demo(handle: herd::Handle) -> herd::Result<()> {
    /// let next = herd::WorkerCommand::new("node")
    ///     .arg("server.js")
    ///     .current_dir("/srv/app/releases/42")
    ///     .env("RELEASE", "42");
    /// handle.set_command(next).await?;
    /// let report = handle.reload().await?;
    /// # let _ = report; Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// What [`Builder::build`] says of a bad program, directory or
    /// environment; [`Error::InvalidSetting`] (`command`) for a Node program
    /// in place of one that is not, or the other way round;
    /// [`Error::NotRunning`] once the cluster has stopped.
    pub async fn set_command(&self, command: WorkerCommand) -> Result<()> {
        let prepared = prepare_command(&command, self.node_preload)?;
        self.ask(|reply| Control::SetCommand {
            command: Box::new(prepared),
            reply,
        })
        .await
    }

    /// Scales the cluster to `workers` slots, in every balance mode. New
    /// slots start a worker at once (with reuseport, on a socket of their
    /// own that joins the group). The highest slots are removed: their
    /// workers drain as in a stop, and connections still queued on their
    /// sockets are passed on. SIGTTIN and SIGTTOU do the same by one (as
    /// gunicorn). Returns the number of slots before and after.
    ///
    /// # Errors
    ///
    /// [`Error::ZeroWorkers`]; [`Error::InvalidSetting`] (`workers`) while
    /// a reload runs or removed slots still drain, or beyond reuseport's
    /// steering limit; [`Error::Listen`] when a new slot's socket cannot be
    /// bound (nothing changes then); [`Error::NotRunning`].
    pub async fn scale(&self, workers: usize) -> Result<(usize, usize)> {
        self.ask(|reply| Control::Scale {
            to: supervisor::Scale::To(workers),
            reply,
        })
        .await
    }

    /// [`Handle::scale`] by a difference: `+2`, `-1` (never below one
    /// slot). Returns the number of slots before and after.
    ///
    /// # Errors
    ///
    /// As [`Handle::scale`].
    pub async fn scale_by(&self, delta: isize) -> Result<(usize, usize)> {
        self.ask(|reply| Control::Scale {
            to: supervisor::Scale::By(delta),
            reply,
        })
        .await
    }

    /// Upgrades the master in place, as SIGUSR2 does: the binary this
    /// process was started from (the file now at that path: the new
    /// version) first runs once as a pre-flight check with the same
    /// arguments, then this process re-executes it. The pid stays, the
    /// listening sockets and the workers are handed on (they keep serving
    /// and keep their pids), and the new master supervises them. Waits,
    /// while a reload runs or workers start or drain, for the cluster to
    /// settle first (at most a minute).
    ///
    /// Resolves once the pre-flight passed and the exec is under way:
    /// moments later this process runs the new binary, which emits
    /// [`Event::Upgraded`].
    ///
    /// # Errors
    ///
    /// [`Error::Upgrade`] naming why, and the master goes on as before:
    /// the pre-flight failed (its output is quoted), proxy mode (the master
    /// relays every connection, which an exec would cut), the cluster is
    /// stopping or did not settle, another cluster runs in this process
    /// (the exec would end it), the exec failed.
    /// [`Error::NotRunning`].
    pub async fn upgrade(&self) -> Result<()> {
        self.ask(|reply| Control::Upgrade { reply }).await
    }

    /// How many master upgrades in place this cluster has been through.
    pub fn upgrades(&self) -> u32 {
        self.snapshot.borrow().upgrades
    }

    /// Hands a duplicate of `fd` to the next master at an upgrade, under
    /// `key`, where [`Handle::take_carried`] finds it: a socket the program
    /// serves besides the cluster's (an admin or metrics listener), which
    /// then never closes. [`crate::control::serve`] carries its socket.
    ///
    /// # Errors
    ///
    /// The fd cannot be duplicated.
    pub fn carry(&self, key: &str, fd: impl std::os::fd::AsFd) -> std::io::Result<()> {
        self.shared
            .carried
            .carry(key, fd.as_fd().try_clone_to_owned()?);
        Ok(())
    }

    /// The fd the previous master carried under `key`, in a master started
    /// by an upgrade (once; None otherwise).
    pub fn take_carried(&self, key: &str) -> Option<OwnedFd> {
        self.shared.carried.take(key)
    }

    /// The cluster's name ([`Builder::name`]).
    pub fn name(&self) -> Option<&str> {
        self.shared.log.name()
    }

    /// The bound listening addresses.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_program_is_named() {
        let err = Cluster::builder()
            .command("surely-no-such-program-herd")
            .workers(1)
            .build()
            .unwrap_err();
        assert!(matches!(err, Error::ProgramNotFound { .. }), "{err:?}");
        assert!(err.to_string().contains("surely-no-such-program-herd"));
        let err = Cluster::builder()
            .command("./nope/server")
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("./nope/server"), "{err}");
    }

    #[test]
    fn a_non_executable_program_is_named() {
        let path = std::env::temp_dir().join(format!("herd-unit-noexec-{}", std::process::id()));
        std::fs::write(&path, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(
            &path,
            <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o644),
        )
        .unwrap();
        let err = Cluster::builder()
            .command(&path)
            .workers(1)
            .build()
            .unwrap_err();
        let _ = std::fs::remove_file(&path);
        assert!(matches!(err, Error::ProgramNotExecutable { .. }), "{err:?}");
        assert!(err.to_string().contains(&path.display().to_string()));
    }

    #[test]
    fn no_address_is_refused_unless_asked_for() {
        let err = Cluster::builder()
            .command("true")
            .workers(1)
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("Builder::listen"), "{err}");
        let cluster = Cluster::builder()
            .command("true")
            .workers(1)
            .without_sockets()
            .build()
            .unwrap();
        assert!(cluster.local_addrs().is_empty());
        let err = Cluster::builder()
            .command("true")
            .listen("127.0.0.1:0".parse().unwrap())
            .without_sockets()
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("without_sockets"), "{err}");
    }

    #[test]
    fn supervision_default_and_new_agree() {
        assert_eq!(Supervision::default(), Supervision::new());
    }

    #[test]
    fn zero_workers_and_uncatchable_stop_signals_are_refused() {
        let err = Cluster::builder().command("true").workers(0).build();
        assert!(matches!(err, Err(Error::ZeroWorkers)));
        let err = Cluster::builder()
            .command("true")
            .stop_signal(Signal::KILL)
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("SIGKILL"), "{err}");
    }
}
