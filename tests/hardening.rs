//! Faults and bad input that once broke the master, each with the
//! behaviour it must have now. Real masters, real workers, JSON events.

mod common;

use std::time::Duration;

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Runs the master with `args` and returns its exit code and log, for bad
/// input that must be refused before anything starts.
fn refused(args: &[&str]) -> (i32, String) {
    let mut m = Master::spawn(&s(args));
    let status = m.wait_exit();
    let log = m.log();
    assert!(m.spawned_pids().is_empty(), "nothing may start: {log}");
    (status.code().unwrap_or(-1), log)
}

#[test]
fn workers_that_all_fail_under_restart_never_make_the_master_fail() {
    let mut m = Master::spawn(&s(&[
        "--log-format",
        "json",
        "-l",
        "127.0.0.1:0",
        "-w",
        "2",
        "--restart",
        "never",
        "sh",
        "-c",
        "exit 3",
    ]));
    let status = m.wait_exit();
    assert_eq!(status.code(), Some(1), "{}", m.log());
    let events = m.events();
    assert_eq!(of_kind(&events, "slot_done").count(), 2, "{}", m.log());
    // Workers that end well leave the master's status at 0.
    let mut ok = Master::spawn(&s(&[
        "-l",
        "127.0.0.1:0",
        "-w",
        "2",
        "--restart",
        "on-failure",
        "sh",
        "-c",
        "exit 0",
    ]));
    assert_eq!(ok.wait_exit().code(), Some(0), "{}", ok.log());
}

#[test]
fn a_healthy_service_whose_workers_are_killed_now_and_then_is_never_given_up_on() {
    // Every kill hits a worker that ran longer than --min-uptime: each is a
    // healthy worker dying, not a crash loop, however many there are.
    let m = Master::start_json(
        &s(&[
            "-l",
            "127.0.0.1:0",
            "-w",
            "2",
            "--min-uptime",
            "200ms",
            "--crash-limit",
            "3",
            "--restart-delay",
            "10ms",
            "sleep",
            "1000",
        ]),
        None,
    );
    for round in 0..8 {
        m.wait_events("two live workers", |e| {
            of_kind(e, "spawned").count() >= 2 + round
        });
        // A pace, not a wait: each victim must have run past --min-uptime.
        std::thread::sleep(Duration::from_millis(400));
        let live = m.live_pids();
        let victim = live[round % live.len()];
        kill(Pid::from_raw(victim as i32), Signal::SIGKILL).unwrap();
        m.wait_events("the exit", |e| {
            of_kind(e, "exited").any(|x| pid_field(x, "pid") == victim)
        });
    }
    let events = m.wait_events("the last restart", |e| of_kind(e, "spawned").count() >= 10);
    assert_eq!(of_kind(&events, "slot_failed").count(), 0, "{}", m.log());
    assert_eq!(m.live_pids().len(), 2, "{}", m.log());
}

#[test]
fn bad_options_are_refused_naming_the_culprit_with_exit_status_2() {
    let tmp = std::env::temp_dir();
    let dir = tmp.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["--stop-signal", "CHLD", "sleep", "1"], "SIGCHLD"),
        (&["--stop-signal", "WINCH", "sleep", "1"], "SIGWINCH"),
        (&["-u", "", "sleep", "1"], "not a variable name"),
        (&["-e", "LISTEN_FDS=3", "sleep", "1"], "LISTEN_FDS"),
        (
            &["-e", "HERD_WORKER_SLOT=1", "sleep", "1"],
            "HERD_WORKER_SLOT",
        ),
        (
            &["-e", "NODE_CHANNEL_FD=3", "sleep", "1"],
            "NODE_CHANNEL_FD",
        ),
        (&["--proxy-splice", "sleep", "1"], "proxy-splice"),
        (
            &[
                "--balance",
                "proxy:p2c",
                "--strategy",
                "ip-hash",
                "sleep",
                "1",
            ],
            "two strategies",
        ),
        (&["--strategy", "p2c", "sleep", "1"], "--strategy"),
        (
            &["--drain-timeout", "1000000000s", "sleep", "1"],
            "drain-timeout",
        ),
        (&["--ready", "delay:10000000m", "sleep", "1"], "ready"),
        (&["-w", "3000", "-l", "127.0.0.1:0", "sleep", "1"], "2046"),
        (
            &[
                "--balance",
                "proxy",
                "--proxy-port",
                "-l",
                "127.0.0.1:0",
                "-l",
                "127.0.0.1:0",
                "sleep",
                "1",
            ],
            "one PORT",
        ),
    ];
    for (args, culprit) in cases {
        let (code, log) = refused(args);
        assert_eq!(code, 2, "{args:?}: {log}");
        assert!(log.contains(culprit), "{args:?} must name {culprit}: {log}");
    }
    // A program that is not there, or is a directory: exit 1, as for any
    // program that cannot run.
    let (code, log) = refused(&["-l", "127.0.0.1:0", dir]);
    assert_eq!(code, 1, "{log}");
    assert!(log.contains("is a directory") && log.contains(dir), "{log}");
}

#[test]
fn the_same_address_twice_is_refused_as_listed_twice() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let (code, log) = refused(&["-l", &addr, "-l", &addr, "sleep", "1"]);
    assert_eq!(code, 2, "{log}");
    assert!(log.contains("listed twice") && log.contains(&addr), "{log}");
}

#[test]
fn a_master_started_by_a_node_parent_does_not_pass_its_ipc_channel_on() {
    // NODE_CHANNEL_FD in the master's environment (a Node parent that
    // spawned it with 'ipc') must not reach the workers.
    let m = Master::start_json_with(
        &s(&[
            "-l",
            "127.0.0.1:0",
            "-w",
            "1",
            "--restart",
            "never",
            "sh",
            "-c",
            "env; sleep 5",
        ]),
        |c| {
            c.env("NODE_CHANNEL_FD", "7")
                .env("NODE_CHANNEL_SERIALIZATION_MODE", "json");
        },
    );
    let log = m.wait_log("the environment", |l| l.contains("HERD_WORKER_SLOT="));
    assert!(!log.contains("NODE_CHANNEL_FD="), "{log}");
}

#[test]
fn more_workers_than_the_fd_limit_allows_are_refused_before_any_starts() {
    let cluster = example("cluster").display().to_string();
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -n 256 && exec {cluster} --log-format json -w 200 --balance shared \
             -l 127.0.0.1:0 sleep 100"
        ))
        .stdin(std::process::Stdio::null())
        .output()
        .expect("sh");
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{log}");
    assert!(
        log.contains("file descriptors") && log.contains("256"),
        "{log}"
    );
    assert!(
        !log.contains("\"event\":\"spawned\""),
        "nothing started: {log}"
    );
}

/// Pids of processes whose command line is `sleep <mark>` or
/// `sleep <mark + 1>`.
fn marked(mark: u32) -> Vec<u32> {
    let wanted = [format!("sleep\0{mark}\0"), format!("sleep\0{}\0", mark + 1)];
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| wanted.iter().any(|w| c == w.as_bytes()))
        })
        .filter(|&p| alive(p))
        .collect()
}

/// Whether this machine lets the master put workers in cgroups (cgroup v2,
/// writable); the escape tests need it.
fn cgroups_here() -> bool {
    let Ok(cgroup) = std::fs::read_to_string("/proc/self/cgroup") else {
        return false;
    };
    let Some(rel) = cgroup.lines().find_map(|l| l.strip_prefix("0::")) else {
        return false;
    };
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    info.lines()
        .filter(|l| l.contains(" - cgroup2 "))
        .filter_map(|l| l.split_whitespace().nth(4))
        .any(|point| {
            let dir = std::path::Path::new(point).join(rel.trim_start_matches('/'));
            static PROBES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let probe = dir.join(format!("herd-probe-{}-{n}", std::process::id()));
            let ok = std::fs::create_dir(&probe).is_ok();
            let _ = std::fs::remove_dir(&probe);
            ok
        })
}

/// A marker no other test uses.
fn mark(offset: u32) -> u32 {
    200_000 + (std::process::id() % 10_000) * 10 + offset
}

/// Starts an escaper worker and waits until both of its escaped
/// descendants run; None (with the reason printed) without cgroups.
fn escaper(mark: u32, extra: &[&str]) -> Option<Master> {
    if !cgroups_here() {
        eprintln!("skipped: no writable cgroup v2 on this machine");
        return None;
    }
    let mut args = s(&[
        "-l",
        "127.0.0.1:0",
        "-w",
        "1",
        "-e",
        &format!("MARK={mark}"),
    ]);
    args.extend(s(extra));
    args.push(fixture("tests/fixtures/escaper.sh"));
    let m = Master::start_json(&args, None);
    m.wait_log("the escaper", |l| l.contains("escaper: pid="));
    let deadline = std::time::Instant::now() + WAIT;
    while marked(mark).len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the escaped sleeps never ran"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(m)
}

/// Waits until no marked process is left; panics naming the survivors.
fn wait_no_marked(mark: u32, what: &str) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let left = marked(mark);
        if left.is_empty() {
            return;
        }
        if std::time::Instant::now() > deadline {
            for p in &left {
                let _ = kill(Pid::from_raw(*p as i32), Signal::SIGKILL);
            }
            panic!("{what}: escaped descendants still run: {left:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The master ends by `signal`: afterwards no escaped descendant runs and
/// nothing listens on the port.
fn escaped_descendants_end_with_the_master(signal: Signal, offset: u32) {
    let mark = mark(offset);
    let Some(mut m) = escaper(mark, &[]) else {
        return;
    };
    let addr = m.addr;
    m.signal(signal);
    m.wait_exit();
    wait_no_marked(mark, &format!("after {signal:?} of the master"));
    let deadline = std::time::Instant::now() + WAIT;
    while std::net::TcpStream::connect(addr).is_ok() {
        assert!(std::time::Instant::now() < deadline, "the port stays open");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn descendants_that_left_the_process_group_end_with_a_stopped_cluster() {
    escaped_descendants_end_with_the_master(Signal::SIGTERM, 0);
}

#[test]
fn descendants_that_left_the_process_group_end_with_a_master_killed_by_sigkill() {
    escaped_descendants_end_with_the_master(Signal::SIGKILL, 4);
}

#[test]
fn descendants_that_left_the_process_group_end_with_a_crashed_worker() {
    let mark = mark(2);
    let Some(m) = escaper(mark, &["--restart", "never", "-e", "EXIT_AFTER=1"]) else {
        return;
    };
    m.wait_events("the crash", |e| of_kind(e, "exited").count() >= 1);
    wait_no_marked(mark, "after the worker crashed");
}

#[test]
fn connections_queued_on_a_dead_slot_are_passed_on_at_once_whatever_the_restart_delay() {
    queued_on_a_dead_worker_are_passed_on("reuseport");
}

#[test]
fn in_proxy_mode_connections_a_dead_worker_never_accepted_are_passed_on() {
    queued_on_a_dead_worker_are_passed_on("proxy");
}

/// Slot 1 never accepts, so about half of the connections wait in its
/// queue (its slot socket, or in proxy mode its private listener); its
/// worker is killed and restarted within a short delay (into a worker that
/// never accepts either). The queue must go to slot 0 at the exit, not wait
/// for a restart that will not serve, and not be reset.
fn queued_on_a_dead_worker_are_passed_on(balance: &str) {
    let m = Master::start_json(
        &s(&[
            "-l",
            "127.0.0.1:0",
            "-w",
            "2",
            "--balance",
            balance,
            "--ready",
            "none",
            "--restart-delay",
            "300ms",
            &fixture("tests/fixtures/slot1_never_accepts.sh"),
            &hello(),
        ]),
        None,
    );
    let events = m.wait_events("both workers", |e| of_kind(e, "spawned").count() >= 2);
    let sleeper = of_kind(&events, "spawned")
        .find(|e| e["slot"] == 1)
        .map(|e| pid_field(e, "pid"))
        .unwrap();
    m.wait_log("hello in slot 0", |l| l.contains("hello: pid="));
    let addr = m.addr;
    let clients: Vec<_> = (0..20)
        .map(|_| std::thread::spawn(move || get(addr, "/")))
        .collect();
    // Let the connections queue up, then kill the slot that holds some.
    std::thread::sleep(Duration::from_millis(500));
    kill(Pid::from_raw(sleeper as i32), Signal::SIGKILL).unwrap();
    let results: Vec<_> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let failed: Vec<_> = results.iter().filter(|r| r.is_err()).collect();
    assert!(
        failed.is_empty(),
        "{} of 20 failed: {failed:?}\n{}",
        failed.len(),
        m.log()
    );
}

#[test]
fn a_full_stdout_does_not_hold_back_the_masters_own_lines_on_stderr() {
    use std::io::{BufRead, BufReader};
    // The worker floods stdout, which nobody reads: the pipe fills up.
    let (mut child, _guard) = flooding_master(&["--restart-delay", "10ms"]);
    let master = Pid::from_raw(child.id() as i32);
    let lines = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = lines.clone();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.starts_with("herd: ") {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    });
    std::thread::sleep(Duration::from_millis(1500));
    let before = lines.load(std::sync::atomic::Ordering::SeqCst);
    // Make the master say something: its worker dies and is restarted.
    for (worker, _) in children(master) {
        let _ = nix::sys::signal::killpg(Pid::from_raw(worker as i32), Signal::SIGKILL);
    }
    let deadline = std::time::Instant::now() + WAIT;
    while lines.load(std::sync::atomic::Ordering::SeqCst) <= before {
        assert!(
            std::time::Instant::now() < deadline,
            "no line of the master's reached stderr while stdout was full"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = kill(master, Signal::SIGKILL);
    let _ = child.wait();
}

#[test]
fn a_flood_of_foreign_notify_messages_is_not_a_flood_of_log_lines() {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let m = Master::start_json(
        &s(&[
            "-l",
            "127.0.0.1:0",
            "-w",
            "1",
            "--ready",
            "notify",
            &hello(),
        ]),
        None,
    );
    let events = m.wait_events("a ready worker", |e| of_kind(e, "ready").count() >= 1);
    let pids = [pid_field(of_kind(&events, "ready").next().unwrap(), "pid")];
    let environ = std::fs::read(format!("/proc/{}/environ", pids[0])).unwrap();
    let socket = environ
        .split(|&b| b == 0)
        .find_map(|kv| kv.strip_prefix(b"NOTIFY_SOCKET=@"))
        .map(|v| v.to_vec())
        .expect("NOTIFY_SOCKET");
    let addr = SocketAddr::from_abstract_name(&socket).unwrap();
    let sender = UnixDatagram::unbound().unwrap();
    let foreign = |e: &[serde_json::Value]| {
        of_kind(e, "notice")
            .filter(|n| n["notice"] == "foreign_message")
            .count()
    };
    for _ in 0..20_000 {
        let _ = sender.send_to_addr(b"READY=1", &addr);
    }
    // The foreign messages are reported, then a pace for the rest of the
    // flood to be read.
    m.wait_events("the report of the foreign messages", |e| foreign(e) > 0);
    std::thread::sleep(Duration::from_millis(500));
    m.get("/").unwrap();
    let reports = foreign(&m.events());
    assert!(reports <= 5, "{reports} notices for 20,000 messages");
}

/// A worker shuts the listening socket down (`shutdown(fd 3)`): the master
/// notices, puts a new socket in its place and moves the workers onto it.
/// What the shutdown itself destroys (connections refused in that moment,
/// and those queued on the socket, which the kernel resets) is the
/// kernel's doing; from the replacement on, nothing fails.
fn a_shut_down_listener_is_replaced(balance: &str) {
    let release = std::env::temp_dir().join(format!("herd-shut-{balance}-{}", std::process::id()));
    std::fs::write(&release, "good").unwrap();
    let m = Master::start_json(
        &s(&[
            "-l",
            "127.0.0.1:0",
            "-w",
            "2",
            "--balance",
            balance,
            "-e",
            &format!("RELEASE_FILE={}", release.display()),
            "python3",
            &fixture("tests/fixtures/py_release.py"),
        ]),
        None,
    );
    m.wait_log("both workers", |l| l.matches("mode=good").count() >= 2);
    let before = Load::start(m.addr, 2, false);
    before.wait_answered(20);
    let _ = m.get("/shutdown-listener");
    let events = m.wait_events("the replacement", |e| {
        of_kind(e, "listener_replaced").count() >= 1
    });
    let e = of_kind(&events, "listener_replaced")
        .next()
        .unwrap()
        .clone();
    // From here on, through the reload that moves the workers, nothing fails.
    let during = Load::start(m.addr, 2, false);
    let _ = before.finish();
    m.wait_events("the workers moved", |e| complete_reloads(e) >= 1);
    std::thread::sleep(Duration::from_millis(300));
    let during = during.finish();
    let _ = std::fs::remove_file(&release);
    assert!(
        during.errors.is_empty(),
        "{} failed after the replacement: {:?}\n{}",
        during.errors.len(),
        &during.errors[..during.errors.len().min(5)],
        m.log()
    );
    assert!(during.ok > 0);
    assert_eq!(e["addr"], m.addr.to_string(), "{e}");
    assert_eq!(e["slot"].is_null(), balance == "shared", "{e}");
    for _ in 0..20 {
        m.get("/").unwrap_or_else(|e| panic!("{e}\n{}", m.log()));
    }
}

#[test]
fn a_shared_socket_that_a_worker_shut_down_is_replaced() {
    a_shut_down_listener_is_replaced("shared");
}

#[test]
fn a_reuseport_slot_socket_that_a_worker_shut_down_is_replaced() {
    a_shut_down_listener_is_replaced("reuseport");
}

#[test]
fn with_a_proxy_header_the_private_listeners_are_unix_sockets_only_this_user_reaches() {
    use std::os::unix::fs::PermissionsExt;
    // A worker believes the PROXY header; on a loopback port any local user
    // could connect and claim any client address.
    let m = Master::start(&s(&[
        "-l",
        "127.0.0.1:0",
        "-w",
        "1",
        "--balance",
        "proxy",
        "--proxy-protocol",
        "v1",
        "node",
        &fixture("tests/fixtures/proxy_echo.js"),
    ]));
    m.wait_log("the echo worker", |l| l.contains("echo: pid="));
    let body = {
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect(m.addr).unwrap();
        c.set_read_timeout(Some(WAIT)).unwrap();
        c.write_all(b"hello\r\n").unwrap();
        let mut answer = String::new();
        c.read_to_string(&mut answer).unwrap();
        answer
    };
    assert!(body.starts_with("PROXY TCP4 127.0.0.1"), "{body}");
    let worker = m.live_pids()[0];
    let link = std::fs::read_link(format!("/proc/{worker}/fd/3")).unwrap();
    let inode = link
        .to_string_lossy()
        .trim_start_matches("socket:[")
        .trim_end_matches(']')
        .to_string();
    let unix = std::fs::read_to_string("/proc/net/unix").unwrap();
    let path = unix
        .lines()
        .find(|l| l.split_whitespace().nth(6) == Some(inode.as_str()))
        .and_then(|l| l.split_whitespace().nth(7))
        .unwrap_or_else(|| panic!("fd 3 of the worker is not a Unix socket with a path"));
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let path = std::path::Path::new(path);
    assert_eq!(mode(path), 0o600, "{}", path.display());
    assert_eq!(mode(path.parent().unwrap()), 0o700, "{}", path.display());
}

/// The master's context switches so far (voluntary and not): how often
/// it was woken, a count that does not depend on the machine's speed.
fn context_switches(pid: Pid) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .filter(|l| l.contains("ctxt_switches:"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

#[test]
fn in_reuseport_mode_the_master_is_not_woken_by_connections() {
    let m = Master::start(&cmd(&["-w", "1"], &hello_server()));
    m.wait_kind("spawned", 1);
    let deadline = std::time::Instant::now() + WAIT;
    while m.get("/").is_err() {
        assert!(std::time::Instant::now() < deadline, "{}", m.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    // Warm: the first requests settle whatever the start left to do.
    for _ in 0..20 {
        m.get("/").unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    let before = context_switches(m.pid());
    const CONNECTIONS: u64 = 1000;
    for _ in 0..CONNECTIONS {
        m.get("/").unwrap();
    }
    let woken = context_switches(m.pid()) - before;
    eprintln!("the master was woken {woken} times for {CONNECTIONS} connections");
    // A timer or an output line may wake it now and then; a wake-up per
    // connection (the listener watch once did) is a thousand.
    assert!(
        woken < CONNECTIONS / 10,
        "the master was woken {woken} times for {CONNECTIONS} connections"
    );
}

#[test]
fn a_worker_that_listens_on_its_own_port_is_steered_away_from_and_its_queue_passed_on() {
    let m = Master::start_json(
        &s(&[
            "-l",
            "127.0.0.1:0",
            "-w",
            "2",
            "--balance",
            "reuseport",
            "--ready",
            "none",
            "python3",
            &fixture("tests/fixtures/slot1_binds_its_own_port.py"),
            &hello(),
        ]),
        None,
    );
    m.wait_log("hello in slot 0", |l| l.contains("hello: pid="));
    m.wait_log("slot 1 on its own port", |l| l.contains("myself"));
    let own_port = m
        .log()
        .lines()
        .find_map(|l| {
            l.split("listening on ")
                .nth(1)?
                .split(' ')
                .next()?
                .parse::<u16>()
                .ok()
        })
        .unwrap();
    // Clients that land on slot 1's socket wait, until herd notices.
    let addr = m.addr;
    let clients: Vec<_> = (0..20)
        .map(|_| std::thread::spawn(move || get(addr, "/")))
        .collect();
    let events = m.wait_events("the never_accepts notice", |e| {
        e.iter().any(|e| e["notice"] == "never_accepts")
    });
    let notice = events
        .iter()
        .find(|e| e["notice"] == "never_accepts")
        .unwrap();
    assert_eq!(notice["slot"], 1, "{notice}");
    assert!(
        notice["message"]
            .as_str()
            .unwrap()
            .contains(&format!(":{own_port}")),
        "it names where the worker listens instead: {notice}"
    );
    let failed: Vec<_> = clients
        .into_iter()
        .map(|c| c.join().unwrap())
        .filter(|r| r.is_err())
        .collect();
    assert!(failed.is_empty(), "{failed:?}\n{}", m.log());
    // From then on, slot 0 alone gets connections: none is left on slot
    // 1's socket to be passed on at the next look (every second).
    let passed = |m: &Master| {
        m.events()
            .iter()
            .filter(|e| e["notice"] == "connections_passed_on" && e["slot"] == 1)
            .count()
    };
    let before = passed(&m);
    for _ in 0..20 {
        get(addr, "/").unwrap();
    }
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(passed(&m), before, "{}", m.log());
}
