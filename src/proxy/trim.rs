//! Gives the memory of a burst of clients back to the OS once they have
//! left.
//!
//! Each client connection costs the master a task, its socket's state and
//! a buffer now and then. When ten thousand clients come and go, the
//! allocator keeps what they freed in its arenas, split between the
//! allocations that stayed: the master stayed at three or four times its
//! idle size for good. So when the open connections fall to a quarter of
//! their peak (a peak of [`TRIM_PEAK`] or more), a second later the
//! master drops its spare read buffers and asks the allocator to return
//! every free page (glibc's `malloc_trim`). Nothing runs while the count
//! stays high or the master is idle.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A peak of open connections below this is not worth a trim.
pub(crate) const TRIM_PEAK: usize = 1024;
/// How long after the fall the trim runs: a burst that leaves over a
/// moment is trimmed once.
const TRIM_DELAY: Duration = Duration::from_secs(1);

/// Open client connections, their peak since the last trim, and whether a
/// trim is on its way.
#[derive(Debug, Default)]
pub(crate) struct Trim {
    open: AtomicUsize,
    peak: AtomicUsize,
    scheduled: AtomicBool,
}

impl Trim {
    /// A client connection opened.
    pub(crate) fn opened(&self) {
        let open = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak.fetch_max(open, Ordering::Relaxed);
    }

    /// A client connection closed: once the count is a quarter of a large
    /// peak, a trim is scheduled (once).
    pub(crate) fn closed(self: &Arc<Self>, release: fn()) {
        let open = self.open.fetch_sub(1, Ordering::Relaxed).saturating_sub(1);
        let peak = self.peak.load(Ordering::Relaxed);
        if !worth_trimming(open, peak) || self.scheduled.swap(true, Ordering::AcqRel) {
            return;
        }
        let trim = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(TRIM_DELAY).await;
            release();
            trim_heap();
            trim.peak
                .store(trim.open.load(Ordering::Relaxed), Ordering::Relaxed);
            trim.scheduled.store(false, Ordering::Release);
        });
    }
}

/// Whether `open` connections after a `peak` leave enough memory free to
/// be worth returning.
fn worth_trimming(open: usize, peak: usize) -> bool {
    peak >= TRIM_PEAK && open <= peak / 4
}

/// Returns the allocator's free pages to the OS.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim_heap() {
    // SAFETY: malloc_trim only walks glibc's own arenas under their locks
    // and releases free pages; it takes no pointer of ours and is safe to
    // call from any thread at any time.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}

/// Other allocators (musl, a program's own global allocator) return
/// memory by their own rules.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_heap() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_large_peak_that_fell_to_a_quarter_is_trimmed() {
        assert!(worth_trimming(0, 10_000));
        assert!(worth_trimming(2_500, 10_000));
        assert!(!worth_trimming(2_501, 10_000));
        assert!(!worth_trimming(0, TRIM_PEAK - 1));
        assert!(worth_trimming(0, TRIM_PEAK));
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_that_leaves_schedules_one_trim_and_resets_the_peak() {
        use std::sync::atomic::AtomicUsize;
        static RELEASED: AtomicUsize = AtomicUsize::new(0);
        fn release() {
            RELEASED.fetch_add(1, Ordering::Relaxed);
        }
        let trim = Arc::new(Trim::default());
        for _ in 0..2000 {
            trim.opened();
        }
        for _ in 0..2000 {
            trim.closed(release);
        }
        tokio::time::sleep(TRIM_DELAY * 2).await;
        assert_eq!(
            RELEASED.load(Ordering::Relaxed),
            1,
            "one trim for the burst"
        );
        assert_eq!(trim.peak.load(Ordering::Relaxed), 0);
        // A small coming and going afterwards trims nothing.
        trim.opened();
        trim.closed(release);
        tokio::time::sleep(TRIM_DELAY * 2).await;
        assert_eq!(RELEASED.load(Ordering::Relaxed), 1);
    }
}
