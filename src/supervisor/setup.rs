//! Setting the loop up: readiness resolved from the configuration, the
//! notify socket, the proxy plane, the cgroup and the sentinel, the
//! channels the loop listens on, and what a previous master handed on.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use super::inbox::{Reaped, Signals};
use super::slot::Slot;
use super::traffic::default_connection_limit;
use super::{random_unit, ReadyPlan, Supervisor};
use super::{Config, Shared, Snapshot};
use crate::net::Listeners;
use crate::observe::event::Notice;
use crate::process::cgroup::ClusterCgroup;
use crate::process::os::Processes;
use crate::process::sentinel::Sentinel;
use crate::proxy::plane::{self, Plane};
use crate::ready::notify::NotifySocket;
use crate::ready::{Note, Readiness};
use crate::service::ServiceNotify;
use crate::types::{Error, Phase, Result};

/// The receiving ends the loop selects over, made with the supervisor.
pub(super) struct Inbox {
    pub(super) signals: Option<Signals>,
    pub(super) reaped: mpsc::UnboundedReceiver<Reaped>,
    pub(super) notes: mpsc::UnboundedReceiver<Note>,
    pub(super) idle: mpsc::UnboundedReceiver<u32>,
    pub(super) listen: mpsc::UnboundedReceiver<()>,
    pub(super) refusing: mpsc::UnboundedReceiver<u32>,
}

impl Supervisor {
    /// A supervisor for `config`, with its inbox, and whether it adopted
    /// the workers of a previous master (then it starts none).
    pub(super) fn set_up(
        config: Config,
        listeners: Listeners,
        inherited: Option<crate::upgrade::Adopted>,
        shared: Shared,
        snapshot: watch::Sender<Snapshot>,
        os: Arc<dyn Processes>,
    ) -> Result<(Supervisor, Inbox, bool)> {
        let signals = if config.handle_signals {
            Some(Signals::install(config.upgrade_in_place)?)
        } else {
            None
        };
        if let Some(stamp) = &config.line_stamp {
            crate::observe::writer::set_stamp(Some(stamp.clone()));
        }
        let (reaped_tx, reaped_rx) = mpsc::unbounded_channel();
        let (notes_tx, notes_rx) = mpsc::unbounded_channel();
        let (idle_tx, idle_rx) = mpsc::unbounded_channel::<u32>();
        let (listen_tx, listen_rx) = mpsc::unbounded_channel::<()>();
        let (refusing_tx, refusing_rx) = mpsc::unbounded_channel::<u32>();

        let mode = match config.readiness {
            // A worker that binds PORT itself is ready when the port answers.
            Readiness::Auto if config.port_contract => Readiness::Probe,
            Readiness::Auto if config.command.preload.is_some() => Readiness::Listen,
            Readiness::Auto => Readiness::None,
            other => other,
        };
        // Tasks that live as long as the cluster runs, and no longer: an
        // embedding program's runtime may go on after run() returns.
        let mut background = Vec::new();
        let mut inherited = inherited;
        let mut notify_fd = None;
        let inherited_notify = inherited.as_mut().and_then(|a| a.notify.take());
        let notify_env = if mode == Readiness::Notify || config.watchdog.is_some() {
            // After an upgrade, the socket the workers already send to.
            let socket = match inherited_notify {
                Some((fd, name)) => NotifySocket::adopt(fd, name),
                None => NotifySocket::bind(),
            }
            .map_err(|e| Error::io("creating the notify socket", e))?;
            let env = socket.env_value.clone();
            notify_fd = socket.duplicate().ok();
            background.push(tokio::spawn(socket.serve(notes_tx.clone())));
            Some(env)
        } else {
            None
        };
        let ready = ReadyPlan {
            mode,
            slot: super::slot::Readiness {
                after: match mode {
                    Readiness::Delay(d) => Some(d),
                    _ => None,
                },
                reported: matches!(
                    mode,
                    Readiness::Notify | Readiness::Ipc | Readiness::Listen | Readiness::Probe
                ),
                start_timeout: config.start_timeout,
                settle: if mode == Readiness::None {
                    config.settle
                } else {
                    None
                },
            },
            watchdog: config.watchdog,
        };

        let proxy = config
            .proxy
            .map(|proxy_config| {
                let limit = config.max_connections.unwrap_or_else(|| {
                    default_connection_limit(config.workers, listeners.local_addrs().len())
                });
                let private_unix = proxy_config.header.is_some() && !config.port_contract;
                let settings = plane::Settings {
                    config: proxy_config,
                    limit,
                    private_unix,
                    seed: (random_unit() * u64::MAX as f64) as u64,
                    trusted: config.trusted_proxies.clone().into(),
                };
                Plane::start(
                    settings,
                    &listeners,
                    shared.backends.clone(),
                    shared.counters.clone(),
                    idle_tx.clone(),
                    refusing_tx.clone(),
                )
            })
            .transpose()?
            .map(|started| {
                background.extend(started.tasks);
                started.plane
            });

        // A fake operating system's workers have no cgroups.
        let inherited_cgroup = inherited.as_mut().and_then(|a| a.cgroup.take());
        let cgroup = match inherited_cgroup {
            Some(dir) => Some(Ok(Some(ClusterCgroup::adopt(dir)))),
            None => os.cgroups().then(ClusterCgroup::create),
        };
        let cgroup = match cgroup {
            None => None,
            Some(Ok(c)) => c,
            Some(Err(e)) => {
                shared.log.notice(
                    None,
                    Notice::NoCgroup,
                    format!(
                        "cannot create a cgroup for the workers ({e}); a descendant that leaves a \
                         worker's process group may outlive it"
                    ),
                );
                None
            }
        };
        let inherited_sentinel = inherited.as_mut().and_then(|a| a.sentinel.take());
        let sentinel = match inherited_sentinel {
            Some((pipe, pid)) => Some(Sentinel::adopt(pipe, pid)),
            None if os.cgroups() => {
                match Sentinel::start(cgroup.as_ref().map(|c| c.kill_path()).as_deref()) {
                    Ok(s) => Some(s),
                    Err(e) => {
                        shared.log.notice(
                            None,
                            Notice::NoCgroup,
                            format!(
                                "cannot start the sentinel that ends the workers if the master is \
                                 killed ({e}); they get the parent-death signal instead, and an \
                                 upgrade in place would end them"
                            ),
                        );
                        None
                    }
                }
            }
            None => None,
        };
        let workers = config.workers;
        let sup_config_notify = config.service_notify;
        let mut sup = Supervisor {
            slots: (0..config.workers).map(Slot::new).collect(),
            config,
            listeners,
            shared,
            snapshot,
            phase: Phase::Running,
            reaped_tx,
            notes_tx,
            notify_env,
            ready,
            fatal: None,
            target: workers,
            reload: None,
            queued: Vec::new(),
            proxy,
            background,
            listen_watch: Vec::new(),
            relays: Default::default(),
            listen_tx,
            foreign_notes: crate::observe::throttle::LogThrottle::default(),
            cgroup,
            workers: HashMap::new(),
            pending_stop: None,
            service: if sup_config_notify {
                ServiceNotify::from_env()
            } else {
                None
            },
            os,
            sentinel,
            notify_fd,
            upgrade_requests: Vec::new(),
            upgrade_since: None,
            upgrades: 0,
        };
        let adopting = inherited.is_some();
        if let Some(adopted) = inherited {
            sup.adopt(adopted);
        }
        sup.changed();
        sup.watch_listeners();
        let inbox = Inbox {
            signals,
            reaped: reaped_rx,
            notes: notes_rx,
            idle: idle_rx,
            listen: listen_rx,
            refusing: refusing_rx,
        };
        Ok((sup, inbox, adopting))
    }
}
