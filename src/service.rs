//! The master's own messages to its service manager (systemd's sd_notify):
//! `READY=1` once every slot serves (or has failed), `STATUS=` with a
//! one-line summary, `RELOADING=1` with `MONOTONIC_USEC` when a reload
//! starts and `READY=1` when it ends (so `Type=notify-reload` and
//! `systemctl reload` work), `STOPPING=1`, and `WATCHDOG=1` when systemd
//! asks for it.
//!
//! It is the protocol the workers speak to herd (`herd::worker::notify`),
//! sent the other way: no crate is needed for five kinds of datagram.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Where the master reports, if its service manager listens.
#[derive(Debug)]
pub(crate) struct ServiceNotify {
    socket: UnixDatagram,
    addr: SocketAddr,
    /// Whether READY=1 has been sent since the start or the last reload.
    ready: bool,
    last_status: String,
}

impl ServiceNotify {
    /// From the master's `NOTIFY_SOCKET`, if set and usable.
    pub(crate) fn from_env() -> Option<ServiceNotify> {
        let path = std::env::var("NOTIFY_SOCKET").ok()?;
        Some(ServiceNotify {
            socket: UnixDatagram::unbound().ok()?,
            addr: address(&path).ok()?,
            ready: false,
            last_status: String::new(),
        })
    }

    fn send(&self, message: &str) {
        // systemd may be gone or slow: a lost datagram is not the master's
        // problem.
        let _ = self.socket.send_to_addr(message.as_bytes(), &self.addr);
    }

    /// The state of the slots changed: READY=1 the first time every slot
    /// serves or has failed, and a new STATUS= when the summary changed.
    pub(crate) fn slots(&mut self, serving: usize, settled: bool, total: usize, reloading: bool) {
        let status = if reloading {
            format!("{serving}/{total} workers ready, reloading")
        } else {
            format!("{serving}/{total} workers ready")
        };
        if settled && !self.ready && !reloading {
            self.ready = true;
            self.send(&format!("READY=1\nSTATUS={status}"));
            self.last_status = status;
        } else if status != self.last_status {
            self.send(&format!("STATUS={status}"));
            self.last_status = status;
        }
    }

    /// A reload starts.
    pub(crate) fn reloading(&mut self) {
        self.ready = false;
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
    }

    /// A reload ended, done or aborted: the old or new workers serve.
    pub(crate) fn reloaded(&mut self) {
        self.ready = true;
        self.send("READY=1");
    }

    pub(crate) fn stopping(&self) {
        self.send("STOPPING=1");
    }

    pub(crate) fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }
}

/// How often systemd wants `WATCHDOG=1` from the master, if at all (half
/// of `WATCHDOG_USEC`, when `WATCHDOG_PID` is unset or ours).
pub(crate) fn watchdog_every() -> Option<Duration> {
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.trim() != std::process::id().to_string() {
            return None;
        }
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// A `NOTIFY_SOCKET` value as an address: a path, or `@name` for the
/// abstract namespace.
pub(crate) fn address(path: &str) -> std::io::Result<SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    match path.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
        None => SocketAddr::from_pathname(path),
    }
}

fn monotonic_usec() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
        t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1_000
    })
}
