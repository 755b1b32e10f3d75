//! How the master decides that a worker serves.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use super::duration::{parse_duration, Millis};
use super::error::{Error, Result};

/// Default time a worker gets to report readiness.
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(30);

/// How a cluster decides that a new worker serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Readiness {
    /// [`Readiness::Listen`] when the program is Node (directly or through
    /// a launcher such as npm, npx, tsx or a `#!/usr/bin/env node` script)
    /// and the preload is on, else [`Readiness::None`] (with the settle
    /// window for a reload's successors).
    #[default]
    Auto,
    /// Ready as soon as it exec'd. A restarted worker's queue still waits
    /// on the slot socket, so nothing is lost, but a reload stops the
    /// predecessor before the successor has opened its sockets.
    None,
    /// Ready after a fixed delay: the last resort for programs that can't
    /// say so.
    Delay(Duration),
    /// `sd_notify(READY=1)` on `NOTIFY_SOCKET`.
    Notify,
    /// The app calls `process.send('ready')` (PM2's `wait_ready`): with
    /// the preload, wherever the app runs in the worker's tree; without
    /// it, on Node's IPC channel (`NODE_CHANNEL_FD`).
    Ipc,
    /// The Node preload reports readiness once the app listens on every
    /// socket herd passed.
    Listen,
    /// A TCP connect to the worker's port succeeds: for proxy mode's PORT
    /// contract, where the worker binds the port itself.
    Probe,
}

impl fmt::Display for Readiness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Readiness::Auto => f.write_str("auto"),
            Readiness::None => f.write_str("none"),
            Readiness::Delay(d) => write!(f, "delay:{}", Millis(*d)),
            Readiness::Notify => f.write_str("notify"),
            Readiness::Ipc => f.write_str("ipc"),
            Readiness::Listen => f.write_str("listen"),
            Readiness::Probe => f.write_str("probe"),
        }
    }
}

impl FromStr for Readiness {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let err = |reason: String| Error::Parse {
            what: "readiness",
            input: s.to_owned(),
            reason,
        };
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Readiness::Auto),
            "none" => Ok(Readiness::None),
            "notify" | "sd_notify" => Ok(Readiness::Notify),
            "ipc" | "wait-ready" => Ok(Readiness::Ipc),
            "listen" => Ok(Readiness::Listen),
            "probe" => Ok(Readiness::Probe),
            other => match other.strip_prefix("delay:") {
                Some(d) => parse_duration(d)
                    .map(Readiness::Delay)
                    .ok_or_else(|| err("expected a delay like delay:500ms or delay:2s".into())),
                None => Err(err(
                    "expected one of: auto, none, notify, ipc, listen, probe, delay:<duration>"
                        .into(),
                )),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_round_trips_through_text() {
        for r in [
            Readiness::Auto,
            Readiness::None,
            Readiness::Notify,
            Readiness::Ipc,
            Readiness::Listen,
            Readiness::Probe,
            Readiness::Delay(Duration::from_millis(1500)),
            Readiness::Delay(Duration::from_secs(125)),
        ] {
            assert_eq!(r.to_string().parse::<Readiness>().unwrap(), r);
        }
        assert_eq!(
            "delay:250ms".parse::<Readiness>().unwrap(),
            Readiness::Delay(Duration::from_millis(250))
        );
        for bad in ["later", "delay:", "delay:soon", "delay:5d"] {
            let e = bad.parse::<Readiness>().unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
    }
}
