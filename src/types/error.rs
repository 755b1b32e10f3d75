//! The one error type of herd.
//!
//! Every variant names what failed (the program, the address, the slot and
//! pid) so that its `Display` reads as a sentence an operator can act on, with
//! the operating system's error as its `source()` where there is one.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong while building or running a cluster.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The builder was given no program to run.
    #[error("no program to run: call Builder::command with the worker program")]
    NoProgram,

    /// The program was not found, neither as a path nor on `PATH`.
    #[error("program `{program}` not found{}", if program.contains('/') { "" } else { " on PATH" })]
    ProgramNotFound {
        /// The program as the user gave it.
        program: String,
    },

    /// The program exists but cannot be executed by this user.
    #[error("program `{}` is not executable", path.display())]
    ProgramNotExecutable {
        /// The resolved path of the program.
        path: PathBuf,
    },

    /// The program path names a directory.
    #[error("program `{}` is a directory, not a program", path.display())]
    ProgramIsDirectory {
        /// The path.
        path: PathBuf,
    },

    /// The worker's working directory does not exist or is not a directory.
    #[error("working directory `{}` is not a directory", path.display())]
    BadWorkingDirectory {
        /// The directory as configured.
        path: PathBuf,
    },

    /// A worker count of zero was asked for.
    #[error("the number of workers must be at least 1, got 0")]
    ZeroWorkers,

    /// A configuration value is out of its range.
    #[error(
        "invalid setting `{setting}` (Builder::{}): {reason}",
        builder_method(setting)
    )]
    InvalidSetting {
        /// The setting's name, as the builder method or CLI flag calls it.
        setting: &'static str,
        /// Why the value was refused.
        reason: String,
    },

    /// An address, balance mode, restart policy or other text did not parse.
    #[error("cannot parse {what} `{input}`: {reason}")]
    Parse {
        /// What kind of value was expected ("balance mode", "address", ...).
        what: &'static str,
        /// The text that was given.
        input: String,
        /// What was expected instead.
        reason: String,
    },

    /// A socket passed to [`crate::Builder::listener`] cannot be used.
    #[error("invalid setting `listener` (Builder::listener): fd {fd} cannot be used: {reason}")]
    BadListener {
        /// The fd as the program passed it.
        fd: i32,
        /// What is wrong with it.
        reason: String,
    },

    /// Another master already serves a control API at this path.
    #[error(
        "another herd master answers on the control socket {}: give this one another --name or --control path",
        path.display()
    )]
    ControlInUse {
        /// The socket's path.
        path: PathBuf,
    },

    /// Another process already listens on the address.
    #[error("address {addr} is already in use")]
    AddressInUse {
        /// The address that could not be bound.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// Creating, binding or listening on a socket failed for another reason.
    #[error("cannot listen on {addr}")]
    Listen {
        /// The address that could not be bound.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// fork, exec or the setup in between failed for one worker.
    #[error("cannot start `{program}` for slot {slot}: {stage}")]
    Spawn {
        /// The program as the user gave it.
        program: String,
        /// The worker slot that was being started.
        slot: usize,
        /// Which step failed (`exec`, `chdir`, `fork`, ...).
        stage: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// Every worker slot exceeded its crash-loop limit; nothing serves.
    #[error("every worker slot failed ({}); giving up", describe_failures(.slots))]
    AllSlotsFailed {
        /// What each failed slot reported.
        slots: Vec<SlotFailure>,
    },

    /// Every worker has exited, none is restarted (the restart policy is
    /// `never` or `on-failure`), and these slots' last workers failed.
    #[error("every worker has exited and none is restarted; failed: {}", describe_exits(.slots))]
    WorkersFailed {
        /// Each failed slot with how its last worker ended.
        slots: Vec<(usize, crate::types::Exit)>,
    },

    /// A slot index out of range.
    #[error("there is no slot {slot}: the cluster has {slots} (0 to {})", slots.saturating_sub(1))]
    NoSuchSlot {
        /// The slot asked for.
        slot: usize,
        /// How many slots there are.
        slots: usize,
    },

    /// The slot has no worker now (it is in backoff, has failed or has
    /// exited).
    #[error("slot {slot} has no worker now")]
    NoWorker {
        /// The slot.
        slot: usize,
    },

    /// The cluster's event loop is gone (the cluster was dropped or stopped).
    #[error("the cluster is not running")]
    NotRunning,

    /// The cluster is in the middle of something that must end first (a
    /// reload runs, removed slots still drain): the same request succeeds
    /// later. A conflict of the moment, not a bad request.
    #[error("cannot {what} now: {reason}")]
    Busy {
        /// What was asked for (`scale`).
        what: &'static str,
        /// What it waits for.
        reason: String,
    },

    /// The master could not be upgraded in place (it keeps running as it
    /// was), or an upgraded master could not take over what it inherited.
    #[error("master upgrade: {reason}")]
    Upgrade {
        /// Why.
        reason: String,
    },

    /// The worker-side API found no inherited sockets or an inconsistent
    /// socket-activation environment.
    #[error("socket activation: {0}")]
    Activation(String),

    /// Any other OS error, with what was being done.
    #[error("{context}")]
    Io {
        /// What herd was doing.
        context: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Why one slot was given up on (an element of [`Error::AllSlotsFailed`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct SlotFailure {
    /// The slot index.
    pub slot: usize,
    /// How many exits tripped the crash-loop limit.
    pub exits: u32,
    /// The window those exits happened in.
    #[cfg_attr(
        feature = "serde",
        serde(
            rename = "window_ms",
            serialize_with = "crate::types::serde_impl::millis",
            deserialize_with = "crate::types::serde_impl::de_millis"
        )
    )]
    pub window: Duration,
    /// How the last worker ended.
    pub last_exit: Option<crate::types::Exit>,
    /// The last worker's last output lines (with the lines that explain a
    /// failure), oldest first: "database is down" reaches whoever only
    /// uses `?`.
    pub last_output: Vec<String>,
}

/// The builder method behind a setting named as the CLI names it, so that
/// a library user reads the name of what they called.
fn builder_method(setting: &str) -> String {
    match setting {
        "ready" => "readiness".into(),
        "proxy-port" => "port_contract".into(),
        "restart-delay" | "restart-delay-max" | "backoff factor" | "backoff jitter" => {
            "backoff".into()
        }
        "crash-window" => "crash_loop".into(),
        "env" => "env / env_remove".into(),
        "args" => "arg / args".into(),
        other => other.replace(['-', ' '], "_"),
    }
}

fn describe_exits(slots: &[(usize, crate::types::Exit)]) -> String {
    slots
        .iter()
        .map(|(slot, exit)| format!("slot {slot} {exit}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether a line looks like it says why a program failed (an error or
/// exception line, not a stack frame).
pub(crate) fn explains_failure(line: &str) -> bool {
    let trimmed = line.trim_start();
    if trimmed.starts_with("at ") || trimmed.starts_with("File \"") {
        return false;
    }
    let lower = trimmed.to_ascii_lowercase();
    ["error", "exception", "cannot find", "panicked", "fatal"]
        .iter()
        .any(|w| lower.contains(w))
}

/// The line of a failed worker's last output to quote: the last that
/// explains the failure, else the last that is not a runtime's banner
/// (Node ends every crash with `Node.js v20.19.0`).
fn telling_line(lines: &[String]) -> Option<&str> {
    let banner = |l: &str| {
        l.strip_prefix("Node.js v")
            .is_some_and(|v| v.starts_with(|c: char| c.is_ascii_digit()))
    };
    lines
        .iter()
        .rev()
        .find(|l| explains_failure(l))
        .or_else(|| {
            lines
                .iter()
                .rev()
                .find(|l| !l.trim().is_empty() && !banner(l.trim()))
        })
        .map(String::as_str)
}

fn describe_failures(slots: &[SlotFailure]) -> String {
    slots
        .iter()
        .map(|f| {
            let mut text = if f.window.is_zero() {
                // Failed at its first exit (it never said ready).
                format!("slot {} failed", f.slot)
            } else {
                format!(
                    "slot {} exited {} times within {}",
                    f.slot,
                    f.exits,
                    crate::types::Millis(f.window)
                )
            };
            match f.last_exit {
                Some(crate::Exit::Code(c)) => text.push_str(&format!(", the last with code {c}")),
                Some(crate::Exit::Signal(s)) => text.push_str(&format!(", the last killed by {s}")),
                None => text.push_str(", the last"),
            }
            if let Some(line) = telling_line(&f.last_output) {
                text.push_str(&format!(": {line}"));
            }
            text
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// What kind of error an [`Error`] is, for a program (or the control API)
/// that maps errors to its own answers: exit codes, HTTP statuses, retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[non_exhaustive]
pub enum ErrorKind {
    /// The request or configuration is wrong (a program not found, a bad
    /// setting, text that does not parse): fix it, do not retry.
    Usage,
    /// A slot or thing asked for does not exist.
    NotFound,
    /// Refused for now (a reload runs, a slot has no worker, an address
    /// or control socket is taken): the same request may succeed later.
    Conflict,
    /// The cluster is not running (dropped, or stopped).
    NotRunning,
    /// The operating system refused (binding, spawning, an fd, a file).
    Os,
    /// The cluster ran and failed: every slot gave up, a worker failed,
    /// an upgrade did not take.
    Failed,
}

impl Error {
    /// What kind of error this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::NoProgram
            | Error::ProgramNotFound { .. }
            | Error::ProgramNotExecutable { .. }
            | Error::ProgramIsDirectory { .. }
            | Error::BadWorkingDirectory { .. }
            | Error::ZeroWorkers
            | Error::InvalidSetting { .. }
            | Error::Parse { .. }
            | Error::BadListener { .. }
            | Error::Activation(_) => ErrorKind::Usage,
            Error::NoSuchSlot { .. } => ErrorKind::NotFound,
            Error::Busy { .. }
            | Error::NoWorker { .. }
            | Error::ControlInUse { .. }
            | Error::AddressInUse { .. } => ErrorKind::Conflict,
            Error::NotRunning => ErrorKind::NotRunning,
            Error::Listen { .. } | Error::Spawn { .. } | Error::Io { .. } => ErrorKind::Os,
            Error::AllSlotsFailed { .. } | Error::WorkersFailed { .. } | Error::Upgrade { .. } => {
                ErrorKind::Failed
            }
        }
    }

    /// The error and its sources, as one sentence: `Display` leaves the
    /// source out (a chain printer such as anyhow's shows it), lines and
    /// events that show only this error want it in.
    pub fn chain(&self) -> String {
        let mut text = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(s) = source {
            text.push_str(": ");
            text.push_str(&s.to_string());
            source = s.source();
        }
        text
    }

    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// `Result` with herd's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_crash_is_quoted_by_its_error_line_not_its_version_banner() {
        let lines: Vec<String> = [
            "/app/server.js:1",
            "throw new Error('connect ECONNREFUSED: the database is down')",
            "^",
            "",
            "Error: connect ECONNREFUSED: the database is down",
            "    at Object.<anonymous> (/app/server.js:1:7)",
            "    at Module._compile (node:internal/modules/cjs/loader:1364:14)",
            "",
            "Node.js v20.19.0",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            telling_line(&lines),
            Some("Error: connect ECONNREFUSED: the database is down")
        );
        let plain: Vec<String> = ["starting", "bye", "Node.js v22.1.0"]
            .map(String::from)
            .to_vec();
        assert_eq!(telling_line(&plain), Some("bye"));
    }

    #[test]
    fn a_conflict_of_the_moment_is_not_a_usage_error() {
        let busy = Error::Busy {
            what: "scale",
            reason: "a reload is running".into(),
        };
        assert_eq!(busy.kind(), ErrorKind::Conflict);
        assert!(busy.to_string().contains("scale"), "{busy}");
        assert_eq!(Error::ZeroWorkers.kind(), ErrorKind::Usage);
        assert_eq!(Error::NotRunning.kind(), ErrorKind::NotRunning);
        assert_eq!(
            Error::NoSuchSlot { slot: 3, slots: 2 }.kind(),
            ErrorKind::NotFound
        );
        let io = Error::io("reading", io::Error::other("x"));
        assert_eq!(io.kind(), ErrorKind::Os);
    }

    #[test]
    fn settings_name_the_cli_flag_and_the_builder_method() {
        let e = Error::InvalidSetting {
            setting: "drain-timeout",
            reason: "too long".into(),
        };
        assert_eq!(
            e.to_string(),
            "invalid setting `drain-timeout` (Builder::drain_timeout): too long"
        );
        assert_eq!(builder_method("ready"), "readiness");
        assert_eq!(builder_method("restart-delay-max"), "backoff");
        assert_eq!(builder_method("backoff factor"), "backoff");
    }

    #[test]
    fn display_leaves_the_source_to_the_chain() {
        let e = Error::Listen {
            addr: "127.0.0.1:80".parse().unwrap(),
            source: io::Error::from(io::ErrorKind::PermissionDenied),
        };
        assert_eq!(e.to_string(), "cannot listen on 127.0.0.1:80");
        assert_eq!(
            e.chain(),
            "cannot listen on 127.0.0.1:80: permission denied"
        );
    }
}
