//! Worker output, written by the master one whole line at a time.
//!
//! Each worker's stdout and stderr are pipes that the master reads. Every
//! complete line is written to the master's own stdout or stderr with a
//! prefix naming the slot and pid, in a single `write` under the stream's
//! lock, so lines of different workers never interleave mid-line. The
//! master's writer threads ([`crate::observe::writer`]) do the writing. The last lines of each worker are kept, so that
//! a crash report can show them.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use tokio::io::AsyncReadExt;

use crate::observe::log::Log;
use crate::observe::writer;
pub(crate) use crate::observe::writer::Stream;
use crate::observe::{OutputLine, OutputStream};

/// A line longer than this is cut into pieces of this size, so that a worker
/// that never writes a newline cannot make the master buffer without bound.
const MAX_LINE: usize = 16 * 1024;
/// How many of a worker's last lines are kept for crash reports.
pub(crate) const TAIL_LINES: usize = 10;
/// How many of a kept line's characters are shown in a crash report.
const TAIL_LINE_CHARS: usize = 300;

/// How many earlier lines that explain a failure are kept besides the last
/// lines (Node prints `Error: Cannot find module` above ten lines of stack).
pub(crate) const TAIL_NOTABLE: usize = 3;

/// The last lines a worker wrote, on either stream, and the last few lines
/// that look like they explain a failure.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tail(Arc<Mutex<TailLines>>);

#[derive(Debug, Default)]
pub(crate) struct TailLines {
    /// Every kept line with its sequence number, oldest first.
    last: VecDeque<(u64, String)>,
    notable: VecDeque<(u64, String)>,
    /// The last line that said an address was in use, wherever it was:
    /// puma prints a banner before it and a backtrace after it.
    in_use: Option<(u64, String)>,
    seen: u64,
}

/// Whether a line says an address could not be bound because it is in use
/// (Node's `EADDRINUSE`, Python's and C's "Address already in use", puma's
/// `Errno::EADDRINUSE`, gunicorn's "Connection in use").
fn says_in_use(line: &str) -> bool {
    let l = line.to_ascii_lowercase();
    l.contains("eaddrinuse")
        || l.contains("address already in use")
        || l.contains("connection in use")
}

impl Tail {
    fn push(&self, line: &[u8]) {
        let text: String = String::from_utf8_lossy(line)
            .chars()
            .take(TAIL_LINE_CHARS)
            .collect();
        let mut t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        t.seen += 1;
        let n = t.seen;
        if says_in_use(&text) {
            t.in_use = Some((n, text.clone()));
        }
        if crate::types::error::explains_failure(&text) {
            if t.notable.len() == TAIL_NOTABLE {
                t.notable.pop_front();
            }
            t.notable.push_back((n, text.clone()));
        }
        if t.last.len() == TAIL_LINES {
            t.last.pop_front();
        }
        t.last.push_back((n, text));
    }

    /// The kept lines in the order they were written: the explaining lines
    /// that scrolled out of the last lines, then the last lines.
    pub(crate) fn lines(&self) -> Vec<String> {
        let t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let first_last = t.last.front().map_or(u64::MAX, |(n, _)| *n);
        let mut kept: Vec<&(u64, String)> =
            t.notable.iter().filter(|(n, _)| *n < first_last).collect();
        if let Some(line) = t
            .in_use
            .as_ref()
            .filter(|(n, _)| *n < first_last && !kept.iter().any(|(k, _)| k == n))
        {
            let at = kept.partition_point(|(k, _)| *k < line.0);
            kept.insert(at, line);
        }
        kept.into_iter()
            .chain(t.last.iter())
            .map(|(_, l)| l.clone())
            .collect()
    }
}

/// The port of `ports` that the output says could not be bound because it
/// is in use (Node's `EADDRINUSE`, Python's and C's "Address already in
/// use"), if any.
pub(crate) fn port_conflict(lines: &[String], ports: &[u16]) -> Option<u16> {
    if !lines.iter().any(|l| says_in_use(l)) {
        return None;
    }
    // The port as a number of its own (":3000", " 3000)", "port 3000"),
    // in the error or in the source line a traceback quotes.
    let mentions = |l: &String, port: u16| {
        l.split(|c: char| !c.is_ascii_digit())
            .any(|w| w == port.to_string())
    };
    ports
        .iter()
        .copied()
        .find(|&p| lines.iter().any(|l| mentions(l, p)))
}

/// Where one worker's lines go.
pub(crate) struct Sink {
    /// Written before each forwarded line: `[slot N pid P] `.
    pub(crate) prefix: Arc<str>,
    pub(crate) tail: Tail,
    /// Whether lines go to the master's own stdout and stderr.
    pub(crate) forward: bool,
    /// Subscribers to the lines, if any.
    pub(crate) log: Log,
    pub(crate) slot: usize,
    pub(crate) pid: u32,
}

/// Reads `fd` until EOF and forwards each line with the sink's prefix
/// (or, with `forward` off, only keeps the tail), and hands it to the
/// output subscribers.
pub(crate) async fn pump(fd: OwnedFd, stream: Stream, sink: Arc<Sink>) {
    let Ok(mut pipe) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else {
        return;
    };
    let mut splitter = LineSplitter::default();
    let mut buf = vec![0u8; 8192];
    loop {
        let n = match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for line in splitter.push(&buf[..n]) {
            emit(stream, &sink, &line).await;
        }
    }
    if let Some(rest) = splitter.finish() {
        emit(stream, &sink, &rest).await;
    }
}

async fn emit(stream: Stream, sink: &Sink, line: &[u8]) {
    sink.tail.push(line);
    let lossless = sink.log.lossless_sink();
    if sink.log.output_wanted() || lossless.is_some() {
        let line = OutputLine {
            slot: sink.slot,
            pid: sink.pid,
            stream: match stream {
                Stream::Stdout => OutputStream::Stdout,
                Stream::Stderr => OutputStream::Stderr,
            },
            line: String::from_utf8_lossy(line).into_owned(),
        };
        if let Some(tx) = lossless {
            // Log files: this pipe waits for them, as for a slow terminal.
            let _ = tx.send(line.clone()).await;
        }
        sink.log.output_line(line);
    }
    if !sink.forward {
        return;
    }
    let mut out = Vec::with_capacity(sink.prefix.len() + line.len() + 1);
    out.extend_from_slice(sink.prefix.as_bytes());
    out.extend_from_slice(line);
    out.push(b'\n');
    let _ = writer::line(stream, out).await;
}

/// Cuts a byte stream into lines (without their `\n`), at most
/// [`MAX_LINE`] bytes each.
#[derive(Debug, Default)]
struct LineSplitter {
    pending: Vec<u8>,
}

impl LineSplitter {
    fn push(&mut self, mut data: &[u8]) -> Vec<Vec<u8>> {
        let mut lines = Vec::new();
        while !data.is_empty() {
            let room = MAX_LINE - self.pending.len();
            let window = &data[..data.len().min(room)];
            if let Some(nl) = window.iter().position(|&b| b == b'\n') {
                self.pending.extend_from_slice(&window[..nl]);
                lines.push(std::mem::take(&mut self.pending));
                data = &data[nl + 1..];
            } else {
                self.pending.extend_from_slice(window);
                data = &data[window.len()..];
                if self.pending.len() == MAX_LINE {
                    lines.push(std::mem::take(&mut self.pending));
                }
            }
        }
        lines
    }

    fn finish(self) -> Option<Vec<u8>> {
        (!self.pending.is_empty()).then_some(self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_joined_across_reads_and_split_at_newlines() {
        let mut s = LineSplitter::default();
        assert!(s.push(b"hel").is_empty());
        assert_eq!(s.push(b"lo\nwor"), vec![b"hello".to_vec()]);
        assert_eq!(s.push(b"ld\n\nx"), vec![b"world".to_vec(), b"".to_vec()]);
        assert_eq!(s.finish(), Some(b"x".to_vec()));
    }

    #[test]
    fn endless_lines_are_cut_at_the_limit() {
        let mut s = LineSplitter::default();
        let lines = s.push(&vec![b'a'; MAX_LINE * 2 + 5]);
        assert_eq!(lines.len(), 2);
        assert!(lines.iter().all(|l| l.len() == MAX_LINE));
        assert_eq!(s.finish().map(|r| r.len()), Some(5));
    }

    #[test]
    fn a_port_conflict_is_found_anywhere_in_what_a_failed_worker_left() {
        // puma: a banner, the conflict, then a long backtrace.
        let tail = Tail::default();
        tail.push(b"Puma starting in single mode...");
        tail.push(b"* Listening on http://0.0.0.0:3000");
        tail.push(
            b"/usr/lib/ruby/puma/binder.rb:334:in `initialize': Address already in use - \
              bind(2) for \"0.0.0.0\" port 3000 (Errno::EADDRINUSE)",
        );
        for i in 0..(TAIL_LINES * 3) {
            tail.push(format!("\tfrom /usr/lib/ruby/puma/launcher.rb:{i}:in `run'").as_bytes());
        }
        let lines = tail.lines();
        assert_eq!(port_conflict(&lines, &[3000]), Some(3000), "{lines:#?}");
        assert!(
            lines.last().unwrap().contains("launcher.rb"),
            "the last lines stay last"
        );
    }

    #[test]
    fn a_bind_of_a_herd_port_is_recognised_in_node_python_and_gunicorn_output() {
        let node = [
            "Error: listen EADDRINUSE: address already in use :::3000".to_string(),
            "    at Server.setupListenHandle [as _listen2] (node:net:1817:16)".to_string(),
        ];
        assert_eq!(port_conflict(&node, &[8080, 3000]), Some(3000));
        let python = [
            "    s.bind(('0.0.0.0', 3000))".to_string(),
            "OSError: [Errno 98] Address already in use".to_string(),
        ];
        assert_eq!(port_conflict(&python, &[3000]), Some(3000));
        let gunicorn = ["[ERROR] Connection in use: ('0.0.0.0', 3000)".to_string()];
        assert_eq!(port_conflict(&gunicorn, &[3000]), Some(3000));
        // Another port, or no conflict at all: nothing to say about herd's.
        let other = ["Error: listen EADDRINUSE: address already in use :::9100".to_string()];
        assert_eq!(port_conflict(&other, &[3000]), None);
        let fine = ["listening on 3000".to_string()];
        assert_eq!(port_conflict(&fine, &[3000]), None);
    }

    #[test]
    fn the_line_that_explains_a_node_crash_is_kept_above_its_stack() {
        let t = Tail::default();
        t.push(b"node:internal/modules/cjs/loader:1228");
        t.push(b"  throw err;");
        t.push(b"Error: Cannot find module '/srv/app/missing.js'");
        for i in 0..12 {
            t.push(
                format!("    at Module._load (node:internal/modules/cjs/loader:{i})").as_bytes(),
            );
        }
        t.push(b"Node.js v20.20.2");
        let lines = t.lines();
        assert_eq!(lines[0], "Error: Cannot find module '/srv/app/missing.js'");
        assert_eq!(lines.len(), TAIL_LINES + 1);
        assert_eq!(lines.last().unwrap(), "Node.js v20.20.2");
    }

    #[test]
    fn tail_keeps_only_the_last_lines() {
        let t = Tail::default();
        for i in 0..(TAIL_LINES + 3) {
            t.push(format!("line {i}").as_bytes());
        }
        let lines = t.lines();
        assert_eq!(lines.len(), TAIL_LINES);
        assert_eq!(lines[0], "line 3");
        assert_eq!(lines.last().unwrap(), &format!("line {}", TAIL_LINES + 2));
    }
}
