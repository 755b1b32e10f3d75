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

/// Entries kept per app.
pub const JOURNAL_ENTRIES: usize = 2000;

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
    kept: Arc<Mutex<VecDeque<Entry>>>,
    live: broadcast::Sender<Entry>,
}

impl Journal {
    /// The journal of `handle`'s cluster, and the task that writes it.
    pub(super) fn collect(handle: &Handle) -> (Journal, JoinHandle<()>) {
        let (live, _) = broadcast::channel(1024);
        let journal = Journal {
            kept: Arc::new(Mutex::new(VecDeque::new())),
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
        {
            let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
            if kept.len() == JOURNAL_ENTRIES {
                kept.pop_front();
            }
            kept.push_back(entry.clone());
        }
        let _ = self.live.send(entry);
    }

    /// The last `lines` entries of `slot` (herd's events about the whole
    /// cluster included), oldest first.
    pub(super) fn last(&self, slot: Option<usize>, lines: usize) -> Vec<Entry> {
        let kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<Entry> = kept
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
