//! Read buffers, reused across requests and clients.

use std::sync::Mutex;

use super::READ;

/// Read buffers, reused: an idle client holds none, and a request takes
/// one for its head and one for its answer. Taking them from the heap each
/// time would cost more than the copy: the long-lived allocations of the
/// connections made meanwhile split the freed buffers, and each new client
/// grew the master by a buffer (17 KB per idle client, where HAProxy takes
/// one).
pub(super) struct Buffers;

pub(super) static BUFFERS: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
/// Buffers kept for reuse at most (each [`READ`] bytes).
pub(super) const BUFFERS_KEPT: usize = 256;
/// Buffers kept after a burst of clients has left.
pub(super) const BUFFERS_AFTER_TRIM: usize = 16;

impl Buffers {
    /// An empty buffer with room for a read.
    pub(super) fn take() -> Vec<u8> {
        BUFFERS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(READ))
    }

    /// Frees the buffers kept for reuse but a few: after a burst of
    /// clients, before the heap is trimmed.
    pub(super) fn release() {
        BUFFERS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .truncate(BUFFERS_AFTER_TRIM);
    }

    /// Gives `buf` back for reuse; one that grew for a large head is freed.
    pub(super) fn give(mut buf: Vec<u8>) {
        if buf.capacity() < READ || buf.capacity() > 2 * READ {
            return;
        }
        buf.clear();
        let mut kept = BUFFERS.lock().unwrap_or_else(|p| p.into_inner());
        if kept.len() < BUFFERS_KEPT {
            kept.push(buf);
        }
    }
}
