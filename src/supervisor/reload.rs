//! Rolling reload bookkeeping: which slots are left, which have a successor
//! starting, what happened so far, who waits for the report.
//!
//! Pure: the event loop asks it what to start next and tells it what
//! happened; it never touches a process.

use std::collections::VecDeque;
use std::time::Instant;

use tokio::sync::oneshot;

use crate::types::{ReloadFailure, ReloadReport, Replacement, Result};

/// Who waits for a reload's report.
pub(crate) type Waiter = oneshot::Sender<Result<ReloadReport>>;

/// Which slots a reload request covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    All,
    Slot(usize),
}

/// A reload in progress.
#[derive(Debug)]
pub(crate) struct ReloadRun {
    queue: VecDeque<usize>,
    /// Slots whose successor is starting.
    active: Vec<usize>,
    started: Instant,
    replaced: Vec<Replacement>,
    failure: Option<ReloadFailure>,
    waiters: Vec<Waiter>,
    parallel: usize,
}

impl ReloadRun {
    pub(crate) fn new(
        slots: Vec<usize>,
        parallel: usize,
        waiters: Vec<Waiter>,
        now: Instant,
    ) -> Self {
        ReloadRun {
            queue: slots.into(),
            active: Vec::new(),
            started: now,
            replaced: Vec::new(),
            failure: None,
            waiters,
            parallel: parallel.max(1),
        }
    }

    /// The next slot to give a successor, if the run may start one now.
    pub(crate) fn next_slot(&mut self) -> Option<usize> {
        if self.failure.is_some() || self.active.len() >= self.parallel {
            return None;
        }
        let slot = self.queue.pop_front()?;
        self.active.push(slot);
        Some(slot)
    }

    /// Whether `slot` has a successor starting for this run.
    pub(crate) fn is_active(&self, slot: usize) -> bool {
        self.active.contains(&slot)
    }

    /// The slots with a successor starting.
    pub(crate) fn active(&self) -> &[usize] {
        &self.active
    }

    /// The successor of `slot` took over.
    pub(crate) fn replaced(&mut self, r: Replacement) {
        self.active.retain(|&s| s != r.slot);
        self.replaced.push(r);
    }

    /// The successor of `slot` failed: the run stops starting new ones.
    /// Only the first failure is kept.
    pub(crate) fn failed(&mut self, failure: ReloadFailure) {
        self.active.retain(|&s| s != failure.slot);
        if self.failure.is_none() {
            self.failure = Some(failure);
        }
    }

    /// A successor went away without being the first failure (killed
    /// because another one failed).
    pub(crate) fn abandoned(&mut self, slot: usize) {
        self.active.retain(|&s| s != slot);
    }

    /// Nothing more will happen in this run.
    pub(crate) fn is_done(&self) -> bool {
        self.active.is_empty() && (self.queue.is_empty() || self.failure.is_some())
    }

    /// Ends the run: the report, and who waits for it.
    pub(crate) fn finish(self, now: Instant) -> (ReloadReport, Vec<Waiter>) {
        (
            ReloadReport {
                replaced: self.replaced,
                failure: self.failure,
                duration: now.saturating_duration_since(self.started),
            },
            self.waiters,
        )
    }
}

/// Merges queued requests into the slots of one run: every slot if any
/// request was for all, else the slots asked for, in order, once each.
pub(crate) fn merge(targets: &[Target], slots: usize) -> Vec<usize> {
    if targets.contains(&Target::All) {
        return (0..slots).collect();
    }
    let mut out = Vec::new();
    for t in targets {
        if let Target::Slot(s) = t {
            if !out.contains(s) {
                out.push(*s);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rep(slot: usize) -> Replacement {
        Replacement {
            slot,
            old_pid: Some(1),
            new_pid: 2,
            generation: 1,
        }
    }

    #[test]
    fn slots_go_one_at_a_time_by_default() {
        let mut run = ReloadRun::new(vec![0, 1, 2], 1, vec![], Instant::now());
        assert_eq!(run.next_slot(), Some(0));
        assert_eq!(run.next_slot(), None, "one at a time");
        run.replaced(rep(0));
        assert_eq!(run.next_slot(), Some(1));
        run.replaced(rep(1));
        assert_eq!(run.next_slot(), Some(2));
        assert!(!run.is_done());
        run.replaced(rep(2));
        assert!(run.is_done());
        let (report, _) = run.finish(Instant::now());
        assert!(report.is_complete());
        assert_eq!(report.replaced.len(), 3);
    }

    #[test]
    fn parallel_runs_start_several_successors() {
        let mut run = ReloadRun::new(vec![0, 1, 2, 3], 2, vec![], Instant::now());
        assert_eq!(run.next_slot(), Some(0));
        assert_eq!(run.next_slot(), Some(1));
        assert_eq!(run.next_slot(), None);
        assert_eq!(run.active(), &[0, 1]);
    }

    #[test]
    fn a_failure_stops_the_run_and_leaves_later_slots_alone() {
        let mut run = ReloadRun::new(vec![0, 1, 2], 2, vec![], Instant::now());
        run.next_slot();
        run.next_slot();
        run.failed(ReloadFailure {
            slot: 0,
            reason: "exited".into(),
            last_output: vec![],
        });
        assert_eq!(run.next_slot(), None, "slot 2 is never reached");
        assert!(!run.is_done(), "slot 1's successor is still out");
        run.abandoned(1);
        assert!(run.is_done());
        let (report, _) = run.finish(Instant::now());
        assert_eq!(report.failure.map(|f| f.slot), Some(0));
        assert!(report.replaced.is_empty());
    }

    #[test]
    fn queued_requests_merge_into_one_run() {
        assert_eq!(
            merge(&[Target::Slot(2), Target::Slot(0), Target::Slot(2)], 4),
            vec![2, 0]
        );
        assert_eq!(merge(&[Target::Slot(2), Target::All], 3), vec![0, 1, 2]);
    }
}
