//! Operating a running cluster: scaling with SIGTTIN and SIGTTOU under
//! load, in every balance mode.

mod common;

use std::collections::HashSet;

use std::os::unix::process::CommandExt;

use common::*;
use nix::sys::signal::Signal;

/// Exits of workers of `slot` that the master expected (it stopped them).
fn expected_exits(events: &[serde_json::Value], slot: u64) -> usize {
    of_kind(events, "exited")
        .filter(|e| e["slot"] == slot && e["expected"] == true)
        .count()
}

fn scales_under_load_without_a_failed_request(balance: &str) {
    let (mut m, control) = controlled(
        &["-w", "2", "--balance", balance, "--ready", "notify"],
        &hello_server(),
    );
    m.wait_kind("ready", 2);
    let load = Load::start(m.addr, 2, false);
    load.wait_answered(20);

    // Up by two: herdctl, then SIGTTIN.
    for (i, to) in [(1, 3), (2, 4)] {
        if i == 1 {
            let (code, _, err) = herdctl(&control, &["scale", "+1"]);
            assert_eq!(code, 0, "{err}");
        } else {
            m.signal(Signal::SIGTTIN);
        }
        let events = m.wait_kind("scaled", i);
        let scaled = of_kind(&events, "scaled").last().unwrap();
        assert_eq!(scaled["to"], to, "{scaled}");
        m.wait_kind("ready", to);
    }
    let before = load.answered();
    load.wait_answered(before + 200);

    // Down to one, each removed slot drained before the next step: herdctl
    // once, then SIGTTOU.
    for slot in [3, 2, 1] {
        if slot == 3 {
            let (code, _, err) = herdctl(&control, &["scale", "3"]);
            assert_eq!(code, 0, "{err}");
        } else {
            m.signal(Signal::SIGTTOU);
        }
        m.wait_events(&format!("slot {slot} to be removed"), |e| {
            expected_exits(e, slot) == 1
        });
    }
    let before = load.answered();
    load.wait_answered(before + 100);
    let stats = load.finish();
    let events = m.events();
    assert!(stats.errors.is_empty(), "{:?}\n{}", stats.errors, m.log());
    assert_eq!(
        of_kind(&events, "notice")
            .filter(|n| n["notice"] == "scale_refused")
            .count(),
        0,
        "{}",
        m.log()
    );
    let served: HashSet<u32> = stats.pids;
    assert!(served.len() >= 4, "the new slots served: {served:?}");
    // Only slot 0's worker is left, and it serves.
    let live = m.live_pids();
    assert_eq!(live.len(), 1, "{}", m.log());
    for _ in 0..10 {
        assert_eq!(pid_of(&m.get("/").unwrap()), live[0]);
    }
    m.signal(Signal::SIGTERM);
    assert!(m.wait_exit().success(), "{}", m.log());
}

#[test]
fn reuseport_scales_up_and_down_under_load_without_a_failed_request() {
    scales_under_load_without_a_failed_request("reuseport");
}

#[test]
fn a_shared_socket_scales_up_and_down_under_load_without_a_failed_request() {
    scales_under_load_without_a_failed_request("shared");
}

#[test]
fn proxy_mode_scales_up_and_down_under_load_without_a_failed_request() {
    scales_under_load_without_a_failed_request("proxy");
}

/// A master with its control socket at a path of the test's own.
#[test]
fn herdctl_lists_reloads_restarts_scales_and_stops() {
    let (mut m, path) = controlled(&["-w", "2", "--ready", "notify"], &hello_server());
    m.wait_kind("ready", 2);

    let (code, out, err) = herdctl(&path, &["ls", "--json"]);
    assert_eq!(code, 0, "{err}");
    let table: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(table["phase"], "running");
    let workers = table["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 2);
    let pids: Vec<u32> = workers.iter().map(|w| pid_field(w, "pid")).collect();
    assert_eq!(pids, m.live_pids());
    for w in workers {
        assert_eq!(w["state"], "ready", "{w}");
        for key in ["slot", "generation", "uptime_ms", "restarts", "draining"] {
            assert!(!w[key].is_null(), "{key} in {w}");
        }
    }
    let (code, text, _) = herdctl(&path, &["ls"]);
    assert_eq!(code, 0);
    assert_eq!(
        text.lines().count(),
        4,
        "the app's line, a header and two rows: {text}"
    );

    let (code, out, err) = herdctl(&path, &["reload", "--json"]);
    assert_eq!(code, 0, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["replaced"].as_array().unwrap().len(), 2);

    let (code, _, err) = herdctl(&path, &["restart", "7"]);
    assert_eq!(code, 5, "an unknown slot is refused: {err}");
    let (code, out, _) = herdctl(&path, &["restart", "1", "--json"]);
    assert_eq!(code, 0);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["replaced"][0]["slot"], 1);

    let (code, out, _) = herdctl(&path, &["scale", "+1", "--json"]);
    assert_eq!(code, 0);
    let scaled: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (scaled["from"].as_u64(), scaled["to"].as_u64()),
        (Some(2), Some(3))
    );
    m.wait_events("the third slot", |e| {
        of_kind(e, "ready").any(|r| r["slot"] == 2)
    });
    let (code, out, _) = herdctl(&path, &["signal", "WINCH", "2", "--json"]);
    assert_eq!(code, 0);
    let sent: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(sent["pids"].as_array().unwrap().len(), 1);

    // Slot 0's journal: its workers' lines and herd's events about it
    // (or about the whole cluster), each with its time.
    let (code, out, _) = herdctl(&path, &["logs", "0", "--json"]);
    assert_eq!(code, 0);
    let entries: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        entries
            .iter()
            .all(|e| e["slot"] == 0 || e["slot"].is_null()),
        "{out}"
    );
    assert!(
        entries.iter().all(|e| e["time_ms"].as_u64() > Some(0)),
        "{out}"
    );
    assert!(entries.iter().any(|e| e["stream"] == "out"), "{out}");
    assert!(
        entries
            .iter()
            .any(|e| e["stream"] == "herd" && e["event"]["event"] == "replaced"),
        "{out}"
    );

    let (code, _, _) = herdctl(&path, &["stop"]);
    assert_eq!(code, 0);
    assert!(m.wait_exit().success(), "{}", m.log());
    let (code, _, err) = herdctl(&path, &["ls"]);
    assert_eq!(code, 3, "no master answers any more: {err}");
}

#[test]
fn herdctl_says_an_aborted_reload_failed_with_the_reason() {
    let release = std::env::temp_dir().join(format!("herd-ctl-release-{}", std::process::id()));
    std::fs::write(&release, "good").unwrap();
    let (m, path) = controlled(
        &[
            "-w",
            "1",
            "-e",
            &format!("RELEASE_FILE={}", release.display()),
        ],
        &["node".into(), fixture("tests/fixtures/release.js")],
    );
    m.wait_kind("ready", 1);
    std::fs::write(&release, "crash").unwrap();
    let (code, _, err) = herdctl(&path, &["reload"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("cannot start: config missing"),
        "the successor's last line: {err}"
    );
    let _ = std::fs::remove_file(&release);
}

#[test]
fn the_control_socket_refuses_other_users_and_bad_requests_and_keeps_serving() {
    use std::io::{Read, Write};
    let (m, path) = controlled(&["-w", "1", "--ready", "notify"], &hello_server());
    m.wait_kind("ready", 1);
    // The socket is the master's user's alone.
    let mode = std::fs::metadata(&path).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );
    if nix::unistd::geteuid().is_root() {
        let (code, _, err) = herdctl_as(&path, &["ls"], Some(65534));
        assert_eq!(code, 4, "nobody is refused: {err}");
        // With the file modes opened up, the peer credentials still say no.
        use std::os::unix::fs::PermissionsExt;
        let perms = |p: &std::path::Path, mode| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap()
        };
        perms(path.parent().unwrap(), 0o755);
        perms(&path, 0o666);
        let (code, _, err) = herdctl_as(&path, &["ls"], Some(65534));
        assert_eq!(code, 4, "refused by peer credentials: {err}");
        perms(&path, 0o600);
        perms(path.parent().unwrap(), 0o700);
    }

    let raw = |bytes: &[u8]| -> String {
        let mut s = std::os::unix::net::UnixStream::connect(&path).unwrap();
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let _ = s.write_all(bytes);
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        answer
    };
    let garbage = raw(b"\x00\x01 this is not http\r\n\r\n");
    assert!(garbage.starts_with("HTTP/1.1 400"), "{garbage:?}");
    let big = format!(
        "POST /v1/scale HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\nConnection: close\r\n\r\n{}",
        "x".repeat(200_000)
    );
    let answer = raw(big.as_bytes());
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer:.80}");
    let bad_json = raw(b"POST /v1/scale HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\n{nope");
    assert!(bad_json.starts_with("HTTP/1.1 400"), "{bad_json:.80}");

    // Slow clients that never finish their headers, many at once: the
    // workers keep serving, and the API answers once they are gone.
    let idle: Vec<_> = (0..300)
        .map(|_| {
            let mut s = std::os::unix::net::UnixStream::connect(&path).unwrap();
            let _ = s.write_all(b"GET /v1/workers HTTP/1.1\r\n");
            s
        })
        .collect();
    for _ in 0..20 {
        assert!(m.get("/").is_ok());
    }
    drop(idle);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (code, _, err) = herdctl(&path, &["ls"]);
        if code == 0 {
            break;
        }
        assert_eq!(code, 5, "busy, not broken: {err}");
        assert!(std::time::Instant::now() < deadline, "{err}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn a_worker_over_the_memory_limit_is_replaced_successor_first_without_a_failed_request() {
    let (m, path) = controlled(
        &[
            "-w",
            "1",
            "--max-memory",
            "150M",
            "--sample-interval",
            "200ms",
        ],
        &["node".into(), fixture("tests/fixtures/leaky.js")],
    );
    m.wait_kind("ready", 1);
    let leaky = m.live_pids()[0];
    let keep_alive = Load::start(m.addr, 2, true);
    let fresh = Load::start(m.addr, 2, false);
    let events = m.wait_events("the memory limit", |e| {
        of_kind(e, "memory_limit").count() >= 1
    });
    let limit = of_kind(&events, "memory_limit").next().unwrap();
    assert_eq!(pid_field(limit, "pid"), leaky);
    assert!(limit["memory"].as_u64().unwrap() > 150 << 20, "{limit}");
    // Replaced as a reload replaces: the successor serves first.
    let replaced = m.wait_events("the replacement", |e| {
        of_kind(e, "replaced").any(|r| pid_field(r, "old_pid") == leaky)
    });
    let successor = pid_field(
        of_kind(&replaced, "replaced")
            .find(|r| pid_field(r, "old_pid") == leaky)
            .unwrap(),
        "new_pid",
    );
    let exit = m.wait_pid_event("exited", leaky);
    assert_eq!(exit["expected"], true, "{exit}");
    let ka = keep_alive.finish();
    let fr = fresh.finish();
    assert!(
        ka.errors.is_empty() && fr.errors.is_empty(),
        "{:?} {:?}\n{}",
        ka.errors,
        fr.errors,
        m.log()
    );
    assert!(ka.pids.contains(&successor) || fr.pids.contains(&successor));
    // The replacement counts in the slot's restarts, as a memory one.
    let (_, out, _) = herdctl(&path, &["ls", "--json"]);
    let table: serde_json::Value = serde_json::from_str(&out).unwrap();
    let by = &table["workers"][0]["restarts_by"];
    assert!(by["memory"].as_u64() >= Some(1), "{table}");
    assert_eq!(by["exit"], 0, "{table}");
}

#[test]
fn herdctl_ls_shows_each_workers_cpu_and_memory() {
    let (m, path) = controlled(
        &["-w", "2", "--ready", "notify", "--sample-interval", "100ms"],
        &hello_server(),
    );
    m.wait_kind("ready", 2);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (code, out, err) = herdctl(&path, &["ls", "--json"]);
        assert_eq!(code, 0, "{err}");
        let table: serde_json::Value = serde_json::from_str(&out).unwrap();
        let sampled = table["workers"].as_array().unwrap().iter().all(|w| {
            w["memory_bytes"].as_u64().is_some_and(|b| b > 100 << 10)
                && w["cpu_ms"].is_u64()
                && w["cpu_percent"].is_u64()
        });
        if sampled {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{table}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// GET `path` on the metrics endpoint: (status, body).
fn scrape(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, IO_TIMEOUT).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text[9..12].parse().unwrap();
    (
        status,
        text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned(),
    )
}

/// The value of the series `name{labels}` (exactly as rendered).
fn series(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[test]
fn prometheus_metrics_and_probes_follow_the_cluster() {
    let metrics = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut m = Master::start(&cmd(
        &[
            "-w",
            "2",
            "--balance",
            "proxy",
            "--ready",
            "notify",
            "--sample-interval",
            "100ms",
            "--drain-timeout",
            "3s",
            "--metrics",
            &metrics.to_string(),
        ],
        &hello_server(),
    ));
    m.wait_kind("ready", 2);
    for _ in 0..6 {
        m.get("/").unwrap();
    }
    m.signal(Signal::SIGHUP);
    m.wait_events("the reload", |e| complete_reloads(e) == 1);
    let deadline = std::time::Instant::now() + WAIT;
    let body = loop {
        let (status, body) = scrape(metrics, "/metrics");
        assert_eq!(status, 200);
        // Gauges follow at the next sample after the reload.
        let sampled = series(&body, r#"herd_worker_resident_memory_bytes{slot="1"}"#).is_some()
            && series(&body, r#"herd_worker_up{slot="0"}"#) == Some(1.0)
            && series(&body, r#"herd_worker_up{slot="1"}"#) == Some(1.0)
            && series(&body, r#"herd_reloads_total{result="complete"}"#) == Some(1.0);
        if sampled {
            break body;
        }
        assert!(std::time::Instant::now() < deadline, "{body}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(series(&body, "herd_workers"), Some(2.0), "{body}");
    for slot in ["0", "1"] {
        let s = |name: &str| series(&body, &format!("{name}{{slot=\"{slot}\"}}"));
        assert_eq!(s("herd_worker_up"), Some(1.0), "{body}");
        assert!(s("herd_worker_resident_memory_bytes").unwrap() > 100_000.0);
        assert!(s("herd_worker_start_time_seconds").unwrap() > 1.7e9);
        assert!(s("herd_worker_cpu_seconds").is_some());
        assert!(s("herd_proxy_connections_active").is_some());
        assert!(s("herd_proxy_connect_errors_total").is_some());
    }
    assert_eq!(
        series(&body, "herd_reload_duration_seconds_count"),
        Some(1.0),
        "{body}"
    );
    assert!(
        body.contains("herd_reload_duration_seconds_bucket{le=\"1\"}"),
        "{body}"
    );
    assert!(series(&body, "process_resident_memory_bytes").unwrap() > 1e6);
    assert!(!body.contains("pid=\""), "never labelled by pid");

    // One slot fewer: its series go.
    m.signal(Signal::SIGTTOU);
    m.wait_events("slot 1 removed", |e| {
        of_kind(e, "exited").any(|x| x["slot"] == 1 && x["expected"] == true)
    });
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (_, body) = scrape(metrics, "/metrics");
        if series(&body, r#"herd_worker_up{slot="1"}"#).is_none() {
            assert_eq!(series(&body, "herd_workers"), Some(1.0), "{body}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{body}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    // Ready while it runs; not ready while it stops; alive throughout.
    assert_eq!(scrape(metrics, "/readyz").0, 200);
    assert_eq!(scrape(metrics, "/healthz").0, 200);
    let addr = m.addr;
    let slow = std::thread::spawn(move || get(addr, "/sleep/1500"));
    m.wait_log("the slow request", |l| {
        l.contains("request /sleep/1500 started")
    });
    m.signal(Signal::SIGTERM);
    m.wait_kind("stopping", 1);
    assert_eq!(scrape(metrics, "/readyz").0, 503);
    assert_eq!(scrape(metrics, "/healthz").0, 200);
    assert!(slow.join().unwrap().is_ok());
    assert!(m.wait_exit().success(), "{}", m.log());
}

#[test]
fn log_files_take_every_line_with_a_timestamp_and_reopen_on_sigusr1() {
    let dir =
        std::env::temp_dir().join(format!("herd-logs-{}-{}", std::process::id(), free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    let all = dir.join("all.log");
    let per_slot = dir.join("slots");
    let mut m = Master::start(&cmd(
        &[
            "-w",
            "2",
            "--ready",
            "notify",
            "--log-file",
            &all.display().to_string(),
            "--log-dir",
            &per_slot.display().to_string(),
        ],
        &hello_server(),
    ));
    m.wait_kind("ready", 2);
    let pids = m.live_pids();
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
    let has = |p: &std::path::Path, needle: &str| read(p).contains(needle);
    let deadline = std::time::Instant::now() + WAIT;
    while !(has(&all, &format!("pid {}] hello:", pids[1]))
        && has(&per_slot.join("master.log"), "herd: "))
    {
        assert!(std::time::Instant::now() < deadline, "{}", read(&all));
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // Each line starts with a UTC timestamp; each slot's file has its own.
    for line in read(&all).lines() {
        let (stamp, _) = line.split_once(' ').unwrap();
        assert!(
            stamp.len() == 24 && stamp.ends_with('Z') && stamp.as_bytes()[10] == b'T',
            "{line}"
        );
    }
    let slot0 = read(&per_slot.join("slot-0.log"));
    assert!(
        slot0.contains(&format!("[slot 0 pid {}]", pids[0])),
        "{slot0}"
    );
    assert!(!slot0.contains("[slot 1 "), "{slot0}");
    // The terminal gets no worker line.
    assert!(!m.log().contains("hello: pid="), "{}", m.log());

    // logrotate: rename, SIGUSR1, and new lines go to new files.
    let rotated = dir.join("all.log.1");
    std::fs::rename(&all, &rotated).unwrap();
    std::fs::rename(per_slot.join("slot-0.log"), per_slot.join("slot-0.log.1")).unwrap();
    m.signal(Signal::SIGUSR1);
    // Reopening by the path makes the file again.
    let deadline = std::time::Instant::now() + WAIT;
    while !all.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "SIGUSR1 reopened nothing"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    m.signal(Signal::SIGHUP);
    m.wait_events("the reload", |e| complete_reloads(e) == 1);
    let successor = m
        .live_pids()
        .into_iter()
        .find(|p| !pids.contains(p))
        .unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    while !has(&all, "hello:") || !has(&per_slot.join("slot-0.log"), "hello:") {
        assert!(
            std::time::Instant::now() < deadline,
            "no new file after SIGUSR1"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        !has(&rotated, &format!("pid={successor}")),
        "the rotated file took new lines"
    );
    let master_lines = |p: &std::path::Path| read(p).matches(" herd: ").count();
    let before = master_lines(&all);
    m.signal(Signal::SIGTERM);
    assert!(m.wait_exit().success(), "{}", m.log());
    // The stop's lines are written before the master exits.
    assert!(master_lines(&all) > before, "{}", read(&all));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn herdctl_logs_follow_streams_new_lines_until_the_cluster_stops() {
    use std::io::{BufRead, BufReader};
    let (mut m, path) = controlled(&["-w", "1", "--ready", "notify"], &hello_server());
    m.wait_kind("ready", 1);
    let mut child = std::process::Command::new(example("herdctl"))
        .arg("--control")
        .arg(&path)
        .args(["logs", "-f", "--json", "-n", "1"])
        .stdout(std::process::Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let _guard = GroupGuard(nix::unistd::Pid::from_raw(child.id() as i32));
    let (tx, rx) = std::sync::mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // The kept entry comes first: from then on the stream is subscribed.
    let first = rx.recv_timeout(WAIT).expect("the kept entry");
    let first: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert!(first["time_ms"].as_u64() > Some(0), "{first}");
    // A reload makes the successor say hello: that line streams out.
    m.signal(Signal::SIGHUP);
    m.wait_events("the reload", |e| complete_reloads(e) == 1);
    let successor = m.live_pids()[0];
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
            .expect("a streamed line");
        let l: serde_json::Value = serde_json::from_str(&line).unwrap();
        // herd's own entries (its events) stream out too.
        if l["stream"] == "out" && pid_field(&l, "pid") == successor {
            assert_eq!(l["slot"], 0);
            break;
        }
    }
    m.signal(Signal::SIGTERM);
    assert!(m.wait_exit().success());
    let status = wait_child(&mut child, "herdctl logs -f");
    assert!(
        status.success(),
        "the stream ends with the cluster: {status}"
    );
}

#[test]
fn with_a_pre_stop_delay_readyz_fails_at_once_while_the_workers_still_serve() {
    let metrics = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut m = Master::start(&cmd(
        &[
            "-w",
            "2",
            "--ready",
            "notify",
            "--pre-stop-delay",
            "1500ms",
            "--metrics",
            &metrics.to_string(),
        ],
        &hello_server(),
    ));
    m.wait_kind("ready", 2);
    assert_eq!(scrape(metrics, "/readyz").0, 200);
    m.signal(Signal::SIGTERM);
    m.wait_kind("stopping", 1);
    assert_eq!(scrape(metrics, "/readyz").0, 503);
    // Still served: nobody has been told to stop yet.
    for _ in 0..10 {
        assert!(m.get("/").is_ok(), "{}", m.log());
    }
    assert_eq!(of_kind(&m.events(), "exited").count(), 0);
    assert!(m.wait_exit().success(), "{}", m.log());
    assert_eq!(clean_exits(&m.events()), 2);
}

#[test]
fn restarts_are_counted_by_reason() {
    let metrics = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let m = Master::start(&cmd(
        &[
            "-w",
            "1",
            "--ready",
            "notify",
            "--watchdog",
            "1s",
            "--sample-interval",
            "100ms",
            "--restart-delay",
            "10ms",
            "--metrics",
            &metrics.to_string(),
        ],
        &hello_server(),
    ));
    m.wait_kind("ready", 1);
    let hung = m.live_pids()[0];
    let addr = m.addr;
    let _client = std::thread::spawn(move || get(addr, "/hang/10000"));
    m.wait_pid_event("watchdog_timeout", hung);
    m.wait_kind("ready", 2);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (_, body) = scrape(metrics, "/metrics");
        let watchdog = series(
            &body,
            r#"herd_worker_restarts_total{slot="0",reason="watchdog"}"#,
        )
        .or_else(|| {
            series(
                &body,
                r#"herd_worker_restarts_total{reason="watchdog",slot="0"}"#,
            )
        });
        if watchdog == Some(1.0) {
            assert!(!body.contains(r#"reason="exit""#), "{body}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{body}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn herdctl_reload_shows_each_slot_as_it_is_replaced_and_scale_waits_for_the_new_workers() {
    let (m, path) = controlled(&["-w", "2", "--ready", "notify"], &hello_server());
    m.wait_kind("ready", 2);
    let old = m.live_pids();
    let (code, out, err) = herdctl(&path, &["reload"]);
    assert_eq!(code, 0, "{err}");
    let replaced: Vec<(u32, u32)> = of_kind(&m.wait_kind("replaced", 2), "replaced")
        .map(|e| (pid_field(e, "old_pid"), pid_field(e, "new_pid")))
        .collect();
    assert_eq!(replaced.len(), 2);
    // A line per slot while it runs, naming both pids, then the outcome.
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    for (line, (was, now)) in lines.iter().zip(&replaced) {
        assert!(
            line.contains(&now.to_string()) && line.contains(&was.to_string()),
            "{out}"
        );
        assert!(old.contains(was));
    }
    let (code, out, _) = herdctl(&path, &["reload", "--quiet"]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 1, "{out}");
    // scale returns once the new slots serve: the master's own table
    // says so right after.
    let (code, out, err) = herdctl(&path, &["scale", "+2", "--quiet"]);
    assert_eq!(code, 0, "{err}");
    let (_, table, _) = herdctl(&path, &["ls", "--json"]);
    let table: serde_json::Value = serde_json::from_str(&table).unwrap();
    let states: Vec<&str> = table["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["ready"; 4], "{out}");
}

#[test]
fn herdctl_describe_shows_the_command_options_schedule_restarts_by_reason_exits_and_last_lines() {
    let (m, path) = controlled(
        &[
            "-w",
            "2",
            "--ready",
            "notify",
            "--cron-reload",
            "0 3 * * *",
            "-e",
            "API_TOKEN=s3cr3t-value",
        ],
        &hello_server(),
    );
    m.wait_kind("ready", 2);
    let victim = m.live_pids()[0];
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim as i32), Signal::SIGKILL).unwrap();
    m.wait_events("the restart", |e| of_kind(e, "ready").count() >= 3);
    let (code, out, err) = herdctl(&path, &["describe", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        !out.contains("s3cr3t-value"),
        "a variable's value is not shown: {out}"
    );
    let d: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(d["info"]["command"][0], hello());
    assert_eq!(d["info"]["env"], serde_json::json!(["API_TOKEN"]));
    assert_eq!(d["info"]["cron_reload"], "0 3 * * *");
    assert!(
        d["info"]["next_reload"]
            .as_str()
            .is_some_and(|t| t.contains(" 03:00:00")),
        "{d}"
    );
    let exit = d["exits"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| pid_field(e, "pid") == victim)
        .expect("the killed worker's exit");
    assert_eq!(exit["exit"]["signal"], "SIGKILL");
    assert_eq!(exit["expected"], false);
    let slot = exit["slot"].as_u64().unwrap() as usize;
    assert_eq!(d["workers"][slot]["restarts_by"]["exit"], 1, "{d}");
    let tail = d["tail"][slot.to_string()].as_array().unwrap();
    assert!(tail.iter().any(|l| pid_field(l, "pid") == victim), "{d}");
    // The text form too, for one slot.
    let (code, text, _) = herdctl(&path, &["describe", &slot.to_string()]);
    assert_eq!(code, 0);
    assert!(text.contains(&victim.to_string()), "{text}");
}

#[test]
fn log_files_rotate_by_size_under_a_flood_and_lose_no_line() {
    const LINES: usize = 20_000;
    const MAX: u64 = 64 * 1024;
    let dir = std::env::temp_dir().join(format!(
        "herd-rotate-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("app.log");
    let script = format!(
        "for (let i = 0; i < {LINES}; i++) console.log('n=' + i); setInterval(() => {{}}, 1000)"
    );
    let mut m = Master::start(&cmd(
        &[
            "-w",
            "1",
            "--ready",
            "none",
            "--log-file",
            &log.display().to_string(),
            "--log-max-size",
            "64K",
            "--log-keep",
            "1000",
        ],
        &["node".into(), "-e".into(), script],
    ));
    // Every file of the log, the current one and the rotated ones.
    let files = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    };
    let numbers = || -> Vec<usize> {
        files()
            .iter()
            .flat_map(|f| {
                std::fs::read_to_string(f)
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|l| l.rsplit_once("] n=").and_then(|(_, n)| n.parse().ok()))
                    .collect::<Vec<usize>>()
            })
            .collect()
    };
    let deadline = std::time::Instant::now() + WAIT;
    while numbers().len() < LINES {
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {LINES} lines",
            numbers().len()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    m.signal(Signal::SIGTERM);
    assert!(m.wait_exit().success());
    let mut seen = numbers();
    seen.sort_unstable();
    assert_eq!(seen, (0..LINES).collect::<Vec<_>>(), "every line once");
    let all = files();
    assert!(all.len() > 10, "rotated: {all:?}");
    for f in &all {
        let size = std::fs::metadata(f).unwrap().len();
        assert!(size <= MAX, "{} holds {size} bytes", f.display());
        assert!(
            !std::fs::read_to_string(f).unwrap().contains("dropped"),
            "{}",
            f.display()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn herdctl_top_is_a_live_view_on_a_terminal_that_q_quits_and_tables_elsewhere() {
    use std::io::{Read, Write};
    let (m, path) = controlled(&["-w", "2", "--ready", "notify"], &hello_server());
    m.wait_kind("ready", 2);
    let pids = m.live_pids();
    // Not on a terminal: the tables, once per refresh.
    let (code, out, err) = herdctl(&path, &["top", "-n", "2", "--every", "100ms"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("--- ")).count(),
        2,
        "{out}"
    );
    for pid in &pids {
        assert_eq!(out.matches(&format!(" {pid} ")).count(), 2, "{out}");
    }
    // On a terminal (a pseudo-terminal here): the alternate screen with the
    // workers in it, until `q`.
    let size = nix::pty::Winsize {
        ws_row: 30,
        ws_col: 120,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&size), None).unwrap();
    let slave = |fd: &std::os::fd::OwnedFd| std::process::Stdio::from(fd.try_clone().unwrap());
    let mut child = std::process::Command::new(example("herdctl"))
        .arg("--control")
        .arg(&path)
        .args(["top", "--every", "100ms"])
        .env("TERM", "xterm")
        .stdin(slave(&pty.slave))
        .stdout(slave(&pty.slave))
        .stderr(slave(&pty.slave))
        .process_group(0)
        .spawn()
        .unwrap();
    let _guard = GroupGuard(nix::unistd::Pid::from_raw(child.id() as i32));
    drop(pty.slave);
    let screen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut reader = std::fs::File::from(pty.master.try_clone().unwrap());
    let seen = screen.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    let text = || String::from_utf8_lossy(&screen.lock().unwrap()).into_owned();
    let deadline = std::time::Instant::now() + WAIT;
    while !(text().contains("\x1b[?1049h") && pids.iter().all(|p| text().contains(&p.to_string())))
    {
        assert!(std::time::Instant::now() < deadline, "{:?}", text());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::fs::File::from(pty.master).write_all(b"q").unwrap();
    let status = wait_child(&mut child, "herdctl top");
    assert!(status.success(), "{status}");
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert!(
        text().contains("\x1b[?1049l"),
        "the screen is given back: {:?}",
        text()
    );
}
