//! Proxy mode with real masters, real workers and real sockets.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::time::Duration;

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Proxy mode on a kernel-chosen loopback port, then `extra`, then
/// `program`.
fn cmd(extra: &[&str], program: &[String]) -> Vec<String> {
    common::cmd(&[&["--balance", "proxy"], extra].concat(), program)
}

const HELLO_READY: &str = "hello: pid=";

#[test]
fn round_robin_splits_forty_connections_exactly_evenly() {
    let m = Master::start(&cmd(
        &["-w", "2", "--strategy", "round-robin"],
        &hello_server(),
    ));
    m.wait_ready(2, HELLO_READY);
    let mut per_pid: HashMap<u32, usize> = HashMap::new();
    for _ in 0..40 {
        let body = m.get("/").unwrap_or_else(|e| panic!("{e}\n{}", m.log()));
        *per_pid.entry(pid_of(&body)).or_default() += 1;
    }
    let mut counts: Vec<usize> = per_pid.values().copied().collect();
    counts.sort_unstable();
    assert_eq!(counts, vec![20, 20], "{per_pid:?}");
}

#[test]
fn least_connections_sends_new_connections_away_from_a_busy_worker() {
    let m = Master::start(&cmd(
        &["-w", "2", "--strategy", "least-conn"],
        &hello_server(),
    ));
    m.wait_ready(2, HELLO_READY);
    let addr = m.addr;
    let slow = std::thread::spawn(move || get(addr, "/sleep/3000"));
    m.wait_log("the long request", |l| {
        l.contains("request /sleep/3000 started")
    });
    let mut quick = Vec::new();
    for _ in 0..20 {
        quick.push(pid_of(&m.get("/").unwrap()));
        // Let the proxy finish closing the last one, so that the idle
        // worker's count is back to zero: a pace, not a measurement.
        std::thread::sleep(Duration::from_millis(20));
    }
    let busy = pid_of(&slow.join().unwrap().unwrap());
    assert!(
        quick.iter().all(|&p| p != busy),
        "the busy worker {busy} got new connections: {quick:?}"
    );
}

#[test]
fn kill9_under_load_fails_at_most_what_the_worker_had_in_flight() {
    const CONCURRENCY: usize = 3;
    let m = Master::start(&cmd(&["-w", "2"], &hello_server()));
    let pids = m.wait_ready(2, HELLO_READY);
    let load = Load::start(m.addr, CONCURRENCY, false);
    load.wait_answered(50);
    kill(Pid::from_raw(pids[0] as i32), Signal::SIGKILL).unwrap();
    m.wait_log("the replacement", |l| l.matches(HELLO_READY).count() >= 3);
    let replacement = *m.live_pids().iter().find(|p| !pids.contains(p)).unwrap();
    // Round-robin reaches the replacement within a few requests.
    let mut reached = false;
    for _ in 0..20 {
        reached |= m.get("/").is_ok_and(|b| pid_of(&b) == replacement);
    }
    let stats = load.finish();
    assert!(
        stats.errors.len() <= CONCURRENCY,
        "more failures than requests in flight: {:?}\n{}",
        stats.errors,
        m.log()
    );
    assert!(stats.ok > 0);
    assert!(
        reached || stats.pids.contains(&replacement),
        "the replacement served"
    );
}

#[test]
fn a_worker_that_refuses_connections_is_skipped() {
    // Slot 0 runs hello; slot 1 closes its listener and stays alive.
    let script = format!(
        "if [ \"$HERD_WORKER_SLOT\" = 1 ]; then exec node {}; else exec {}; fi",
        fixture("tests/fixtures/refusing.js"),
        hello()
    );
    let m = Master::start(&cmd(
        &["-w", "2", "--ready", "none"],
        &s(&["sh", "-c", &script]),
    ));
    m.wait_log("both workers", |l| {
        l.contains("refusing: pid=") && l.contains(HELLO_READY)
    });
    for _ in 0..20 {
        let body = m.get("/").unwrap_or_else(|e| panic!("{e}\n{}", m.log()));
        assert!(body.contains("slot=0"), "{body}");
    }
}

#[test]
fn proxy_protocol_v1_carries_the_client_address() {
    let program = vec!["node".into(), fixture("tests/fixtures/proxy_echo.js")];
    let m = Master::start(&cmd(&["-w", "1", "--proxy-protocol", "v1"], &program));
    m.wait_log("the echo worker", |l| l.contains("echo: pid="));
    let mut c = std::net::TcpStream::connect(m.addr).unwrap();
    c.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    c.write_all(b"hello\r\n").unwrap();
    let mut answer = String::new();
    c.read_to_string(&mut answer).unwrap();
    let me = c.local_addr().unwrap();
    assert_eq!(
        answer.trim_end(),
        format!(
            "PROXY TCP4 {} {} {} {}",
            me.ip(),
            m.addr.ip(),
            me.port(),
            m.addr.port()
        )
    );
}

#[test]
fn reloading_an_unmodified_node_app_in_proxy_mode_fails_no_request() {
    const RELOADS: usize = 3;
    let program = vec!["node".into(), fixture("tests/fixtures/plain_app.js")];
    let m = Master::start(&cmd(&["-w", "2", "--drain-timeout", "1s"], &program));
    m.wait_kind("ready", 2);
    let first = m.live_pids();
    reload_under_load(&m, 3, 2, RELOADS, |m| {
        m.wait_events("every predecessor to exit", |e| {
            clean_exits(e) >= 2 * RELOADS
        });
    });
    let events = m.events();
    assert!(
        of_kind(&events, "reload_finished").all(|r| r["replaced"].as_array().unwrap().len() == 2),
        "{}",
        m.log()
    );
    let now = m.live_pids();
    assert!(now.iter().all(|p| !first.contains(p)), "{first:?} {now:?}");
}

#[test]
fn strategy_without_proxy_mode_is_refused() {
    let mut m = Master::spawn(&{
        let mut v = s(&["-l", "127.0.0.1:0", "--strategy", "p2c"]);
        v.extend(hello_server());
        v
    });
    assert_eq!(m.wait_exit().code(), Some(2));
    assert!(
        m.log().contains("--strategy needs --balance proxy"),
        "{}",
        m.log()
    );
    let mut m = Master::spawn(&cmd(&["--strategy", "fastest"], &hello_server()));
    assert_eq!(m.wait_exit().code(), Some(2));
    assert!(m.log().contains("fastest"), "{}", m.log());
}

#[test]
fn a_program_that_binds_port_itself_is_probed_and_served() {
    // Without the preload, the app really binds $PORT itself.
    let program = vec!["node".into(), fixture("tests/fixtures/plain_app.js")];
    let m = Master::start(&cmd(
        &["-w", "2", "--proxy-port", "--no-node-preload"],
        &program,
    ));
    m.wait_kind("ready", 2);
    let pids = m.live_pids();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..10 {
        seen.insert(pid_of(
            &m.get("/").unwrap_or_else(|e| panic!("{e}\n{}", m.log())),
        ));
    }
    assert_eq!(
        seen.len(),
        2,
        "round-robin reaches both: {seen:?} of {pids:?}"
    );
}

#[test]
fn splice_forwarding_moves_large_bodies_and_passes_half_closes_on() {
    const BYTES: usize = 3_000_000;
    let m = Master::start(&cmd(&["-w", "1", "--proxy-splice"], &node_server()));
    m.wait_kind("ready", 1);
    for _ in 0..3 {
        let body = m
            .get(&format!("/bytes/{BYTES}"))
            .unwrap_or_else(|e| panic!("{e}\n{}", m.log()));
        assert_eq!(body.len(), BYTES);
        assert!(body.bytes().all(|b| b == b'x'));
    }
    // The client says it is done writing; the answer still arrives whole.
    let mut c = std::net::TcpStream::connect(m.addr).unwrap();
    c.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    c.write_all(b"GET /bytes/100000 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = Vec::new();
    c.read_to_end(&mut answer).unwrap();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 200"), "{text:.80}");
    assert!(answer.ends_with(&[b'x'; 100]), "whole body");
}

#[test]
fn with_no_ready_worker_new_connections_wait_instead_of_being_reset() {
    let m = Master::start(&cmd(
        &["-w", "1", "--ready", "delay:1500ms"],
        &hello_server(),
    ));
    // The worker runs but is not ready yet: nothing is in rotation.
    m.wait_log("the worker to start", |l| l.contains(HELLO_READY));
    assert_eq!(of_kind(&m.events(), "ready").count(), 0, "{}", m.log());
    // Connect now, 1.5 s before the worker is ready: the connection waits
    // in the listen queue and is answered, not reset.
    let body = m.get("/").unwrap_or_else(|e| panic!("{e}\n{}", m.log()));
    m.wait_kind("ready", 1);
    assert_eq!(pid_of(&body), m.live_pids()[0]);
}

#[test]
fn a_replaced_worker_gets_its_stop_signal_only_when_its_connections_end() {
    let m = Master::start(&cmd(
        &["-w", "1", "--drain-timeout", "20s"],
        &hello_server(),
    ));
    m.wait_ready(1, HELLO_READY);
    let old = m.live_pids()[0];
    let addr = m.addr;
    let slow = std::thread::spawn(move || get(addr, "/sleep/1500"));
    m.wait_log("the slow request", |l| {
        l.contains("request /sleep/1500 started")
    });
    m.signal(Signal::SIGHUP);
    m.wait_events("the successor to take over", |e| {
        of_kind(e, "replaced").any(|r| pid_field(r, "old_pid") == old)
    });
    let idle = |e: &[serde_json::Value]| of_kind(e, "idle").any(|i| pid_field(i, "pid") == old);
    assert!(
        !idle(&m.events()),
        "signalled with a request open:\n{}",
        m.log()
    );
    let body = slow
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}\n{}", m.log()));
    assert_eq!(pid_of(&body), old, "the old worker finished its request");
    m.wait_events("the stop signal once idle", idle);
    let exit = m.wait_pid_event("exited", old);
    assert_eq!(exit["exit"]["code"], 0, "{exit}");
}

/// Resets `c` (closes it with `SO_LINGER` 0), as wrk does when it exits.
fn reset(c: std::net::TcpStream) {
    socket2::SockRef::from(&c)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(c);
}

#[test]
fn clients_that_reset_in_any_phase_free_the_workers_side_at_once() {
    // Not a Node app: its stop signal waits for its proxied connections.
    let m = Master::start(&cmd(
        &["-w", "1", "--drain-timeout", "60s"],
        &hello_server(),
    ));
    m.wait_ready(1, HELLO_READY);
    let old = m.live_pids()[0];
    for _ in 0..5 {
        // Before a byte.
        reset(std::net::TcpStream::connect(m.addr).unwrap());
        // With a request in flight.
        let mut c = std::net::TcpStream::connect(m.addr).unwrap();
        c.write_all(b"GET /sleep/300 HTTP/1.1\r\nHost: a\r\n\r\n")
            .unwrap();
        std::thread::sleep(Duration::from_millis(50));
        reset(c);
        // After its answer, on a kept-alive connection.
        let mut c = std::net::TcpStream::connect(m.addr).unwrap();
        c.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        let mut buf = [0u8; 4096];
        let n = c.read(&mut buf).unwrap();
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 200"),
            "{:?}",
            String::from_utf8_lossy(&buf[..n])
        );
        reset(c);
    }
    // The reload retires the worker: with nothing open any more, it hears
    // its stop signal long before the 60 s drain timeout.
    m.signal(Signal::SIGHUP);
    m.wait_events("the old worker idle", |e| {
        of_kind(e, "idle").any(|i| pid_field(i, "pid") == old)
    });
    m.wait_pid_event("exited", old);
}

#[test]
fn a_worker_that_closes_after_its_answer_never_hangs_the_clients_next_request() {
    let m = Master::start(&cmd(
        &["-w", "1"],
        &s(&["python3", &fixture("tests/fixtures/closes_after_answer.py")]),
    ));
    m.wait_kind("spawned", 1);
    for round in 0..5 {
        let mut c = std::net::TcpStream::connect(m.addr).unwrap();
        c.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        let answer = read_answer(&mut c);
        assert_eq!(status_of(&answer), 200, "round {round}: {answer}");
        // The next request races the worker's close.
        let _ = c.write_all(b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n");
        let mut rest = Vec::new();
        match c.read_to_end(&mut rest) {
            // EOF, or the reset the worker's close was.
            Ok(_) => {}
            Err(e) => assert!(
                !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
                "round {round}: the client hung: {e}\n{}",
                m.log()
            ),
        }
    }
}
