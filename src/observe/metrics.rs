//! Metrics through the `metrics` facade (feature `metrics`): whatever
//! recorder the program installs (a Prometheus exporter, say) gets them.
//! Without the feature every function here is empty.
//!
//! Names follow Prometheus conventions and are labelled by slot, never by
//! pid (a pid label would make a new series at every restart):
//!
//! | name | kind | labels |
//! |---|---|---|
//! | `herd_workers` | gauge | |
//! | `herd_worker_up` | gauge (1 serving, 0 not) | `slot` |
//! | `herd_worker_start_time_seconds` | gauge (Unix time) | `slot` |
//! | `herd_worker_cpu_seconds` | gauge (the current worker's) | `slot` |
//! | `herd_worker_resident_memory_bytes` | gauge | `slot` |
//! | `herd_worker_restarts_total` | counter | `slot`, `reason` (`exit`, `watchdog`, `start_timeout`, `memory`, `requests`) |
//! | `herd_reloads_total` | counter | `result` (`complete`, `aborted`) |
//! | `herd_reload_duration_seconds` | histogram | |
//! | `herd_proxy_connections_active` | gauge | `slot` |
//! | `herd_proxy_connections_total` | counter | `slot` |
//! | `herd_proxy_connect_errors_total` | counter | `slot` |
//! | `herd_http_responses_total` | counter (HTTP mode) | `class` (`2xx` ... `5xx`) |
//! | `herd_http_response_seconds` | histogram (HTTP mode: time to the response head) | |
//! | `process_resident_memory_bytes`, `process_cpu_seconds_total` | the master's own | |
//!
//! The per-slot gauges are set at every sample
//! ([`crate::Builder::sample_interval`]); a removed slot's are set no
//! more, so an exporter with an idle timeout on gauges drops them.

#[cfg(not(feature = "metrics"))]
use std::time::Duration;

#[cfg(feature = "metrics")]
mod on {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use metrics::{counter, gauge, histogram};

    pub(crate) fn workers(n: usize) {
        gauge!("herd_workers").set(n as f64);
    }

    pub(crate) fn worker(
        slot: usize,
        up: bool,
        started_ago: Option<Duration>,
        cpu: Option<Duration>,
        memory: Option<u64>,
    ) {
        let slot = slot.to_string();
        gauge!("herd_worker_up", "slot" => slot.clone()).set(f64::from(u8::from(up)));
        if let Some(ago) = started_ago {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            gauge!("herd_worker_start_time_seconds", "slot" => slot.clone())
                .set(now.saturating_sub(ago).as_secs_f64());
        }
        if let Some(cpu) = cpu {
            gauge!("herd_worker_cpu_seconds", "slot" => slot.clone()).set(cpu.as_secs_f64());
        }
        if let Some(bytes) = memory {
            gauge!("herd_worker_resident_memory_bytes", "slot" => slot).set(bytes as f64);
        }
    }

    pub(crate) fn restart(slot: usize, reason: &'static str) {
        counter!("herd_worker_restarts_total", "slot" => slot.to_string(), "reason" => reason)
            .increment(1);
    }

    pub(crate) fn reload(complete: bool, took: Duration) {
        let result = if complete { "complete" } else { "aborted" };
        counter!("herd_reloads_total", "result" => result).increment(1);
        histogram!("herd_reload_duration_seconds").record(took.as_secs_f64());
    }

    pub(crate) fn proxy(slot: usize, active: u32, total: u64, errors: u64) {
        let slot = slot.to_string();
        gauge!("herd_proxy_connections_active", "slot" => slot.clone()).set(f64::from(active));
        counter!("herd_proxy_connections_total", "slot" => slot.clone()).absolute(total);
        counter!("herd_proxy_connect_errors_total", "slot" => slot).absolute(errors);
    }

    pub(crate) fn master(cpu: Duration, memory: u64) {
        gauge!("process_resident_memory_bytes").set(memory as f64);
        counter!("process_cpu_seconds_total").absolute(cpu.as_secs());
    }

    /// HTTP mode's per-request series, registered once (not per request).
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) struct Http {
        classes: [metrics::Counter; 5],
        latency: metrics::Histogram,
    }

    impl Default for Http {
        fn default() -> Http {
            Http {
                classes: ["1xx", "2xx", "3xx", "4xx", "5xx"]
                    .map(|class| counter!("herd_http_responses_total", "class" => class)),
                latency: histogram!("herd_http_response_seconds"),
            }
        }
    }

    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    impl Http {
        /// A response with `status`, whose head came `took` after the
        /// request's.
        pub(crate) fn record(&self, status: u16, took: Duration) {
            if let Some(c) = (status / 100)
                .checked_sub(1)
                .and_then(|i| self.classes.get(usize::from(i)))
            {
                c.increment(1);
            }
            self.latency.record(took.as_secs_f64());
        }
    }
}

#[cfg(feature = "metrics")]
pub(crate) use on::*;

/// The number of slots asked for.
#[cfg(not(feature = "metrics"))]
pub(crate) fn workers(_n: usize) {}

/// One slot's worker, at a sample.
#[cfg(not(feature = "metrics"))]
pub(crate) fn worker(
    _slot: usize,
    _up: bool,
    _started_ago: Option<Duration>,
    _cpu: Option<Duration>,
    _memory: Option<u64>,
) {
}

/// A slot's worker is restarted, and why.
#[cfg(not(feature = "metrics"))]
pub(crate) fn restart(_slot: usize, _reason: &'static str) {}

/// A reload ended.
#[cfg(not(feature = "metrics"))]
pub(crate) fn reload(_complete: bool, _took: Duration) {}

/// A slot's proxied connections, at a sample.
#[cfg(not(feature = "metrics"))]
pub(crate) fn proxy(_slot: usize, _active: u32, _total: u64, _errors: u64) {}

/// The master's own usage, at a sample.
#[cfg(not(feature = "metrics"))]
pub(crate) fn master(_cpu: Duration, _memory: u64) {}

/// HTTP mode's per-request series (nothing without the feature).
#[cfg(not(feature = "metrics"))]
#[derive(Default)]
#[cfg_attr(not(feature = "http"), allow(dead_code))]
pub(crate) struct Http {
    _none: (),
}

#[cfg(not(feature = "metrics"))]
#[cfg_attr(not(feature = "http"), allow(dead_code))]
impl Http {
    pub(crate) fn record(&self, _status: u16, _took: Duration) {}
}
