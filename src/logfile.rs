//! Log files: the master's events and every worker line, with timestamps,
//! written to one file and/or one file per slot, reopened on request
//! (logrotate's `postrotate` sends SIGUSR1; the program calls
//! [`LogFiles::reopen`]), and rotated by size when asked
//! ([`Targets::max_size`]: `app.log` becomes `app.log.1`, `.1` becomes
//! `.2`, and so on up to [`Targets::keep`]). A rotation happens between
//! two lines on the one thread that writes them: no line is split or lost
//! across it.
//!
//! Writing happens on a thread of its own behind a bounded queue: a slow
//! or full disk never holds the master's event loop back. Worker lines are
//! never dropped for a full queue: the workers' pipes wait for the disk,
//! as they would for a slow terminal. A line the disk refuses, or one of
//! the master's own that finds the queue full, is dropped and counted
//! ([`LogFiles::dropped`]); the count is written into the file as soon as
//! a line gets through again.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::broadcast::error::RecvError;

use crate::types::{Error, Result};
use crate::Handle;

/// Lines queued for the writer thread before new ones are dropped.
const QUEUE: usize = 8192;

/// Where the lines go.
#[derive(Debug, Clone, Default)]
pub struct Targets {
    /// Every line, the master's and the workers', in one file.
    pub file: Option<PathBuf>,
    /// One file per slot (`slot-N.log`) with that slot's workers' lines,
    /// and `master.log` with the master's.
    pub dir: Option<PathBuf>,
    /// Rotate a file before a line would take it over this many bytes
    /// (None: never; logrotate and SIGUSR1 still work).
    pub max_size: Option<u64>,
    /// Rotated files kept per file (`.1` the newest); None: 5.
    pub keep: Option<usize>,
}

/// Rotated files kept when [`Targets::keep`] says nothing.
pub const DEFAULT_KEEP: usize = 5;

enum Msg {
    Line {
        slot: Option<usize>,
        text: String,
    },
    Reopen,
    /// Answered once every earlier line is written.
    Flush(std::sync::mpsc::Sender<()>),
}

/// Log files being written; stops with the cluster's streams or when
/// dropped.
#[derive(Debug)]
pub struct LogFiles {
    tx: SyncSender<Msg>,
    /// Told when the last worker line is queued (the cluster stopped).
    lines_ended: std::sync::Mutex<Option<std::sync::mpsc::Receiver<()>>>,
    dropped: Arc<AtomicU64>,
    tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl LogFiles {
    /// Opens the files (creating them, appending) and starts copying the
    /// cluster's events and worker lines into them. Call it before
    /// [`crate::Cluster::run`] so that nothing is missed.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] naming a file or directory that cannot be opened.
    pub fn start(handle: &Handle, targets: Targets) -> Result<LogFiles> {
        let mut files = Files::open(targets)?;
        let (tx, rx) = sync_channel::<Msg>(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let lost = dropped.clone();
        std::thread::Builder::new()
            .name("herd-logfile".into())
            .spawn(move || {
                let mut reported = 0;
                for msg in rx {
                    match msg {
                        Msg::Reopen => files.reopen(),
                        Msg::Flush(done) => {
                            let _ = done.send(());
                        }
                        Msg::Line { slot, text } => {
                            let now = lost.load(Ordering::Relaxed);
                            if now > reported {
                                let note = format!(
                                    "{} herd: {} log line(s) dropped (a full queue or disk)\n",
                                    timestamp(SystemTime::now()),
                                    now - reported
                                );
                                if files.write(None, &note) {
                                    reported = now;
                                }
                            }
                            if !files.write(slot, &text) {
                                lost.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
            })
            .map_err(|e| Error::io("starting the log file thread", e))?;

        let mut tasks = Vec::new();
        let prefix = match handle.name() {
            Some(n) => format!("herd[{n}]"),
            None => "herd".to_owned(),
        };
        let mut events = handle.events();
        let (etx, edrop) = (tx.clone(), dropped.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(e) => {
                        let text = format!("{} {prefix}: {e}\n", timestamp(SystemTime::now()));
                        send(&etx, &edrop, None, text);
                    }
                    Err(RecvError::Lagged(n)) => {
                        edrop.fetch_add(n, Ordering::Relaxed);
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        }));
        // Every worker line, none dropped: the workers' pipes wait while
        // the disk is slow, as they would for a slow terminal.
        let mut output = handle.lossless_output();
        let otx = tx.clone();
        let (lines_done, lines_ended) = std::sync::mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("herd-logfile-lines".into())
            .spawn(move || {
                while let Some(l) = output.blocking_recv() {
                    let text = format!(
                        "{} [slot {} pid {}] {}\n",
                        timestamp(SystemTime::now()),
                        l.slot,
                        l.pid,
                        l.line
                    );
                    if otx
                        .send(Msg::Line {
                            slot: Some(l.slot),
                            text,
                        })
                        .is_err()
                    {
                        break;
                    }
                }
                let _ = lines_done.send(());
            })
            .map_err(|e| Error::io("starting the log file thread", e))?;
        Ok(LogFiles {
            tx,
            lines_ended: std::sync::Mutex::new(Some(lines_ended)),
            dropped,
            tasks: std::sync::Mutex::new(tasks),
        })
    }

    /// Reopens every file by its path: after logrotate renamed them, new
    /// lines go to new files.
    pub fn reopen(&self) {
        let _ = self.tx.send(Msg::Reopen);
    }

    /// Once the cluster has stopped: waits (up to two seconds) until its
    /// last events and lines are written.
    pub async fn finish(&self) {
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        let limit = std::time::Duration::from_secs(2);
        for t in tasks {
            let _ = tokio::time::timeout(limit, t).await;
        }
        let ended = self
            .lines_ended
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(ended) = ended {
            let _ = tokio::task::spawn_blocking(move || ended.recv_timeout(limit)).await;
        }
        let (done, written) = std::sync::mpsc::channel();
        if self.tx.send(Msg::Flush(done)).is_ok() {
            let _ = tokio::task::spawn_blocking(move || written.recv_timeout(limit)).await;
        }
    }

    /// Lines dropped so far because the queue or the disk was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for LogFiles {
    fn drop(&mut self) {
        for t in self.tasks.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            t.abort();
        }
    }
}

/// Queues a line for the writer; a full queue (or a writer gone) drops it.
fn send(tx: &SyncSender<Msg>, dropped: &AtomicU64, slot: Option<usize>, text: String) {
    if tx.try_send(Msg::Line { slot, text }).is_err() {
        dropped.fetch_add(1, Ordering::Relaxed);
    }
}

/// An open file and how many bytes it holds.
struct Open {
    file: File,
    size: u64,
}

/// The open files.
struct Files {
    targets: Targets,
    all: Option<Open>,
    /// `None`: the master's file in the directory.
    per_slot: HashMap<Option<usize>, Open>,
}

impl Files {
    fn open(targets: Targets) -> Result<Files> {
        if let Some(dir) = &targets.dir {
            std::fs::create_dir_all(dir).map_err(|e| {
                Error::io(format!("creating the log directory {}", dir.display()), e)
            })?;
        }
        let all = match &targets.file {
            Some(path) => Some(append(path)?),
            None => None,
        };
        let mut files = Files {
            targets,
            all,
            per_slot: HashMap::new(),
        };
        if let Some(dir) = files.targets.dir.clone() {
            files
                .per_slot
                .insert(None, append(&dir.join("master.log"))?);
        }
        Ok(files)
    }

    fn slot_path(&self, slot: Option<usize>) -> Option<PathBuf> {
        let dir = self.targets.dir.as_ref()?;
        Some(match slot {
            Some(s) => dir.join(format!("slot-{s}.log")),
            None => dir.join("master.log"),
        })
    }

    /// Writes the line everywhere it goes; false if any write failed.
    fn write(&mut self, slot: Option<usize>, text: &str) -> bool {
        let mut ok = true;
        let (max, keep) = (
            self.targets.max_size,
            self.targets.keep.unwrap_or(DEFAULT_KEEP),
        );
        if let (Some(open), Some(path)) = (&mut self.all, &self.targets.file) {
            ok &= write_rotating(open, path, text, max, keep);
        }
        if let Some(path) = self.slot_path(slot) {
            let open = match self.per_slot.entry(slot) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => match append(&path) {
                    Ok(f) => e.insert(f),
                    Err(_) => return false,
                },
            };
            ok &= write_rotating(open, &path, text, max, keep);
        }
        ok
    }

    fn reopen(&mut self) {
        if let Some(path) = &self.targets.file {
            if let Ok(f) = append(path) {
                self.all = Some(f);
            }
        }
        // Per-slot files reopen at their next line.
        self.per_slot.clear();
    }
}

/// Writes `text` to `open`, rotating the file at `path` first when the
/// line would take it over `max` bytes (a file that is empty takes the
/// line whatever its size).
fn write_rotating(open: &mut Open, path: &Path, text: &str, max: Option<u64>, keep: usize) -> bool {
    let len = text.len() as u64;
    if max.is_some_and(|max| open.size > 0 && open.size + len > max) {
        rotate(path, keep);
        // When no new file can be made, the line goes to the renamed one
        // rather than nowhere.
        if let Ok(fresh) = append(path) {
            *open = fresh;
        }
    }
    let ok = open.file.write_all(text.as_bytes()).is_ok();
    if ok {
        open.size += len;
    }
    ok
}

/// `path.(keep-1)` becomes `path.keep` (the oldest goes), ..., `path`
/// becomes `path.1`.
fn rotate(path: &Path, keep: usize) {
    let numbered = |n: usize| {
        let mut p = path.as_os_str().to_owned();
        p.push(format!(".{n}"));
        PathBuf::from(p)
    };
    if keep == 0 {
        let _ = std::fs::remove_file(path);
        return;
    }
    let _ = std::fs::remove_file(numbered(keep));
    for n in (1..keep).rev() {
        let _ = std::fs::rename(numbered(n), numbered(n + 1));
    }
    let _ = std::fs::rename(path, numbered(1));
}

fn append(path: &Path) -> Result<Open> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::io(format!("opening the log file {}", path.display()), e))?;
    let size = file.metadata().map_or(0, |m| m.len());
    Ok(Open { file, size })
}

/// `2026-11-28T18:40:01.123Z`, without a date crate.
pub(crate) fn timestamp(at: SystemTime) -> String {
    let since = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60,
        since.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_utc_iso_8601() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_891_201_123);
        assert_eq!(timestamp(at), "2026-11-28T18:40:01.123Z");
        assert_eq!(
            timestamp(SystemTime::UNIX_EPOCH),
            "1970-01-01T00:00:00.000Z"
        );
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(timestamp(leap), "2000-02-29T00:00:00.000Z");
    }
}
