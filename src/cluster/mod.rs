//! The public front: [`Builder`] collects the settings (`builder.rs`),
//! [`Builder::build`] checks them and binds (`validate.rs`), [`Cluster`]
//! runs, [`Handle`] controls and observes a running cluster from anywhere
//! (`handle.rs`).

mod builder;
mod handle;
mod update;
mod validate;

pub use builder::Builder;
pub use handle::Handle;
pub use update::Update;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::types::{Phase, Result, Signal};
use tokio::sync::{mpsc, watch};

use crate::net::Listeners;
pub use crate::process::command::WorkerCommand;
use crate::supervisor::{self, Config, Control, Shared, Snapshot};

/// Default time a stopping worker gets to finish its requests before its
/// process group is SIGKILLed.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Default signal that asks a worker to stop.
pub const DEFAULT_STOP_SIGNAL: Signal = Signal::TERM;
/// Default settle window: how long a reload's successor must stay up when
/// it cannot report readiness ([`Readiness::None`](crate::Readiness::None)) before it replaces its
/// predecessor. A release that fails at start-up (an import error, a bad
/// configuration file) dies within it: Python and gunicorn with an
/// `ImportError` exit within about 0.5 s on the 2-core test machine, Node
/// with a missing module within 0.1 s.
pub const DEFAULT_SETTLE: Duration = Duration::from_secs(1);
/// How often workers' CPU and memory are read by default.
pub const DEFAULT_SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
/// A built cluster: its sockets are bound, its workers not yet started.
#[derive(Debug)]
pub struct Cluster {
    config: Config,
    listeners: Listeners,
    /// What a previous master handed on (an upgrade in place).
    inherited: Option<crate::upgrade::Adopted>,
    handle: Handle,
    control_rx: mpsc::UnboundedReceiver<Control>,
    snapshot_tx: watch::Sender<Snapshot>,
    /// This process is a new binary's pre-flight run: `run()` confirms and
    /// starts nothing.
    preflight: bool,
}

impl Cluster {
    /// Starts configuring a cluster.
    pub fn builder() -> Builder {
        Builder::default()
    }

    fn new(
        config: Config,
        listeners: Listeners,
        inherited: Option<crate::upgrade::Adopted>,
    ) -> Self {
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let (snapshot_tx, snapshot_rx) = watch::channel(Snapshot {
            phase: Phase::Created,
            workers: Vec::new(),
            upgrades: 0,
        });
        let handle = Handle {
            control: control_tx,
            snapshot: snapshot_rx,
            shared: Shared::new(config.name.clone(), config.log_events),
            node_preload: config.node_preload.then_some(config.user.is_some()),
            addrs: listeners.local_addrs().into(),
            balance: listeners.balance(),
        };
        let mut inherited = inherited;
        if let Some(adopted) = &mut inherited {
            let mut incoming = handle
                .shared
                .carried
                .incoming
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            incoming.extend(std::mem::take(&mut adopted.carried));
        }
        Cluster {
            config,
            listeners,
            inherited,
            handle,
            control_rx,
            snapshot_tx,
            preflight: false,
        }
    }

    /// A handle to control and observe the cluster; cheap to clone.
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// The number of worker slots.
    pub fn worker_count(&self) -> usize {
        self.config.workers
    }

    /// The bound addresses, in the order they were configured (with the
    /// kernel's port where port 0 was given).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        self.listeners.local_addrs()
    }

    /// How the workers share the addresses (after the defaults and the
    /// sockets taken over were applied).
    pub fn balance(&self) -> crate::Balance {
        self.listeners.balance()
    }

    /// Starts the workers and supervises them until the cluster is stopped
    /// (by a signal or [`Handle::shutdown`]) and every worker is reaped.
    ///
    /// # Errors
    ///
    /// [`Error::Spawn`](crate::Error::Spawn) if a first worker cannot be started (every worker
    /// already started is stopped again), [`Error::AllSlotsFailed`](crate::Error::AllSlotsFailed) when
    /// every slot has tripped its crash-loop limit, [`Error::Io`](crate::Error::Io) if the
    /// signal handlers cannot be installed.
    pub async fn run(self) -> Result<()> {
        if self.preflight {
            // What the running master waits for: this binary, with this
            // configuration, would take over.
            println!("{}", crate::upgrade::CHECK_OK);
            return Ok(());
        }
        self.run_on(Arc::new(crate::process::os::Real)).await
    }

    /// Marks the cluster of a pre-flight run.
    fn preflight(mut self) -> Cluster {
        self.preflight = true;
        self
    }

    /// [`Cluster::run`] with worker processes started, signalled and
    /// reaped by `os` (a fake in the supervisor's unit tests).
    pub(crate) async fn run_on(self, os: Arc<dyn crate::process::os::Processes>) -> Result<()> {
        supervisor::run(
            self.config,
            self.listeners,
            self.inherited,
            self.handle.shared,
            self.control_rx,
            self.snapshot_tx,
            os,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Error, Supervision};

    #[test]
    fn a_missing_program_is_named() {
        let err = Cluster::builder()
            .command("surely-no-such-program-herd")
            .workers(1)
            .build()
            .unwrap_err();
        assert!(matches!(err, Error::ProgramNotFound { .. }), "{err:?}");
        assert!(err.to_string().contains("surely-no-such-program-herd"));
        let err = Cluster::builder()
            .command("./nope/server")
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("./nope/server"), "{err}");
    }

    #[test]
    fn a_non_executable_program_is_named() {
        let path = std::env::temp_dir().join(format!("herd-unit-noexec-{}", std::process::id()));
        std::fs::write(&path, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(
            &path,
            <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o644),
        )
        .unwrap();
        let err = Cluster::builder()
            .command(&path)
            .workers(1)
            .build()
            .unwrap_err();
        let _ = std::fs::remove_file(&path);
        assert!(matches!(err, Error::ProgramNotExecutable { .. }), "{err:?}");
        assert!(err.to_string().contains(&path.display().to_string()));
    }

    #[test]
    fn no_address_is_refused_unless_asked_for() {
        let err = Cluster::builder()
            .command("true")
            .workers(1)
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("Builder::listen"), "{err}");
        let cluster = Cluster::builder()
            .command("true")
            .workers(1)
            .without_sockets()
            .build()
            .unwrap();
        assert!(cluster.local_addrs().is_empty());
        let err = Cluster::builder()
            .command("true")
            .listen("127.0.0.1:0".parse().unwrap())
            .without_sockets()
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("without_sockets"), "{err}");
    }

    #[test]
    fn supervision_default_and_new_agree() {
        assert_eq!(Supervision::default(), Supervision::new());
    }

    #[test]
    fn zero_workers_and_uncatchable_stop_signals_are_refused() {
        let err = Cluster::builder().command("true").workers(0).build();
        assert!(matches!(err, Err(Error::ZeroWorkers)));
        let err = Cluster::builder()
            .command("true")
            .stop_signal(Signal::KILL)
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("SIGKILL"), "{err}");
    }
}
