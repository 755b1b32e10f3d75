//! Starting a worker in a slot: the spawn request built from the
//! configuration, the spawn, and what a failed one means for the slot.

use std::io;
use std::time::Duration;

use super::slot::{ExitOutcome, Role};
use crate::observe::event::{Event, Notice};
use crate::process::spawn::SpawnRequest;
use crate::proxy::{self};
use crate::ready::{ipc, pipe, Readiness};
use crate::types::{Error, Exit, Phase, Result};

use super::{clock, random_unit, Supervisor};

/// How long a slot waits before trying again to start a worker that could
/// not be spawned for want of the master's resources (fds, processes).
pub(super) const MASTER_LIMIT_RETRY: Duration = Duration::from_secs(1);

/// The exit reported for a spawn that failed after start-up, so that it
/// counts towards the crash-loop limit like any failed start.
pub(super) const SPAWN_FAILURE_EXIT: Exit = Exit::Code(127);

/// Whether a spawn failed for want of the master's (or the machine's)
/// resources rather than anything about the program.
pub(super) fn is_master_limit(error: &Error) -> bool {
    let Error::Spawn { source, .. } = error else {
        return false;
    };
    matches!(
        source.raw_os_error(),
        Some(nix::libc::EMFILE | nix::libc::ENFILE | nix::libc::EAGAIN | nix::libc::ENOMEM)
    )
}

impl Supervisor {
    pub(super) fn spawn_request(
        &self,
        index: usize,
        generation: u64,
        listen_fds: Vec<std::os::fd::OwnedFd>,
        ipc_child: Option<std::os::fd::OwnedFd>,
        port: Option<u16>,
    ) -> SpawnRequest {
        use crate::process::contract::{Channel, Preload, Spawn};
        let public_ports = self.listeners.ports();
        let env = Spawn {
            slot: index,
            generation,
            sockets: &listen_fds,
            public_ports: &public_ports,
            port,
            notify_socket: self.notify_env.as_deref(),
            watchdog: self.ready.watchdog,
            channel: ipc_child.as_ref().map(|fd| {
                if self.config.command.preload.is_some() {
                    Channel::ReadyPipe(fd)
                } else {
                    Channel::NodeIpc
                }
            }),
            preload: self.config.command.preload.as_deref().map(|path| Preload {
                path,
                wait_ready: self.ready.mode == Readiness::Ipc,
                serve_after: self
                    .config
                    .serve_on_start_timeout
                    .then_some(self.config.start_timeout),
                stop_signal: self.config.stop_signal,
            }),
        }
        .env(&self.config.command.env);
        // A worker run as another user finds that user's HOME, USER and
        // LOGNAME, not the master's.
        let mut env = env;
        if let Some(user) = &self.config.user {
            env.retain(|(k, _)| !user.env.iter().any(|(u, _)| u == k));
            env.extend(user.env.iter().cloned());
        }
        let extra_fds: Vec<_> = ipc_child.into_iter().collect();
        SpawnRequest {
            path: self.config.command.path.clone(),
            argv: self.config.command.argv.clone(),
            env,
            listen_fds,
            extra_fds,
            cwd: self.config.command.cwd.clone(),
            cgroup_procs: None,
            credentials: self.config.user.as_ref().map(|u| u.credentials.clone()),
            pdeathsig: self.sentinel.is_none(),
        }
    }

    pub(super) fn spawn_error(&self, slot: usize, stage: &'static str, source: io::Error) -> Error {
        Error::Spawn {
            program: self.config.command.program.clone(),
            slot,
            stage,
            source,
        }
    }

    /// Starts the next generation of slot `index` in `role` (the slot's
    /// worker, or a reload's successor next to it).
    pub(super) async fn start(&mut self, index: usize, role: Role) -> Result<()> {
        let generation = self.slots[index].next_generation();
        // The preload's pipe, or Node's IPC channel for a Node app without
        // the preload that says process.send('ready').
        let (ipc_master, ipc_child) = if self.config.command.preload.is_some() {
            let (m, c) = pipe::channel()
                .map_err(|e| self.spawn_error(index, "creating the readiness pipe", e))?;
            (Some(m), Some(c))
        } else if self.ready.mode == Readiness::Ipc {
            let (m, c) = ipc::channel()
                .map_err(|e| self.spawn_error(index, "creating the IPC channel", e))?;
            (Some(m), Some(c))
        } else {
            (None, None)
        };
        // Proxy mode: a private listener of its own, passed as fd 3, or
        // with the PORT contract a free port the worker binds itself.
        let port = if self.config.port_contract {
            Some(proxy::free_port().map_err(|e| self.spawn_error(index, "choosing a port", e))?)
        } else {
            None
        };
        // One private listener per public address, in the same order: the
        // accept loop of address i forwards to listener i.
        // With a PROXY header, which the worker believes, they are Unix
        // sockets only this user can reach; a loopback port would let any
        // local user connect and claim any client address.
        let private = match &self.proxy {
            Some(plane) if port.is_none() => Some(
                plane
                    .private_listeners(index, generation, self.listeners.local_addrs().len())
                    .map_err(|e| self.spawn_error(index, "creating the private listener", e))?,
            ),
            _ => None,
        };
        let raw_fds = match &private {
            Some(listeners) => listeners
                .iter()
                .map(|(socket, _)| std::os::fd::AsRawFd::as_raw_fd(socket))
                .collect(),
            None => self.listeners.fds_for_slot(index),
        };
        // The spawn request owns duplicates: if run() is dropped while the
        // spawner thread works on it, the master's sockets may close and
        // their numbers be reused, and the worker must not get another
        // socket under a reused number.
        let listen_fds = raw_fds
            .iter()
            .map(|&fd| {
                // SAFETY: every fd here is a socket the master (or `private`)
                // keeps open at least until this statement ends.
                unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }.try_clone_to_owned()
            })
            .collect::<io::Result<Vec<_>>>()
            .map_err(|e| self.spawn_error(index, "duplicating a listening socket", e))?;
        let mut req = self.spawn_request(
            index,
            generation,
            listen_fds,
            ipc_child,
            port.map(|a| a.port()),
        );
        let worker_cgroup = match &self.cgroup {
            Some(c) => match c.worker(index, generation) {
                Ok(w) => {
                    req.cgroup_procs = w.procs_fd().ok();
                    Some(w)
                }
                Err(e) => {
                    self.notice(
                        Some(index),
                        Notice::NoCgroup,
                        format!(
                            "cannot create the worker's cgroup ({e}); its process group alone \
                             holds its tree"
                        ),
                    );
                    None
                }
            },
            None => None,
        };
        let spawned = match self.os.spawn(req).await {
            Ok(s) => s,
            Err(e) => {
                self.changed();
                return Err(self.spawn_error(index, e.stage, e.source));
            }
        };
        let pid = spawned.pid;
        if let Some(w) = &worker_cgroup {
            self.worker(pid).cgroup = Some(w.clone());
        }
        if let Some(plane) = &mut self.proxy {
            if let (Readiness::Probe, Some(addr)) = (self.ready.mode, port) {
                tokio::spawn(proxy::probe(addr, pid, self.notes_tx.clone()));
            }
            // The master's copies of the private listeners stay open until
            // the worker is reaped: what is still queued then was never
            // accepted and is passed on.
            plane.add(index, pid, private, port);
        }
        self.slots[index].on_spawned(pid, generation, role, self.ready.slot, clock());
        // State first, then the event: a subscriber that reacts to the event
        // finds the snapshot already up to date.
        self.changed();
        self.emit(Event::Spawned {
            slot: index,
            generation,
            pid: pid.as_raw() as u32,
        });

        if let Some(sentinel) = &self.sentinel {
            sentinel.track(pid);
        }
        let channel = ipc_master.map(|fd| {
            let kind = if self.config.command.preload.is_some() {
                crate::upgrade::ChannelKind::Pipe
            } else {
                crate::upgrade::ChannelKind::Ipc
            };
            (kind, fd)
        });
        let attachment = super::monitors::Attachment {
            reaped: spawned.reaped,
            output: spawned.output,
            channel,
            cgroup: worker_cgroup,
        };
        let carry = super::monitors::Carry::of(spawned.pidfd, &attachment);
        self.attach(index, generation, pid, attachment, carry);
        Ok(())
    }

    /// A restart could not even exec: count it like a crash, so that a
    /// program deleted while running ends in a failed slot, not a hot loop.
    pub(super) fn on_spawn_failure(&mut self, index: usize, error: Error) {
        self.emit(Event::SpawnFailed {
            slot: index,
            error: error.chain(),
        });
        // Out of fds or processes is the master's (or the machine's)
        // state, not the worker's fault: retried, never counted as a
        // crash that could mark the slot failed.
        if is_master_limit(&error) && self.phase == Phase::Running {
            self.slots[index].retry_start(clock(), MASTER_LIMIT_RETRY);
            self.changed();
            self.rescue_queue(index);
            return;
        }
        let outcome = self.slots[index].on_start_failed(
            &self.config.supervision,
            clock(),
            SPAWN_FAILURE_EXIT,
            self.phase == Phase::Stopping,
            random_unit(),
        );
        self.changed();
        if let ExitOutcome::Current(decision) = outcome {
            self.report(index, decision, vec![error.chain()]);
        }
    }
}
