//! The worker side: what a Rust program started by herd uses to find its
//! sockets and its identity.
//!
//! herd passes listening sockets with the systemd socket-activation
//! protocol: `LISTEN_FDS=n` sockets at fds 3, 4, ..., `LISTEN_PID` set to
//! the worker's own pid (so that a child process which inherits the
//! environment does not mistake the sockets for its own), `LISTEN_FDNAMES`.
//! Any socket-activation helper works; this module is the dependency-free
//! one.
//!
//! It also speaks the other half of the contract: [`notify_ready`] when the
//! sockets are served (for `--ready notify`), [`notify_watchdog`] at least
//! every [`watchdog_interval`] (for `--watchdog`), and [`notify_stopping`]
//! when a drain begins. With the `hyper` feature, `http::serve` does all of
//! that for a hyper server, and drains without losing a request.
//!
//! **One binary for master and workers.** A launcher may run itself as its
//! own workers: `Cluster::builder().command(std::env::current_exe()?)`, and
//! at start `if herd::worker::slot().is_some()` it is a worker and serves,
//! else it is the launcher. `examples/launcher.rs` does this, with an admin
//! endpoint beside the cluster.
//!
//! ```no_run
//! let listener = herd::worker::tcp_listeners()?.remove(0);
//! listener.set_nonblocking(true)?; // before tokio::net::TcpListener::from_std
//! println!("slot {:?} listening on {}", herd::worker::slot(), listener.local_addr()?);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#[cfg(feature = "hyper")]
pub mod http;

use std::net::TcpListener;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::fcntl::{fcntl, FcntlArg, FdFlag};

use crate::types::{Error, Result};

/// The variable holding the worker's slot index.
pub const SLOT_ENV: &str = "HERD_WORKER_SLOT";
/// The variable holding the worker's generation within its slot.
pub const GENERATION_ENV: &str = "HERD_WORKER_GENERATION";
/// The first inherited socket, by the socket-activation protocol.
pub const LISTEN_FDS_START: RawFd = 3;

static TAKEN: AtomicBool = AtomicBool::new(false);

/// This worker's slot index, if it runs under herd.
pub fn slot() -> Option<usize> {
    std::env::var(SLOT_ENV).ok()?.parse().ok()
}

/// This worker's generation within its slot (0 for the first), if it runs
/// under herd.
pub fn generation() -> Option<u64> {
    std::env::var(GENERATION_ENV).ok()?.parse().ok()
}

/// The names of the inherited sockets (`LISTEN_FDNAMES`), in fd order.
pub fn listen_fd_names() -> Vec<String> {
    std::env::var("LISTEN_FDNAMES")
        .map(|v| v.split(':').map(str::to_owned).collect())
        .unwrap_or_default()
}

/// How many sockets were passed to this very process, after checking that
/// `LISTEN_PID` names it.
///
/// # Errors
///
/// [`Error::Activation`] if `LISTEN_FDS` is missing or malformed, or
/// `LISTEN_PID` names another process.
pub fn listen_fds_count() -> Result<usize> {
    let fds = std::env::var("LISTEN_FDS").map_err(|_| {
        Error::Activation("LISTEN_FDS is not set: this process was not given sockets".into())
    })?;
    let n: usize = fds
        .parse()
        .map_err(|_| Error::Activation(format!("LISTEN_FDS=`{fds}` is not a number")))?;
    let pid = std::env::var("LISTEN_PID")
        .map_err(|_| Error::Activation("LISTEN_FDS is set but LISTEN_PID is not".into()))?;
    let own = std::process::id();
    if pid.parse::<u32>().ok() != Some(own) {
        return Err(Error::Activation(format!(
            "LISTEN_PID={pid} is not this process ({own}): the sockets belong to another"
        )));
    }
    Ok(n)
}

/// Takes ownership of the inherited sockets (fds 3, 4, ...) and marks them
/// close-on-exec, so that programs this worker starts do not inherit them.
///
/// # Errors
///
/// [`Error::Activation`] as for [`listen_fds_count`], if called a second
/// time, or if an announced fd is not open.
pub fn listen_fds() -> Result<Vec<OwnedFd>> {
    let n = listen_fds_count()?;
    if TAKEN.swap(true, Ordering::SeqCst) {
        return Err(Error::Activation(
            "the inherited sockets were already taken by an earlier call".into(),
        ));
    }
    let mut fds = Vec::with_capacity(n);
    for i in 0..n {
        let fd = LISTEN_FDS_START + i as RawFd;
        // SAFETY: the socket-activation protocol (checked above through
        // LISTEN_PID) says fds 3..3+n were opened for this process and
        // nothing else in it owns them; TAKEN makes sure they are wrapped
        // once. fcntl verifies each one is open before it is wrapped.
        let owned = unsafe {
            if nix::libc::fcntl(fd, nix::libc::F_GETFD) < 0 {
                return Err(Error::Activation(format!(
                    "LISTEN_FDS={n} but fd {fd} is not open"
                )));
            }
            OwnedFd::from_raw_fd(fd)
        };
        fcntl(&owned, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))
            .map_err(|e| Error::io(format!("marking fd {fd} close-on-exec"), e.into()))?;
        fds.push(owned);
    }
    Ok(fds)
}

/// The inherited sockets as TCP listeners, in blocking mode.
///
/// # Errors
///
/// As [`listen_fds`].
pub fn tcp_listeners() -> Result<Vec<TcpListener>> {
    Ok(listen_fds()?.into_iter().map(TcpListener::from).collect())
}

/// Sends one sd_notify message (`READY=1`, `WATCHDOG=1`, `STATUS=...`) to
/// the master's `NOTIFY_SOCKET`. Returns false when there is none (not run
/// by herd with notify readiness or a watchdog, or run by hand).
///
/// # Errors
///
/// The socket error if the message cannot be sent.
pub fn notify(state: &str) -> std::io::Result<bool> {
    use std::os::unix::net::UnixDatagram;
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let addr = crate::service::address(&path.to_string_lossy())?;
    UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &addr)?;
    Ok(true)
}

/// Tells the master this worker serves (`READY=1`): with `--ready notify`
/// a reload stops the predecessor only after this.
///
/// # Errors
///
/// See [`notify()`].
pub fn notify_ready() -> std::io::Result<bool> {
    notify("READY=1")
}

/// Pings the watchdog (`WATCHDOG=1`); a worker that misses
/// [`watchdog_interval`] is killed and restarted.
///
/// # Errors
///
/// See [`notify()`].
pub fn notify_watchdog() -> std::io::Result<bool> {
    notify("WATCHDOG=1")
}

/// Tells the master this worker began to stop (`STOPPING=1`).
///
/// # Errors
///
/// See [`notify()`].
pub fn notify_stopping() -> std::io::Result<bool> {
    notify("STOPPING=1")
}

/// How often the watchdog must be pinged (`WATCHDOG_USEC`), if it is on.
/// Ping at half of it or more often.
pub fn watchdog_interval() -> Option<std::time::Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then(|| std::time::Duration::from_micros(usec))
}
