//! Feature `tracing`: a cluster's events and worker lines reach the
//! program's tracing subscriber with their level and fields. Alone in its
//! test binary: it installs the process-wide subscriber.

mod common;

use std::sync::{Arc, Mutex};

use common::{first_ready_worker, hello, WAIT};
use herd::Cluster;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Level, Metadata, Subscriber};

/// One tracing event as the recorder saw it.
#[derive(Debug, Default, Clone)]
struct Seen {
    target: String,
    level: Option<Level>,
    fields: Vec<(String, String)>,
}

impl Seen {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

impl Visit for Seen {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.fields
            .push((field.name().to_owned(), format!("{value:?}")));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.fields
            .push((field.name().to_owned(), value.to_owned()));
    }
}

/// A subscriber that keeps every event.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Seen>>>);

impl Subscriber for Recorder {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut seen = Seen {
            target: event.metadata().target().to_owned(),
            level: Some(*event.metadata().level()),
            ..Seen::default()
        };
        event.record(&mut seen);
        self.0.lock().unwrap().push(seen);
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_and_worker_lines_reach_tracing_with_their_level_and_fields() {
    let recorder = Recorder::default();
    tracing::subscriber::set_global_default(recorder.clone()).unwrap();
    let cluster = Cluster::builder()
        .command(hello())
        .workers(1)
        .listen("127.0.0.1:0".parse().unwrap())
        .log_events(false)
        .forward_output(false)
        .build()
        .unwrap();
    let handle = cluster.handle();
    let forwarding = herd::trace::forward(&handle, herd::trace::Forward { output: true });
    let run = tokio::spawn(cluster.run());
    let pid = first_ready_worker(&handle).await.to_string();
    // hello is ready at its start (no readiness protocol): its first line
    // may come after; the stop waits for it.
    let deadline = tokio::time::Instant::now() + WAIT;
    while !recorder
        .0
        .lock()
        .unwrap()
        .iter()
        .any(|s| s.target == "herd::worker")
    {
        assert!(tokio::time::Instant::now() < deadline, "no worker line");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    handle.shutdown().await.unwrap();
    run.await.unwrap().unwrap();
    // The streams end with the cluster, and so does the forwarding.
    tokio::time::timeout(WAIT, forwarding)
        .await
        .expect("forwarding ends after the stop")
        .unwrap();

    let seen = recorder.0.lock().unwrap().clone();
    let herd = |name: &str| {
        seen.iter()
            .find(|s| s.target == "herd" && s.field("event") == Some(name))
            .unwrap_or_else(|| panic!("no {name} event in {seen:#?}"))
            .clone()
    };
    let spawned = herd("spawned");
    assert_eq!(spawned.level, Some(Level::INFO));
    assert_eq!(spawned.field("slot"), Some("0"), "{spawned:?}");
    assert_eq!(spawned.field("pid"), Some(pid.as_str()), "{spawned:?}");
    assert!(spawned.field("message").is_some_and(|m| m.contains(&pid)));
    assert_eq!(herd("stopping").level, Some(Level::INFO));
    // A worker ended by the stop exited as expected: info, not warn.
    assert_eq!(herd("exited").level, Some(Level::INFO));
    let stopped = herd("stopped");
    assert_eq!(stopped.level, Some(Level::INFO));
    // No slot, no pid: the fields are left out, not written as None.
    assert_eq!(stopped.field("slot"), None, "{stopped:?}");
    let line = seen
        .iter()
        .find(|s| s.target == "herd::worker")
        .unwrap_or_else(|| panic!("no worker line in {seen:#?}"));
    assert_eq!(line.field("slot"), Some("0"), "{line:?}");
    assert_eq!(line.field("pid"), Some(pid.as_str()), "{line:?}");
}
