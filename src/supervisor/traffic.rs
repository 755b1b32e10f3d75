//! Steering traffic to the slots that serve: the reuseport group's steering
//! program, the proxy's rotation, the service manager's status; queues
//! of empty slots passed on; listeners that hang up; backends that
//! refuse.

use nix::unistd::Pid;

use super::reload::Target;
use crate::observe::event::{Event, Notice};
use crate::types::Phase;

use super::{clock, Supervisor};

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

/// How long connections may wait on a ready worker's socket, none
/// accepted, before the worker is looked at for listeners of its own.
const NEVER_ACCEPTS_AFTER: std::time::Duration = std::time::Duration::from_secs(3);

impl Supervisor {
    /// Steers new connections to the slots that have a ready worker, when
    /// that set changed, and publishes the new snapshot.
    pub(super) fn changed(&mut self) {
        let live: Vec<usize> = self
            .slots
            .iter()
            .filter(|s| s.is_serving())
            .filter(|s| {
                !s.pid()
                    .is_some_and(|p| self.workers.get(&p).is_some_and(|w| w.never_accepts))
            })
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

    /// Reuseport: finds ready workers that accept nothing on their slot's
    /// socket while they listen on one of their own (a server given no
    /// `PORT`, or that ignores `LISTEN_FDS`). Such a slot is steered away
    /// from and its queue passed on, with a notice that names the fix.
    pub(super) fn check_accepting(&mut self) {
        if !self.listeners.per_slot() || self.phase != Phase::Running {
            return;
        }
        let now = clock();
        // Read only when a worker has looked stuck long enough: it lists
        // every socket of the machine.
        let mut table = None;
        let mut found = Vec::new();
        for index in 0..self.slots.len() {
            if !self.slots[index].is_serving() {
                continue;
            }
            let Some(pid) = self.slots[index].pid() else {
                continue;
            };
            let queued: u32 = self
                .listeners
                .fds_for_slot(index)
                .into_iter()
                .filter_map(crate::net::accepting::queued)
                .sum();
            let app = self.workers.get(&pid).and_then(|w| w.app);
            let w = self.worker(pid);
            if w.never_accepts {
                if queued > 0 {
                    found.push((index, pid, Vec::new(), queued, false));
                }
                continue;
            }
            match w.stuck {
                _ if queued == 0 => w.stuck = None,
                None => w.stuck = Some((now, queued)),
                // Something was accepted: not stuck.
                Some((_, before)) if queued < before => w.stuck = Some((now, queued)),
                Some((since, _)) if now.saturating_duration_since(since) >= NEVER_ACCEPTS_AFTER => {
                    let ours: Vec<u64> = (0..self.slots.len())
                        .flat_map(|i| self.listeners.fds_for_slot(i))
                        .filter_map(crate::net::accepting::inode)
                        .collect();
                    let table = table.get_or_insert_with(crate::net::accepting::listeners);
                    // Its own listeners, or those of the app it runs.
                    let own: Vec<std::net::SocketAddr> = std::iter::once(pid)
                        .chain(app)
                        .flat_map(|p| crate::net::accepting::socket_inodes(p.as_raw() as u32))
                        .filter(|ino| !ours.contains(ino))
                        .filter_map(|ino| table.get(&ino).map(|l| l.addr))
                        .collect();
                    if !own.is_empty() {
                        found.push((index, pid, own, queued, true));
                    }
                }
                Some(_) => {}
            }
        }
        for (index, pid, own, queued, first) in found {
            if first {
                self.worker(pid).never_accepts = true;
                let at: Vec<String> = own.iter().map(ToString::to_string).collect();
                self.notice(
                    Some(index),
                    Notice::NeverAccepts,
                    format!(
                        "pid {pid} has accepted none of the {queued} connection(s) waiting on \
                         herd's socket for {}s and listens on {} itself: its slot gets no more \
                         connections. Have it serve the socket herd passes (fd 3, LISTEN_FDS), \
                         or run it with --balance http --proxy-port so that it binds $PORT",
                        NEVER_ACCEPTS_AFTER.as_secs(),
                        at.join(" ")
                    ),
                );
                self.changed();
            }
            let waiting = self.listeners.drain_slot(index);
            self.forward_queued(index, waiting);
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
            tokio::spawn(crate::net::rescue::forward(
                conn,
                target,
                self.relays.clone(),
            ));
        }
    }
}
