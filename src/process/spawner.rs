//! The one long-lived thread that every fork happens on.
//!
//! `PR_SET_PDEATHSIG` is tied to the thread that forked, not the process: a
//! worker forked from a tokio worker thread that later exits would be killed
//! with it. This thread lives as long as the process.

use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

use tokio::sync::oneshot;

use super::spawn::{self, SpawnError, SpawnRequest, Spawned};

enum Job {
    Spawn(SpawnRequest, oneshot::Sender<Result<Spawned, SpawnError>>),
    /// Replace the process (an upgrade of the master): only this thread
    /// may, as it is the parent of every worker.
    Exec(
        Box<crate::upgrade::ExecRequest>,
        oneshot::Sender<std::io::Error>,
    ),
}

static SPAWNER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();

fn sender() -> Result<mpsc::Sender<Job>, SpawnError> {
    let cell = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        let started = std::thread::Builder::new()
            .name("herd-spawner".into())
            .spawn(move || {
                for job in rx {
                    let (req, reply) = match job {
                        Job::Spawn(req, reply) => (req, reply),
                        Job::Exec(req, reply) => {
                            if !reply.is_closed() {
                                let _ = reply.send(crate::upgrade::exec(&req));
                            }
                            continue;
                        }
                    };
                    // Whoever asked is gone (run() was dropped): start
                    // nothing that nobody would supervise.
                    if reply.is_closed() {
                        continue;
                    }
                    if let Err(Ok(orphan)) = reply.send(spawn::spawn(req)) {
                        super::signal_group(orphan.pid, nix::sys::signal::Signal::SIGKILL);
                        let _ = nix::sys::wait::waitpid(orphan.pid, None);
                    }
                }
            });
        if let Err(e) = started {
            // Leave a sender whose receiver is gone: every spawn reports it.
            eprintln!("herd: cannot start the spawner thread: {e}");
        }
        Mutex::new(tx)
    });
    let guard = cell.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    Ok(guard.clone())
}

/// Forks and execs `req` on the spawner thread.
pub(crate) async fn spawn(req: SpawnRequest) -> Result<Spawned, SpawnError> {
    let gone = || SpawnError {
        stage: "reaching the spawner thread",
        source: std::io::Error::other("spawner thread is not running"),
    };
    let (tx, rx) = oneshot::channel();
    sender()?.send(Job::Spawn(req, tx)).map_err(|_| gone())?;
    rx.await.map_err(|_| gone())?
}

/// Replaces the process with `req` on the spawner thread; returns only
/// with the reason it could not.
pub(crate) async fn exec(req: crate::upgrade::ExecRequest) -> std::io::Error {
    let gone = || std::io::Error::other("the spawner thread is not running");
    let (tx, rx) = oneshot::channel();
    let Ok(sender) = sender() else {
        return gone();
    };
    if sender.send(Job::Exec(Box::new(req), tx)).is_err() {
        return gone();
    }
    rx.await.unwrap_or_else(|_| gone())
}
