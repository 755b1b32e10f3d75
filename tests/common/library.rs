//! Clusters run inside the test process, through the library.

use std::time::Duration;

use super::WAIT;

/// Waits (at most [`WAIT`]) until the first slot's worker is ready, and
/// returns its pid.
pub async fn first_ready_worker(handle: &herd::Handle) -> u32 {
    tokio::time::timeout(WAIT, async {
        loop {
            if let Some(w) = handle.workers().first().filter(|w| w.ready_since.is_some()) {
                if let Some(pid) = w.pid {
                    return pid;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("a ready worker")
}
