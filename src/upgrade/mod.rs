//! Upgrading the master in place: what crosses `execve`, and how.
//!
//! einhorn's model, not nginx's: the master re-executes its own binary in
//! the same process, so its pid (systemd's `MainPID`, the workers' parent)
//! stays. Everything the running cluster is made of is an fd or a number:
//! the listening sockets (keyed by address *and slot*, never by address
//! alone: a reuseport group has one socket per slot on the same address),
//! each worker's pidfd, output pipes and readiness channel, the notify
//! socket, the cgroup sentinel's pipe, and whatever the program asked to
//! carry (the control socket, a metrics listener). Those fds are duplicated
//! without close-on-exec, and a text description of the slot table naming
//! them goes into a memfd whose number is in `HERD_UPGRADE=state:FD`.
//!
//! Before that, the new binary runs once with `HERD_UPGRADE=check:3` and
//! the same arguments: [`crate::Builder::build`] then validates its
//! configuration against the description, prints [`CHECK_OK`] and exits 0.
//! Anything else (the file is not there, not executable, not herd, rejects
//! its arguments, cannot read this format) aborts the upgrade and the old
//! master goes on as if nothing happened.
//!
//! The exec itself happens on the spawner thread, the thread that forked
//! every worker: `PR_SET_PDEATHSIG` fires when the *thread* that forked a
//! child exits, and `execve` ends every thread but the caller.

mod carried;
mod exec;
mod format;

use std::fs::File;
use std::io::{Read, Seek};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

pub(crate) use carried::Carried;
pub(crate) use exec::{c_string, environment, exec, inheritable, memfd, ExecRequest};
use format::is_open;
pub(crate) use format::{ChannelKind, ListenerState, SlotState, State, WorkerRecord};

use crate::types::{Error, Result};

/// The environment variable that tells a starting master it is an upgrade
/// (`state:FD`) or its pre-flight (`check:FD`).
pub(crate) const ENV: &str = "HERD_UPGRADE";
/// What a pre-flight run prints on stdout when the new binary would take
/// over: its absence means it would not.
pub(crate) const CHECK_OK: &str = "herd-upgrade-check-ok 1";
/// How long the pre-flight run may take.
pub(crate) const CHECK_TIMEOUT: Duration = Duration::from_secs(15);

/// The binary this process was started from, read at the first build:
/// `/proc/self/exe` names a replaced file "... (deleted)" later on.
static EXE: OnceLock<Option<PathBuf>> = OnceLock::new();
/// The description was taken (by the first build of this process).
static TAKEN: AtomicBool = AtomicBool::new(false);

/// Remembers which binary to re-execute. Called by every build.
pub(crate) fn remember_exe() {
    EXE.get_or_init(|| std::env::current_exe().ok());
}

/// Whether this process is a new binary's pre-flight run.
pub(crate) fn is_preflight() -> bool {
    std::env::var_os(ENV).is_some_and(|v| v.to_string_lossy().starts_with("check:"))
}

/// The binary to re-execute.
pub(crate) fn exe() -> Option<PathBuf> {
    EXE.get().cloned().flatten()
}

/// What a master started by an upgrade takes over, besides the sockets.
#[derive(Debug)]
pub(crate) struct Adopted {
    pub(crate) upgrades: u32,
    pub(crate) notify: Option<(OwnedFd, String)>,
    pub(crate) cgroup: Option<PathBuf>,
    pub(crate) sentinel: Option<(OwnedFd, i32)>,
    pub(crate) slots: Vec<SlotState>,
    pub(crate) workers: Vec<WorkerRecord<OwnedFd>>,
    pub(crate) carried: Vec<(String, OwnedFd)>,
}

impl State<OwnedFd> {
    /// The listening sockets (for `net::Listeners::inherited`, which
    /// checks them) and the rest.
    pub(crate) fn into_parts(self) -> (Sockets, Adopted) {
        let sockets = Sockets {
            listeners: self.listeners,
            balance: self.balance,
            backlog: self.backlog,
            steered: self.steered,
            steer_broken: self.steer_broken,
        };
        let adopted = Adopted {
            upgrades: self.upgrades,
            notify: self.notify,
            cgroup: self.cgroup,
            sentinel: self.sentinel,
            slots: self.slots,
            workers: self.workers,
            carried: self.carried,
        };
        (sockets, adopted)
    }
}

/// The listening sockets a description carried, as described.
#[derive(Debug)]
pub(crate) struct Sockets {
    pub(crate) listeners: Vec<ListenerState<OwnedFd>>,
    pub(crate) balance: crate::types::Balance,
    pub(crate) backlog: u32,
    pub(crate) steered: Vec<usize>,
    pub(crate) steer_broken: bool,
}

/// What the environment says this process is.
pub(crate) enum Inherited {
    /// The pre-flight run of an upgrade: check, print [`CHECK_OK`], exit.
    Check(State<RawFd>),
    /// The upgraded master: adopt.
    Adopt(State<OwnedFd>),
}

/// Reads `HERD_UPGRADE`, once per process.
///
/// # Errors
///
/// [`Error::Upgrade`] when the variable is set and the description cannot
/// be read.
pub(crate) fn inherited() -> Result<Option<Inherited>> {
    let Some(value) = std::env::var_os(ENV) else {
        return Ok(None);
    };
    if TAKEN.swap(true, Ordering::SeqCst) {
        return Ok(None);
    }
    let bad = |reason: String| Error::Upgrade { reason };
    let value = value.to_string_lossy().into_owned();
    let (mode, fd) = value
        .split_once(':')
        .ok_or_else(|| bad(format!("{ENV}={value} is not check:FD or state:FD")))?;
    let fd: RawFd = fd
        .parse()
        .ok()
        .filter(|&fd| fd > 2)
        .ok_or_else(|| bad(format!("{ENV}={value} does not name an fd")))?;
    if !is_open(fd) {
        return Err(bad(format!("{ENV}={value}: fd {fd} is not open")));
    }
    // SAFETY: the fd is open (checked above) and was passed to this process
    // for this purpose alone; TAKEN makes sure it is owned once.
    let mut file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let mut text = String::new();
    file.rewind()
        .and_then(|_| file.read_to_string(&mut text))
        .map_err(|e| bad(format!("reading the description from fd {fd}: {e}")))?;
    drop(file);
    let state = State::decode(&text).map_err(bad)?;
    match mode {
        "check" => Ok(Some(Inherited::Check(state))),
        "state" => Ok(Some(Inherited::Adopt(state.adopt().map_err(bad)?))),
        _ => Err(bad(format!("{ENV}={value} is not check:FD or state:FD"))),
    }
}
