//! The vocabulary: value types that every other part of herd shares.
//!
//! Errors, how a worker ended, signals, worker states and the view of a
//! slot, readiness rules, balance modes and strategies, reload reports and
//! durations. Nothing here imports anything above it, so the engine, the
//! front and the observers can all point down to it. The public paths stay
//! where users know them (`herd::Error`, `herd::Exit`, `herd::net::Balance`)
//! through re-exports.

pub(crate) mod balance;
pub(crate) mod duration;
pub(crate) mod error;
pub(crate) mod exit;
pub(crate) mod readiness;
pub(crate) mod report;
#[cfg(feature = "serde")]
pub(crate) mod serde_impl;
pub(crate) mod signal;
pub(crate) mod state;

pub use balance::{Balance, Cidr, Strategy};
pub(crate) use duration::Millis;
pub use error::{Error, ErrorKind, Result, SlotFailure};
pub use exit::{Exit, KillMode};
pub use readiness::{Readiness, DEFAULT_START_TIMEOUT};
pub use report::{ReloadFailure, ReloadReport, Replacement, DEFAULT_RELOAD_PARALLEL};
pub use signal::Signal;
pub use state::{Phase, RestartCounts, WorkerInfo, WorkerState};
