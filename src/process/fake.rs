//! A fake operating system for the supervisor's tests (`supervisor/tests.rs`): worker
//! "processes" that are entries in a table, with a scripted behaviour, on
//! tokio's paused clock. Reloads, restarts, crash loops and drain timeouts
//! run through the real event loop (`Cluster::run_on`), with no process,
//! socket or sleep (watchexec-supervisor's fake child is the model).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::sync::oneshot;

use crate::process::os::{Launched, Processes};
use crate::process::spawn::{SpawnError, SpawnRequest};
use crate::types::Exit;

/// What a fake worker does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Behaviour {
    /// Runs until its stop signal, then exits 0 after `drain`.
    Serve { drain: Duration },
    /// Exits with `code` after `after`, whatever happens.
    Crash { after: Duration, code: i32 },
    /// Ignores its stop signal; only SIGKILL ends it.
    Stubborn,
}

/// A signal the supervisor sent, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sent {
    pub(crate) pid: u32,
    pub(crate) signal: Signal,
    pub(crate) group: bool,
    /// Tokio's clock when it was sent.
    pub(crate) at: tokio::time::Instant,
}

#[derive(Default)]
struct State {
    next_pid: i32,
    /// Behaviours for the next spawns, in order; then `default`.
    plan: VecDeque<Behaviour>,
    default: Option<Behaviour>,
    running: HashMap<Pid, (Behaviour, oneshot::Sender<Exit>)>,
    sent: Vec<Sent>,
    spawned: Vec<u32>,
}

/// The fake: cheap to clone, shared with the test that inspects it.
#[derive(Clone, Default)]
pub(crate) struct Fake(Arc<Mutex<State>>);

impl Fake {
    /// Every worker behaves as `default` unless [`Fake::then`] says
    /// otherwise for the next ones.
    pub(crate) fn new(default: Behaviour) -> Fake {
        let fake = Fake::default();
        {
            let mut s = fake.state();
            s.next_pid = 1_000_000;
            s.default = Some(default);
        }
        fake
    }

    /// The next spawn behaves as `b` (queued after earlier ones).
    pub(crate) fn then(&self, b: Behaviour) {
        self.state().plan.push_back(b);
    }

    pub(crate) fn sent(&self) -> Vec<Sent> {
        self.state().sent.clone()
    }

    pub(crate) fn spawned(&self) -> Vec<u32> {
        self.state().spawned.clone()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn exit(&self, pid: Pid, exit: Exit, after: Duration) {
        let tx = self.state().running.remove(&pid).map(|(_, tx)| tx);
        if let Some(tx) = tx {
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                let _ = tx.send(exit);
            });
        }
    }

    fn deliver(&self, pid: Pid, signal: Signal, group: bool) {
        let behaviour = {
            let mut s = self.state();
            s.sent.push(Sent {
                pid: pid.as_raw() as u32,
                signal,
                group,
                at: tokio::time::Instant::now(),
            });
            s.running.get(&pid).map(|(b, _)| *b)
        };
        match (signal, behaviour) {
            (_, None) => {}
            (Signal::SIGKILL, Some(_)) => {
                self.exit(pid, Exit::Signal(crate::Signal::KILL), Duration::ZERO)
            }
            (Signal::SIGTERM, Some(Behaviour::Serve { drain })) => {
                self.exit(pid, Exit::Code(0), drain)
            }
            _ => {}
        }
    }
}

impl Processes for Fake {
    fn spawn(
        &self,
        req: SpawnRequest,
    ) -> Pin<Box<dyn Future<Output = Result<Launched, SpawnError>> + Send + '_>> {
        // The listening sockets and the rest of the request are dropped:
        // nothing runs.
        drop(req);
        let (tx, rx) = oneshot::channel();
        let (pid, behaviour) = {
            let mut s = self.state();
            s.next_pid += 1;
            let pid = Pid::from_raw(s.next_pid);
            let behaviour = s
                .plan
                .pop_front()
                .or(s.default)
                .unwrap_or(Behaviour::Stubborn);
            s.running.insert(pid, (behaviour, tx));
            s.spawned.push(pid.as_raw() as u32);
            (pid, behaviour)
        };
        if let Behaviour::Crash { after, code } = behaviour {
            self.exit(pid, Exit::Code(code), after);
        }
        Box::pin(async move {
            Ok(Launched {
                pid,
                output: None,
                pidfd: None,
                reaped: Box::pin(async move {
                    Ok(rx.await.unwrap_or(Exit::Signal(crate::Signal::KILL)))
                }),
            })
        })
    }

    fn signal(&self, pid: Pid, sig: Signal) {
        self.deliver(pid, sig, false);
    }

    fn signal_group(&self, pid: Pid, sig: Signal) {
        self.deliver(pid, sig, true);
    }

    fn cgroups(&self) -> bool {
        false
    }
}
