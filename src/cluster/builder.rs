//! [`Builder`]: what the operator or the program chooses, one setter each.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::types::{KillMode, Signal, DEFAULT_RELOAD_PARALLEL};

use crate::net::{Balance, Source};
pub use crate::process::command::WorkerCommand;
use crate::proxy::ProxyProtocol;
use crate::ready::{Readiness, DEFAULT_START_TIMEOUT};
use crate::supervisor::policy::{Backoff, CrashLoop, RestartPolicy, Supervision};

use super::{DEFAULT_DRAIN_TIMEOUT, DEFAULT_SAMPLE_INTERVAL, DEFAULT_SETTLE, DEFAULT_STOP_SIGNAL};

/// Configures a [`Cluster`](crate::Cluster); [`Builder::build`] validates everything and
/// binds the listening sockets.
#[derive(Debug, Clone)]
pub struct Builder {
    /// The program is empty until [`Builder::command`] names one.
    pub(super) command: WorkerCommand,
    pub(super) workers: Option<usize>,
    pub(super) listen: Vec<Source>,
    /// No address on purpose: workers that serve no socket.
    pub(super) without_sockets: bool,
    pub(super) balance: Balance,
    pub(super) backlog: Option<u32>,
    pub(super) supervision: Supervision,
    pub(super) drain_timeout: Duration,
    pub(super) stop_signal: Signal,
    pub(super) kill_mode: KillMode,
    pub(super) settle: Duration,
    pub(super) handle_signals: bool,
    pub(super) upgrade_in_place: bool,
    pub(super) name: Option<String>,
    pub(super) log_events: bool,
    pub(super) forward_output: bool,
    pub(super) readiness: Readiness,
    pub(super) start_timeout: Duration,
    pub(super) line_stamp: Option<crate::observe::writer::Stamp>,
    pub(super) serve_on_start_timeout: bool,
    pub(super) watchdog: Option<Duration>,
    pub(super) reload_parallel: usize,
    pub(super) sample_interval: Duration,
    pub(super) max_memory: Option<u64>,
    pub(super) max_requests: Option<u64>,
    pub(super) service_notify: bool,
    pub(super) pre_stop_delay: Duration,
    pub(super) user: Option<String>,
    pub(super) group: Option<String>,
    pub(super) node_preload: bool,
    pub(super) proxy_header: Option<ProxyProtocol>,
    pub(super) port_contract: bool,
    pub(super) proxy_splice: bool,
    pub(super) max_connections: Option<usize>,
    pub(super) proxy_idle_timeout: Duration,
    pub(super) sticky_cookie: bool,
    pub(super) trusted_proxies: Vec<crate::Cidr>,
    pub(super) header_timeout: Option<Duration>,
    pub(super) response_timeout: Option<Duration>,
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
            handle_signals: false,
            upgrade_in_place: false,
            name: None,
            log_events: true,
            forward_output: true,
            readiness: Readiness::Auto,
            start_timeout: DEFAULT_START_TIMEOUT,
            line_stamp: None,
            serve_on_start_timeout: false,
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
    /// choose ([`Cluster::local_addrs`](crate::Cluster::local_addrs) tells which).
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
    /// else with [`Error::BadListener`](crate::Error::BadListener).
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

    /// Whether `run()` handles SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGTTIN and
    /// SIGTTOU sent to the process, and SIGUSR2 with
    /// [`Builder::upgrade_in_place`] (default false: a library takes no
    /// process-wide signal unless asked; the `cluster` example turns it
    /// on). SIGTERM and SIGINT stop gracefully (a second SIGINT kills),
    /// SIGQUIT kills at once, SIGHUP starts a rolling reload (as
    /// [`Handle::reload`](crate::Handle::reload)), SIGTTIN and SIGTTOU scale
    /// by one (as [`Handle::scale_by`](crate::Handle::scale_by)), SIGUSR2
    /// upgrades the master in place (as
    /// [`Handle::upgrade`](crate::Handle::upgrade)). Leave it off when the
    /// program handles signals itself and calls the handle's methods.
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

    /// Whether the master may replace its own binary in place (default
    /// false): [`Handle::upgrade`](crate::Handle::upgrade), and SIGUSR2 with
    /// [`Builder::handle_signals`], re-execute this program in the same
    /// process, which keeps the sockets and workers. That replaces the
    /// whole embedding program, so it is the program's choice: it must be
    /// ready to be started again with the same arguments, and to pass the
    /// pre-flight (see [`crate::upgrade_preflight`]). The `cluster`
    /// example turns it on.
    #[must_use = "a builder method returns the changed builder"]
    pub fn upgrade_in_place(mut self, on: bool) -> Self {
        self.upgrade_in_place = on;
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
    /// same events still reach [`Handle::events`](crate::Handle::events), so a program can route
    /// them where it likes (see [`Event::to_json`](crate::Event::to_json)).
    #[must_use = "a builder method returns the changed builder"]
    pub fn log_events(mut self, on: bool) -> Self {
        self.log_events = on;
        self
    }

    /// Whether worker output is written to the master's stdout and stderr
    /// with a `[slot N pid P]` prefix (default true). Off, it is still read
    /// (so workers never block on a full pipe), its last lines still go
    /// into crash and reload reports, and [`Handle::output`](crate::Handle::output) still
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

    /// Starts every line the master writes to its stdout and stderr (its
    /// own and the workers' it forwards) with what `stamp` returns, and a
    /// space: a timestamp in the format and zone of your choice. It is
    /// process-wide, as the master's output is: the last cluster to run
    /// with one sets it.
    #[must_use = "a builder method returns the changed builder"]
    pub fn line_stamp(mut self, stamp: impl Fn() -> String + Send + Sync + 'static) -> Self {
        self.line_stamp = Some(crate::observe::writer::Stamp(std::sync::Arc::new(stamp)));
        self
    }

    /// What a new worker that misses [`Builder::start_timeout`] gets.
    /// `false` (the default): it is killed (and restarted, or its reload
    /// aborted); a Node worker that listens but never calls
    /// `process.send('ready')` ([`Readiness::Ipc`]) fails its slot at once
    /// with a [`Notice::NeverReady`](crate::Notice::NeverReady) naming the
    /// call, since a restart would only repeat it. `true`: it is taken as
    /// ready and serves, with a [`Notice::ReadyAssumed`](crate::Notice::ReadyAssumed)
    /// warning: PM2's `listen_timeout` after `wait_ready`.
    #[must_use = "a builder method returns the changed builder"]
    pub fn serve_on_start_timeout(mut self, serve: bool) -> Self {
        self.serve_on_start_timeout = serve;
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
    /// ([`Phase::Stopping`](crate::Phase::Stopping), `/readyz` 503) while the workers go on
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
    /// its cgroup, else `/proc`), for [`Handle::workers`](crate::Handle::workers) and
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
    /// wait in the listen queue; [`Handle::proxy_stats`](crate::Handle::proxy_stats) counts it.
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
}
