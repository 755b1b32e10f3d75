//! The loop's input: everything it needs, validated by the builder.

use std::ffi::OsString;
use std::time::Duration;

use nix::sys::signal::Signal as NixSignal;

use super::policy::Supervision;
use crate::process::command::Command;
use crate::proxy::ProxyConfig;
use crate::types::{KillMode, Readiness};

/// Everything the event loop needs, validated.
#[derive(Debug)]
pub(crate) struct Config {
    /// What each new worker runs; [`Handle::set_command`] replaces it.
    pub(crate) command: Command,
    /// Whether Node programs get the preload.
    pub(crate) node_preload: bool,
    pub(crate) workers: usize,
    pub(crate) supervision: Supervision,
    pub(crate) drain_timeout: Duration,
    pub(crate) stop_signal: NixSignal,
    pub(crate) kill_mode: KillMode,
    pub(crate) settle: Option<Duration>,
    pub(crate) handle_signals: bool,
    /// The program opted in to upgrades in place.
    pub(crate) upgrade_in_place: bool,
    pub(crate) name: Option<String>,
    pub(crate) log_events: bool,
    pub(crate) forward_output: bool,
    pub(crate) readiness: Readiness,
    pub(crate) start_timeout: Duration,
    /// A worker not ready within `start_timeout` is taken as ready.
    pub(crate) serve_on_start_timeout: bool,
    /// What starts every line the master writes.
    pub(crate) line_stamp: Option<crate::observe::writer::Stamp>,
    pub(crate) watchdog: Option<Duration>,
    /// The user workers run as, if not the master's.
    pub(crate) user: Option<WorkerUser>,
    /// A graceful stop waits this long, not ready, before workers stop.
    pub(crate) pre_stop_delay: Option<Duration>,
    /// Whether the master reports to its own service manager.
    pub(crate) service_notify: bool,
    /// How often workers' CPU and memory are read (None: never).
    pub(crate) sample_interval: Option<Duration>,
    /// Replace a worker that stays over this many bytes.
    pub(crate) max_memory: Option<u64>,
    pub(crate) max_requests: Option<u64>,
    pub(crate) reload_parallel: usize,
    /// Proxy and http mode: what every accept loop shares, made once by
    /// the builder (None in the other modes).
    pub(crate) proxy: Option<ProxyConfig>,
    /// Proxy mode: workers bind `PORT` themselves.
    pub(crate) port_contract: bool,
    /// Proxy mode: the most client connections at once (None: derived from
    /// the fd limit).
    pub(crate) max_connections: Option<usize>,
    /// HTTP mode: peers whose X-Forwarded-* headers are kept.
    pub(crate) trusted_proxies: Vec<crate::Cidr>,
}

impl super::Supervisor {
    /// Takes new settings from now on (checked by the handle).
    pub(super) fn update(&mut self, u: crate::cluster::Update) -> crate::Result<()> {
        let c = &mut self.config;
        if let Some(d) = u.drain_timeout {
            c.drain_timeout = d;
        }
        if let Some(s) = u.stop_signal {
            c.stop_signal = s.to_nix();
        }
        if let Some(m) = u.kill_mode {
            c.kill_mode = m;
        }
        if let Some(s) = u.supervision {
            c.supervision = s;
        }
        if let Some(d) = u.start_timeout {
            c.start_timeout = d;
        }
        if let Some(b) = u.serve_on_start_timeout {
            c.serve_on_start_timeout = b;
        }
        if let Some(m) = u.max_memory {
            c.max_memory = m;
        }
        if let Some(r) = u.max_requests {
            c.max_requests = r;
        }
        if let Some(n) = u.reload_parallel {
            c.reload_parallel = n;
        }
        if let Some(d) = u.pre_stop_delay {
            c.pre_stop_delay = (!d.is_zero()).then_some(d);
        }
        if let Some(d) = u.settle {
            c.settle = (!d.is_zero()).then_some(d);
        }
        Ok(())
    }
}

/// A user to run workers as, resolved.
#[derive(Debug, Clone)]
pub(crate) struct WorkerUser {
    pub(crate) credentials: crate::process::spawn::Credentials,
    /// HOME, USER and LOGNAME for the workers.
    pub(crate) env: Vec<(OsString, OsString)>,
}
