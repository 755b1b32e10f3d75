//! The `cluster` example as a user runs it: real master, real workers (Node
//! and `examples/hello.rs`), real sockets.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

// The node example's start-up line ends so; the master's own "listening on" must not count.
const NODE_READY: &str = " listening\n";
const HELLO_READY: &str = "hello: pid=";

// ---------------------------------------------------------------- serving

fn serves_every_worker(program: Vec<String>, marker: &str, balance: &str) {
    let m = Master::start(&cmd(&["-w", "2", "--balance", balance], &program));
    let pids: HashSet<u32> = m.wait_ready(2, marker).into_iter().collect();
    assert_eq!(pids.len(), 2, "{}", m.log());
    let mut seen = HashSet::new();
    for _ in 0..500 {
        let body = m.get("/").unwrap_or_else(|e| panic!("{e}\n{}", m.log()));
        seen.insert(pid_of(&body));
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(seen, pids, "every worker answers");
}

#[test]
fn node_workers_all_serve_with_reuseport() {
    serves_every_worker(node_server(), NODE_READY, "reuseport");
}

#[test]
fn hello_workers_all_serve_with_reuseport() {
    serves_every_worker(hello_server(), HELLO_READY, "reuseport");
}

#[test]
fn hello_workers_all_serve_with_a_shared_socket() {
    serves_every_worker(hello_server(), HELLO_READY, "shared");
}

#[test]
fn node_workers_all_serve_with_a_shared_socket() {
    serves_every_worker(node_server(), NODE_READY, "shared");
}

#[test]
fn ipv4_and_ipv6_addresses_are_served_together() {
    let m = Master::start(&args(
        &["-w", "1", "-l", "127.0.0.1:0", "-l", "[::1]:0"],
        &hello_server(),
    ));
    m.wait_ready(1, HELLO_READY);
    let log = m.log();
    let v6: std::net::SocketAddr = of_kind(&m.events(), "listening")
        .filter_map(|e| e["addr"].as_str()?.parse().ok())
        .find(|a: &std::net::SocketAddr| a.is_ipv6())
        .expect("an IPv6 listening event");
    let a = pid_of(&m.get("/").unwrap());
    let b = pid_of(&get(v6, "/").unwrap());
    assert_eq!(a, b, "one worker serves both of its sockets");
    assert!(log.contains("listen_fds=2"), "{log}");
}

// ----------------------------------------------------------- fd contract

#[test]
fn a_hello_worker_sees_only_stdio_and_its_sockets() {
    use std::os::unix::process::CommandExt;
    let m = Master::start_with(&cmd(&["-w", "2"], &hello_server()), |cmd| {
        // Give the master an fd without CLOEXEC, as a careless embedding
        // program might; no worker may inherit it.
        // SAFETY: between fork and exec only open and dup2 run, both
        // async-signal-safe; nothing is allocated.
        unsafe {
            cmd.pre_exec(|| {
                let fd = nix::libc::open(c"/dev/null".as_ptr(), nix::libc::O_RDONLY);
                if fd >= 0 && fd != 9 {
                    nix::libc::dup2(fd, 9);
                }
                Ok(())
            });
        }
    });
    let log = m.wait_log("two start-up lines", |l| {
        l.matches(HELLO_READY).count() >= 2
    });
    assert!(
        std::fs::read_link(format!("/proc/{}/fd/9", m.pid())).is_ok(),
        "the master holds the leaked fd 9"
    );
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(HELLO_READY)).collect();
    let mut slots = HashSet::new();
    for line in lines {
        let field = |k: &str| field(line, k).to_owned();
        assert_eq!(field("fds"), "0,1,2,3", "{line}");
        assert_eq!(field("listen_pid"), field("pid"), "{line}");
        assert_eq!(field("listen_fds"), "1", "{line}");
        assert_eq!(field("generation"), "0", "{line}");
        slots.insert(field("slot"));
    }
    assert_eq!(slots, HashSet::from(["0".to_owned(), "1".to_owned()]));
}

#[test]
fn a_node_worker_gets_its_own_pid_slot_and_socket() {
    let program = vec!["node".into(), fixture("tests/fixtures/fd_report.js")];
    let m = Master::start(&cmd(&["-w", "2"], &program));
    let log = m.wait_log("two reports", |l| l.matches("report: pid=").count() >= 2);
    for line in log.lines().filter(|l| l.contains("report: pid=")) {
        let field = |k: &str| field(line, k);
        assert_eq!(field("listen_pid"), field("pid"), "{line}");
        assert_eq!(field("fd3"), "socket", "{line}");
        assert_eq!(
            field("instance"),
            field("slot"),
            "NODE_APP_INSTANCE: {line}"
        );
        assert_eq!(field("fdnames"), "listen0", "{line}");
        // The preload took itself and LISTEN_* out of the environment that
        // the app's own children would inherit.
        assert_eq!(field("later_listen_fds"), "gone", "{line}");
        assert_eq!(field("node_options"), "gone", "{line}");
    }
}

// ------------------------------------------------------------ kill -9

fn kill9_loses_no_connection(program: Vec<String>, marker: &str) {
    let m = Master::start(&cmd(&["-w", "2"], &program));
    let first: Vec<u32> = m.wait_ready(2, marker);
    let mut failures = Vec::new();
    let mut served = HashSet::new();
    let mut request = |n: usize, failures: &mut Vec<String>| {
        for _ in 0..n {
            match m.get("/") {
                Ok(body) => {
                    served.insert(pid_of(&body));
                }
                Err(e) => failures.push(e),
            }
        }
    };
    let mut victims = Vec::new();
    for round in 0..3 {
        request(20, &mut failures);
        let victim = m.live_pids()[0];
        victims.push(victim);
        kill(Pid::from_raw(victim as i32), Signal::SIGKILL).unwrap();
        // Fresh connections right away: those hashed to the dead worker's
        // slot wait in its queue, on the master's socket, for the
        // replacement.
        request(60, &mut failures);
        m.wait_log("the replacement to be ready", |l| {
            l.matches(marker).count() >= 3 + round
        });
    }
    request(40, &mut failures);
    assert!(
        failures.is_empty(),
        "failed requests: {failures:?}\n{}",
        m.log()
    );
    let replacements: HashSet<u32> = served
        .iter()
        .copied()
        .filter(|p| !first.contains(p))
        .collect();
    assert!(
        !replacements.is_empty(),
        "a replacement served: {served:?}\n{}",
        m.log()
    );
    wait_dead(&victims, "the killed workers");
    assert_eq!(
        m.live_pids().len(),
        2,
        "both slots filled again:\n{}",
        m.log()
    );
}

#[test]
fn node_kill9_under_load_fails_no_request() {
    kill9_loses_no_connection(node_server(), NODE_READY);
}

#[test]
fn hello_kill9_under_load_fails_no_request() {
    kill9_loses_no_connection(hello_server(), HELLO_READY);
}

// ----------------------------------------------------- crash loop, backoff

#[test]
fn backoff_grows_and_the_crash_loop_limit_ends_the_master() {
    let program = s(&["sh", "-c", "echo boom; exit 3"]);
    let mut m = Master::spawn(&args(
        &["--log-format", "json"],
        &cmd(
            &["-w", "1", "--restart-delay", "50ms", "--crash-limit", "4"],
            &program,
        ),
    ));
    let status = m.wait_exit();
    let log = m.log();
    assert_eq!(status.code(), Some(1), "{log}");
    let events = m.events();
    let delays: Vec<u64> = of_kind(&events, "restart_scheduled")
        .map(|e| e["delay_ms"].as_u64().unwrap())
        .collect();
    assert_eq!(
        delays.len(),
        3,
        "three restarts before the fourth exit: {log}"
    );
    assert!(
        delays.windows(2).all(|w| w[1] > w[0]),
        "delays grow: {delays:?}"
    );
    let failed = of_kind(&events, "slot_failed").next().expect("slot_failed");
    assert_eq!(failed["slot"], 0, "{failed}");
    assert_eq!(failed["exits"], 4, "{failed}");
    assert_eq!(failed["window_ms"], 60_000, "{failed}");
    assert_eq!(
        failed["last_output"],
        serde_json::json!(["boom"]),
        "{failed}"
    );
    assert_eq!(of_kind(&events, "stopped").count(), 1, "{log}");
}

#[test]
fn a_crash_looping_slot_fails_while_the_others_keep_serving() {
    let program = vec!["node".into(), fixture("tests/fixtures/slot1_crashes.js")];
    let mut m = Master::start(&cmd(
        &["-w", "2", "--restart-delay", "20ms", "--crash-limit", "3"],
        &program,
    ));
    m.wait_log("slot 0 to serve", |l| l.contains(NODE_READY));
    // A client keeps connecting while slot 1 crash-loops: connections the
    // kernel queued on slot 1's socket are passed on, new ones steered away.
    let addr = m.addr;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = done.clone();
    let client = std::thread::spawn(move || {
        let mut failures = Vec::new();
        let mut ok = 0;
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            match get(addr, "/") {
                Ok(body) if body.contains("slot=0") => ok += 1,
                Ok(body) => failures.push(format!("unexpected answer {body:?}")),
                Err(e) => failures.push(e),
            }
        }
        (ok, failures)
    });
    m.wait_events("slot 1 to fail", |e| {
        of_kind(e, "slot_failed").any(|f| f["slot"] == 1)
    });
    assert!(
        m.child.try_wait().unwrap().is_none(),
        "the master keeps running"
    );
    for _ in 0..20 {
        let body = m.get("/").unwrap_or_else(|e| panic!("{e}\n{}", m.log()));
        assert!(body.contains("slot=0"), "{body}");
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let (ok, failures) = client.join().unwrap();
    assert!(failures.is_empty(), "{failures:?}\n{}", m.log());
    assert!(ok > 0);
    m.signal(Signal::SIGTERM);
    assert!(m.wait_exit().success(), "{}", m.log());
}

// --------------------------------------------------------------- stopping

fn stop_lets_the_request_in_flight_finish(program: Vec<String>) {
    let mut m = Master::start(&cmd(&["-w", "1"], &program));
    let addr = m.addr;
    let client = std::thread::spawn(move || get(addr, "/sleep/1500"));
    m.wait_log("the slow request to arrive", |l| {
        l.contains("request /sleep/1500 started")
    });
    m.signal(Signal::SIGTERM);
    let answer = client.join().unwrap();
    assert!(answer.is_ok(), "{answer:?}\n{}", m.log());
    let status = m.wait_exit();
    assert!(status.success(), "{status:?}\n{}", m.log());
    let log = m.log();
    assert!(
        log.contains("drained, exiting"),
        "the worker drained: {log}"
    );
    let events = m.events();
    assert_eq!(clean_exits(&events), 1, "{log}");
    assert_eq!(of_kind(&events, "stopped").count(), 1, "{log}");
}

#[test]
fn node_graceful_stop_completes_the_request_in_flight() {
    stop_lets_the_request_in_flight_finish(node_server());
}

#[test]
fn hello_graceful_stop_completes_the_request_in_flight() {
    stop_lets_the_request_in_flight_finish(hello_server());
}

fn stubborn() -> (Vec<String>, &'static str) {
    (
        vec!["node".into(), fixture("tests/fixtures/stubborn.js")],
        "stubborn: pid=",
    )
}

#[test]
fn a_worker_ignoring_sigterm_is_killed_with_its_child_at_the_drain_timeout() {
    let (program, _) = stubborn();
    let mut m = Master::start(&cmd(&["-w", "1", "--drain-timeout", "500ms"], &program));
    let (worker, child) = stubborn_pids(&m);
    assert!(alive(worker) && alive(child));
    m.signal(Signal::SIGTERM);
    let status = m.wait_exit();
    assert!(status.success(), "{}", m.log());
    let log = m.log();
    assert!(
        log.contains("ignoring SIGTERM"),
        "the worker's own line: {log}"
    );
    m.wait_pid_event("drain_timeout", worker);
    let exit = m.wait_pid_event("exited", worker);
    assert_eq!(exit["exit"]["signal"], "SIGKILL", "{exit}");
    wait_dead(
        &[worker, child],
        "worker and its child after the drain timeout",
    );
}

#[test]
fn a_second_sigint_kills_at_once() {
    let (program, _) = stubborn();
    // The drain timeout is longer than the test's patience: only the second
    // SIGINT can end this in time.
    let mut m = Master::start(&cmd(&["-w", "1", "--drain-timeout", "10m"], &program));
    let (worker, child) = stubborn_pids(&m);
    m.signal(Signal::SIGINT);
    m.wait_log("the worker to get SIGTERM", |l| {
        l.contains("ignoring SIGTERM")
    });
    m.signal(Signal::SIGINT);
    m.wait_exit();
    let stops: Vec<bool> = of_kind(&m.events(), "stopping")
        .map(|e| e["graceful"].as_bool().unwrap())
        .collect();
    assert_eq!(stops, [true, false], "{}", m.log());
    wait_dead(&[worker, child], "worker and child after the second SIGINT");
}

#[test]
fn sigquit_kills_at_once() {
    let (program, _) = stubborn();
    let mut m = Master::start(&cmd(&["-w", "1", "--drain-timeout", "10m"], &program));
    let (worker, child) = stubborn_pids(&m);
    m.signal(Signal::SIGQUIT);
    m.wait_exit();
    assert!(!m.log().contains("ignoring SIGTERM"), "{}", m.log());
    wait_dead(&[worker, child], "worker and child after SIGQUIT");
}

fn no_worker_survives_sigkill_of_the_master(program: Vec<String>, marker: &str) {
    let m = Master::start(&cmd(&["-w", "2"], &program));
    let pids = m.wait_ready(2, marker);
    assert_eq!(pids.len(), 2);
    // The process that ends them shows in `ps` under a short line that
    // says what it is, not as a page of shell script.
    let lines: Vec<String> = children(m.pid())
        .iter()
        .filter_map(|(pid, _)| std::fs::read(format!("/proc/{pid}/cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.starts_with("herd-sentinel"))
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].len() < 200 && !lines[0].contains('\n'),
        "{}",
        lines[0]
    );
    m.signal(Signal::SIGKILL);
    wait_dead(&pids, "workers after SIGKILL of the master");
}

#[test]
fn no_hello_worker_survives_sigkill_of_the_master() {
    no_worker_survives_sigkill_of_the_master(hello_server(), HELLO_READY);
}

#[test]
fn no_node_worker_survives_sigkill_of_the_master() {
    no_worker_survives_sigkill_of_the_master(node_server(), NODE_READY);
}

#[test]
fn workers_get_the_working_directory_and_environment_asked_for() {
    let dir = std::env::temp_dir();
    let dir_text = dir.canonicalize().unwrap().display().to_string();
    let program = s(&[
        "sh",
        "-c",
        "echo \"env: cwd=$(pwd) foo=$HERD_TEST_FOO home=${HOME:-unset}\"; exec sleep 30",
    ]);
    let mut argv = cmd(
        &[
            "-w",
            "1",
            "--cwd",
            &dir_text,
            "-e",
            "HERD_TEST_FOO=bar baz",
            "-u",
            "HOME",
        ],
        &[],
    );
    argv.extend(program);
    let m = Master::start(&argv);
    let log = m.wait_log("the env line", |l| l.contains("env: cwd="));
    assert!(
        log.contains(&format!("env: cwd={dir_text} foo=bar baz home=unset")),
        "{log}"
    );
}

// ------------------------------------------------------------ resources

#[test]
fn a_hundred_restarts_leave_no_zombie_and_no_fd_behind() {
    let mut m = Master::start(&cmd(
        &[
            "-w",
            "1",
            "--restart-delay",
            "1ms",
            "--restart-delay-max",
            "2ms",
            "--crash-limit",
            "0",
        ],
        &s(&["true"]),
    ));
    let min_fds = |m: &Master| {
        (0..25)
            .map(|_| {
                std::thread::sleep(Duration::from_millis(2));
                fd_count(m.pid())
            })
            .min()
            .unwrap()
    };
    m.wait_kind("spawned", 10);
    let early = min_fds(&m);
    m.wait_kind("spawned", 110);
    let late = min_fds(&m);
    assert!(
        early > 0 && late <= early,
        "fds grew from {early} to {late}"
    );
    let first_hundred: HashSet<u32> = m.spawned_pids().into_iter().take(100).collect();
    let zombies: Vec<(u32, char)> = children(m.pid())
        .into_iter()
        .filter(|(p, state)| *state == 'Z' && first_hundred.contains(p))
        .collect();
    assert!(zombies.is_empty(), "unreaped workers: {zombies:?}");
    m.signal(Signal::SIGTERM);
    assert!(m.wait_exit().success(), "{}", m.log());
    assert!(children(m.pid()).is_empty());
}

// ------------------------------------------------------------ bad input

/// The master refuses `argv` with exit `code` and an error that names the
/// culprit (each of `needles`), and starts nothing.
fn refused(argv: &[String], code: i32, needles: &[&str]) {
    let mut m = Master::spawn(&args(&["--log-format", "json"], argv));
    let status = m.wait_exit();
    let log = m.log();
    assert_eq!(status.code(), Some(code), "{log}");
    for n in needles {
        assert!(log.contains(n), "expected {n:?} in:\n{log}");
    }
    assert_eq!(m.spawned_pids(), [] as [u32; 0], "nothing may start: {log}");
}

#[test]
fn a_missing_program_is_named() {
    refused(
        &cmd(&["-w", "1"], &s(&["surely-no-such-program-herd"])),
        1,
        &["program `surely-no-such-program-herd` not found"],
    );
    refused(
        &cmd(&["-w", "1"], &s(&["./no/such/server.js"])),
        1,
        &["program `./no/such/server.js` not found"],
    );
}

#[test]
fn a_program_that_is_not_executable_is_named() {
    let path = std::env::temp_dir().join(format!("herd-not-exec-{}", std::process::id()));
    std::fs::write(&path, "#!/bin/sh\necho hi\n").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let p = path.display().to_string();
    refused(
        &cmd(&["-w", "1"], std::slice::from_ref(&p)),
        1,
        &[&format!("`{p}` is not executable")],
    );
    let _ = std::fs::remove_file(path);
}

#[test]
fn a_busy_address_is_named_and_its_owner_undisturbed() {
    let owner = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = owner.local_addr().unwrap().to_string();
    for balance in ["reuseport", "shared"] {
        refused(
            &args(
                &["-w", "1", "-l", &addr, "--balance", balance],
                &hello_server(),
            ),
            1,
            &[&format!("address {addr} is already in use")],
        );
    }
    let _client = std::net::TcpStream::connect(&addr).unwrap();
    owner.set_nonblocking(false).unwrap();
    assert!(owner.accept().is_ok(), "the owner still accepts");
}

#[test]
fn bad_options_are_named() {
    refused(
        &args(&["-l", "nonsense"], &hello_server()),
        2,
        &["nonsense", "--listen"],
    );
    refused(
        &args(&["-l", "127.0.0.1:99999"], &hello_server()),
        2,
        &["127.0.0.1:99999"],
    );
    // Bad values are usage errors too (exit 2), like the ones clap finds.
    refused(&cmd(&["-w", "0"], &hello_server()), 2, &["at least 1"]);
    refused(
        &args(&["--frobnicate"], &hello_server()),
        2,
        &["--frobnicate"],
    );
    refused(
        &cmd(&["--balance", "roundrobin"], &hello_server()),
        2,
        &["roundrobin", "reuseport"],
    );
    refused(
        &cmd(&["--restart", "sometimes"], &hello_server()),
        2,
        &["sometimes", "on-failure"],
    );
    refused(
        &cmd(&["--drain-timeout", "soon"], &hello_server()),
        2,
        &["soon"],
    );
    refused(
        &cmd(&["--stop-signal", "SIGFOO"], &hello_server()),
        2,
        &["SIGFOO"],
    );
    refused(
        &cmd(&["--stop-signal", "KILL"], &hello_server()),
        2,
        &["SIGKILL"],
    );
    refused(&s(&["-w", "1"]), 2, &["PROGRAM"]);
}

#[test]
fn a_program_deleted_while_running_ends_in_a_failed_slot_not_a_hot_loop() {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::temp_dir().join(format!("herd-vanishing-{}", std::process::id()));
    std::fs::write(&path, "#!/bin/sh\necho running\nsleep 0.3\nexit 1\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    let program = vec![path.display().to_string()];
    let mut m = Master::start(&cmd(
        &["-w", "1", "--restart-delay", "20ms", "--crash-limit", "4"],
        &program,
    ));
    m.wait_log("the first run", |l| l.contains("running"));
    std::fs::remove_file(&path).unwrap();
    let status = m.wait_exit();
    let log = m.log();
    assert_eq!(status.code(), Some(1), "{log}");
    let events = m.events();
    assert!(of_kind(&events, "spawn_failed").count() > 0, "{log}");
    assert!(
        of_kind(&events, "slot_failed").any(|f| f["slot"] == 0),
        "{log}"
    );
    assert!(m.spawned_pids().len() <= 4, "no hot loop: {log}");
}

#[test]
fn a_master_whose_output_nobody_reads_still_stops_on_sigterm() {
    // A worker that floods its output; the master's own stdout and stderr
    // are pipes that this test never reads, so they fill up.
    let (mut child, _guard) = flooding_master(&[]);
    let master = Pid::from_raw(child.id() as i32);
    std::thread::sleep(Duration::from_millis(1500));
    let workers: Vec<u32> = children(master).into_iter().map(|(p, _)| p).collect();
    let _worker_guards: Vec<GroupGuard> = workers
        .iter()
        .map(|&p| GroupGuard(Pid::from_raw(p as i32)))
        .collect();
    kill(master, Signal::SIGTERM).unwrap();
    let status = wait_child(&mut child, "the master with its output unread");
    assert!(status.success(), "{status:?}");
    wait_dead(&workers, "the flooding worker");
}

/// `--log-format json` turns the library's own logging off
/// (`log_events(false)`): every line the master writes is then JSON, the
/// notices included, and each names the cluster; worker lines keep a prefix
/// that names it too.
#[test]
fn a_json_master_writes_only_json_lines_that_name_the_cluster() {
    let m = Master::start_json(
        &args(
            &[
                "--name",
                "api",
                "--workers",
                "1",
                "--ready",
                "delay:1s",
                "--settle",
                "0",
            ],
            &hello_server(),
        ),
        None,
    );
    m.wait_events("the first worker", |e| of_kind(e, "ready").count() == 1);
    m.signal(Signal::SIGHUP);
    m.wait_events("the reload", |e| of_kind(e, "reload_started").count() == 1);
    m.signal(Signal::SIGHUP);
    m.wait_events("both reloads", |e| complete_reloads(e) == 2);
    let mut m = m;
    m.signal(Signal::SIGTERM);
    assert!(m.wait_exit().success());

    let events = m.events();
    assert!(
        of_kind(&events, "notice").any(|n| n["notice"] == "reload_queued" && n["slot"].is_null()),
        "{}",
        m.log()
    );
    for line in m.log().lines() {
        if line.starts_with("[api slot ") {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line}\n{}", m.log()));
        assert_eq!(value["cluster"], "api", "{line}");
    }
}
