//! The event loop's tests: reloads, restarts, crash loops, scaling and
//! drain timeouts run through the real loop (`Cluster::run_on`) against the
//! fake operating system of `process/fake.rs`, on tokio's paused clock,
//! with no process, socket or sleep.

use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::sync::broadcast;

use crate::process::fake::{Behaviour, Fake};
use crate::{Cluster, Error, Event, Handle, Readiness};

const SERVE: Behaviour = Behaviour::Serve {
    drain: Duration::from_millis(50),
};

/// A cluster of `workers` fake workers, ready 100 ms after they start.
fn cluster(workers: usize) -> crate::Builder {
    Cluster::builder()
        .command("sh")
        .workers(workers)
        .without_sockets()
        .handle_signals(false)
        .log_events(false)
        .readiness(Readiness::Delay(Duration::from_millis(100)))
        .drain_timeout(Duration::from_secs(10))
}

struct Running {
    fake: Fake,
    handle: Handle,
    events: broadcast::Receiver<Event>,
    run: tokio::task::JoinHandle<crate::Result<()>>,
}

async fn start(builder: crate::Builder, fake: Fake) -> Running {
    let cluster = builder.build().unwrap();
    let handle = cluster.handle();
    let events = handle.events();
    let run = tokio::spawn(cluster.run_on(std::sync::Arc::new(fake.clone())));
    Running {
        fake,
        handle,
        events,
        run,
    }
}

impl Running {
    /// Every event until `n` of them matched `pred`.
    async fn until(&mut self, n: usize, pred: impl Fn(&Event) -> bool) -> Vec<Event> {
        let mut seen = Vec::new();
        let mut matched = 0;
        while matched < n {
            let e = tokio::time::timeout(Duration::from_secs(3600), self.events.recv())
                .await
                .expect("the event comes")
                .expect("the stream is open");
            matched += usize::from(pred(&e));
            seen.push(e);
        }
        seen
    }

    async fn stop(self) {
        self.handle.shutdown().await.unwrap();
        self.run.await.unwrap().unwrap();
    }
}

fn ready(e: &Event) -> bool {
    matches!(e, Event::Ready { .. })
}

#[tokio::test(start_paused = true)]
async fn a_reload_replaces_one_slot_at_a_time_and_stops_each_predecessor_after_its_successor_is_ready(
) {
    let mut c = start(cluster(2), Fake::new(SERVE)).await;
    c.until(2, ready).await;
    let first = c.fake.spawned();

    let report = c.handle.reload().await.unwrap();
    assert!(report.is_complete(), "{report}");
    assert_eq!(report.replaced.len(), 2);
    let events = c
        .until(1, |e| matches!(e, Event::ReloadFinished { .. }))
        .await;

    // Slot by slot: a successor is spawned, becomes ready, takes over;
    // only then does the next slot's successor start.
    let steps: Vec<(&str, usize)> = events
        .iter()
        .filter_map(|e| match e {
            Event::Spawned { slot, .. } => Some(("spawned", *slot)),
            Event::Ready { slot, .. } => Some(("ready", *slot)),
            Event::Replaced { slot, .. } => Some(("replaced", *slot)),
            _ => None,
        })
        .collect();
    assert_eq!(
        steps,
        [
            ("spawned", 0),
            ("ready", 0),
            ("replaced", 0),
            ("spawned", 1),
            ("ready", 1),
            ("replaced", 1)
        ]
    );
    // Each slot counts its replacement, as a reload, not as an exit.
    for w in c.handle.workers() {
        assert_eq!(
            (w.restarts_by.reload, w.restarts_by.total(), w.restarts),
            (1, 1, 0)
        );
    }
    // Each predecessor heard its stop signal once, after its successor
    // was ready (100 ms after its start), and nothing else.
    let sent = c.fake.sent();
    for old in &first {
        let to_old: Vec<_> = sent.iter().filter(|s| s.pid == *old).collect();
        assert_eq!(to_old.len(), 1, "{sent:?}");
        assert_eq!(to_old[0].signal, Signal::SIGTERM);
    }
    assert!(
        sent[1].at - sent[0].at >= Duration::from_millis(100),
        "{sent:?}"
    );
    c.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_successor_that_crashes_aborts_the_reload_and_the_old_workers_stay() {
    let fake = Fake::new(SERVE);
    let mut c = start(cluster(2), fake.clone()).await;
    c.until(2, ready).await;
    let first = fake.spawned();
    fake.then(Behaviour::Crash {
        after: Duration::from_millis(10),
        code: 1,
    });

    let report = c.handle.reload().await.unwrap();
    let failure = report.failure.expect("aborted");
    assert_eq!(failure.slot, 0);
    assert!(report.replaced.is_empty());
    // Nobody old was asked to stop; both still serve.
    assert!(fake.sent().iter().all(|s| !first.contains(&s.pid)));
    let live: Vec<u32> = c.handle.workers().iter().filter_map(|w| w.pid).collect();
    assert_eq!(live, first);
    c.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_predecessor_that_ignores_its_stop_signal_is_killed_at_the_drain_timeout() {
    let fake = Fake::new(SERVE);
    fake.then(Behaviour::Stubborn);
    let mut c = start(
        cluster(1).drain_timeout(Duration::from_secs(30)),
        fake.clone(),
    )
    .await;
    c.until(1, ready).await;
    let stubborn = fake.spawned()[0];

    let report = c.handle.reload().await.unwrap();
    assert!(report.is_complete());
    c.until(
        1,
        |e| matches!(e, Event::Exited { pid, .. } if *pid == stubborn),
    )
    .await;
    let to_it: Vec<_> = fake
        .sent()
        .into_iter()
        .filter(|s| s.pid == stubborn)
        .collect();
    assert_eq!(to_it[0].signal, Signal::SIGTERM);
    let kill = to_it
        .iter()
        .find(|s| s.signal == Signal::SIGKILL && s.group)
        .expect("its group is SIGKILLed");
    assert!(
        kill.at - to_it[0].at >= Duration::from_secs(30),
        "{to_it:?}"
    );
    c.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_crash_loop_backs_off_longer_each_time_then_gives_the_cluster_up() {
    let fake = Fake::new(Behaviour::Crash {
        after: Duration::from_millis(5),
        code: 3,
    });
    let builder = cluster(1)
        .readiness(Readiness::None)
        .settle(Duration::ZERO)
        .backoff(crate::Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
            ..crate::Backoff::default()
        })
        .crash_loop(crate::CrashLoop {
            limit: 4,
            window: Duration::from_secs(60),
        });
    let mut c = start(builder, fake.clone()).await;
    let events = c.until(1, |e| matches!(e, Event::SlotFailed { .. })).await;
    let delays: Vec<Duration> = events
        .iter()
        .filter_map(|e| match e {
            Event::RestartScheduled { delay, .. } => Some(*delay),
            _ => None,
        })
        .collect();
    assert_eq!(delays.len(), 3, "{events:?}");
    assert!(delays.windows(2).all(|w| w[1] > w[0]), "{delays:?}");
    assert_eq!(fake.spawned().len(), 4);
    let err = c.run.await.unwrap().unwrap_err();
    let Error::AllSlotsFailed { slots } = err else {
        panic!("{err:?}");
    };
    assert_eq!(slots[0].last_exit, Some(crate::Exit::Code(3)));
}

#[tokio::test(start_paused = true)]
async fn a_reload_asked_for_during_a_reload_runs_once_after_it() {
    let fake = Fake::new(SERVE);
    let mut c = start(cluster(1), fake.clone()).await;
    c.until(1, ready).await;
    let (a, b, d) = tokio::join!(c.handle.reload(), c.handle.reload(), c.handle.reload());
    for report in [a, b, d] {
        assert!(report.unwrap().is_complete());
    }
    // The first reload, then one more for the two that waited.
    assert_eq!(fake.spawned().len(), 3, "{:?}", fake.spawned());
    c.stop().await;
}

#[tokio::test(start_paused = true)]
async fn scaling_up_starts_new_slots_and_down_drains_the_highest() {
    let fake = Fake::new(SERVE);
    let mut c = start(cluster(2), fake.clone()).await;
    c.until(2, ready).await;
    let first = fake.spawned();

    assert_eq!(c.handle.scale(4).await.unwrap(), (2, 4));
    let events = c.until(2, ready).await;
    assert!(
        events.contains(&Event::Scaled { from: 2, to: 4 }),
        "{events:?}"
    );
    let workers = c.handle.workers();
    assert_eq!(workers.len(), 4);
    assert!(workers.iter().all(|w| w.state == crate::WorkerState::Ready));
    assert!(fake.sent().is_empty(), "nobody was stopped");

    // Down to 1: slots 3, 2, 1 drain; slot 0 is left alone.
    assert_eq!(c.handle.scale_by(-3).await.unwrap(), (4, 1));
    c.until(3, |e| matches!(e, Event::Exited { .. })).await;
    tokio::task::yield_now().await;
    let workers = c.handle.workers();
    assert_eq!(workers.len(), 1, "{workers:?}");
    assert_eq!(workers[0].pid, Some(first[0]));
    let stopped: Vec<u32> = fake.sent().iter().map(|s| s.pid).collect();
    assert_eq!(stopped.len(), 3, "{:?}", fake.sent());
    assert!(!stopped.contains(&first[0]));
    assert!(fake.sent().iter().all(|s| s.signal == Signal::SIGTERM));

    // Back up: the removed slots' numbers are used again.
    c.handle.scale(2).await.unwrap();
    c.until(1, ready).await;
    assert_eq!(c.handle.workers().len(), 2);
    c.stop().await;
}

#[tokio::test(start_paused = true)]
async fn scaling_is_refused_to_zero_during_a_reload_and_while_slots_drain() {
    let fake = Fake::new(Behaviour::Serve {
        drain: Duration::from_secs(5),
    });
    let mut c = start(cluster(2), fake.clone()).await;
    c.until(2, ready).await;
    assert!(matches!(c.handle.scale(0).await, Err(Error::ZeroWorkers)));

    let handle = c.handle.clone();
    let reload = tokio::spawn(async move { handle.reload().await });
    c.until(1, |e| matches!(e, Event::ReloadStarted { .. }))
        .await;
    let during = c.handle.scale(3).await.unwrap_err();
    assert!(
        matches!(during, Error::Busy { what: "scale", .. }),
        "{during}"
    );
    assert_eq!(during.kind(), crate::ErrorKind::Conflict);
    assert!(reload.await.unwrap().unwrap().is_complete());

    // Slot 1 drains for 5 s: scaling again waits for it.
    c.handle.scale(1).await.unwrap();
    let draining = c.handle.scale(3).await.unwrap_err();
    assert!(
        matches!(draining, Error::Busy { what: "scale", .. }),
        "{draining}"
    );
    c.until(1, |e| matches!(e, Event::Exited { slot: 1, .. }))
        .await;
    tokio::task::yield_now().await;
    assert_eq!(c.handle.scale(3).await.unwrap(), (1, 3));
    c.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_pre_stop_delay_keeps_workers_serving_while_the_cluster_says_stopping() {
    let fake = Fake::new(SERVE);
    let mut c = start(
        cluster(2).pre_stop_delay(Duration::from_secs(10)),
        fake.clone(),
    )
    .await;
    c.until(2, ready).await;
    let handle = c.handle.clone();
    let stopping = tokio::spawn(async move { handle.shutdown().await });
    c.until(1, |e| matches!(e, Event::Stopping { graceful: true }))
        .await;
    let asked = tokio::time::Instant::now();
    assert_eq!(c.handle.phase(), crate::Phase::Stopping);
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert!(fake.sent().is_empty(), "nobody is stopped during the delay");
    stopping.await.unwrap().unwrap();
    let sent = fake.sent();
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert!(sent.iter().all(|s| s.at - asked >= Duration::from_secs(10)));
    c.run.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_shutdown_asked_for_before_run_makes_run_start_nothing_and_return() {
    let fake = Fake::new(SERVE);
    let cluster = cluster(2).build().unwrap();
    let handle = cluster.handle();
    // Asked for before run(): it waits for run() to carry it out.
    let shutdown = tokio::spawn({
        let handle = handle.clone();
        async move { handle.shutdown().await }
    });
    tokio::task::yield_now().await;
    assert!(!shutdown.is_finished(), "shutdown waits for run()");
    cluster
        .run_on(std::sync::Arc::new(fake.clone()))
        .await
        .unwrap();
    shutdown.await.unwrap().unwrap();
    assert!(fake.spawned().is_empty(), "{:?}", fake.spawned());
    assert_eq!(handle.phase(), crate::Phase::Stopped);
}

#[tokio::test(start_paused = true)]
async fn a_reload_asked_for_before_run_is_carried_out_once_the_workers_started() {
    let fake = Fake::new(SERVE);
    let cluster = cluster(1).build().unwrap();
    let handle = cluster.handle();
    let reload = tokio::spawn({
        let handle = handle.clone();
        async move { handle.reload().await }
    });
    tokio::task::yield_now().await;
    let run = tokio::spawn(cluster.run_on(std::sync::Arc::new(fake.clone())));
    let report = reload.await.unwrap().unwrap();
    assert!(report.is_complete(), "{report}");
    assert_eq!(report.replaced.len(), 1, "{report}");
    assert_eq!(
        fake.spawned().len(),
        2,
        "the first worker and its successor"
    );
    handle.shutdown().await.unwrap();
    run.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn controls_of_a_cluster_dropped_without_running_say_not_running() {
    let cluster = cluster(1).build().unwrap();
    let handle = cluster.handle();
    let reload = tokio::spawn({
        let handle = handle.clone();
        async move { handle.reload().await }
    });
    tokio::task::yield_now().await;
    drop(cluster);
    assert!(matches!(reload.await.unwrap(), Err(Error::NotRunning)));
    assert!(matches!(handle.shutdown().await, Err(Error::NotRunning)));
    assert!(matches!(handle.scale(2).await, Err(Error::NotRunning)));
}
