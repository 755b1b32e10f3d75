//! How a worker ended and which of its processes a stop reaches.

use std::fmt;

/// How a worker process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum Exit {
    /// It called `exit` with this code.
    Code(i32),
    /// It was killed by this signal.
    Signal(crate::types::signal::Signal),
}

impl Exit {
    /// True for `exit(0)`: the only end the `on-failure` policy leaves alone.
    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exited with code {c}"),
            Exit::Signal(s) => write!(f, "was killed by {s}"),
        }
    }
}

/// Which of a worker's processes the stop signal reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum KillMode {
    /// The worker's main process only (for a Node app started by a launcher
    /// such as `npm start`, the process that runs the app). What else runs
    /// in its process group (a `sleep`, `ffmpeg` or CGI a request started)
    /// gets SIGKILL once the main process has exited, or at the drain
    /// timeout: systemd's `KillMode=mixed`.
    #[default]
    Mixed,
    /// The worker's whole process group at once: systemd's
    /// `KillMode=control-group`. Children that a request started are
    /// stopped with it, so that request fails.
    Group,
}

impl fmt::Display for KillMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KillMode::Mixed => "mixed",
            KillMode::Group => "group",
        })
    }
}

impl std::str::FromStr for KillMode {
    type Err = crate::types::error::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "mixed" => Ok(KillMode::Mixed),
            "group" | "control-group" => Ok(KillMode::Group),
            _ => Err(crate::types::error::Error::Parse {
                what: "kill mode",
                input: s.to_owned(),
                reason: "expected mixed or group".into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kill_modes_round_trip_through_text() {
        for m in [KillMode::Mixed, KillMode::Group] {
            assert_eq!(m.to_string().parse::<KillMode>().unwrap(), m);
        }
        assert_eq!(
            "control-group".parse::<KillMode>().unwrap(),
            KillMode::Group
        );
        let e = "process".parse::<KillMode>().unwrap_err().to_string();
        assert!(e.contains("process"), "{e}");
    }
}
