//! Rolling reload, readiness and draining, with real masters, real workers
//! and a load client inside the test that counts every failed request.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;

/// Reloads that finished having replaced `workers` workers.
fn reloads_replacing(events: &[serde_json::Value], workers: usize) -> usize {
    of_kind(events, "reload_finished")
        .filter(|e| e["failure"].is_null() && e["replaced"].as_array().unwrap().len() == workers)
        .count()
}

/// Five SIGHUPs under keep-alive and fresh-connection load: not one failed
/// request, and every original worker replaced.
fn reloads_under_load_fail_nothing(extra: &[&str], program: Vec<String>) {
    const RELOADS: usize = 5;
    let m = Master::start(&cmd(&[&["-w", "2"], extra].concat(), &program));
    m.wait_kind("ready", 2);
    let first: HashSet<u32> = m.live_pids().into_iter().collect();
    assert_eq!(first.len(), 2, "{}", m.log());

    let run = reload_under_load(&m, 3, 2, RELOADS, |m| {
        // Let the last predecessors drain under load too.
        m.wait_events("every predecessor to exit", |e| {
            clean_exits(e) >= 2 * RELOADS
        });
    });
    let log = m.log();
    assert_eq!(reloads_replacing(&m.events(), 2), RELOADS, "{log}");
    let now: HashSet<u32> = m.live_pids().into_iter().collect();
    assert_eq!(now.len(), 2, "{log}");
    assert!(
        now.is_disjoint(&first),
        "every worker replaced: {first:?} -> {now:?}"
    );
    assert_eq!(m.spawned_pids().len(), 2 + 2 * RELOADS, "{log}");
    let served = run.served_by();
    assert!(served.len() > 2, "later generations served: {served:?}");
}

#[test]
fn reloading_the_fd_aware_node_example_fails_no_request() {
    reloads_under_load_fail_nothing(&[], node_server());
}

#[test]
fn reloading_an_unmodified_node_app_fails_no_request() {
    reloads_under_load_fail_nothing(
        &[],
        vec!["node".into(), fixture("tests/fixtures/plain_app.js")],
    );
}

#[test]
fn reloading_an_unmodified_node_app_with_a_shared_socket_fails_no_request() {
    reloads_under_load_fail_nothing(
        &["--balance", "shared"],
        vec!["node".into(), fixture("tests/fixtures/plain_app.js")],
    );
}

#[test]
fn reloading_hello_fails_no_request() {
    reloads_under_load_fail_nothing(&["--ready", "notify"], hello_server());
}

fn a_slow_request_in_flight_completes(program: Vec<String>, extra: &[&str]) {
    let m = Master::start(&cmd(&[&["-w", "1"], extra].concat(), &program));
    m.wait_kind("ready", 1);
    let old = m.live_pids()[0];
    let addr = m.addr;
    let client = std::thread::spawn(move || get(addr, "/sleep/2000"));
    m.wait_log("the slow request to arrive", |l| {
        l.contains("request /sleep/2000 started")
    });
    m.signal(Signal::SIGHUP);
    m.wait_events("the reload", |e| reloads_replacing(e, 1) >= 1);
    let answer = client.join().unwrap();
    let body = answer.unwrap_or_else(|e| panic!("{e}\n{}", m.log()));
    assert_eq!(pid_of(&body), old, "the predecessor finished it");
    let exit = m.wait_pid_event("exited", old);
    assert_eq!(exit["exit"]["code"], 0, "{exit}");
}

#[test]
fn a_two_second_request_survives_a_reload_of_an_unmodified_node_app() {
    a_slow_request_in_flight_completes(
        vec!["node".into(), fixture("tests/fixtures/plain_app.js")],
        &[],
    );
}

#[test]
fn a_two_second_request_survives_a_reload_of_hello() {
    a_slow_request_in_flight_completes(hello_server(), &["--ready", "notify"]);
}

#[test]
fn a_broken_release_is_rolled_back_while_the_old_workers_serve() {
    let release = std::env::temp_dir().join(format!("herd-release-{}", std::process::id()));
    let set = |mode: &str| std::fs::write(&release, mode).unwrap();
    set("good");
    let program = vec!["node".into(), fixture("tests/fixtures/release.js")];
    let release_env = format!("RELEASE_FILE={}", release.display());
    let m = Master::start(&cmd(
        &["-w", "2", "--start-timeout", "2s", "-e", &release_env],
        &program,
    ));
    m.wait_kind("ready", 2);
    let old: HashSet<u32> = m.live_pids().into_iter().collect();
    let keep_alive = Load::start(m.addr, 2, true);
    let fresh = Load::start(m.addr, 2, false);

    // New code that exits at once.
    set("crash");
    m.signal(Signal::SIGHUP);
    let events = m.wait_events("the first abort", |e| aborted_reloads(e).len() == 1);
    let failure = &aborted_reloads(&events)[0]["failure"];
    assert_eq!(failure["slot"], 0, "{failure}");
    assert!(
        failure["last_output"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l.as_str().unwrap().contains("cannot start: config missing")),
        "the successor's last output: {failure}"
    );
    let exits = of_kind(&events, "exited").filter(|e| e["exit"]["code"] == 1);
    assert_eq!(exits.count(), 1, "the successor exited with code 1");

    // New code that never becomes ready.
    set("hang");
    m.signal(Signal::SIGHUP);
    let events = m.wait_events("the second abort", |e| aborted_reloads(e).len() == 2);
    assert_eq!(aborted_reloads(&events)[1]["failure"]["slot"], 0);
    let timeout = of_kind(&events, "start_timeout")
        .next()
        .expect("a start timeout");
    assert_eq!(timeout["timeout_ms"], 2000, "{timeout}");
    let now: HashSet<u32> = m.live_pids().into_iter().collect();
    assert!(
        old.is_subset(&now),
        "the old workers still run: {old:?} {now:?}"
    );

    let ka = keep_alive.finish();
    let fr = fresh.finish();
    assert!(ka.errors.is_empty(), "{:?}\n{}", ka.errors, m.log());
    assert!(fr.errors.is_empty(), "{:?}\n{}", fr.errors, m.log());
    assert!(
        ka.pids.is_subset(&old) && fr.pids.is_subset(&old),
        "only old workers served"
    );

    // Fixed code: a later reload goes through.
    set("good");
    m.signal(Signal::SIGHUP);
    m.wait_events("the good reload", |e| reloads_replacing(e, 2) >= 1);
    let _ = std::fs::remove_file(&release);
}

#[test]
fn a_predecessor_ignoring_the_stop_signal_is_killed_with_its_child_after_a_reload() {
    let program = vec!["node".into(), fixture("tests/fixtures/stubborn.js")];
    let m = Master::start(&cmd(&["-w", "1", "--drain-timeout", "500ms"], &program));
    let (worker, child) = stubborn_pids(&m);
    m.signal(Signal::SIGHUP);
    m.wait_pid_event("drain_timeout", worker);
    wait_dead(&[worker, child], "the stubborn predecessor and its child");
    assert_eq!(reloads_replacing(&m.events(), 1), 1);
}

/// The master's notify socket, read from a worker's environment. The
/// worker may still be between execs (a pyenv shim execs the real python),
/// when its environment reads empty: wait until it shows.
fn notify_socket_of(pid: u32) -> String {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        if let Some(v) = environ
            .split(|&b| b == 0)
            .find_map(|kv| kv.strip_prefix(b"NOTIFY_SOCKET="))
        {
            return String::from_utf8_lossy(v).into_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no NOTIFY_SOCKET in the environment of pid {pid}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn send_notify(socket: &str, message: &str) {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let name = socket.strip_prefix('@').expect("an abstract socket");
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    UnixDatagram::unbound()
        .unwrap()
        .send_to_addr(message.as_bytes(), &addr)
        .unwrap();
}

#[test]
fn a_foreign_ready_message_changes_nothing() {
    // The worker says READY=1 itself, but only after a while; a READY=1
    // from another process before that must not count.
    let script = "import os, socket, time\n\
                  time.sleep(3)\n\
                  s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n\
                  s.sendto(b'READY=1', '\\0' + os.environ['NOTIFY_SOCKET'][1:])\n\
                  print('worker: sent READY=1', flush=True)\n\
                  time.sleep(60)\n";
    let m = Master::start(&cmd(
        &["-w", "1", "--ready", "notify", "--start-timeout", "30s"],
        &s(&["python3", "-c", script]),
    ));
    m.wait_kind("spawned", 1);
    let worker = m.spawned_pids()[0];
    let socket = notify_socket_of(worker);
    send_notify(&socket, "READY=1\nSTATUS=forged");
    let events = m.wait_events("the forged message to be ignored", |e| {
        of_kind(e, "notice").any(|n| n["notice"] == "foreign_message")
    });
    assert_eq!(
        of_kind(&events, "ready").count(),
        0,
        "a forged READY=1 counted"
    );
    assert!(
        !of_kind(&events, "notice").any(|n| n["notice"] == "worker_status"),
        "a forged STATUS= was taken"
    );
    m.wait_pid_event("ready", worker);
}

#[test]
fn a_worker_that_misses_its_watchdog_is_restarted() {
    let m = Master::start(&cmd(
        &["-w", "1", "--ready", "notify", "--watchdog", "1s"],
        &hello_server(),
    ));
    m.wait_kind("ready", 1);
    let hung = m.live_pids()[0];
    // Keeps answering pings for a while: the deadline moves.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        of_kind(&m.events(), "watchdog_timeout").count(),
        0,
        "{}",
        m.log()
    );
    let addr = m.addr;
    let client = std::thread::spawn(move || get(addr, "/hang/10000"));
    m.wait_pid_event("watchdog_timeout", hung);
    m.wait_kind("ready", 2);
    wait_dead(&[hung], "the hung worker");
    assert!(
        client.join().unwrap().is_err(),
        "the hung request died with its worker"
    );
    let body = m.get("/").unwrap();
    assert_ne!(pid_of(&body), hung);
}
