//! One app's journal: herd's own events and its workers' lines, in the
//! order the master saw them, each with its time. `GET /v1/journal` reads
//! it (and follows it), so `herdctl logs` shows both interleaved and
//! `herdctl reload` can say what happens while it waits.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde_json::{json, Value};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use crate::observe::event::{OutputLine, OutputStream};
use crate::{Event, Handle};

/// Entries kept per app, at most.
pub const JOURNAL_ENTRIES: usize = 2000;
/// The text kept per app, at most: the oldest entries go first. An event
/// carries its text and its JSON, so 2000 of them come to about 0.6 MB,
/// more than a third of what the master holds besides its binary (the
/// soak's master grew 17-20 % in 10 minutes).
pub const JOURNAL_BYTES: usize = 256 * 1024;

/// One entry: a worker's line or one of herd's events, kept as its JSON
/// text (a few hundred bytes; a parsed value would take several times
/// that in the master's memory).
#[derive(Debug, Clone)]
pub(super) struct Entry {
    /// Its place in the journal, from 1.
    pub(super) seq: u64,
    /// The slot it is about, if one.
    pub(super) slot: Option<usize>,
    /// herd's `stopped` event: the last entry.
    pub(super) last: bool,
    pub(super) text: std::sync::Arc<str>,
}

impl Entry {
    fn new(seq: u64, json: &Value) -> Entry {
        Entry {
            seq,
            slot: json["slot"].as_u64().map(|s| s as usize),
            last: json["event"]["event"] == "stopped",
            text: json.to_string().into(),
        }
    }

    /// The entry as JSON again.
    pub(super) fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or(Value::Null)
    }
}

#[derive(Clone)]
pub(super) struct Journal {
    kept: Arc<Mutex<Kept>>,
    live: broadcast::Sender<Entry>,
}

/// The entries kept, within [`JOURNAL_ENTRIES`] and [`JOURNAL_BYTES`].
#[derive(Default)]
struct Kept {
    entries: VecDeque<Entry>,
    bytes: usize,
}

impl Kept {
    fn push(&mut self, entry: Entry) {
        self.bytes += entry.text.len();
        self.entries.push_back(entry);
        while self.entries.len() > JOURNAL_ENTRIES || self.bytes > JOURNAL_BYTES {
            match self.entries.pop_front() {
                Some(old) => self.bytes -= old.text.len(),
                None => break,
            }
        }
    }
}

impl Journal {
    /// The journal of `handle`'s cluster, and the task that writes it.
    pub(super) fn collect(handle: &Handle) -> (Journal, JoinHandle<()>) {
        let (live, _) = broadcast::channel(1024);
        let journal = Journal {
            kept: Arc::new(Mutex::new(Kept::default())),
            live,
        };
        let mut output = handle.output();
        let mut events = handle.events();
        let writer = journal.clone();
        let task = tokio::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            let mut seq = 0;
            let mut open = (true, true);
            while open.0 || open.1 {
                let json = tokio::select! {
                    line = output.recv(), if open.0 => match line {
                        Ok(l) => worker_line(&l),
                        Err(RecvError::Lagged(n)) => missed(n, "worker lines"),
                        Err(RecvError::Closed) => { open.0 = false; continue; }
                    },
                    got = events.recv(), if open.1 => match got {
                        Ok(e) => {
                            let last = matches!(e, Event::Stopped);
                            let json = event(&e);
                            if last {
                                open = (false, false);
                            }
                            json
                        }
                        Err(RecvError::Lagged(n)) => missed(n, "events"),
                        Err(RecvError::Closed) => { open.1 = false; continue; }
                    },
                };
                seq += 1;
                writer.push(Entry::new(seq, &json));
            }
        });
        (journal, task)
    }

    fn push(&self, entry: Entry) {
        self.kept
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(entry.clone());
        let _ = self.live.send(entry);
    }

    /// The last `lines` entries of `slot` (herd's events about the whole
    /// cluster included), oldest first.
    pub(super) fn last(&self, slot: Option<usize>, lines: usize) -> Vec<Entry> {
        let kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<Entry> = kept
            .entries
            .iter()
            .rev()
            .filter(|e| about(e, slot))
            .take(lines)
            .cloned()
            .collect();
        out.reverse();
        out
    }

    /// New entries from now on.
    pub(super) fn subscribe(&self) -> broadcast::Receiver<Entry> {
        self.live.subscribe()
    }
}

/// Whether an entry concerns `slot` (entries without a slot concern all).
pub(super) fn about(e: &Entry, slot: Option<usize>) -> bool {
    match (slot, e.slot) {
        (Some(want), Some(s)) => s == want,
        _ => true,
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn worker_line(l: &OutputLine) -> Value {
    json!({
        "time_ms": now_ms(),
        "slot": l.slot,
        "pid": l.pid,
        "stream": match l.stream {
            OutputStream::Stdout => "out",
            OutputStream::Stderr => "err",
        },
        "line": l.line,
    })
}

fn event(e: &Event) -> Value {
    let typed: Value = serde_json::from_str(&e.to_json()).unwrap_or(Value::Null);
    json!({
        "time_ms": now_ms(),
        "slot": e.slot(),
        "pid": e.pid(),
        "stream": "herd",
        "level": serde_json::to_value(e.level()).unwrap_or(Value::Null),
        "line": e.to_string(),
        "event": typed,
    })
}

fn missed(n: u64, what: &str) -> Value {
    json!({
        "time_ms": now_ms(),
        "slot": null,
        "pid": null,
        "stream": "herd",
        "level": "warn",
        "line": format!("the journal missed {n} {what} (the master wrote faster than it kept up)"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_journal_keeps_the_newest_entries_within_its_bytes_and_count() {
        let mut kept = Kept::default();
        let line = "x".repeat(1000);
        for seq in 1..=3000 {
            kept.push(Entry::new(seq, &json!({ "line": line })));
        }
        assert!(kept.bytes <= JOURNAL_BYTES, "{} bytes", kept.bytes);
        assert_eq!(
            kept.bytes,
            kept.entries.iter().map(|e| e.text.len()).sum::<usize>()
        );
        assert_eq!(kept.entries.back().map(|e| e.seq), Some(3000));
        assert!(kept.entries.len() > 200, "{} kept", kept.entries.len());
        // Small entries: the count is the limit.
        let mut small = Kept::default();
        for seq in 1..=5000 {
            small.push(Entry::new(seq, &json!({ "line": "x" })));
        }
        assert_eq!(small.entries.len(), JOURNAL_ENTRIES);
        assert_eq!(small.entries.front().map(|e| e.seq), Some(3001));
    }
}
