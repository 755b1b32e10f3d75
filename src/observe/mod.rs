//! What the master tells the world: typed events and notices, the log that
//! publishes them and worker output, the metrics facade, and the writer
//! threads behind the master's own stdout and stderr.
//!
//! Everything here is fed by the engine and reads nothing of it: the
//! supervisor and the proxy point down to `observe`, never the reverse.

pub(crate) mod event;
mod json;
pub(crate) mod log;
pub(crate) mod metrics;
pub(crate) mod throttle;
pub(crate) mod writer;

pub use event::{Event, Level, Missed, Notice, OutputLine, OutputStream};
