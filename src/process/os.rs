//! The supervisor's one seam to the operating system for worker processes:
//! start one, signal it or its group, learn how it ended.
//!
//! [`Real`] forks on the spawner thread, signals with `kill`/`killpg` and
//! reaps through the pidfd. The supervisor's unit tests put a fake behind
//! the same trait (`supervisor::fake`) and drive reloads, restarts, crash
//! loops and drain timeouts without a single process, on tokio's paused
//! clock.

use std::future::Future;
use std::io;
use std::os::fd::OwnedFd;
use std::pin::Pin;

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::spawn::{SpawnError, SpawnRequest};
use super::{reap, signal_group, signal_process, spawner};
use crate::types::Exit;

/// Resolves once the process has ended and been reaped.
pub(crate) type Reaped = Pin<Box<dyn Future<Output = io::Result<Exit>> + Send>>;

/// A started worker process.
pub(crate) struct Launched {
    pub(crate) pid: Pid,
    /// Read ends of its stdout and stderr, when it has them.
    pub(crate) output: Option<(OwnedFd, OwnedFd)>,
    pub(crate) reaped: Reaped,
    /// A duplicate of its pidfd, handed on by an upgrade (None: a fake
    /// process, which cannot be).
    pub(crate) pidfd: Option<OwnedFd>,
}

/// Starting, signalling and reaping worker processes.
pub(crate) trait Processes: Send + Sync + 'static {
    /// Starts `req`.
    fn spawn(
        &self,
        req: SpawnRequest,
    ) -> Pin<Box<dyn Future<Output = Result<Launched, SpawnError>> + Send + '_>>;

    /// Sends `sig` to one process; one that is gone is not an error.
    fn signal(&self, pid: Pid, sig: Signal);

    /// Sends `sig` to the process group `pid` leads.
    fn signal_group(&self, pid: Pid, sig: Signal);

    /// Whether workers get cgroups (only real processes do).
    fn cgroups(&self) -> bool {
        true
    }
}

/// The operating system.
pub(crate) struct Real;

impl Processes for Real {
    fn spawn(
        &self,
        req: SpawnRequest,
    ) -> Pin<Box<dyn Future<Output = Result<Launched, SpawnError>> + Send + '_>> {
        Box::pin(async move {
            let spawned = spawner::spawn(req).await?;
            let pid = spawned.pid;
            Ok(Launched {
                pid,
                output: Some((spawned.stdout, spawned.stderr)),
                pidfd: spawned.pidfd.try_clone().ok(),
                reaped: Box::pin(reap::wait(pid, spawned.pidfd)),
            })
        })
    }

    fn signal(&self, pid: Pid, sig: Signal) {
        signal_process(pid, sig);
    }

    fn signal_group(&self, pid: Pid, sig: Signal) {
        signal_group(pid, sig);
    }
}
