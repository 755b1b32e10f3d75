//! Settings a running cluster takes without replacing a worker:
//! [`Handle::update`](crate::Handle::update).

use std::time::Duration;

use crate::supervisor::policy::Supervision;
use crate::types::{Error, KillMode, Result, Signal};

/// Settings for a running cluster, each replacing the builder's from now
/// on: what the next stop, restart, start or sample does. Workers that run
/// are left alone. Made with [`Update::new`] and its setters.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct Update {
    pub(crate) drain_timeout: Option<Duration>,
    pub(crate) stop_signal: Option<Signal>,
    pub(crate) kill_mode: Option<KillMode>,
    pub(crate) supervision: Option<Supervision>,
    pub(crate) start_timeout: Option<Duration>,
    pub(crate) serve_on_start_timeout: Option<bool>,
    pub(crate) max_memory: Option<Option<u64>>,
    pub(crate) max_requests: Option<Option<u64>>,
    pub(crate) reload_parallel: Option<usize>,
    pub(crate) pre_stop_delay: Option<Duration>,
    pub(crate) settle: Option<Duration>,
}

impl Update {
    /// Nothing changed yet.
    pub fn new() -> Update {
        Update::default()
    }

    /// As [`Builder::drain_timeout`](crate::Builder::drain_timeout).
    #[must_use = "a setter returns the changed update"]
    pub fn drain_timeout(mut self, d: Duration) -> Self {
        self.drain_timeout = Some(d);
        self
    }

    /// As [`Builder::stop_signal`](crate::Builder::stop_signal).
    #[must_use = "a setter returns the changed update"]
    pub fn stop_signal(mut self, s: Signal) -> Self {
        self.stop_signal = Some(s);
        self
    }

    /// As [`Builder::kill_mode`](crate::Builder::kill_mode).
    #[must_use = "a setter returns the changed update"]
    pub fn kill_mode(mut self, m: KillMode) -> Self {
        self.kill_mode = Some(m);
        self
    }

    /// The restart policy, backoff, crash-loop limit and minimum uptime,
    /// as [`Builder::restart_policy`](crate::Builder::restart_policy),
    /// [`Builder::backoff`](crate::Builder::backoff),
    /// [`Builder::crash_loop`](crate::Builder::crash_loop) and
    /// [`Builder::min_uptime`](crate::Builder::min_uptime) set them.
    #[must_use = "a setter returns the changed update"]
    pub fn supervision(mut self, s: Supervision) -> Self {
        self.supervision = Some(s);
        self
    }

    /// As [`Builder::start_timeout`](crate::Builder::start_timeout).
    #[must_use = "a setter returns the changed update"]
    pub fn start_timeout(mut self, d: Duration) -> Self {
        self.start_timeout = Some(d);
        self
    }

    /// As [`Builder::serve_on_start_timeout`](crate::Builder::serve_on_start_timeout).
    #[must_use = "a setter returns the changed update"]
    pub fn serve_on_start_timeout(mut self, serve: bool) -> Self {
        self.serve_on_start_timeout = Some(serve);
        self
    }

    /// As [`Builder::max_memory`](crate::Builder::max_memory); None lifts it.
    #[must_use = "a setter returns the changed update"]
    pub fn max_memory(mut self, bytes: Option<u64>) -> Self {
        self.max_memory = Some(bytes);
        self
    }

    /// As [`Builder::max_requests`](crate::Builder::max_requests) (HTTP
    /// mode); None lifts it.
    #[must_use = "a setter returns the changed update"]
    pub fn max_requests(mut self, n: Option<u64>) -> Self {
        self.max_requests = Some(n);
        self
    }

    /// As [`Builder::reload_parallel`](crate::Builder::reload_parallel).
    #[must_use = "a setter returns the changed update"]
    pub fn reload_parallel(mut self, n: usize) -> Self {
        self.reload_parallel = Some(n);
        self
    }

    /// As [`Builder::pre_stop_delay`](crate::Builder::pre_stop_delay).
    #[must_use = "a setter returns the changed update"]
    pub fn pre_stop_delay(mut self, d: Duration) -> Self {
        self.pre_stop_delay = Some(d);
        self
    }

    /// As [`Builder::settle`](crate::Builder::settle).
    #[must_use = "a setter returns the changed update"]
    pub fn settle(mut self, d: Duration) -> Self {
        self.settle = Some(d);
        self
    }

    /// The checks [`Builder::build`](crate::Builder::build) makes of the
    /// same settings.
    pub(crate) fn check(&self, http: bool) -> Result<()> {
        let bad = |setting: &'static str, reason: &str| {
            Err(Error::InvalidSetting {
                setting,
                reason: reason.to_owned(),
            })
        };
        if let Some(s) = self.stop_signal {
            super::validate::check_stop_signal(s)?;
        }
        if self.start_timeout.is_some_and(|d| d.is_zero()) {
            return bad("start-timeout", "must be longer than zero");
        }
        if self.reload_parallel == Some(0) {
            return bad("reload-parallel", "at least one slot at a time");
        }
        if matches!(self.max_requests, Some(Some(_))) && !http {
            return bad(
                "max-requests",
                "needs --balance http (only HTTP mode counts requests)",
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_update_is_checked_as_the_builder_checks_the_same_settings() {
        assert!(Update::new()
            .drain_timeout(Duration::from_secs(5))
            .check(false)
            .is_ok());
        let refused = |u: Update, http: bool| match u.check(http) {
            Err(Error::InvalidSetting { setting, .. }) => setting,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            refused(Update::new().stop_signal(Signal::KILL), false),
            "stop-signal"
        );
        assert_eq!(
            refused(Update::new().start_timeout(Duration::ZERO), false),
            "start-timeout"
        );
        assert_eq!(
            refused(Update::new().reload_parallel(0), false),
            "reload-parallel"
        );
        assert_eq!(
            refused(Update::new().max_requests(Some(10)), false),
            "max-requests"
        );
        assert!(Update::new().max_requests(Some(10)).check(true).is_ok());
        assert!(Update::new().max_requests(None).check(false).is_ok());
    }
}
