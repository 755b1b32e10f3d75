//! Steering traffic to the slots that serve: the reuseport group's steering
//! program, the proxy's rotation, the service manager's status; queues
//! of empty slots passed on; listeners that hang up; backends that
//! refuse.

use nix::unistd::Pid;

use super::reload::Target;
use crate::observe::event::{Event, Notice};
use crate::types::Phase;

use super::Supervisor;

/// Proxy mode's default connection limit: what the master's fd limit
/// leaves after the workers' fds and a reserve for spawning (each client
/// connection takes two fds: the client's and the one to the worker).
pub(super) fn default_connection_limit(workers: usize, addresses: usize) -> usize {
    let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(soft, _)| soft);
    let per_worker = 4 + 2 * addresses as u64;
    let reserve = 128 + workers as u64 * per_worker;
    usize::try_from(soft.saturating_sub(reserve) / 2)
        .unwrap_or(usize::MAX)
        .max(1)
}

impl Supervisor {
    /// Steers new connections to the slots that have a ready worker, when
    /// that set changed, and publishes the new snapshot.
    pub(super) fn changed(&mut self) {
        let live: Vec<usize> = self
            .slots
            .iter()
            .filter(|s| s.is_serving())
            .map(|s| s.index)
            .collect();
        if let Some(service) = &mut self.service {
            let wanted = self.target.min(self.slots.len());
            let settled = self.phase == Phase::Running
                && self.slots[..wanted]
                    .iter()
                    .all(|s| s.is_serving() || s.state == crate::WorkerState::Failed);
            service.slots(live.len(), settled, wanted, self.reload.is_some());
        }
        if let Err(e) = self.listeners.steer_to(&live) {
            self.notice(
                None,
                Notice::SteeringFailed,
                format!(
                    "cannot steer connections away from empty slots ({e}); their queues wait \
                     for the next worker"
                ),
            );
        }
        if let Some(plane) = &self.proxy {
            plane.rotate(live.iter().filter_map(|&i| self.slots[i].pid()));
        }
        self.publish_snapshot();
    }

    /// Watches every listening socket for a hang-up (from now on).
    pub(super) fn watch_listeners(&mut self) {
        for task in self.listen_watch.drain(..) {
            task.abort();
        }
        // The proxy's public sockets are the master's alone.
        if self.proxy.is_none() {
            self.listen_watch =
                crate::net::watch::watch(self.listeners.duplicates(), &self.listen_tx);
        }
    }

    /// A listening socket hung up: each that no longer listens is replaced
    /// by a new one bound the same way, and the workers that held it are
    /// replaced (successor first) so that they serve on the new one.
    pub(super) async fn on_listener_hangup(&mut self) {
        let dead = self.listeners.dead();
        if dead.is_empty() || self.phase != Phase::Running {
            self.watch_listeners();
            return;
        }
        let mut slots = Vec::new();
        for (a, k) in dead {
            let addr = self.listeners.local_addrs()[a];
            match self.listeners.replace(a, k) {
                Ok(()) => {
                    let slot = self.listeners.per_slot().then_some(k);
                    self.emit(Event::ListenerReplaced { addr, slot });
                    slots.push(slot);
                }
                Err(e) => self.notice(
                    None,
                    Notice::ListenerLost,
                    format!(
                        "the listening socket on {addr} stopped listening and cannot be \
                         replaced: {}",
                        e.chain()
                    ),
                ),
            }
        }
        self.changed();
        self.watch_listeners();
        let target = if slots.iter().any(Option::is_none) {
            Target::All
        } else {
            match slots.as_slice() {
                [Some(k)] => Target::Slot(*k),
                _ => Target::All,
            }
        };
        self.request_reload(target, None).await;
    }

    /// Proxy mode: a live worker closed its private listener. The master's
    /// copy would keep it listening and connections would queue there for
    /// nobody: what is queued is passed on and the copy closed, so the
    /// next connections are refused and go to another worker.
    pub(super) fn on_refusing(&mut self, pid: Pid) {
        let Some((index, _)) = self.slot_of(pid) else {
            return;
        };
        self.notice(
            Some(index),
            Notice::WorkerRefusing,
            format!("pid {pid} closed its listener; it gets no more connections"),
        );
        let passed = self.proxy.as_mut().map_or(0, |p| p.refusing(pid));
        self.passed_on(index, passed);
    }

    /// Proxy mode: says that connections a worker never accepted were
    /// passed on to another.
    pub(super) fn passed_on(&self, slot: usize, passed: usize) {
        if passed > 0 {
            self.notice(
                Some(slot),
                Notice::ConnectionsPassedOn,
                format!(
                    "passing {passed} connection(s) its worker never accepted on to another \
                     worker"
                ),
            );
        }
    }

    /// Passes the connections queued on an empty slot's socket on to the
    /// live slots, so that they do not wait for a worker that is far off.
    pub(super) fn rescue_queue(&mut self, slot: usize) {
        let slot_is_out = self.listeners.steered_away(slot) && !self.slots[slot].is_live();
        if !slot_is_out {
            return;
        }
        let queued = self.listeners.drain_slot(slot);
        self.forward_queued(slot, queued);
    }

    /// Passes connections taken off `slot`'s socket on to the live slots.
    pub(super) fn forward_queued(
        &self,
        slot: usize,
        queued: Vec<(std::net::TcpStream, std::net::SocketAddr)>,
    ) {
        if queued.is_empty() {
            return;
        }
        self.notice(
            Some(slot),
            Notice::ConnectionsPassedOn,
            format!(
                "passing {} queued connection(s) on to live slots",
                queued.len()
            ),
        );
        for (conn, target) in queued {
            tokio::spawn(crate::net::rescue::forward(conn, target));
        }
    }
}
