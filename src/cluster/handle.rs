//! [`Handle`]: controls and observes a running cluster from any task.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use crate::types::{Error, Phase, ReloadReport, Result, Signal, WorkerInfo};
use tokio::sync::{broadcast, mpsc, watch};

use crate::observe::event::{Event, OutputLine};
use crate::process::command::prepare_command;
pub use crate::process::command::WorkerCommand;
use crate::supervisor::reload::Target;
use crate::supervisor::{self, Control, Shared, Snapshot};

/// Controls and observes a cluster. Cheap to clone; usable from any task.
///
/// # Before `run()`
///
/// A handle works from the moment the cluster is built. A control sent
/// before [`Cluster::run`](crate::Cluster::run) waits for it:
/// [`Handle::shutdown`] and [`Handle::kill`] make `run()` start no worker
/// and return at once; [`Handle::reload`], [`Handle::restart`],
/// [`Handle::scale`], [`Handle::scale_by`], [`Handle::signal`],
/// [`Handle::set_command`] and [`Handle::upgrade`] are carried out once
/// the first workers have started. So do not `.await` one on the task
/// that is to call `run()` next: it would wait for ever. If the cluster is
/// dropped without running, each resolves to [`Error::NotRunning`]. The
/// readers answer at once ([`Handle::phase`] is
/// [`Phase::Created`](crate::Phase::Created), [`Handle::workers`] is
/// empty), and [`Handle::stopped`] waits for the end of `run()`.
#[derive(Debug, Clone)]
pub struct Handle {
    pub(super) control: mpsc::UnboundedSender<Control>,
    pub(super) snapshot: watch::Receiver<Snapshot>,
    /// What the event loop shares with every handle.
    pub(super) shared: Shared,
    /// Whether Node programs get the preload, and whether another user's
    /// workers must read it (for [`Handle::set_command`]).
    pub(super) node_preload: Option<bool>,
    pub(super) addrs: Arc<[SocketAddr]>,
    pub(super) balance: crate::Balance,
}

impl Handle {
    /// Proxy mode: the connections the master forwards to each worker now,
    /// draining workers included, by slot and pid. Empty in the other modes.
    pub fn proxied_connections(&self) -> Vec<crate::proxy::Proxied> {
        let backends = self
            .shared
            .backends
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<_> = backends
            .values()
            .map(|b| crate::proxy::Proxied {
                slot: b.slot,
                pid: b.pid,
                open: b.active(),
                requests: b.total.load(std::sync::atomic::Ordering::Relaxed),
            })
            .collect();
        v.sort_unstable_by_key(|p| (p.slot, p.pid));
        v
    }

    /// Sends `signal` to slot `slot`'s worker (to its app's process when a
    /// launcher such as npm runs it) and returns the pid signalled, as
    /// `pm2 sendSignal` does: for apps that reopen logs on SIGUSR1, dump
    /// state on SIGUSR2, and the like.
    ///
    /// # Errors
    ///
    /// [`Error::NoSuchSlot`] for a slot out of range, [`Error::NoWorker`]
    /// when the slot has no worker now, [`Error::NotRunning`] if the
    /// cluster is not running.
    pub async fn signal(&self, slot: usize, signal: Signal) -> Result<u32> {
        self.ask(|reply| Control::Signal {
            slot,
            signal: signal.to_nix(),
            reply,
        })
        .await
    }

    /// Resolves once the cluster has stopped and every worker is reaped,
    /// however the stop came (a signal, [`Handle::shutdown`], every slot
    /// failing), without asking for it.
    pub async fn stopped(&self) {
        let mut rx = self.snapshot.clone();
        let _ = rx.wait_for(|s| s.phase == Phase::Stopped).await;
    }

    /// Proxy mode: the connection limit and how often it and the idle
    /// timeout bit. All zero in the other modes.
    pub fn proxy_stats(&self) -> crate::proxy::ProxyStats {
        self.shared.counters.stats()
    }

    /// Stops every worker gracefully (stop signal, drain timeout, SIGKILL)
    /// and resolves when all are reaped.
    ///
    /// # Errors
    ///
    /// [`Error::NotRunning`] if the cluster was dropped without stopping.
    pub async fn shutdown(&self) -> Result<()> {
        self.send_and_wait(Control::Stop { graceful: true }).await
    }

    /// SIGKILLs every worker's process group at once and resolves when all
    /// are reaped.
    ///
    /// # Errors
    ///
    /// [`Error::NotRunning`] if the cluster was dropped without stopping.
    pub async fn kill(&self) -> Result<()> {
        self.send_and_wait(Control::Stop { graceful: false }).await
    }

    /// Rolling reload: slot by slot, a successor starts on the same
    /// sockets, and only once it is ready does the predecessor get the stop
    /// signal and drain. Resolves to what happened. A reload asked for
    /// during a reload runs once after it (requests are merged), never in
    /// parallel. A successor that exits or misses the start timeout aborts
    /// the reload: its predecessor and every slot not yet reached keep
    /// their workers.
    ///
    /// # Errors
    ///
    /// [`Error::NotRunning`] if the cluster is not running or stops first.
    pub async fn reload(&self) -> Result<ReloadReport> {
        self.reload_target(Target::All).await
    }

    /// Soft restart of one slot, successor first, as a reload does.
    ///
    /// # Errors
    ///
    /// [`Error::NoSuchSlot`] for a slot out of range, [`Error::NotRunning`]
    /// if the cluster is not running.
    pub async fn restart(&self, slot: usize) -> Result<ReloadReport> {
        self.reload_target(Target::Slot(slot)).await
    }

    async fn reload_target(&self, target: Target) -> Result<ReloadReport> {
        self.ask(|reply| Control::Reload { target, reply }).await
    }

    /// Sends a control that carries its reply channel and waits for it.
    async fn ask<T>(
        &self,
        control: impl FnOnce(tokio::sync::oneshot::Sender<Result<T>>) -> Control,
    ) -> Result<T> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.control
            .send(control(reply))
            .map_err(|_| Error::NotRunning)?;
        rx.await.map_err(|_| Error::NotRunning)?
    }

    async fn send_and_wait(&self, control: Control) -> Result<()> {
        let _ = self.control.send(control);
        let mut rx = self.snapshot.clone();
        rx.wait_for(|s| s.phase == Phase::Stopped)
            .await
            .map(|_| ())
            .map_err(|_| Error::NotRunning)
    }

    /// A snapshot of every slot.
    pub fn workers(&self) -> Vec<WorkerInfo> {
        self.snapshot.borrow().workers.clone()
    }

    /// Where the cluster is in its life.
    pub fn phase(&self) -> Phase {
        self.snapshot.borrow().phase
    }

    /// Subscribes to lifecycle events from now on. The stream ends
    /// ([`broadcast::error::RecvError::Closed`]) after
    /// [`Event::Stopped`].
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.shared.log.subscribe()
    }

    /// Subscribes to every line the workers write from now on, with slot,
    /// pid and stream, whether or not it is also forwarded
    /// ([`Builder::forward_output`](crate::Builder::forward_output)). A subscriber more than 4096 lines
    /// behind misses lines ([`broadcast::error::RecvError::Lagged`]); the
    /// workers are never held back for it. Lines are copied only while
    /// somebody subscribes. The stream ends
    /// ([`broadcast::error::RecvError::Closed`]) once the cluster has
    /// stopped, as [`Handle::events`] does, even while handles live on.
    pub fn output(&self) -> broadcast::Receiver<OutputLine> {
        self.shared.log.subscribe_output()
    }

    /// Every worker line, with the workers' pipes waiting for the reader
    /// (the log files' subscription).
    pub(crate) fn lossless_output(&self) -> tokio::sync::mpsc::Receiver<OutputLine> {
        self.shared.log.subscribe_lossless()
    }

    /// [`Handle::events`] as a [`Stream`](tokio_stream::Stream): a reader
    /// that falls behind gets a [`Missed`](crate::Missed) item and goes on,
    /// and the stream ends after [`Event::Stopped`].
    ///
    /// ```no_run
    /// use tokio_stream::StreamExt;
    /// # async fn demo(handle: herd::Handle) {
    /// let mut events = handle.event_stream();
    /// while let Some(event) = events.next().await {
    ///     match event {
    ///         Ok(event) => println!("{} {event}", event.name()),
    ///         Err(missed) => eprintln!("{missed}"),
    ///     }
    /// }
    /// # }
    /// ```
    pub fn event_stream(
        &self,
    ) -> impl tokio_stream::Stream<Item = std::result::Result<Event, crate::Missed>>
           + Send
           + Unpin
           + 'static {
        lagging_as_missed(self.events())
    }

    /// [`Handle::output`] as a [`Stream`](tokio_stream::Stream), as
    /// [`Handle::event_stream`] is: lag is an item, and the stream ends
    /// once the cluster has stopped.
    pub fn output_stream(
        &self,
    ) -> impl tokio_stream::Stream<Item = std::result::Result<OutputLine, crate::Missed>>
           + Send
           + Unpin
           + 'static {
        lagging_as_missed(self.output())
    }

    /// Sets what every worker started from now on runs (the next reload or
    /// restart): a new release directory, new arguments, a new
    /// environment. It is checked as [`Builder::build`](crate::Builder::build) checks the first
    /// (the program found, the directory present); running workers are left
    /// alone. Follow it with [`Handle::reload`].
    ///
    /// ```no_run
    /// # async fn demo(handle: herd::Handle) -> herd::Result<()> {
    /// let next = herd::WorkerCommand::new("node")
    ///     .arg("server.js")
    ///     .current_dir("/srv/app/releases/42")
    ///     .env("RELEASE", "42");
    /// handle.set_command(next).await?;
    /// let report = handle.reload().await?;
    /// # let _ = report; Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// What [`Builder::build`](crate::Builder::build) says of a bad program, directory or
    /// environment; [`Error::InvalidSetting`] (`command`) for a Node program
    /// in place of one that is not, or the other way round;
    /// [`Error::NotRunning`] once the cluster has stopped.
    pub async fn set_command(&self, command: WorkerCommand) -> Result<()> {
        let prepared = prepare_command(&command, self.node_preload)?;
        self.ask(|reply| Control::SetCommand {
            command: Box::new(prepared),
            reply,
        })
        .await
    }

    /// Takes new settings from now on (drain timeout, stop signal,
    /// restart policy and backoff, limits, ...), without replacing a
    /// worker: what the next stop, restart, start or sample does follows
    /// them. The sockets, the mode and the command are not among them
    /// ([`Handle::set_command`] changes the command).
    ///
    /// ```no_run
    /// # async fn demo(handle: herd::Handle) -> herd::Result<()> {
    /// use std::time::Duration;
    /// handle
    ///     .update(herd::Update::new().drain_timeout(Duration::from_secs(60)).max_memory(Some(512 << 20)))
    ///     .await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidSetting`] for what [`Builder::build`](crate::Builder::build)
    /// would refuse (a stop signal that cannot stop, a zero start timeout,
    /// a request limit outside HTTP mode); [`Error::NotRunning`].
    pub async fn update(&self, update: crate::Update) -> Result<()> {
        update.check(self.balance.is_http())?;
        self.ask(|reply| Control::Update {
            update: Box::new(update),
            reply,
        })
        .await
    }

    /// Scales the cluster to `workers` slots, in every balance mode. New
    /// slots start a worker at once (with reuseport, on a socket of their
    /// own that joins the group). The highest slots are removed: their
    /// workers drain as in a stop, and connections still queued on their
    /// sockets are passed on. SIGTTIN and SIGTTOU do the same by one (as
    /// gunicorn). Returns the number of slots before and after.
    ///
    /// # Errors
    ///
    /// [`Error::ZeroWorkers`]; [`Error::InvalidSetting`] (`workers`) while
    /// a reload runs or removed slots still drain, or beyond reuseport's
    /// steering limit; [`Error::Listen`] when a new slot's socket cannot be
    /// bound (nothing changes then); [`Error::NotRunning`].
    pub async fn scale(&self, workers: usize) -> Result<(usize, usize)> {
        self.ask(|reply| Control::Scale {
            to: supervisor::Scale::To(workers),
            reply,
        })
        .await
    }

    /// [`Handle::scale`] by a difference: `+2`, `-1` (never below one
    /// slot). Returns the number of slots before and after.
    ///
    /// # Errors
    ///
    /// As [`Handle::scale`].
    pub async fn scale_by(&self, delta: isize) -> Result<(usize, usize)> {
        self.ask(|reply| Control::Scale {
            to: supervisor::Scale::By(delta),
            reply,
        })
        .await
    }

    /// Upgrades the master in place, as SIGUSR2 does: the binary this
    /// process was started from (the file now at that path: the new
    /// version) first runs once as a pre-flight check with the same
    /// arguments, then this process re-executes it. The pid stays, the
    /// listening sockets and the workers are handed on (they keep serving
    /// and keep their pids), and the new master supervises them. Waits,
    /// while a reload runs or workers start or drain, for the cluster to
    /// settle first (at most a minute).
    ///
    /// Resolves once the pre-flight passed and the exec is under way:
    /// moments later this process runs the new binary, which emits
    /// [`Event::Upgraded`].
    ///
    /// # Errors
    ///
    /// [`Error::Upgrade`] naming why, and the master goes on as before:
    /// the pre-flight failed (its output is quoted), proxy mode (the master
    /// relays every connection, which an exec would cut), the cluster is
    /// stopping or did not settle, another cluster runs in this process
    /// (the exec would end it), the exec failed.
    /// [`Error::NotRunning`].
    pub async fn upgrade(&self) -> Result<()> {
        self.ask(|reply| Control::Upgrade { reply }).await
    }

    /// How many master upgrades in place this cluster has been through.
    pub fn upgrades(&self) -> u32 {
        self.snapshot.borrow().upgrades
    }

    /// Hands a duplicate of `fd` to the next master at an upgrade, under
    /// `key`, where [`Handle::take_carried`] finds it: a socket the program
    /// serves besides the cluster's (an admin or metrics listener), which
    /// then never closes. [`crate::control::serve`] carries its socket.
    ///
    /// # Errors
    ///
    /// The fd cannot be duplicated.
    pub fn carry(&self, key: &str, fd: impl std::os::fd::AsFd) -> std::io::Result<()> {
        self.shared
            .carried
            .carry(key, fd.as_fd().try_clone_to_owned()?);
        Ok(())
    }

    /// The fd the previous master carried under `key`, in a master started
    /// by an upgrade (once; None otherwise).
    pub fn take_carried(&self, key: &str) -> Option<OwnedFd> {
        self.shared.carried.take(key)
    }

    /// The cluster's name ([`Builder::name`](crate::Builder::name)).
    pub fn name(&self) -> Option<&str> {
        self.shared.log.name()
    }

    /// The bound listening addresses.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// How the workers share the addresses.
    pub fn balance(&self) -> crate::Balance {
        self.balance
    }
}

/// A broadcast receiver as a stream whose lag is a [`crate::Missed`] item.
fn lagging_as_missed<T: Clone + Send + 'static>(
    rx: broadcast::Receiver<T>,
) -> impl tokio_stream::Stream<Item = std::result::Result<T, crate::Missed>> + Send + Unpin + 'static
{
    use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
    use tokio_stream::StreamExt;
    tokio_stream::wrappers::BroadcastStream::new(rx)
        .map(|item| item.map_err(|BroadcastStreamRecvError::Lagged(n)| crate::Missed(n)))
}

#[cfg(test)]
mod tests {
    use tokio_stream::StreamExt;

    use super::*;

    #[tokio::test]
    async fn a_reader_that_fell_behind_gets_the_count_and_goes_on_to_the_end() {
        let (tx, rx) = broadcast::channel(2);
        let mut stream = lagging_as_missed(rx);
        for i in 0..5 {
            tx.send(i).unwrap();
        }
        drop(tx);
        let mut items = Vec::new();
        while let Some(item) = stream.next().await {
            items.push(item);
        }
        assert_eq!(items, vec![Err(crate::Missed(3)), Ok(3), Ok(4)]);
    }
}
