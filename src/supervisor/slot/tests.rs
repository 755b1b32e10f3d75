//! The slot's transitions, driven with plain instants: no process, no
//! clock, no runtime.

use super::*;

fn policy() -> Supervision {
    let mut s = Supervision::new();
    s.backoff.jitter = 0.0;
    s
}

fn pid(n: i32) -> Pid {
    Pid::from_raw(n)
}

const DRAIN: Duration = Duration::from_secs(2);

fn reported() -> Readiness {
    Readiness {
        after: None,
        reported: true,
        start_timeout: Duration::from_secs(5),
        settle: None,
    }
}

#[test]
fn a_crash_schedules_a_restart_of_the_next_generation() {
    let p = policy();
    let t0 = Instant::now();
    let mut slot = Slot::new(1);
    assert_eq!(slot.next_generation(), 0);
    slot.on_spawned(pid(100), 0, Role::Current, Readiness::IMMEDIATE, t0);
    assert_eq!(slot.state, WorkerState::Ready);
    let out = slot.on_exit(
        pid(100),
        &p,
        t0 + Duration::from_millis(50),
        Exit::Code(1),
        false,
        0.0,
    );
    assert_eq!(
        out,
        ExitOutcome::Current(Decision::Restart(Duration::from_millis(100)))
    );
    assert_eq!(slot.state, WorkerState::Backoff);
    assert!(!slot.is_live() && slot.is_pending());
    assert!(slot.take_due(t0 + Duration::from_millis(100)).is_empty());
    assert_eq!(
        slot.take_due(t0 + Duration::from_millis(150)),
        vec![Due::Restart]
    );
    assert_eq!(slot.state, WorkerState::Starting);
    assert_eq!(slot.next_generation(), 1);
    assert_eq!(slot.restarts, 1);
}

#[test]
fn stopping_arms_the_drain_timer_and_the_exit_is_not_restarted() {
    let p = policy();
    let t0 = Instant::now();
    let mut slot = Slot::new(0);
    slot.on_spawned(pid(7), 0, Role::Current, Readiness::IMMEDIATE, t0);
    assert_eq!(slot.begin_stop(t0, DRAIN, false), vec![pid(7)]);
    assert!(
        slot.begin_stop(t0, DRAIN, false).is_empty(),
        "signalled once"
    );
    assert_eq!(slot.next_deadline(), Some(t0 + DRAIN));
    assert_eq!(slot.take_due(t0 + DRAIN), vec![Due::Kill(pid(7))]);
    assert_eq!(
        slot.on_exit(pid(7), &p, t0 + DRAIN, Exit::Code(0), true, 0.0),
        ExitOutcome::Expected
    );
    assert_eq!(slot.state, WorkerState::Exited);
    assert_eq!(slot.next_deadline(), None);
}

#[test]
fn stopping_a_slot_in_backoff_cancels_the_restart() {
    let p = policy();
    let t0 = Instant::now();
    let mut slot = Slot::new(0);
    slot.on_spawned(pid(7), 0, Role::Current, Readiness::IMMEDIATE, t0);
    slot.on_exit(pid(7), &p, t0, Exit::Code(1), false, 0.0);
    assert!(slot.begin_stop(t0, DRAIN, false).is_empty());
    assert_eq!(slot.state, WorkerState::Exited);
    assert!(slot.take_due(t0 + Duration::from_secs(60)).is_empty());
}

#[test]
fn the_crash_loop_marks_the_slot_failed_with_a_report() {
    let p = policy();
    let t0 = Instant::now();
    let mut slot = Slot::new(3);
    let mut last = ExitOutcome::Unknown;
    for i in 0..5 {
        slot.on_spawned(
            pid(10 + i),
            i as u64,
            Role::Current,
            Readiness::IMMEDIATE,
            t0,
        );
        last = slot.on_exit(pid(10 + i), &p, t0, Exit::Code(2), false, 0.0);
    }
    assert!(matches!(
        last,
        ExitOutcome::Current(Decision::Failed { exits: 5, .. })
    ));
    assert_eq!(slot.state, WorkerState::Failed);
    assert_eq!(slot.failure.as_ref().map(|f| f.slot), Some(3));
    assert_eq!(
        slot.failure.as_ref().and_then(|f| f.last_exit),
        Some(Exit::Code(2))
    );
    assert!(!slot.is_pending() && !slot.is_live());
}

#[test]
fn a_reported_worker_starts_then_becomes_ready_or_times_out() {
    let t0 = Instant::now();
    let mut slot = Slot::new(0);
    slot.on_spawned(pid(5), 0, Role::Current, reported(), t0);
    assert_eq!(slot.state, WorkerState::Starting);
    assert!(!slot.is_serving());
    assert_eq!(
        slot.on_ready(pid(5), Some(Duration::from_secs(1)), t0),
        Some(Role::Current)
    );
    assert!(slot.is_serving());
    assert_eq!(slot.on_ready(pid(5), None, t0), None, "once");
    // The watchdog deadline moves with each ping and fires when missed.
    slot.on_watchdog(
        pid(5),
        Some(Duration::from_secs(1)),
        t0 + Duration::from_millis(900),
    );
    assert!(slot.take_due(t0 + Duration::from_millis(1500)).is_empty());
    assert_eq!(
        slot.take_due(t0 + Duration::from_millis(1901)),
        vec![Due::Watchdog(pid(5))]
    );

    let mut slow = Slot::new(1);
    slow.on_spawned(pid(6), 0, Role::Current, reported(), t0);
    assert_eq!(
        slow.take_due(t0 + Duration::from_secs(5)),
        vec![Due::StartTimeout(pid(6), Role::Current)]
    );
}

#[test]
fn a_delay_makes_a_worker_ready_by_itself() {
    let t0 = Instant::now();
    let mut slot = Slot::new(0);
    let delay = Readiness {
        after: Some(Duration::from_secs(1)),
        reported: false,
        start_timeout: Duration::from_secs(30),
        settle: None,
    };
    slot.on_spawned(pid(5), 0, Role::Current, delay, t0);
    assert_eq!(slot.state, WorkerState::Starting);
    assert_eq!(
        slot.take_due(t0 + Duration::from_secs(1)),
        vec![Due::DelayReady(pid(5))]
    );
}

#[test]
fn a_start_retried_for_the_masters_limits_counts_nothing() {
    let p = policy();
    let t0 = Instant::now();
    let mut slot = Slot::new(0);
    // Many failed starts for want of fds: never a crash loop.
    for i in 0..20 {
        let now = t0 + Duration::from_secs(i);
        slot.retry_start(now, Duration::from_secs(1));
        assert_eq!(slot.state, WorkerState::Backoff);
        assert_eq!(
            slot.take_due(now + Duration::from_secs(1)),
            vec![Due::Restart]
        );
    }
    assert!(slot.failure.is_none());
    // A real crash afterwards is the first one counted.
    slot.on_spawned(pid(1), 0, Role::Current, Readiness::IMMEDIATE, t0);
    let out = slot.on_exit(pid(1), &p, t0, Exit::Code(1), false, 0.0);
    assert!(
        matches!(out, ExitOutcome::Current(Decision::Restart(_))),
        "{out:?}"
    );
}

#[test]
fn a_successor_that_would_be_ready_at_exec_settles_first() {
    let p = policy();
    let t0 = Instant::now();
    let settle = Duration::from_millis(800);
    let none = Readiness {
        settle: Some(settle),
        ..Readiness::IMMEDIATE
    };
    let mut slot = Slot::new(0);
    // A restart after a crash is ready at once, as before.
    slot.on_spawned(pid(1), 0, Role::Current, none, t0);
    assert!(slot.is_serving());
    slot.on_spawned(pid(2), 1, Role::Successor, none, t0);
    assert!(!slot.successor.as_ref().unwrap().ready);
    assert!(slot.take_due(t0 + settle / 2).is_empty());
    // Dying within the window is a failed successor, not a takeover.
    assert_eq!(
        slot.on_exit(pid(2), &p, t0 + settle / 2, Exit::Code(1), false, 0.0),
        ExitOutcome::Successor
    );
    assert_eq!(slot.pid(), Some(pid(1)));
    slot.on_spawned(pid(3), 2, Role::Successor, none, t0);
    assert_eq!(slot.take_due(t0 + settle), vec![Due::DelayReady(pid(3))]);
}

#[test]
fn a_successor_takes_over_and_its_predecessor_retires() {
    let p = policy();
    let t0 = Instant::now();
    let mut slot = Slot::new(0);
    slot.on_spawned(pid(1), 0, Role::Current, reported(), t0);
    slot.on_ready(pid(1), None, t0);
    slot.on_spawned(pid(2), 1, Role::Successor, reported(), t0);
    assert_eq!(slot.pid(), Some(pid(1)), "the old one serves meanwhile");
    assert!(slot.is_serving());
    assert_eq!(slot.on_ready(pid(2), None, t0), Some(Role::Successor));
    assert_eq!(slot.promote(t0, DRAIN, false), Some(pid(1)));
    assert_eq!(slot.pid(), Some(pid(2)));
    assert_eq!(slot.generation, 1);
    assert_eq!(slot.retiring_pids(), vec![pid(1)]);
    assert_eq!(slot.take_due(t0 + DRAIN), vec![Due::Kill(pid(1))]);
    assert_eq!(
        slot.on_exit(pid(1), &p, t0 + DRAIN, Exit::Code(0), false, 0.0),
        ExitOutcome::Expected
    );
    assert!(slot.is_serving() && slot.retiring.is_empty());
}

#[test]
fn in_proxy_mode_the_stop_signal_waits_for_the_connections_or_the_drain_timeout() {
    let t0 = Instant::now();
    let mut slot = Slot::new(0);
    slot.on_spawned(pid(1), 0, Role::Current, Readiness::IMMEDIATE, t0);
    slot.on_spawned(pid(2), 1, Role::Successor, Readiness::IMMEDIATE, t0);
    assert_eq!(slot.promote(t0, DRAIN, true), Some(pid(1)));
    // Idle early: signalled at once; SIGKILL stays where the drain
    // timeout and a grace from the start put it.
    let grace = DRAIN.min(DEFERRED_STOP_GRACE);
    let t1 = t0 + Duration::from_millis(300);
    assert!(slot.signal_now(pid(1), t1, DRAIN));
    assert!(!slot.signal_now(pid(1), t1, DRAIN), "once");
    assert_eq!(slot.next_deadline(), Some(t0 + DRAIN + grace));

    // Never idle: the signal at the drain timeout, SIGKILL a grace
    // later, never a second drain timeout.
    let mut busy = Slot::new(1);
    busy.on_spawned(pid(3), 0, Role::Current, Readiness::IMMEDIATE, t0);
    assert!(busy.begin_stop(t0, DRAIN, true).is_empty(), "held back");
    assert_eq!(busy.take_due(t0 + DRAIN), vec![Due::Signal(pid(3))]);
    assert!(busy
        .take_due(t0 + DRAIN + grace - Duration::from_millis(1))
        .is_empty());
    assert_eq!(busy.take_due(t0 + DRAIN + grace), vec![Due::Kill(pid(3))]);
}

#[test]
fn a_successor_that_dies_leaves_the_predecessor_serving() {
    let p = policy();
    let t0 = Instant::now();
    let mut slot = Slot::new(0);
    slot.on_spawned(pid(1), 0, Role::Current, Readiness::IMMEDIATE, t0);
    slot.on_spawned(pid(2), 1, Role::Successor, reported(), t0);
    assert_eq!(
        slot.on_exit(pid(2), &p, t0, Exit::Code(1), false, 0.0),
        ExitOutcome::Successor
    );
    assert_eq!(slot.pid(), Some(pid(1)));
    assert!(slot.is_serving());
    assert_eq!(slot.restarts, 0, "not a crash of the slot");
}

#[test]
fn a_reload_revives_a_failed_slot() {
    let p = policy();
    let t0 = Instant::now();
    let mut slot = Slot::new(0);
    for i in 0..5 {
        slot.on_spawned(
            pid(10 + i),
            i as u64,
            Role::Current,
            Readiness::IMMEDIATE,
            t0,
        );
        slot.on_exit(pid(10 + i), &p, t0, Exit::Code(2), false, 0.0);
    }
    assert_eq!(slot.state, WorkerState::Failed);
    slot.on_spawned(pid(20), 5, Role::Successor, Readiness::IMMEDIATE, t0);
    assert_eq!(slot.promote(t0, DRAIN, false), None, "nobody to retire");
    assert!(slot.is_serving());
    assert!(slot.failure.is_none());
}

#[test]
fn no_restart_while_a_successor_is_on_its_way() {
    let p = policy();
    let t0 = Instant::now();
    let mut slot = Slot::new(0);
    slot.on_spawned(pid(1), 0, Role::Current, Readiness::IMMEDIATE, t0);
    slot.on_spawned(pid(2), 1, Role::Successor, reported(), t0);
    slot.on_exit(pid(1), &p, t0, Exit::Code(1), false, 0.0);
    assert_eq!(slot.state, WorkerState::Backoff);
    assert!(slot.take_due(t0 + Duration::from_secs(1)).is_empty());
    slot.on_ready(pid(2), None, t0);
    assert_eq!(slot.promote(t0, DRAIN, false), None);
    assert!(slot.is_serving());
}
