//! The master's own stdout and stderr: one writer thread per stream.
//!
//! Lifecycle lines and worker output reach the terminal (or journald)
//! through these threads, one whole line per `write`, so lines of
//! different workers never interleave mid-line, and a slow reader holds
//! back the workers' pipes (as a terminal would) rather than the
//! supervisor's event loop.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use tokio::sync::{mpsc, oneshot};

/// Which of the master's streams a line goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stream {
    Stdout,
    Stderr,
}

/// What starts every line the writers write (a timestamp), if anything.
#[derive(Clone)]
pub(crate) struct Stamp(pub(crate) std::sync::Arc<dyn Fn() -> String + Send + Sync>);

impl std::fmt::Debug for Stamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Stamp")
    }
}

static STAMP: std::sync::RwLock<Option<Stamp>> = std::sync::RwLock::new(None);

/// Sets what starts every line the master writes from now on, its own and
/// the workers' it forwards (process-wide: the last cluster to set it wins).
pub(crate) fn set_stamp(stamp: Option<Stamp>) {
    *STAMP.write().unwrap_or_else(|p| p.into_inner()) = stamp;
}

fn stamp() -> Option<String> {
    STAMP
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .map(|f| (f.0)())
}

/// Lines queued for the writer thread before readers wait.
const QUEUE: usize = 1024;

enum Msg {
    Line(Vec<u8>),
    Flush(oneshot::Sender<()>),
}

/// One writer thread per stream: a stdout that nobody reads (a full pipe)
/// must not hold back the master's own lines on stderr.
static WRITERS: [OnceLock<mpsc::Sender<Msg>>; 2] = [OnceLock::new(), OnceLock::new()];

fn writer(stream: Stream) -> &'static mpsc::Sender<Msg> {
    let index = match stream {
        Stream::Stdout => 0,
        Stream::Stderr => 1,
    };
    WRITERS[index].get_or_init(|| {
        let (tx, mut rx) = mpsc::channel::<Msg>(QUEUE);
        let spawned = std::thread::Builder::new()
            .name(format!(
                "herd-{}",
                if index == 0 { "stdout" } else { "stderr" }
            ))
            .spawn(move || {
                let write = |l: &[u8]| {
                    // The stamp and the line under one lock: whole lines.
                    let stamp = stamp().map(|s| s + " ");
                    let both = |w: &mut dyn Write| {
                        if let Some(s) = &stamp {
                            w.write_all(s.as_bytes())?;
                        }
                        w.write_all(l)
                    };
                    match stream {
                        Stream::Stdout => both(&mut std::io::stdout().lock()),
                        Stream::Stderr => both(&mut std::io::stderr().lock()),
                    }
                };
                while let Some(msg) = rx.blocking_recv() {
                    match msg {
                        // A failed write (closed stdout) is not worth dying
                        // for: the workers keep serving.
                        Msg::Line(l) => {
                            let _ = write(&l);
                        }
                        Msg::Flush(done) => {
                            if stream == Stream::Stdout {
                                let _ = std::io::stdout().flush();
                            }
                            let _ = done.send(());
                        }
                    }
                }
            });
        if let Err(e) = spawned {
            eprintln!("herd: cannot start the output thread, worker output is lost: {e}");
        }
        tx
    })
}

/// Queues one line of worker output (with its newline). Waits while the
/// queue is full: the back-pressure reaches that worker's pipe.
pub(crate) async fn line(stream: Stream, line: Vec<u8>) {
    let _ = writer(stream).send(Msg::Line(line)).await;
}

/// Lifecycle lines dropped because nobody reads the master's output.
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Writes one line of the master's own (a lifecycle event) to stderr.
///
/// Never waits: if whoever reads the master's output has stalled and the
/// queue is full, the line is dropped (and the count reported with the next
/// line that gets through), because the supervisor must not stop
/// supervising for want of a reader.
pub(crate) fn log_line(tag: &str, text: &str) {
    let mut line = Vec::with_capacity(tag.len() + text.len() + 3);
    let dropped = DROPPED.swap(0, Ordering::Relaxed);
    if dropped > 0 {
        line.extend_from_slice(
            format!("herd: {dropped} log line(s) dropped: the master's output is not being read\n")
                .as_bytes(),
        );
    }
    line.extend_from_slice(tag.as_bytes());
    line.extend_from_slice(b": ");
    line.extend_from_slice(text.as_bytes());
    line.push(b'\n');
    if writer(Stream::Stderr).try_send(Msg::Line(line)).is_err() {
        DROPPED.fetch_add(dropped + 1, Ordering::Relaxed);
    }
}

/// Waits until every line queued so far has been written.
pub(crate) async fn flush() {
    for stream in [Stream::Stdout, Stream::Stderr] {
        let (tx, rx) = oneshot::channel();
        if writer(stream).send(Msg::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}
