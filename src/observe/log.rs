//! Where the master's own lines and the workers' output go.
//!
//! One [`Log`] per cluster, shared by the supervisor, the proxy and every
//! [`crate::Handle`]. Each event and notice is published on the events
//! channel and, unless `log_events(false)`, written to stderr as one line
//! that names the cluster (`herd[api]: ...`). Worker lines go to the output
//! channel when somebody listens, and to the master's stdout or stderr
//! unless `forward_output(false)`.
//!
//! Why channels and not `tracing`: an embedding program gets typed values
//! (an [`Event`] it can match, an [`OutputLine`] with slot and pid) that it
//! can route to `tracing`, `log`, a file or a web page in a few lines,
//! while herd itself takes on no logging framework and writes nothing when
//! told not to.

use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use super::writer;
use crate::observe::event::{Event, Notice, OutputLine};

/// Events buffered for a subscriber that is behind.
const EVENTS: usize = 1024;
/// Worker lines buffered for a subscriber that is behind.
const LINES: usize = 4096;

#[derive(Debug, Clone)]
pub(crate) struct Log(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    /// `herd` or `herd[name]`: what starts each of the master's lines.
    tag: String,
    name: Option<String>,
    to_stderr: bool,
    /// Taken when the cluster has stopped, so that subscribers' streams
    /// end after the last event.
    events: Mutex<Option<broadcast::Sender<Event>>>,
    /// Taken with the events: the workers' lines end with the cluster.
    output: Mutex<Option<broadcast::Sender<OutputLine>>>,
    /// A subscriber that must get every line (log files): the workers'
    /// pipes wait for it, as they wait for a slow terminal.
    lossless: Mutex<Option<tokio::sync::mpsc::Sender<OutputLine>>>,
    /// Whether `lossless` holds a sender: read for every worker line, so
    /// that no lock is taken when nobody writes log files.
    has_lossless: std::sync::atomic::AtomicBool,
}

impl Log {
    pub(crate) fn new(name: Option<String>, to_stderr: bool) -> Log {
        let tag = match &name {
            Some(n) => format!("herd[{n}]"),
            None => "herd".to_owned(),
        };
        Log(Arc::new(Inner {
            tag,
            name,
            to_stderr,
            events: Mutex::new(Some(broadcast::channel(EVENTS).0)),
            output: Mutex::new(Some(broadcast::channel(LINES).0)),
            lossless: Mutex::new(None),
            has_lossless: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    /// The cluster's name, if it was given one.
    pub(crate) fn name(&self) -> Option<&str> {
        self.0.name.as_deref()
    }

    /// Logs the event and publishes it to subscribers.
    pub(crate) fn event(&self, event: Event) {
        if self.0.to_stderr {
            writer::log_line(&self.0.tag, &event.to_string());
        }
        let events = self.0.events.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = &*events {
            let _ = tx.send(event);
        }
    }

    /// Waits, at most `limit`, until every subscriber has received every
    /// event sent so far (before the process is replaced by an upgrade).
    pub(crate) async fn delivered(&self, limit: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let queued = {
                let events = self.0.events.lock().unwrap_or_else(|p| p.into_inner());
                events.as_ref().map_or(0, broadcast::Sender::len)
            };
            if queued == 0 || tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    }

    /// An [`Event::Notice`].
    pub(crate) fn notice(&self, slot: Option<usize>, notice: Notice, message: String) {
        self.event(Event::Notice {
            slot,
            notice,
            message,
        });
    }

    /// A new subscriber to the events; its stream ends after
    /// [`Log::close`].
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Event> {
        let events = self.0.events.lock().unwrap_or_else(|p| p.into_inner());
        match &*events {
            Some(tx) => tx.subscribe(),
            // Stopped already: a stream that ends at once.
            None => broadcast::channel(1).1,
        }
    }

    /// Ends every subscriber's streams, events and workers' lines (after
    /// what was already sent).
    pub(crate) fn close(&self) {
        self.0
            .events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        self.output().take();
        self.lossless().take();
        self.0
            .has_lossless
            .store(false, std::sync::atomic::Ordering::Release);
    }

    fn lossless(&self) -> std::sync::MutexGuard<'_, Option<tokio::sync::mpsc::Sender<OutputLine>>> {
        self.0.lossless.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The one subscriber that gets every worker line, waiting for it
    /// rather than dropping lines (replacing an earlier one); its stream
    /// ends with the cluster.
    pub(crate) fn subscribe_lossless(&self) -> tokio::sync::mpsc::Receiver<OutputLine> {
        let (tx, rx) = tokio::sync::mpsc::channel(LINES);
        *self.lossless() = Some(tx);
        self.0
            .has_lossless
            .store(true, std::sync::atomic::Ordering::Release);
        rx
    }

    /// Where a line goes that must not be dropped, if anywhere.
    pub(crate) fn lossless_sink(&self) -> Option<tokio::sync::mpsc::Sender<OutputLine>> {
        if !self
            .0
            .has_lossless
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return None;
        }
        self.lossless().clone()
    }

    fn output(&self) -> std::sync::MutexGuard<'_, Option<broadcast::Sender<OutputLine>>> {
        self.0.output.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new subscriber to the workers' lines; its stream ends after
    /// [`Log::close`].
    pub(crate) fn subscribe_output(&self) -> broadcast::Receiver<OutputLine> {
        match &*self.output() {
            Some(tx) => tx.subscribe(),
            None => broadcast::channel(1).1,
        }
    }

    /// Whether anybody listens to the workers' lines (so that nobody pays
    /// for a copy of each line when nobody does).
    pub(crate) fn output_wanted(&self) -> bool {
        self.output()
            .as_ref()
            .is_some_and(|tx| tx.receiver_count() > 0)
    }

    pub(crate) fn output_line(&self, line: OutputLine) {
        if let Some(tx) = &*self.output() {
            let _ = tx.send(line);
        }
    }
}
