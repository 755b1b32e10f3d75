//! Events and worker lines as `tracing` events (feature `tracing`).
//!
//! One call, [`forward`], and a program that logs with `tracing` sees the
//! cluster's life with the right level and fields (`event`, `slot`, `pid`,
//! and for worker lines `stream`), whatever subscriber it installed.

use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;

use crate::observe::{Event, Level, OutputLine, OutputStream};
use crate::Handle;

/// What [`forward`] sends to `tracing` besides the events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Forward {
    /// Every worker line too, at info (stdout) or warn (stderr), target
    /// `herd::worker`.
    pub output: bool,
}

/// Emits every event of the cluster behind `handle` as a `tracing` event
/// (target `herd`, level [`Event::level`], fields `event`, `slot`, `pid`,
/// the message its `Display`) and, with [`Forward::output`], every worker
/// line (target `herd::worker`), until the cluster has stopped. A reader
/// that falls behind says how many it missed and goes on. Spawn it on the
/// runtime that runs the cluster, before [`crate::Cluster::run`] so that
/// nothing is missed.
///
/// ```no_run
/// # async fn demo(cluster: herd::Cluster) -> herd::Result<()> {
/// let forwarding = herd::trace::forward(&cluster.handle(), herd::trace::Forward { output: true });
/// cluster.run().await?;
/// forwarding.await.ok();
/// # Ok(()) }
/// ```
pub fn forward(handle: &Handle, what: Forward) -> JoinHandle<()> {
    let mut events = handle.events();
    let mut output = what.output.then(|| handle.output());
    tokio::spawn(async move {
        let mut events_open = true;
        while events_open || output.is_some() {
            tokio::select! {
                event = events.recv(), if events_open => match event {
                    Ok(event) => emit(&event),
                    Err(RecvError::Lagged(n)) => {
                        tracing::warn!(target: "herd", missed = n, "missed {n} events: the reader fell behind");
                    }
                    Err(RecvError::Closed) => events_open = false,
                },
                line = async {
                    match output.as_mut() {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                } => match line {
                    Ok(line) => emit_line(&line),
                    Err(RecvError::Lagged(n)) => {
                        tracing::warn!(target: "herd::worker", missed = n, "missed {n} worker lines: the reader fell behind");
                    }
                    Err(RecvError::Closed) => output = None,
                },
            }
        }
    })
}

/// One event at its level.
fn emit(event: &Event) {
    let (name, slot, pid) = (event.name(), event.slot(), event.pid());
    match event.level() {
        Level::Debug => {
            tracing::debug!(target: "herd", event = name, slot, pid, "{event}");
        }
        Level::Info => tracing::info!(target: "herd", event = name, slot, pid, "{event}"),
        Level::Warn => tracing::warn!(target: "herd", event = name, slot, pid, "{event}"),
        _ => tracing::error!(target: "herd", event = name, slot, pid, "{event}"),
    }
}

/// One worker line: stdout at info, stderr at warn.
fn emit_line(line: &OutputLine) {
    let (slot, pid, text) = (line.slot, line.pid, &line.line);
    match line.stream {
        OutputStream::Stdout => {
            tracing::info!(target: "herd::worker", slot, pid, stream = "stdout", "{text}");
        }
        _ => tracing::warn!(target: "herd::worker", slot, pid, stream = "stderr", "{text}"),
    }
}
