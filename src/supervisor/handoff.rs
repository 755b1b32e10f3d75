//! Handing the cluster to the next master: the request, the wait for the
//! cluster to settle, the description of every slot and worker, the
//! pre-flight of the new binary and the exec; and, in the new master,
//! adopting what the old one described.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::unistd::Pid;
use tokio::sync::mpsc;

use super::monitors::Carry;
use super::{clock, Reaped, Supervisor};
use crate::observe::event::Event;
use crate::process::cgroup::WorkerCgroup;
use crate::process::spawn::SpawnRequest;
use crate::process::{reap, spawner};
use crate::types::{Error, Phase, Result};
use crate::upgrade::{self as handoff, ListenerState, State, WorkerRecord};

/// How long an upgrade waits for the cluster to settle (a reload to end,
/// workers to start or drain) before it is abandoned.
const SETTLE_LIMIT: Duration = Duration::from_secs(60);
/// How long subscribers (an event printer) get to receive the `upgrading`
/// event before the exec ends them.
const EVENT_GRACE: Duration = Duration::from_millis(200);
/// How long an upgrade waits for the relays of rescued connections to
/// pause, each between two writes.
const RELAY_PAUSE_LIMIT: Duration = Duration::from_secs(1);

/// Clusters running in this process: an exec would end all but the one
/// that upgrades.
static RUNNING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Counts a running cluster until dropped.
pub(super) struct Running;

impl Running {
    pub(super) fn new() -> Running {
        RUNNING.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Running
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        RUNNING.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Supervisor {
    /// Takes over what the previous master handed on.
    pub(super) fn adopt(&mut self, adopted: handoff::Adopted) {
        let now = clock();
        self.upgrades = adopted.upgrades;
        let mut workers = adopted.workers;
        workers.sort_unstable_by_key(|w| w.slot);
        self.slots = adopted
            .slots
            .iter()
            .map(|s| {
                let worker = workers.iter().find(|w| w.slot == s.index).map(|w| {
                    (
                        Pid::from_raw(w.pid),
                        now.checked_sub(w.age).unwrap_or(now),
                        w.ready_for.and_then(|d| now.checked_sub(d)),
                    )
                });
                super::Slot::adopted(s, worker, self.ready.watchdog, now)
            })
            .collect();
        self.target = self.slots.len();
        let pids = workers.iter().map(|w| w.pid as u32).collect();
        for w in workers {
            let (slot, pid) = (w.slot, Pid::from_raw(w.pid));
            if let Some(dir) = w.cgroup {
                self.worker(pid).cgroup = Some(WorkerCgroup::adopt(dir));
            }
            if let Some(app) = w.app {
                self.worker(pid).app = Some(Pid::from_raw(app));
            }
            let generation = self.slots[slot].generation;
            self.attach_carried(
                slot,
                generation,
                pid,
                Carry {
                    pidfd: w.pidfd,
                    output: w.output,
                    channel: w.channel,
                },
            );
        }
        // The relays of rescued connections the previous master paused.
        self.relays.adopt(&self.shared.carried);
        self.emit(Event::Upgraded {
            upgrades: self.upgrades,
            workers: pids,
        });
    }

    /// An upgrade was asked for (SIGUSR2, [`crate::Handle::upgrade`]).
    pub(super) fn request_upgrade(
        &mut self,
        reply: Option<tokio::sync::oneshot::Sender<Result<()>>>,
    ) {
        if !self.config.upgrade_in_place {
            let reason = "upgrades in place are off: Builder::upgrade_in_place turns them on";
            match reply {
                Some(reply) => {
                    let _ = reply.send(Err(Error::Upgrade {
                        reason: reason.into(),
                    }));
                }
                None => self.emit(Event::UpgradeFailed {
                    reason: reason.into(),
                }),
            }
            return;
        }
        if self.upgrade_requests.is_empty() {
            self.upgrade_since = Some(clock());
        }
        self.upgrade_requests.push(reply);
    }

    /// Answers every pending upgrade request with what `outcome` makes.
    pub(super) fn answer_upgrades(&mut self, outcome: impl Fn() -> Result<()>) {
        self.upgrade_since = None;
        for reply in self.upgrade_requests.drain(..).flatten() {
            let _ = reply.send(outcome());
        }
    }

    pub(super) fn refuse_upgrade(&mut self, reason: String) {
        self.emit(Event::UpgradeFailed {
            reason: reason.clone(),
        });
        self.answer_upgrades(|| {
            Err(Error::Upgrade {
                reason: reason.clone(),
            })
        });
    }

    /// Why an upgrade cannot happen at all (Err), or not yet (Ok(false)).
    pub(super) fn upgrade_possible(&self) -> std::result::Result<bool, String> {
        if self.proxy.is_some() {
            return Err(
                "proxy mode: the master relays every connection, and an exec would cut them all \
                 (restart, or use reuseport or shared mode)"
                    .into(),
            );
        }
        if self.phase != Phase::Running {
            return Err("the cluster is stopping".into());
        }
        let running = RUNNING.load(std::sync::atomic::Ordering::SeqCst);
        if running > 1 {
            return Err(format!(
                "{running} clusters run in this process, and an exec would end all but this one"
            ));
        }
        if handoff::exe().is_none() {
            return Err("the path of this program's binary is unknown".into());
        }
        if self.monitors().any(|(_, m)| m.carry.is_none()) {
            return Err(
                "a worker cannot be handed on (a fake process, or its fds could not be \
                 duplicated when it started)"
                    .into(),
            );
        }
        let settled = self.reload.is_none()
            && self.queued.is_empty()
            && self.pending_stop.is_none()
            && self.slots.len() == self.target
            && self.slots.iter().all(|s| s.settled_state().is_some());
        Ok(settled)
    }

    /// Upgrades now if the cluster is settled; waits (up to a limit) if it
    /// is not; refuses if it cannot be.
    pub(super) async fn try_upgrade(&mut self, reaped_rx: &mpsc::UnboundedReceiver<Reaped>) {
        match self.upgrade_possible() {
            Err(reason) => return self.refuse_upgrade(reason),
            Ok(false) => {
                let waited = self
                    .upgrade_since
                    .map_or(Duration::ZERO, |t| clock().saturating_duration_since(t));
                if waited > SETTLE_LIMIT {
                    self.refuse_upgrade(format!(
                        "the cluster did not settle (a reload, a start or a drain) within {}",
                        crate::types::Millis(SETTLE_LIMIT)
                    ));
                }
                return;
            }
            Ok(true) => {}
        }
        let exe = handoff::exe().unwrap_or_default();
        // The pre-flight reads the same description, without the fds.
        let check = match self.describe(false) {
            Ok((state, _)) => state.encode(),
            Err(e) => return self.refuse_upgrade(format!("describing the cluster: {e}")),
        };
        if let Err(reason) = preflight(&exe, &check).await {
            return self.refuse_upgrade(reason);
        }
        // Stop reading and reaping; if a worker exited meanwhile, let the
        // loop handle that and try again.
        if !self.detach_all().await || !reaped_rx.is_empty() {
            self.reattach_all();
            return;
        }
        // The relays of rescued connections go on in the next master.
        let relayed = self
            .relays
            .carry(&self.shared.carried, RELAY_PAUSE_LIMIT)
            .await;
        let resume = |this: &mut Self, relayed: Vec<(OwnedFd, OwnedFd)>| {
            crate::net::rescue::Relays::uncarry(&this.shared.carried);
            this.relays.resume(relayed);
        };
        let (state, keep) = match self.describe(true) {
            Ok(described) => described,
            Err(e) => {
                resume(self, relayed);
                self.reattach_all();
                return self.refuse_upgrade(format!("handing on the fds: {e}"));
            }
        };
        let request = match exec_request(&exe, &state, self.config.handle_signals) {
            Ok(r) => r,
            Err(e) => {
                resume(self, relayed);
                self.reattach_all();
                return self.refuse_upgrade(e.to_string());
            }
        };
        let (request, memfd) = request;
        if let Some(service) = &mut self.service {
            service.reloading();
        }
        self.emit(Event::Upgrading {
            binary: exe.display().to_string(),
        });
        self.answer_upgrades(|| Ok(()));
        self.shared.log.delivered(EVENT_GRACE).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), crate::observe::writer::flush()).await;
        let error = spawner::exec(request).await;
        // Still here: the exec failed, and this master goes on.
        drop((keep, memfd));
        resume(self, relayed);
        self.reattach_all();
        if let Some(service) = &mut self.service {
            service.reloaded();
        }
        self.emit(Event::UpgradeFailed {
            reason: format!("executing {}: {error}", exe.display()),
        });
    }

    /// The cluster as the next master takes it over. With `inherit`, each
    /// fd named is a fresh duplicate that survives exec (returned, to be
    /// kept open until then); without, the numbers are only for reading.
    pub(super) fn describe(&self, inherit: bool) -> io::Result<(State<RawFd>, Vec<OwnedFd>)> {
        let mut keep = Vec::new();
        let mut fd = |f: std::os::fd::BorrowedFd<'_>| -> io::Result<RawFd> {
            if inherit {
                let d = handoff::inheritable(f)?;
                let n = d.as_raw_fd();
                keep.push(d);
                Ok(n)
            } else {
                Ok(f.as_raw_fd())
            }
        };
        let layout = self.listeners.describe();
        let mut listeners = Vec::new();
        for (addr, order, fds) in layout.groups {
            listeners.push(ListenerState {
                addr,
                order: order.to_vec(),
                fds: fds.into_iter().map(&mut fd).collect::<io::Result<_>>()?,
            });
        }
        let notify = match (&self.notify_fd, &self.notify_env) {
            (Some(f), Some(name)) => Some((fd(f.as_fd())?, name.clone())),
            _ => None,
        };
        let sentinel = match &self.sentinel {
            Some(s) => {
                let (pipe, pid) = s.parts();
                Some((fd(pipe.as_fd())?, pid.as_raw()))
            }
            None => None,
        };
        let now = clock();
        let mut slots = Vec::new();
        let mut workers = Vec::new();
        for slot in &self.slots {
            let state = slot
                .settled_state()
                .ok_or_else(|| io::Error::other(format!("slot {} is not settled", slot.index)))?;
            slots.push(state);
            let Some(pid) = slot.pid() else {
                continue;
            };
            let entry = self.workers.get(&pid);
            let carry = entry
                .and_then(|w| w.monitor.as_ref())
                .and_then(|m| m.carry.as_ref())
                .ok_or_else(|| io::Error::other(format!("pid {pid} has no fds to hand on")))?;
            let info = slot.info();
            workers.push(WorkerRecord {
                slot: slot.index,
                pid: pid.as_raw(),
                generation: slot.generation,
                age: info
                    .started
                    .map_or(Duration::ZERO, |s| now.saturating_duration_since(s)),
                ready_for: info.ready_since.map(|s| now.saturating_duration_since(s)),
                pidfd: fd(carry.pidfd.as_fd())?,
                output: match &carry.output {
                    Some((o, e)) => Some((fd(o.as_fd())?, fd(e.as_fd())?)),
                    None => None,
                },
                channel: match &carry.channel {
                    Some((k, c)) => Some((*k, fd(c.as_fd())?)),
                    None => None,
                },
                app: entry.and_then(|w| w.app).map(|p| p.as_raw()),
                cgroup: entry
                    .and_then(|w| w.cgroup.as_ref())
                    .map(|c| c.dir().to_path_buf()),
            });
        }
        let carried = self
            .shared
            .carried
            .outgoing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, f)| Ok((k.clone(), fd(f.as_fd())?)))
            .collect::<io::Result<Vec<_>>>()?;
        let state = State {
            upgrades: self.upgrades + 1,
            balance: self.listeners.balance(),
            backlog: layout.backlog,
            steered: layout.steered.to_vec(),
            steer_broken: layout.steer_broken,
            listeners,
            notify,
            cgroup: self.cgroup.as_ref().map(|c| c.path().to_path_buf()),
            sentinel,
            slots,
            workers,
            carried,
        };
        Ok((state, keep))
    }
}

/// The exec of `exe` with this process's arguments and the description in
/// an inherited memfd (returned: it must stay open until the exec).
fn exec_request(
    exe: &std::path::Path,
    state: &State<RawFd>,
    ignore_signals: bool,
) -> Result<(handoff::ExecRequest, OwnedFd)> {
    use std::os::unix::ffi::OsStrExt;
    let memfd = handoff::memfd(&state.encode(), true)
        .map_err(|e| Error::io("writing the description of the cluster", e))?;
    let env = handoff::environment((handoff::ENV, format!("state:{}", memfd.as_raw_fd())));
    let env = env
        .iter()
        .map(|(k, v)| {
            let mut e = k.as_bytes().to_vec();
            e.push(b'=');
            e.extend_from_slice(v.as_bytes());
            handoff::c_string("an environment variable", &e)
        })
        .collect::<Result<Vec<_>>>()?;
    let argv = std::env::args_os()
        .map(|a| handoff::c_string("an argument", a.as_bytes()))
        .collect::<Result<Vec<_>>>()?;
    let request = handoff::ExecRequest {
        path: handoff::c_string("the binary's path", exe.as_os_str().as_bytes())?,
        argv,
        env,
        ignore_signals,
    };
    Ok((request, memfd))
}

/// Runs the new binary once with `HERD_UPGRADE=check:3` and the
/// description on fd 3: it must print [`handoff::CHECK_OK`] and exit 0.
/// Err is the reason, with the binary's last words.
async fn preflight(exe: &std::path::Path, description: &str) -> std::result::Result<(), String> {
    use std::io::Read;
    use std::os::unix::ffi::OsStrExt;
    let what = format!("the new binary {}", exe.display());
    let memfd = handoff::memfd(description, false)
        .map_err(|e| format!("writing the description for the pre-flight: {e}"))?;
    let env = handoff::environment((handoff::ENV, "check:3".into()));
    let argv = std::env::args_os()
        .map(|a| handoff::c_string("an argument", a.as_bytes()))
        .collect::<Result<Vec<_>>>()
        .map_err(|e| e.to_string())?;
    let path = handoff::c_string("the binary's path", exe.as_os_str().as_bytes())
        .map_err(|e| e.to_string())?;
    let request = SpawnRequest {
        path,
        argv,
        env,
        listen_fds: Vec::new(),
        extra_fds: vec![memfd],
        cwd: None,
        cgroup_procs: None,
        credentials: None,
        pdeathsig: true,
    };
    let started = Instant::now();
    let spawned = spawner::spawn(request)
        .await
        .map_err(|e| format!("{what} cannot be started ({}: {})", e.stage, e.source))?;
    let pid = spawned.pid;
    let read = |fd: OwnedFd| {
        tokio::task::spawn_blocking(move || {
            let mut text = Vec::new();
            let _ = std::fs::File::from(fd)
                .take(64 * 1024)
                .read_to_end(&mut text);
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let stdout = read(spawned.stdout);
    let stderr = read(spawned.stderr);
    let exit = match tokio::time::timeout(
        handoff::CHECK_TIMEOUT,
        reap::wait(pid, spawned.pidfd.try_clone().map_err(|e| e.to_string())?),
    )
    .await
    {
        Ok(exit) => exit.map_err(|e| format!("waiting for {what}: {e}"))?,
        Err(_) => {
            crate::process::signal_group(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = reap::wait(pid, spawned.pidfd).await;
            return Err(format!(
                "{what} did not finish its pre-flight check within {}",
                crate::types::Millis(handoff::CHECK_TIMEOUT)
            ));
        }
    };
    let out = stdout.await.unwrap_or_default();
    let err = stderr.await.unwrap_or_default();
    if exit.success() && out.lines().any(|l| l == handoff::CHECK_OK) {
        return Ok(());
    }
    let last = err
        .lines()
        .chain(out.lines())
        .rfind(|l| !l.trim().is_empty())
        .unwrap_or("no output");
    let ended = match exit {
        crate::Exit::Code(0) => "exited 0 without confirming it can take over".to_owned(),
        crate::Exit::Code(c) => format!("exited with code {c}"),
        crate::Exit::Signal(s) => format!("was killed by {}", s.name()),
    };
    Err(format!(
        "{what} failed its pre-flight check after {}: it {ended}: {last}",
        crate::types::Millis(started.elapsed())
    ))
}
