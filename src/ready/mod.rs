//! How the master learns that a worker is ready to serve.
//!
//! One mechanism per file: `notify` is the systemd `NOTIFY_SOCKET`
//! protocol (`READY=1`, `WATCHDOG=1`, `STATUS=...`, `STOPPING=1`), with the
//! sender's pid checked through `SO_PASSCRED`; `ipc` is Node's IPC channel
//! (`process.send('ready')`, PM2's `wait_ready` contract) for Node apps
//! run without the preload; `pipe` is the line the preload writes for Node
//! apps, wherever in the worker's process tree the app runs. A fixed delay
//! and "none" need no mechanism.

pub(crate) mod ipc;
pub(crate) mod notify;
pub(crate) mod pipe;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use nix::unistd::Pid;

use crate::error::{Error, Result};

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
            Readiness::Delay(d) => write!(f, "delay:{}", crate::event::Millis(*d)),
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

/// Parses `250ms`, `2s`, `1m`, `1.5s`, `2m5s`: the durations herd prints.
pub(crate) fn parse_duration(text: &str) -> Option<Duration> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    let mut secs = 0.0;
    while !rest.is_empty() {
        let split = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let (number, tail) = rest.split_at(split);
        let n: f64 = number.parse().ok()?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        secs += match unit {
            "ms" => n / 1000.0,
            "s" => n,
            "m" => n * 60.0,
            _ => return None,
        };
        rest = next;
    }
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

/// Reads `source` line by line (each cut at `max` bytes) until EOF, an
/// error, or `on_line` returns false.
pub(crate) async fn for_each_line<R>(source: R, max: usize, mut on_line: impl FnMut(&str) -> bool)
where
    R: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};
    let mut lines = tokio::io::BufReader::new(source);
    let mut line = String::new();
    loop {
        line.clear();
        match (&mut lines).take(max as u64).read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                if !on_line(&line) {
                    return;
                }
            }
        }
    }
}

/// What a worker told the master about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Note {
    /// It serves now.
    Ready(Pid),
    /// A watchdog ping.
    Watchdog(Pid),
    /// It began to stop on its own.
    Stopping(Pid),
    /// A free-form status line.
    Status(Pid, String),
    /// The worker's app runs in this process of its tree (the preload
    /// said so): the stop signal goes there.
    Serving {
        /// The worker's main process.
        worker: Pid,
        /// The process that took the sockets.
        app: Pid,
    },
}

/// Turns one sd_notify datagram into notes (it may carry several fields).
pub(crate) fn parse_notify(pid: Pid, datagram: &[u8]) -> Vec<Note> {
    let text = String::from_utf8_lossy(datagram);
    text.lines()
        .filter_map(|line| match line.split_once('=') {
            Some(("READY", "1")) => Some(Note::Ready(pid)),
            Some(("WATCHDOG", "1")) => Some(Note::Watchdog(pid)),
            Some(("STOPPING", "1")) => Some(Note::Stopping(pid)),
            Some(("STATUS", s)) => Some(Note::Status(pid, s.to_owned())),
            _ => None,
        })
        .collect()
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
        for bad in ["later", "delay:", "delay:soon", "delay:5h"] {
            let e = bad.parse::<Readiness>().unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn notify_datagrams_carry_several_fields() {
        let p = Pid::from_raw(9);
        assert_eq!(
            parse_notify(p, b"READY=1\nSTATUS=warming up\nMAINPID=9\nWATCHDOG=1"),
            vec![
                Note::Ready(p),
                Note::Status(p, "warming up".into()),
                Note::Watchdog(p)
            ]
        );
        assert!(parse_notify(p, b"READY=0\n").is_empty());
    }
}
