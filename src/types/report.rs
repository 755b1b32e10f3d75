//! What a rolling reload (or a soft restart of one slot) did.

use std::fmt;
use std::time::Duration;

use super::duration::Millis;

/// Default number of slots replaced at the same time.
pub const DEFAULT_RELOAD_PARALLEL: usize = 1;

/// One slot whose worker a reload replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct Replacement {
    /// The slot.
    pub slot: usize,
    /// The predecessor (none if the slot was empty, e.g. failed).
    pub old_pid: Option<u32>,
    /// The successor, now serving.
    pub new_pid: u32,
    /// The successor's generation.
    pub generation: u64,
}

/// Why a reload stopped before it reached every slot.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct ReloadFailure {
    /// The slot whose successor did not make it.
    pub slot: usize,
    /// What happened ("exited with code 1 before it was ready", ...).
    pub reason: String,
    /// The successor's last output lines, oldest first.
    pub last_output: Vec<String>,
}

/// What a reload (or a soft restart of one slot) did. A reload that was
/// aborted is still `Ok(report)`: look at [`ReloadReport::failure`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
#[must_use = "an aborted reload comes back as Ok(report) with `failure` set"]
pub struct ReloadReport {
    /// The slots that got a new worker, in order.
    pub replaced: Vec<Replacement>,
    /// Set when the reload was aborted; the slots from here on kept their
    /// old workers.
    pub failure: Option<ReloadFailure>,
    /// Wall time from start to the last successor taking over (or the
    /// abort).
    #[cfg_attr(
        feature = "serde",
        serde(
            rename = "duration_ms",
            serialize_with = "crate::types::serde_impl::millis",
            deserialize_with = "crate::types::serde_impl::de_millis"
        )
    )]
    pub duration: Duration,
}

impl ReloadReport {
    /// True when every slot asked for was replaced.
    pub fn is_complete(&self) -> bool {
        self.failure.is_none()
    }
}

impl fmt::Display for ReloadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = Millis(self.duration);
        match &self.failure {
            None => write!(
                f,
                "reload replaced {} worker(s) in {d}",
                self.replaced.len()
            ),
            Some(fail) => {
                write!(
                    f,
                    "reload aborted at slot {} after replacing {} worker(s) in {d}: {}; \
                     the old workers keep serving",
                    fail.slot,
                    self.replaced.len(),
                    fail.reason
                )?;
                if !fail.last_output.is_empty() {
                    write!(f, "; last output: {}", fail.last_output.join(" | "))?;
                }
                Ok(())
            }
        }
    }
}
