//! [`Builder::build`]: every setting checked, each by a named check, the
//! loop's configuration made once, and the sockets bound (or taken over
//! from a previous master).

use std::time::Duration;

use nix::sys::signal::Signal as NixSignal;

use crate::types::{Error, Result, Signal};

use crate::net::{default_backlog, Balance, Bound, Listeners, Source};
use crate::process::command::{prepare_command, Command};
use crate::proxy::ProxyConfig;
use crate::ready::Readiness;
use crate::supervisor::{Config, WorkerUser};

use super::{Builder, Cluster};

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

impl Builder {
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
        let workers = match self.workers {
            Some(0) => return Err(Error::ZeroWorkers),
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        self.supervision.validate()?;
        self.check_name()?;
        self.check_durations()?;
        self.check_worker_count(workers)?;
        self.check_addresses()?;
        self.check_stop_signal()?;
        self.check_timeouts()?;
        self.check_mode_settings()?;
        self.check_recycling()?;
        let worker_user = resolve_user(self.user.as_deref(), self.group.as_deref())?;
        // Workers of another user read the preload from a directory they
        // may enter.
        let preload = self.node_preload.then_some(worker_user.is_some());
        let command = prepare_command(&self.command, preload)?;
        self.check_readiness(&command)?;
        let mut config = self.config(command, workers, worker_user);
        self.check_sockets()?;
        let backlog = self.backlog.unwrap_or_else(default_backlog);
        if backlog == 0 {
            return Err(Error::InvalidSetting {
                setting: "backlog",
                reason: "must be at least 1".into(),
            });
        }
        match inherited {
            Some(crate::upgrade::Inherited::Check(state)) => {
                // The pre-flight of an upgrade: run() says whether this
                // binary would take over, and starts nothing.
                self.check_upgrade()?;
                state.compatible(self.balance)?;
                let listeners = Listeners::bind(Vec::new(), self.balance, 1, backlog)?;
                return Ok(Cluster::new(config, listeners, None).preflight());
            }
            Some(crate::upgrade::Inherited::Adopt(state)) => {
                self.check_upgrade()?;
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

    /// A name prefixes every log line: letters, digits, `-`, `_`, `.`.
    fn check_name(&self) -> Result<()> {
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
        Ok(())
    }

    /// Deadlines are `now + setting`: none may be longer than a year.
    fn check_durations(&self) -> Result<()> {
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
        Ok(())
    }

    /// Reuseport mode steers between a bounded number of slots, and the
    /// master needs file descriptors for every worker.
    fn check_worker_count(&self, workers: usize) -> Result<()> {
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
        Ok(())
    }

    /// A connection limit of at least one, and no address listed twice.
    fn check_addresses(&self) -> Result<()> {
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
        Ok(())
    }

    /// A stop signal that a worker can catch and that stops it.
    fn check_stop_signal(&self) -> Result<()> {
        check_stop_signal(self.stop_signal)
    }

    /// The start timeout and the watchdog are longer than zero.
    fn check_timeouts(&self) -> Result<()> {
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
        Ok(())
    }

    /// Settings of proxy mode and of http mode only with that mode, and
    /// the PORT contract with one address.
    fn check_mode_settings(&self) -> Result<()> {
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
        Ok(())
    }

    /// Memory and request limits that sampling can enforce, and a
    /// reload that replaces at least one slot at a time.
    fn check_recycling(&self) -> Result<()> {
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
        Ok(())
    }

    /// `wait-ready` needs Node, `listen` readiness the preload.
    fn check_readiness(&self, command: &Command) -> Result<()> {
        let program = self.command.program.clone();
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
        Ok(())
    }

    /// A binary started to take over a running cluster must have opted in.
    fn check_upgrade(&self) -> Result<()> {
        if self.upgrade_in_place {
            return Ok(());
        }
        Err(Error::Upgrade {
            reason: "this program was started to take over a running cluster, and its builder \
                     does not allow upgrades in place (Builder::upgrade_in_place)"
                .into(),
        })
    }

    /// Addresses to listen on, unless the workers serve nothing.
    fn check_sockets(&self) -> Result<()> {
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
        Ok(())
    }

    /// The loop's configuration, made once from checked settings.
    fn config(&self, command: Command, workers: usize, user: Option<WorkerUser>) -> Config {
        Config {
            command,
            node_preload: self.node_preload,
            workers,
            supervision: self.supervision,
            drain_timeout: self.drain_timeout,
            stop_signal: self.stop_signal.to_nix(),
            kill_mode: self.kill_mode,
            settle: (!self.settle.is_zero()).then_some(self.settle),
            handle_signals: self.handle_signals,
            upgrade_in_place: self.upgrade_in_place,
            name: self.name.clone(),
            log_events: self.log_events,
            forward_output: self.forward_output,
            readiness: self.readiness,
            start_timeout: self.start_timeout,
            serve_on_start_timeout: self.serve_on_start_timeout,
            line_stamp: self.line_stamp.clone(),
            watchdog: self.watchdog,
            reload_parallel: self.reload_parallel,
            sample_interval: (!self.sample_interval.is_zero()).then_some(self.sample_interval),
            max_memory: self.max_memory,
            max_requests: self.max_requests,
            service_notify: self.service_notify,
            pre_stop_delay: (!self.pre_stop_delay.is_zero()).then_some(self.pre_stop_delay),
            user,
            proxy: self.proxy_config(),
            port_contract: self.port_contract,
            max_connections: self.max_connections,
            trusted_proxies: self.trusted_proxies.clone(),
        }
    }

    /// What proxy and http mode's accept loops share, from the checked
    /// settings; None in the other modes.
    fn proxy_config(&self) -> Option<ProxyConfig> {
        let strategy = self.balance.strategy()?;
        Some(ProxyConfig {
            strategy,
            header: self.proxy_header,
            splice: self.proxy_splice,
            idle_timeout: (!self.proxy_idle_timeout.is_zero()).then_some(self.proxy_idle_timeout),
            http: self.balance.is_http(),
            sticky: self.sticky_cookie,
            header_timeout: self
                .header_timeout
                .unwrap_or(crate::proxy::DEFAULT_HEADER_TIMEOUT),
            response_timeout: self
                .response_timeout
                .unwrap_or(crate::proxy::DEFAULT_RESPONSE_TIMEOUT),
        })
    }
}

/// A stop signal that a worker can catch and that stops it.
pub(super) fn check_stop_signal(signal: Signal) -> Result<()> {
    if IGNORED_BY_DEFAULT.contains(&signal.to_nix()) {
        return Err(Error::InvalidSetting {
            setting: "stop-signal",
            reason: format!(
                "{} does nothing to a program that does not handle it, so it could not stop \
                 a worker",
                signal.name()
            ),
        });
    }
    if signal == Signal::KILL || signal == Signal::STOP {
        return Err(Error::InvalidSetting {
            setting: "stop-signal",
            reason: format!(
                "{} cannot be caught, so a worker could not drain",
                signal.name()
            ),
        });
    }
    Ok(())
}
