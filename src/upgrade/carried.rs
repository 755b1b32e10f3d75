//! Fds a program carries across an upgrade by key.

use std::os::fd::OwnedFd;
use std::sync::Mutex;

/// Fds a program carries to its successor by key (the control socket, a
/// metrics listener), and those its predecessor carried to it.
#[derive(Debug, Default)]
pub(crate) struct Carried {
    /// What goes to the next master.
    pub(crate) outgoing: Mutex<Vec<(String, OwnedFd)>>,
    /// What came from the previous one, until taken.
    pub(crate) incoming: Mutex<Vec<(String, OwnedFd)>>,
}

impl Carried {
    /// Registers `fd` (a duplicate) under `key`, replacing an earlier one.
    pub(crate) fn carry(&self, key: &str, fd: OwnedFd) {
        let mut out = self.outgoing.lock().unwrap_or_else(|p| p.into_inner());
        out.retain(|(k, _)| k != key);
        out.push((key.to_owned(), fd));
    }

    /// The fd the previous master carried under `key`.
    pub(crate) fn take(&self, key: &str) -> Option<OwnedFd> {
        let mut incoming = self.incoming.lock().unwrap_or_else(|p| p.into_inner());
        let i = incoming.iter().position(|(k, _)| k == key)?;
        Some(incoming.swap_remove(i).1)
    }
}
