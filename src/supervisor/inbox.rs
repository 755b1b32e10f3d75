//! What reaches the event loop: controls from a [`crate::Handle`], the
//! master's signals, reaped workers.

use std::io;

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};

use super::reload::{Target, Waiter};
use super::Supervisor;
use crate::types::{Error, Exit, Result};

/// A request from a [`Handle`].
#[derive(Debug)]
pub(crate) enum Control {
    Stop {
        graceful: bool,
    },
    Reload {
        target: Target,
        reply: Waiter,
    },
    Signal {
        slot: usize,
        signal: Signal,
        reply: tokio::sync::oneshot::Sender<Result<u32>>,
    },
    SetCommand {
        command: Box<crate::process::command::Command>,
        reply: tokio::sync::oneshot::Sender<Result<()>>,
    },
    Scale {
        to: Scale,
        reply: tokio::sync::oneshot::Sender<Result<(usize, usize)>>,
    },
    Upgrade {
        reply: tokio::sync::oneshot::Sender<Result<()>>,
    },
    Update {
        update: Box<crate::cluster::Update>,
        reply: tokio::sync::oneshot::Sender<Result<()>>,
    },
}

/// A number of workers to scale to.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Scale {
    To(usize),
    /// More or fewer than now (never below one).
    By(isize),
}

/// A worker that exited and was reaped.
pub(super) struct Reaped {
    pub(super) slot: usize,
    pub(super) generation: u64,
    pub(super) pid: Pid,
    pub(super) result: io::Result<Exit>,
    pub(super) tail: Vec<String>,
}

/// The master's signals, when `run()` handles them.
pub(super) struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    quit: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    ttin: tokio::signal::unix::Signal,
    ttou: tokio::signal::unix::Signal,
    /// Only with [`crate::Builder::upgrade_in_place`]: a stray SIGUSR2
    /// must not re-execute a program that did not ask for it.
    usr2: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    pub(super) fn install(upgrades: bool) -> Result<Self> {
        let kind = |k: SignalKind, name: &str| {
            signal(k).map_err(|e| Error::io(format!("installing the {name} handler"), e))
        };
        Ok(Signals {
            term: kind(SignalKind::terminate(), "SIGTERM")?,
            int: kind(SignalKind::interrupt(), "SIGINT")?,
            quit: kind(SignalKind::quit(), "SIGQUIT")?,
            hup: kind(SignalKind::hangup(), "SIGHUP")?,
            // gunicorn's: one worker more, one fewer.
            ttin: kind(SignalKind::from_raw(nix::libc::SIGTTIN), "SIGTTIN")?,
            ttou: kind(SignalKind::from_raw(nix::libc::SIGTTOU), "SIGTTOU")?,
            // nginx's: upgrade the master in place.
            usr2: if upgrades {
                Some(kind(SignalKind::user_defined2(), "SIGUSR2")?)
            } else {
                None
            },
        })
    }
}

/// Which master signal arrived.
pub(super) enum MasterSignal {
    Term,
    Int,
    Quit,
    Hup,
    Ttin,
    Ttou,
    Usr2,
}

pub(super) async fn next_signal(signals: &mut Option<Signals>) -> MasterSignal {
    match signals {
        Some(s) => tokio::select! {
            _ = s.term.recv() => MasterSignal::Term,
            _ = s.int.recv() => MasterSignal::Int,
            _ = s.quit.recv() => MasterSignal::Quit,
            _ = s.hup.recv() => MasterSignal::Hup,
            _ = s.ttin.recv() => MasterSignal::Ttin,
            _ = s.ttou.recv() => MasterSignal::Ttou,
            Some(_) = async {
                match &mut s.usr2 {
                    Some(usr2) => usr2.recv().await,
                    None => std::future::pending().await,
                }
            } => MasterSignal::Usr2,
        },
        None => std::future::pending().await,
    }
}

impl Supervisor {
    /// Carries out a control from a handle; the reply goes back on the
    /// control's own channel.
    pub(super) async fn on_control(&mut self, control: Control) {
        match control {
            Control::Stop { graceful } => self.stop(graceful),
            Control::Signal {
                slot,
                signal,
                reply,
            } => {
                let _ = reply.send(self.signal_slot(slot, signal));
            }
            Control::SetCommand { command, reply } => {
                let _ = reply.send(self.set_command(*command));
            }
            Control::Scale { to, reply } => {
                let _ = reply.send(self.scale(to).await);
            }
            Control::Reload { target, reply } => self.request_reload(target, Some(reply)).await,
            Control::Upgrade { reply } => self.request_upgrade(Some(reply)),
            Control::Update { update, reply } => {
                let _ = reply.send(self.update(*update));
            }
        }
    }
}
