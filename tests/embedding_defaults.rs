//! What an embedding program gets by default: no process-wide signal is
//! taken and no upgrade in place re-executes it. Alone in its test binary:
//! it signals the test process itself.

mod common;

use common::{first_ready_worker, hello, WAIT};
use herd::{Cluster, Error, Event};
use nix::sys::signal::{kill, Signal};
use tokio::signal::unix::{signal, SignalKind};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_library_cluster_takes_no_signal_and_never_re_executes_the_program() {
    // The program's own handlers, as an embedding program has them: the
    // signals reach these, and the process lives on.
    let mut hup = signal(SignalKind::hangup()).unwrap();
    let mut usr2 = signal(SignalKind::user_defined2()).unwrap();
    let cluster = Cluster::builder()
        .command(hello())
        .workers(1)
        .listen("127.0.0.1:0".parse().unwrap())
        .log_events(false)
        .build()
        .unwrap();
    let handle = cluster.handle();
    let mut events = handle.events();
    let run = tokio::spawn(cluster.run());
    let worker = Some(first_ready_worker(&handle).await);

    kill(nix::unistd::getpid(), Signal::SIGHUP).unwrap();
    kill(nix::unistd::getpid(), Signal::SIGUSR2).unwrap();
    tokio::time::timeout(WAIT, hup.recv())
        .await
        .expect("the program got SIGHUP");
    tokio::time::timeout(WAIT, usr2.recv())
        .await
        .expect("the program got SIGUSR2");

    // Asked for explicitly, an upgrade is refused, naming the opt-in.
    let err = handle.upgrade().await.unwrap_err();
    assert!(
        matches!(&err, Error::Upgrade { reason } if reason.contains("upgrade_in_place")),
        "{err}"
    );
    handle.shutdown().await.unwrap();
    run.await.unwrap().unwrap();
    // Neither signal started a reload or an upgrade; the worker served
    // until the stop.
    while let Ok(event) = events.try_recv() {
        assert!(
            !matches!(
                event,
                Event::ReloadStarted { .. } | Event::Upgrading { .. } | Event::UpgradeFailed { .. }
            ),
            "{event:?}"
        );
        if let Event::Spawned { pid, .. } = event {
            assert_eq!(Some(pid), worker, "no other worker was started");
        }
    }
    assert_eq!(handle.upgrades(), 0);
}
