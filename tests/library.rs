//! The library API as an embedding Rust program uses it: builder, run,
//! handle, events; with the `hello` example as the worker.

mod common;

use std::time::Duration;

use common::{alive, get, hello, holds_listener_on, pid_of, wait_dead, WAIT};
use herd::{Cluster, Error, Event, Phase, WorkerState};

/// A cluster of `hello` workers on a kernel-chosen loopback port, with the
/// master's signal handling off (the test process owns its signals).
fn hello_cluster(workers: usize) -> herd::Builder {
    Cluster::builder()
        .command(hello())
        .workers(workers)
        .listen("127.0.0.1:0".parse().unwrap())
        .handle_signals(false)
        .drain_timeout(Duration::from_secs(5))
}

/// One `sh -c script` worker with no sockets, restarted after 10-20 ms,
/// given up on after `limit` exits (0: never).
fn quick_restarts(script: &str, limit: u32) -> herd::Builder {
    quick_restarts_of("sh", &["-c", script], limit)
}

/// [`quick_restarts`] of any program.
fn quick_restarts_of(program: &str, args: &[&str], limit: u32) -> herd::Builder {
    Cluster::builder()
        .command(program)
        .args(args)
        .workers(1)
        .without_sockets()
        .handle_signals(false)
        .log_events(false)
        .crash_loop(herd::CrashLoop {
            limit,
            window: Duration::from_secs(60),
        })
        .backoff(herd::Backoff {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(20),
            ..herd::Backoff::default()
        })
}

/// `workers` `sh -c script` workers with no sockets, ready 300 ms after
/// they start, whose output and events reach only the program.
fn silent_sh(script: &str, workers: usize) -> herd::Builder {
    Cluster::builder()
        .command("sh")
        .args(["-c", script])
        .workers(workers)
        .without_sockets()
        .handle_signals(false)
        .log_events(false)
        .forward_output(false)
        .readiness(herd::Readiness::Delay(Duration::from_millis(300)))
        .drain_timeout(Duration::from_secs(5))
}

async fn next_spawned(events: &mut tokio::sync::broadcast::Receiver<Event>) -> u32 {
    loop {
        match tokio::time::timeout(WAIT, events.recv()).await {
            Ok(Ok(Event::Spawned { pid, .. })) => return pid,
            Ok(Ok(_)) => continue,
            other => panic!("no Spawned event: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handle_observes_and_stops_a_running_cluster() {
    let cluster = hello_cluster(2).build().unwrap();
    let addr = cluster.local_addrs()[0];
    assert_ne!(addr.port(), 0);
    let handle = cluster.handle();
    assert_eq!(handle.phase(), Phase::Created);
    let mut events = handle.events();
    let run = tokio::spawn(cluster.run());

    let a = next_spawned(&mut events).await;
    let b = next_spawned(&mut events).await;
    let workers = handle.workers();
    assert_eq!(workers.len(), 2);
    assert!(workers.iter().all(|w| w.state == WorkerState::Ready));
    let mut pids: Vec<u32> = workers.iter().filter_map(|w| w.pid).collect();
    pids.sort_unstable();
    let mut expected = vec![a, b];
    expected.sort_unstable();
    assert_eq!(pids, expected);

    // A request reaches a worker of ours.
    let body = tokio::task::spawn_blocking(move || get(addr, "/"))
        .await
        .unwrap()
        .unwrap();
    assert!(expected.contains(&pid_of(&body)));
    assert!(holds_listener_on(std::process::id(), addr.port()));

    tokio::time::timeout(WAIT, handle.shutdown())
        .await
        .expect("shutdown in time")
        .unwrap();
    assert_eq!(handle.phase(), Phase::Stopped);
    run.await.unwrap().unwrap();
    assert!(!alive(a) && !alive(b));
    // Closed: this process holds no listener on the port any more (another
    // test may have bound the freed port since).
    assert!(
        !holds_listener_on(std::process::id(), addr.port()),
        "sockets closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_that_cannot_exec_is_an_error_not_a_crash_loop() {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::temp_dir().join(format!("herd-garbage-{}", std::process::id()));
    std::fs::write(&path, [0x7f, b'E', b'L', b'F', 0, 0, 0, 0]).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cluster = Cluster::builder()
        .command(&path)
        .workers(2)
        .without_sockets()
        .handle_signals(false)
        .log_events(false)
        .build()
        .unwrap();
    let err = tokio::time::timeout(WAIT, cluster.run())
        .await
        .expect("run returns")
        .unwrap_err();
    let _ = std::fs::remove_file(&path);
    match &err {
        Error::Spawn { program, stage, .. } => {
            assert_eq!(program, &path.display().to_string());
            assert_eq!(*stage, "exec");
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("exec"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedding_programs_own_children_are_left_alone() {
    // A child of the embedding program that exits while the cluster runs
    // must still be reapable by its owner: herd reaps by pidfd only.
    let mut own = std::process::Command::new("sh")
        .args(["-c", "sleep 0.3; exit 7"])
        .spawn()
        .unwrap();
    let cluster = quick_restarts("sleep 0.05; exit 1", 0).build().unwrap();
    let handle = cluster.handle();
    let mut events = handle.events();
    let run = tokio::spawn(cluster.run());
    let mut spawned = Vec::new();
    // Enough restarts to span the child's exit.
    while spawned.len() < 8 {
        spawned.push(next_spawned(&mut events).await);
    }
    let status = tokio::task::spawn_blocking(move || own.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(7), "the owner reaps its own child");
    tokio::time::timeout(WAIT, handle.shutdown())
        .await
        .unwrap()
        .unwrap();
    run.await.unwrap().unwrap();
    wait_dead(&spawned, "workers after shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_replaces_one_slot_and_reloads_coalesce() {
    let cluster = hello_cluster(2)
        .readiness(herd::Readiness::Notify)
        .log_events(false)
        .build()
        .unwrap();
    let handle = cluster.handle();
    let mut events = handle.events();
    let run = tokio::spawn(cluster.run());
    next_spawned(&mut events).await;
    next_spawned(&mut events).await;
    let wait_ready = |h: herd::Handle| async move {
        tokio::time::timeout(WAIT, async {
            while !h.workers().iter().all(|w| w.state == WorkerState::Ready) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("workers ready");
    };
    wait_ready(handle.clone()).await;
    let before = handle.workers();

    // A soft restart of slot 1 leaves slot 0 alone.
    let report = tokio::time::timeout(WAIT, handle.restart(1))
        .await
        .unwrap()
        .unwrap();
    assert!(report.is_complete(), "{report}");
    assert_eq!(report.replaced.len(), 1);
    let r = &report.replaced[0];
    assert_eq!(r.slot, 1);
    assert_eq!(r.old_pid, before[1].pid);
    let after = handle.workers();
    assert_eq!(after[0].pid, before[0].pid, "slot 0 untouched");
    assert_eq!(after[1].pid, Some(r.new_pid));
    assert_eq!(after[1].generation, 1);

    // No such slot.
    let err = handle.restart(7).await.unwrap_err();
    assert!(
        matches!(err, Error::NoSuchSlot { slot: 7, slots: 2 }),
        "{err:?}"
    );
    assert!(err.to_string().contains("slot 7"), "{err}");

    // Three reloads at once: one runs, the other two merge into one more.
    let mut starts = handle.events();
    let (a, b, c) = tokio::join!(handle.reload(), handle.reload(), handle.reload());
    let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
    assert!(a.is_complete() && b.is_complete() && c.is_complete());
    assert_eq!(b, c, "merged requests share one report");
    assert_ne!(a.replaced, b.replaced);
    let mut runs = 0;
    while let Ok(e) = starts.try_recv() {
        if matches!(e, Event::ReloadStarted { .. }) {
            runs += 1;
        }
    }
    assert_eq!(
        runs, 2,
        "reloads ran one after the other, merged, not in parallel"
    );

    tokio::time::timeout(WAIT, handle.shutdown())
        .await
        .unwrap()
        .unwrap();
    run.await.unwrap().unwrap();
    let err = handle.reload().await.unwrap_err();
    assert!(matches!(err, Error::NotRunning), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_counts_close_when_clients_leave_without_a_word() {
    use std::io::Write;
    let cluster = hello_cluster(1)
        .balance(herd::Balance::Proxy {
            strategy: herd::balance::Strategy::LeastConnections,
        })
        .log_events(false)
        .forward_output(false)
        .build()
        .unwrap();
    let addr = cluster.local_addrs()[0];
    let handle = cluster.handle();
    let mut events = handle.events();
    let run = tokio::spawn(cluster.run());
    next_spawned(&mut events).await;
    let open = |h: &herd::Handle| -> u32 { h.proxied_connections().iter().map(|c| c.open).sum() };
    let wait_open = |want: u32| {
        let h = handle.clone();
        async move {
            tokio::time::timeout(WAIT, async {
                while open(&h) != want {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
            .await
            .unwrap_or_else(|_| panic!("open connections never reached {want}: {}", open(&h)))
        }
    };
    // Silent clients, and one that leaves in the middle of a request.
    let silent: Vec<_> = (0..5)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    let mut partial = std::net::TcpStream::connect(addr).unwrap();
    partial.write_all(b"GET / HTTP/1.1\r\nHo").unwrap();
    wait_open(6).await;
    drop(silent);
    drop(partial);
    wait_open(0).await;
    tokio::time::timeout(WAIT, handle.shutdown())
        .await
        .unwrap()
        .unwrap();
    run.await.unwrap().unwrap();
    // Nothing of the cluster outlives run(): the runtime goes on, but the
    // address is closed.
    // (A child another test forks in this process holds a copy of every
    // fd until it execs, so the address may answer for a moment longer.)
    wait_closed(addr, "the proxy after run() returned").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_run_kills_the_workers_and_says_the_cluster_stopped() {
    let cluster = hello_cluster(2).build().unwrap();
    let addr = cluster.local_addrs()[0];
    let handle = cluster.handle();
    let mut events = handle.events();
    let run = cluster.run();
    // The other arm wins once both workers run: run() is dropped mid-way.
    let pids = tokio::select! {
        r = run => panic!("run() ended by itself: {r:?}"),
        pids = async {
            let a = next_spawned(&mut events).await;
            let b = next_spawned(&mut events).await;
            vec![a, b]
        } => pids,
    };
    assert_eq!(handle.phase(), Phase::Stopped);
    tokio::task::spawn_blocking(move || wait_dead(&pids, "workers after run() was dropped"))
        .await
        .unwrap();
    assert!(matches!(handle.shutdown().await, Ok(())));
    // The listening sockets closed with the cluster.
    wait_closed(addr, "the sockets after run() was dropped").await;
}

/// Waits until nothing accepts on `addr` any more.
async fn wait_closed(addr: std::net::SocketAddr, what: &str) {
    let deadline = std::time::Instant::now() + WAIT;
    while std::net::TcpStream::connect(addr).is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what} still accept on {addr}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A cluster running on a task of its own.
struct Running {
    addr: std::net::SocketAddr,
    handle: herd::Handle,
    run: tokio::task::JoinHandle<herd::Result<()>>,
}

impl Running {
    /// Builds and runs `builder`, and waits until `spawns` workers were
    /// spawned.
    async fn start(builder: herd::Builder, spawns: usize) -> Running {
        let cluster = builder.build().unwrap();
        let addr = cluster.local_addrs()[0];
        let handle = cluster.handle();
        let mut events = handle.events();
        let run = tokio::spawn(cluster.run());
        for _ in 0..spawns {
            next_spawned(&mut events).await;
        }
        Running { addr, handle, run }
    }

    /// Stops it and checks that run() ended well.
    async fn stop(self) {
        tokio::time::timeout(WAIT, self.handle.shutdown())
            .await
            .expect("stopped in time")
            .unwrap();
        self.run.await.unwrap().unwrap();
    }
}

/// A proxy-mode cluster of one `hello` worker.
fn proxy_cluster() -> herd::Builder {
    hello_cluster(1)
        .balance(herd::Balance::Proxy {
            strategy: herd::balance::Strategy::RoundRobin,
        })
        .log_events(false)
        .forward_output(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_limit_new_clients_wait_and_are_served_when_one_leaves() {
    let c = Running::start(proxy_cluster().max_connections(2), 1).await;
    let (addr, handle) = (c.addr, c.handle.clone());
    let idle: Vec<_> = (0..2)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    // A third client: not reset, not served while two are open.
    let third = tokio::task::spawn_blocking(move || get(addr, "/"));
    tokio::time::timeout(WAIT, async {
        while handle.proxy_stats().limit_reached == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the limit is reached and counted");
    assert_eq!(handle.proxy_stats().limit, 2);
    assert!(!third.is_finished(), "the third client waits");
    drop(idle);
    let body = tokio::time::timeout(WAIT, third)
        .await
        .expect("served once a client left")
        .unwrap()
        .unwrap();
    assert!(body.contains("pid="), "{body}");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxied_connection_quiet_for_the_idle_timeout_is_closed_and_counted() {
    use std::io::Read;
    let c = Running::start(
        proxy_cluster().proxy_idle_timeout(Duration::from_millis(200)),
        1,
    )
    .await;
    let (addr, handle) = (c.addr, c.handle.clone());
    let n = tokio::task::spawn_blocking(move || {
        let mut quiet = std::net::TcpStream::connect(addr).unwrap();
        quiet.set_read_timeout(Some(WAIT)).unwrap();
        let mut buf = [0u8; 16];
        quiet.read(&mut buf)
    })
    .await
    .unwrap();
    assert_eq!(n.unwrap(), 0, "the master closed the quiet connection");
    assert_eq!(handle.proxy_stats().idle_closed, 1);
    // A connection that talks is served as usual.
    let body = tokio::task::spawn_blocking(move || get(addr, "/"))
        .await
        .unwrap()
        .unwrap();
    assert!(body.contains("pid="), "{body}");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_launcher_sees_uptime_and_successors_signals_a_slot_and_waits_for_the_end() {
    let c = Running::start(hello_cluster(2).log_events(false), 2).await;
    let handle = c.handle.clone();
    let before = std::time::Instant::now();
    let w = &handle.workers()[0];
    let started = w.started.expect("a start time");
    assert!(started <= before, "started before now");
    assert!(w.ready_since.is_some(), "hello is ready at exec");
    assert_eq!(w.successor, None);

    // A signal to one slot reaches that worker (SIGWINCH: ignored by
    // default, so it lives on).
    let pid = handle.signal(1, herd::Signal::WINCH).await.unwrap();
    assert_eq!(Some(pid), handle.workers()[1].pid);
    assert!(matches!(
        handle.signal(5, herd::Signal::WINCH).await,
        Err(Error::NoSuchSlot { slot: 5, slots: 2 })
    ));

    // Somebody else stops the cluster; the launcher only waits.
    let waiter = {
        let h = handle.clone();
        tokio::spawn(async move { h.stopped().await })
    };
    assert!(!waiter.is_finished());
    handle.signal(0, herd::Signal::TERM).await.unwrap();
    c.stop().await;
    tokio::time::timeout(WAIT, waiter).await.unwrap().unwrap();
    assert_eq!(handle.phase(), Phase::Stopped);
    assert!(matches!(
        handle.signal(0, herd::Signal::WINCH).await,
        Err(Error::NotRunning)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_ends_after_the_cluster_stopped() {
    use tokio::sync::broadcast::error::RecvError;
    let c = Running::start(hello_cluster(1).log_events(false), 1).await;
    let handle = c.handle.clone();
    let mut events = handle.events();
    c.stop().await;
    let mut saw_stopped = false;
    loop {
        match tokio::time::timeout(WAIT, events.recv())
            .await
            .expect("the stream ends")
        {
            Ok(Event::Stopped) => saw_stopped = true,
            Ok(_) => {}
            Err(RecvError::Closed) => break,
            Err(RecvError::Lagged(_)) => {}
        }
    }
    assert!(saw_stopped, "Stopped comes before the end");
    // A late subscriber gets a stream that has already ended.
    let mut late = handle.events();
    assert!(matches!(late.recv().await, Err(RecvError::Closed)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_carries_the_stop_and_then_ends() {
    use tokio_stream::StreamExt;
    let c = Running::start(hello_cluster(1).log_events(false), 1).await;
    let handle = c.handle.clone();
    let mut events = handle.event_stream();
    let mut output = handle.output_stream();
    c.stop().await;
    let mut last = None;
    while let Some(item) = tokio::time::timeout(WAIT, events.next())
        .await
        .expect("the stream ends")
    {
        last = Some(item.expect("no event missed").name());
    }
    assert_eq!(last, Some("stopped"));
    while tokio::time::timeout(WAIT, output.next())
        .await
        .expect("the output stream ends too")
        .is_some()
    {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_output_stream_ends_after_the_cluster_stopped_while_handles_live() {
    use tokio::sync::broadcast::error::RecvError;
    let c = Running::start(hello_cluster(1).log_events(false).forward_output(false), 1).await;
    let handle = c.handle.clone();
    let mut output = handle.output();
    c.stop().await;
    while let Ok(_) | Err(RecvError::Lagged(_)) = tokio::time::timeout(WAIT, output.recv())
        .await
        .expect("the output stream ends once the cluster stopped")
    {}
    let mut late = handle.output();
    assert!(matches!(late.recv().await, Err(RecvError::Closed)));
    drop(handle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_cluster_says_why_to_whoever_only_uses_the_question_mark() {
    let cluster = quick_restarts(
        "echo 'connect ECONNREFUSED: the database is down' >&2; exit 3",
        2,
    )
    .forward_output(false)
    .build()
    .unwrap();
    let err = tokio::time::timeout(WAIT, cluster.run())
        .await
        .expect("run returns")
        .unwrap_err();
    let Error::AllSlotsFailed { slots } = &err else {
        panic!("{err:?}");
    };
    assert_eq!(slots[0].last_exit, Some(herd::Exit::Code(3)));
    assert!(
        slots[0]
            .last_output
            .iter()
            .any(|l| l.contains("the database is down")),
        "{slots:?}"
    );
    assert!(err.to_string().contains("the database is down"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_looping_node_app_is_quoted_by_its_error_not_nodes_version_banner() {
    // Node ends every uncaught exception with its version on a line of its
    // own, after the stack.
    let cluster = quick_restarts_of(
        "node",
        &[
            "-e",
            "throw new Error('connect ECONNREFUSED: the database is down')",
        ],
        2,
    )
    .node_preload(false)
    .forward_output(false)
    .build()
    .unwrap();
    let err = tokio::time::timeout(WAIT, cluster.run())
        .await
        .expect("run returns")
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("the last with code 1: Error: connect ECONNREFUSED: the database is down"),
        "{text}"
    );
    assert!(!text.contains("Node.js v"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_gets_every_worker_line_and_every_notice_as_values() {
    use herd::{Notice, OutputStream};
    let cluster = silent_sh(
        "echo \"out $NODE_APP_INSTANCE\"; echo oops >&2; exec sleep 60",
        2,
    )
    .name("lib")
    .build()
    .unwrap();
    let handle = cluster.handle();
    assert_eq!(handle.name(), Some("lib"));
    let mut output = handle.output();
    let mut events = handle.events();
    let run = tokio::spawn(cluster.run());

    // Two lines from each worker, on the right stream, with its slot and pid.
    let mut lines = Vec::new();
    while lines.len() < 4 {
        let line = tokio::time::timeout(WAIT, output.recv())
            .await
            .expect("worker lines arrive")
            .unwrap();
        lines.push(line);
    }
    let spawned = [
        next_spawned(&mut events).await,
        next_spawned(&mut events).await,
    ];
    for slot in 0..2 {
        let out: Vec<_> = lines.iter().filter(|l| l.slot == slot).collect();
        assert_eq!(out.len(), 2, "{lines:?}");
        assert!(out
            .iter()
            .all(|l| spawned.contains(&l.pid) && l.pid == out[0].pid));
        assert!(out
            .iter()
            .any(|l| l.stream == OutputStream::Stdout && l.line == format!("out {slot}")));
        assert!(out
            .iter()
            .any(|l| l.stream == OutputStream::Stderr && l.line == "oops"));
    }

    // A reload asked for during a reload is queued, and the program hears
    // of it as a typed notice.
    let (first, second) = tokio::join!(handle.reload(), handle.reload());
    assert!(first.unwrap().is_complete());
    assert!(second.unwrap().is_complete());
    let mut queued = false;
    while let Ok(Ok(e)) = tokio::time::timeout(Duration::from_millis(200), events.recv()).await {
        if let Event::Notice { notice, .. } = e {
            queued |= notice == Notice::ReloadQueued;
        }
    }
    assert!(queued, "a ReloadQueued notice");

    tokio::time::timeout(WAIT, handle.shutdown())
        .await
        .expect("stopped in time")
        .unwrap();
    run.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_cannot_prefix_a_log_line_is_refused() {
    for bad in ["", "two words", "a/b", &"x".repeat(65)] {
        let err = hello_cluster(1).name(bad).build().map(|_| ()).unwrap_err();
        assert!(
            matches!(
                err,
                Error::InvalidSetting {
                    setting: "name",
                    ..
                }
            ),
            "{bad}: {err}"
        );
    }
    assert!(hello_cluster(1).name("api-v2.blue_1").build().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_limit_is_refused_where_the_master_cannot_count_requests() {
    let http = || {
        hello_cluster(1).balance(herd::Balance::Http {
            strategy: herd::Strategy::RoundRobin,
        })
    };
    for builder in [
        hello_cluster(1).max_requests(100),
        http().max_requests(0),
        http().max_requests(100).sample_interval(Duration::ZERO),
    ] {
        let err = builder.build().map(|_| ()).unwrap_err();
        assert!(
            matches!(
                err,
                Error::InvalidSetting {
                    setting: "max-requests",
                    ..
                }
            ),
            "{err}"
        );
    }
    assert!(http().max_requests(100).build().is_ok());
}

/// A socket the program already has (systemd socket activation, a test
/// harness) is served by the workers; one herd cannot use is refused with
/// an error naming its fd and the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_launcher_passes_in_sockets_it_already_has() {
    use std::os::fd::AsRawFd;
    // Shared: any bound TCP listener.
    let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = plain.local_addr().unwrap();
    let builder = Cluster::builder()
        .command(hello())
        .workers(2)
        .balance(herd::Balance::Shared)
        .listener(plain)
        .handle_signals(false)
        .log_events(false);
    let c = Running::start(builder, 2).await;
    assert_eq!(c.addr, addr);
    let body = tokio::task::spawn_blocking(move || get(addr, "/"))
        .await
        .unwrap();
    assert!(body.is_ok(), "{body:?}");
    c.stop().await;

    // Reuseport: the given socket is slot 0's; slot 1 joins its group.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_reuse_port(true).unwrap();
    socket
        .bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    let builder = Cluster::builder()
        .command(hello())
        .workers(2)
        .listener(socket)
        .handle_signals(false)
        .log_events(false);
    let c = Running::start(builder, 2).await;
    let workers: Vec<u32> = c.handle.workers().iter().filter_map(|w| w.pid).collect();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..200 {
        let body = tokio::task::spawn_blocking(move || get(addr, "/"))
            .await
            .unwrap()
            .unwrap();
        seen.insert(pid_of(&body));
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(
        seen,
        workers.into_iter().collect(),
        "both slots serve the address"
    );
    c.stop().await;

    // Refused: each with the fd it was given.
    let no_reuseport = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let file = std::fs::File::open("/dev/null").unwrap();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let unbound = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let cases: Vec<(i32, std::os::fd::OwnedFd)> = vec![
        (no_reuseport.as_raw_fd(), no_reuseport.into()),
        (file.as_raw_fd(), file.into()),
        (udp.as_raw_fd(), udp.into()),
        (unbound.as_raw_fd(), unbound.into()),
    ];
    for (raw, fd) in cases {
        let err = Cluster::builder()
            .command(hello())
            .listener(fd)
            .build()
            .map(|_| ())
            .unwrap_err();
        let Error::BadListener { fd, .. } = &err else {
            panic!("{err:?}");
        };
        assert_eq!(*fd, raw, "{err}");
    }
}

/// A launcher that deploys a new release points the next workers at it:
/// new directory, new environment; a bad command is refused and changes
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_reload_runs_the_command_the_launcher_set() {
    let script = "echo \"release=$RELEASE dir=$(pwd)\"; exec sleep 60";
    let release = std::env::temp_dir().join(format!("herd-release-{}", std::process::id()));
    std::fs::create_dir_all(&release).unwrap();
    let cluster = silent_sh(script, 1).env("RELEASE", "1").build().unwrap();
    let handle = cluster.handle();
    let mut output = handle.output();
    let run = tokio::spawn(cluster.run());
    let first = tokio::time::timeout(WAIT, output.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(first.line.starts_with("release=1 "), "{first:?}");

    // Refused, and the running command stays.
    let missing = handle
        .set_command(herd::WorkerCommand::new("surely-no-such-program-herd"))
        .await
        .unwrap_err();
    assert!(
        matches!(missing, Error::ProgramNotFound { .. }),
        "{missing}"
    );
    let node = handle
        .set_command(herd::WorkerCommand::new("node").arg("-e").arg("0"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            node,
            Error::InvalidSetting {
                setting: "command",
                ..
            }
        ),
        "{node}"
    );

    handle
        .set_command(
            herd::WorkerCommand::new("sh")
                .args(["-c", script])
                .env("RELEASE", "2")
                .current_dir(&release),
        )
        .await
        .unwrap();
    assert!(handle.reload().await.unwrap().is_complete());
    let next = tokio::time::timeout(WAIT, output.recv())
        .await
        .unwrap()
        .unwrap();
    assert_ne!(next.pid, first.pid);
    assert_eq!(
        next.line,
        format!("release=2 dir={}", release.display()),
        "{next:?}"
    );

    tokio::time::timeout(WAIT, handle.shutdown())
        .await
        .expect("stopped in time")
        .unwrap();
    run.await.unwrap().unwrap();
    let _ = std::fs::remove_dir_all(&release);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rust_program_drives_a_running_master_through_the_typed_client() {
    use herd::control::{Client, ClientError};
    let dir = std::env::temp_dir().join(format!("herd-client-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("control.sock");
    let c = Running::start(hello_cluster(1).log_events(false), 1).await;
    let server = herd::control::serve(c.handle.clone(), &path).await.unwrap();
    let client = Client::new(&path);

    let status = client.status().await.unwrap();
    assert_eq!(status.pid, std::process::id());
    assert_eq!(status.workers.len(), 1);
    assert_eq!(status.phase, Phase::Running);
    let first = status.workers[0].pid.expect("a worker");

    let report = client.reload().await.unwrap();
    assert!(report.is_complete(), "{report}");
    assert_eq!(report.replaced[0].old_pid, Some(first));

    // Refusals come back typed, with the API's kind.
    match client.restart(7).await {
        Err(ClientError::Refused { status, kind, .. }) => {
            assert_eq!((status, kind.as_str()), (404, "no_such_slot"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(client.scale_by(1).await.unwrap(), (1, 2));
    let pids = client.signal(herd::Signal::WINCH, Some(0)).await.unwrap();
    assert_eq!(pids.len(), 1);
    // The lines the workers wrote (a replaced hello says it drained),
    // read back, then followed as a stream.
    let kept = client.logs(None, 50).await.unwrap();
    assert!(!kept.is_empty(), "the workers' lines");
    let mut follow = client.follow_logs(None, 50).await.unwrap();
    let first = tokio::time::timeout(WAIT, tokio_stream::StreamExt::next(&mut follow))
        .await
        .expect("a line")
        .expect("the stream is open")
        .unwrap();
    assert_eq!(first, kept[0]);
    drop(follow);

    c.stop().await;
    drop(server);
    // Nobody answers any more: the error says so, naming the socket.
    let _ = std::fs::remove_file(&path);
    match client.status().await {
        Err(e @ ClientError::NoMaster { .. }) => {
            assert!(e.to_string().contains("control.sock"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tower_service_is_served_and_drained_by_a_shutdown_future() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Context, Poll};

    /// A service as tower users write them: readiness, then the call.
    #[derive(Clone)]
    struct Hello(Arc<AtomicUsize>);
    impl tower_service::Service<hyper::Request<hyper::body::Incoming>> for Hello {
        type Response = hyper::Response<http_body_util::Full<hyper::body::Bytes>>;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<Self::Response, Self::Error>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: hyper::Request<hyper::body::Incoming>) -> Self::Future {
            std::future::ready(Ok(hyper::Response::new("hi from tower\n".into())))
        }
    }

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let readied = Arc::new(AtomicUsize::new(0));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(herd::worker::http::serve_service(
        vec![listener],
        Hello(readied.clone()),
        Default::default(),
        async {
            let _ = stopped.await;
        },
    ));
    let body = tokio::task::spawn_blocking(move || get(addr, "/"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(body, "hi from tower\n");
    assert!(
        readied.load(Ordering::SeqCst) >= 1,
        "poll_ready before call"
    );
    stop.send(()).unwrap();
    tokio::time::timeout(WAIT, server)
        .await
        .expect("the shutdown future drains the server")
        .unwrap()
        .unwrap();
}
