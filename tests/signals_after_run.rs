//! What becomes of the master's signals once `run()` has returned. Alone in
//! its test binary: it signals the test process itself.

mod common;

use std::time::Duration;

use common::{first_ready_worker, hello, WAIT};
use herd::{Cluster, Phase};
use nix::sys::signal::{kill, Signal};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_run_returns_the_signals_it_handled_stay_caught_and_a_second_run_gets_them() {
    for round in 0..2 {
        let cluster = Cluster::builder()
            .command(hello())
            .workers(1)
            .listen("127.0.0.1:0".parse().unwrap())
            .log_events(false)
            .handle_signals(true)
            .build()
            .unwrap();
        let handle = cluster.handle();
        let run = tokio::spawn(cluster.run());
        first_ready_worker(&handle).await;
        // The cluster handles SIGTERM: a graceful stop, in both rounds.
        kill(nix::unistd::getpid(), Signal::SIGTERM).unwrap();
        tokio::time::timeout(WAIT, run)
            .await
            .expect("the stop in time")
            .unwrap()
            .unwrap();
        assert_eq!(handle.phase(), Phase::Stopped, "round {round}");
        // Afterwards the signal is still caught: this process lives on.
        kill(nix::unistd::getpid(), Signal::SIGTERM).unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
