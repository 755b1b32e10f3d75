//! Limits and counts both planes share: the connection limit and its
//! admission, and what the limits, timeouts and workers' errors did.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::trim;

/// Proxy mode's limits and how often they bit, shared by the accept loops
/// and handles.
#[derive(Debug)]
pub(crate) struct Counters {
    /// The most connections open at once.
    pub(crate) limit: std::sync::atomic::AtomicUsize,
    /// Times a new connection had to wait because the limit was reached.
    pub(crate) at_limit: AtomicU64,
    /// Connections closed for being idle.
    pub(crate) idle_closed: AtomicU64,
    /// HTTP mode: the master's own 4xx, 502, 503 and 504 answers.
    pub(crate) bad_request: AtomicU64,
    pub(crate) bad_gateway: AtomicU64,
    pub(crate) unavailable: AtomicU64,
    pub(crate) gateway_timeout: AtomicU64,
    /// HTTP mode: responses a worker sent with no request outstanding.
    pub(crate) worker_protocol_errors: AtomicU64,
    throttle: Mutex<crate::observe::throttle::LogThrottle>,
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    error_throttle: Mutex<crate::observe::throttle::LogThrottle>,
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    protocol_throttle: Mutex<crate::observe::throttle::LogThrottle>,
    /// Open client connections, for giving a burst's memory back.
    trim: Arc<trim::Trim>,
    log: crate::observe::log::Log,
}

/// The connections the master forwards to one worker now (see
/// [`crate::Handle::proxied_connections`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct Proxied {
    /// The worker's slot.
    pub slot: usize,
    /// The worker's pid.
    pub pid: u32,
    /// Connections open to it (in HTTP mode: requests in flight).
    pub open: u32,
    /// Connections (in HTTP mode: requests) sent to it so far.
    pub requests: u64,
}

/// What proxy mode's limits did (see [`crate::Handle::proxy_stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct ProxyStats {
    /// The most client connections open at once (`--max-connections`).
    pub limit: usize,
    /// Times a new client had to wait in the listen queue because the
    /// limit was reached.
    pub limit_reached: u64,
    /// Client connections closed because nothing moved for the idle
    /// timeout.
    pub idle_closed: u64,
    /// HTTP mode: requests the master refused itself (`400` malformed or
    /// ambiguous, `501` an unknown transfer coding, `408` a body that
    /// stopped coming, `431` head too large, `405` CONNECT).
    pub bad_request: u64,
    /// HTTP mode: requests the master answered `502 Bad Gateway` (the
    /// worker failed and the request could not be sent again).
    pub bad_gateway: u64,
    /// HTTP mode: requests answered `503` (no ready worker in time).
    pub unavailable: u64,
    /// HTTP mode: requests answered `504` (no response head in time).
    pub gateway_timeout: u64,
    /// HTTP mode: responses a worker sent with no request outstanding
    /// (on an idle pooled connection, or after its answer); each closed
    /// that connection and was reported as a
    /// [`crate::Notice::WorkerProtocolError`].
    pub worker_protocol_errors: u64,
}

impl Counters {
    pub(crate) fn new(log: crate::observe::log::Log) -> Counters {
        Counters {
            limit: Default::default(),
            at_limit: Default::default(),
            idle_closed: Default::default(),
            bad_request: Default::default(),
            bad_gateway: Default::default(),
            unavailable: Default::default(),
            gateway_timeout: Default::default(),
            worker_protocol_errors: Default::default(),
            throttle: Default::default(),
            error_throttle: Default::default(),
            protocol_throttle: Default::default(),
            trim: Default::default(),
            log,
        }
    }

    pub(crate) fn stats(&self) -> ProxyStats {
        ProxyStats {
            limit: self.limit.load(Ordering::Relaxed),
            limit_reached: self.at_limit.load(Ordering::Relaxed),
            idle_closed: self.idle_closed.load(Ordering::Relaxed),
            bad_request: self.bad_request.load(Ordering::Relaxed),
            bad_gateway: self.bad_gateway.load(Ordering::Relaxed),
            unavailable: self.unavailable.load(Ordering::Relaxed),
            gateway_timeout: self.gateway_timeout.load(Ordering::Relaxed),
            worker_protocol_errors: self.worker_protocol_errors.load(Ordering::Relaxed),
        }
    }

    /// HTTP mode: counts an error the master answered itself, and logs
    /// it (one line a second at most).
    #[cfg(feature = "http")]
    pub(crate) fn http_error(&self, status: u16, text: impl FnOnce() -> String) {
        let counter = match status {
            503 => &self.unavailable,
            504 => &self.gateway_timeout,
            400..=499 | 501 => &self.bad_request,
            _ => &self.bad_gateway,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.notice(
            &self.error_throttle,
            None,
            crate::observe::event::Notice::HttpError,
            text,
        );
    }

    /// HTTP mode: counts a response worker `slot` sent with no request
    /// outstanding, and logs it naming the slot (one line a second at
    /// most).
    #[cfg(feature = "http")]
    pub(crate) fn worker_protocol_error(&self, slot: usize, text: impl FnOnce() -> String) {
        self.worker_protocol_errors.fetch_add(1, Ordering::Relaxed);
        let notice = crate::observe::event::Notice::WorkerProtocolError;
        self.notice(&self.protocol_throttle, Some(slot), notice, text);
    }

    fn log(&self, text: impl FnOnce() -> String) {
        self.notice(
            &self.throttle,
            None,
            crate::observe::event::Notice::ConnectionLimit,
            text,
        );
    }

    /// Logs a `notice` (about `slot`, if one) unless `throttle` has let one
    /// through this second.
    fn notice(
        &self,
        throttle: &Mutex<crate::observe::throttle::LogThrottle>,
        slot: Option<usize>,
        notice: crate::observe::event::Notice,
        text: impl FnOnce() -> String,
    ) {
        let line = throttle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .line(std::time::Instant::now(), text);
        if let Some(line) = line {
            self.log.notice(slot, notice, line);
        }
    }
}

/// A permit for one more client connection. At the limit, new clients wait
/// in the listen queue (not reset, and the master keeps the fds it needs to
/// restart workers). None once the limit is gone (the cluster ended).
pub(crate) async fn admit(
    slots: &Arc<tokio::sync::Semaphore>,
    counters: &Counters,
    release: fn(),
) -> Option<Admitted> {
    if slots.available_permits() == 0 {
        counters.at_limit.fetch_add(1, Ordering::Relaxed);
        counters.log(|| {
            format!(
                "proxy: {} connections open, the limit (--max-connections); new ones wait in \
                 the listen queue",
                counters.limit.load(Ordering::Relaxed)
            )
        });
    }
    let permit = slots.clone().acquire_owned().await.ok()?;
    counters.trim.opened();
    Some(Admitted {
        _permit: permit,
        trim: counters.trim.clone(),
        release,
    })
}

/// One client connection's place under the limit; when it goes, the
/// memory of a burst that left is given back (see [`trim`]).
pub(crate) struct Admitted {
    _permit: tokio::sync::OwnedSemaphorePermit,
    trim: Arc<trim::Trim>,
    /// Drops what the plane keeps for reuse, before a trim.
    release: fn(),
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.trim.closed(self.release);
    }
}
