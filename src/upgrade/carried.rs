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

    /// Takes every fd the previous master carried under a key that starts
    /// with `prefix`, with the rest of its key.
    pub(crate) fn take_prefixed(&self, prefix: &str) -> Vec<(String, OwnedFd)> {
        let mut incoming = self.incoming.lock().unwrap_or_else(|p| p.into_inner());
        let (taken, kept) = std::mem::take(&mut *incoming)
            .into_iter()
            .partition(|(k, _)| k.starts_with(prefix));
        *incoming = kept;
        taken
            .into_iter()
            .map(|(k, fd): (String, OwnedFd)| (k[prefix.len()..].to_owned(), fd))
            .collect()
    }

    /// Forgets what was to go to the next master under keys that start
    /// with `prefix`.
    pub(crate) fn forget_prefixed(&self, prefix: &str) {
        self.outgoing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(k, _)| !k.starts_with(prefix));
    }
}
