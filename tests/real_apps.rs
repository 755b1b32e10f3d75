//! Zero-downtime reloads for apps written the way the frameworks' own docs
//! write them (Express, ws, Fastify, tsx, npm start, PM2's wait_ready),
//! with the real packages (`npm ci` in tests/fixtures/apps), under load,
//! reading the master's JSON events.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;

/// How long installing the test apps' packages may take.
const NPM_CI_TIMEOUT: Duration = Duration::from_secs(300);

/// The test apps, with their packages installed (`npm ci`, once per run,
/// when they are missing), so that `cargo test` works on a fresh checkout.
fn apps() -> PathBuf {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/apps");
    INSTALL.call_once(|| {
        if dir.join("node_modules/express").is_dir() {
            return;
        }
        let mut npm = std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .spawn()
            .expect("npm (to install the test apps' packages)");
        let deadline = Instant::now() + NPM_CI_TIMEOUT;
        loop {
            if let Some(status) = npm.try_wait().expect("npm ci") {
                assert!(
                    status.success(),
                    "npm ci in {} failed: {status}",
                    dir.display()
                );
                break;
            }
            if Instant::now() > deadline {
                let _ = npm.kill();
                let _ = npm.wait();
                panic!(
                    "npm ci in {} took longer than {NPM_CI_TIMEOUT:?}",
                    dir.display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    assert!(
        dir.join("node_modules/express").is_dir(),
        "the test apps' packages are missing: run `npm ci` in {}",
        dir.display()
    );
    dir
}

fn app(name: &str) -> String {
    apps().join(name).display().to_string()
}

/// `-l 127.0.0.1:0 -w 2`, `extra`, then the program.
fn cmd(extra: &[&str], program: &[&str]) -> Vec<String> {
    common::cmd(&[&["-w", "2"], extra].concat(), &s(program))
}

/// `reloads` SIGHUPs under keep-alive and fresh-connection load: no failed
/// request, every worker replaced, then a clean stop that leaves nothing
/// running.
fn reloads_fail_nothing(mut m: Master, reloads: usize) {
    let workers = 2;
    m.wait_events("two ready workers", |e| {
        of_kind(e, "ready").count() >= workers
    });
    let first: HashSet<u32> = m.live_pids().into_iter().collect();
    assert_eq!(first.len(), workers, "{}", m.log());

    let run = reload_under_load(&m, 3, 2, reloads, |m| {
        m.wait_events("every predecessor to exit", |e| {
            of_kind(e, "exited").count() >= workers * reloads
        });
    });
    let events = m.events();
    let log = m.log();
    // Predecessors exited by themselves, none at the drain timeout.
    for e in of_kind(&events, "exited") {
        assert_eq!(e["exit"]["code"], 0, "{e}\n{log}");
    }
    assert_eq!(of_kind(&events, "drain_timeout").count(), 0, "{log}");
    let now: HashSet<u32> = m.live_pids().into_iter().collect();
    assert_eq!(now.len(), workers, "{log}");
    assert!(
        now.is_disjoint(&first),
        "every worker replaced: {first:?} -> {now:?}"
    );
    // The apps that answered (under a launcher, not the workers' main
    // processes) over kept-alive connections.
    let apps = &run.keep_alive.pids;
    assert!(apps.len() > workers, "later generations served: {apps:?}");

    m.signal(Signal::SIGTERM);
    let status = m.wait_exit();
    assert!(status.success(), "{status:?}\n{}", m.log());
    let all: Vec<u32> = m
        .spawned_pids()
        .into_iter()
        .chain(run.served_by())
        .collect();
    wait_dead(&all, "workers and apps after the stop");
}

#[test]
fn an_express_app_with_its_own_sigterm_handler_reloads_without_errors() {
    let m = Master::start_json(&cmd(&[], &["node", &app("express_stop_handler.js")]), None);
    reloads_fail_nothing(m, 3);
}

#[test]
fn an_express_app_with_its_own_sigint_handler_reloads_without_errors_with_stop_signal_int() {
    let m = Master::start_json(
        &cmd(
            &["--stop-signal", "SIGINT", "-e", "APP_STOP_SIGNAL=SIGINT"],
            &["node", &app("express_stop_handler.js")],
        ),
        None,
    );
    reloads_fail_nothing(m, 3);
}

#[test]
fn wait_ready_waits_for_the_apps_own_ready_message() {
    // 1.5 s of 503s after listen: with --wait-ready none of them is seen.
    let m = Master::start_json(
        &cmd(&["--wait-ready"], &["node", &app("wait_ready.js")]),
        None,
    );
    reloads_fail_nothing(m, 2);
}

#[test]
fn wait_ready_for_an_app_that_never_says_ready_times_out_naming_the_slot_and_the_option() {
    let m = Master::start_json(
        &cmd(
            &[
                "--wait-ready",
                "--start-timeout",
                "1s",
                "-e",
                "APP_NEVER_READY=1",
                "-e",
                "APP_INIT_MS=10",
            ],
            &["node", &app("wait_ready.js")],
        ),
        None,
    );
    let events = m.wait_events("a start timeout", |e| {
        of_kind(e, "start_timeout").count() >= 1
    });
    let e = of_kind(&events, "start_timeout").next().unwrap();
    assert_eq!(e["readiness"], "ipc", "{e}");
    assert_eq!(e["timeout_ms"], 1000, "{e}");
    assert!(e["slot"].as_u64().unwrap() < 2, "{e}");
    assert_eq!(of_kind(&events, "ready").count(), 0, "{}", m.log());
}

#[test]
fn wait_ready_for_a_program_that_is_not_node_is_refused() {
    let mut m = Master::spawn(&cmd(&["--wait-ready"], &["sleep", "100"]));
    let status = m.wait_exit();
    assert!(!status.success());
    let log = m.log();
    assert!(log.contains("wait-ready") && log.contains("sleep"), "{log}");
    assert!(m.spawned_pids().is_empty(), "{log}");
}

#[test]
fn npm_start_serves_and_reloads_without_errors() {
    let m = Master::start_json(&cmd(&[], &["npm", "start"]), Some(&apps()));
    reloads_fail_nothing(m, 2);
}

#[test]
fn npx_tsx_serves_and_reloads_without_errors() {
    let m = Master::start_json(&cmd(&[], &["npx", "tsx", "ts_app.ts"]), Some(&apps()));
    reloads_fail_nothing(m, 2);
}

#[test]
fn tsx_and_a_shebang_script_serve_and_reload_without_errors() {
    let tsx = apps().join("node_modules/.bin/tsx").display().to_string();
    let m = Master::start_json(&cmd(&[], &[&tsx, "ts_app.ts"]), Some(&apps()));
    reloads_fail_nothing(m, 2);
    let m = Master::start_json(&cmd(&[], &["./shebang_app.js"]), Some(&apps()));
    reloads_fail_nothing(m, 2);
}

/// Reads one HTTP response off a fresh connection to `port` on `host`.
fn get_text(host: &str, port: u16) -> Result<String, String> {
    let addr = format!("{host}:{port}")
        .parse()
        .map_err(|e| format!("{e}"))?;
    get(addr, "/")
}

#[test]
fn each_listen_gets_the_socket_of_its_own_port_whatever_the_order() {
    each_listen_gets_its_own_port(&[]);
}

#[test]
fn in_proxy_mode_each_address_reaches_the_server_of_its_own_port() {
    each_listen_gets_its_own_port(&["--balance", "proxy"]);
}

/// An app whose metrics server listens before its API server, with herd
/// on both ports: each port is answered by its own server.
fn each_listen_gets_its_own_port(extra: &[&str]) {
    let (api, metrics) = (free_port(), free_port());
    let api_l = format!("127.0.0.1:{api}");
    let metrics_l = format!("127.0.0.1:{metrics}");
    let mut args = s(&["-w", "2", "-l", &api_l, "-l", &metrics_l]);
    args.extend(s(extra));
    args.extend(s(&[
        "-e",
        &format!("API_PORT={api}"),
        "-e",
        &format!("METRICS_PORT={metrics}"),
        "node",
        &app("two_servers.js"),
    ]));
    let m = Master::start_json(&args, None);
    m.wait_events("two ready workers", |e| of_kind(e, "ready").count() >= 2);
    for _ in 0..10 {
        let a = get_text("127.0.0.1", api).unwrap();
        assert!(a.starts_with("api "), "port {api} answered {a:?}");
        let b = get_text("127.0.0.1", metrics).unwrap();
        assert!(b.starts_with("metrics "), "port {metrics} answered {b:?}");
    }
}

#[test]
fn a_helper_the_app_starts_before_it_listens_does_not_take_the_socket() {
    let extra = free_port();
    let extra_env = format!("EXTRA_PORT={extra}");
    let mut m = Master::start_json(
        &s(&[
            "-l",
            "127.0.0.1:0",
            "-w",
            "1",
            "-e",
            &extra_env,
            "node",
            &app("helper_first.js"),
        ]),
        None,
    );
    m.wait_events("a ready worker", |e| of_kind(e, "ready").count() >= 1);
    m.wait_log("the helper", |l| l.contains("helper: listening"));
    for _ in 0..20 {
        let body = m.get("/").unwrap();
        assert!(
            body.starts_with("pid="),
            "herd's port answered {body:?}\n{}",
            m.log()
        );
    }
    // The port herd does not serve is the app's own, with a warning that
    // every worker would bind it.
    assert_eq!(get_text("127.0.0.1", extra).unwrap(), "extra\n");
    m.wait_log("the warning", |l| {
        l.contains("HERD_LISTEN") && l.contains(&extra.to_string())
    });
    m.signal(Signal::SIGTERM);
    assert!(m.wait_exit().success(), "{}", m.log());
}

#[test]
fn fastify_on_localhost_is_served_by_herd_alone_and_reloads_without_errors() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let m = Master::start_json(
        &s(&[
            "-w",
            "2",
            "-l",
            &listen,
            "-e",
            &format!("PORT={port}"),
            "node",
            &app("fastify_app.js"),
        ]),
        None,
    );
    m.wait_events("two ready workers", |e| of_kind(e, "ready").count() >= 2);
    m.wait_log("fastify to say where it listens", |l| {
        l.matches("fastify: pid=").count() >= 2
    });
    // Where ::1 exists, no worker may own a listener of its own there.
    if std::net::TcpListener::bind("[::1]:0").is_ok() {
        let r = std::net::TcpStream::connect_timeout(
            &format!("[::1]:{port}").parse().unwrap(),
            Duration::from_secs(2),
        );
        assert!(
            r.is_err(),
            "a worker listens on [::1]:{port} by itself\n{}",
            m.log()
        );
    }
    reloads_fail_nothing(m, 2);
}

/// Starts `n` WebSocket clients against `port`; they reconnect after every
/// close until SIGTERM, then print what they saw as JSON.
struct WsClients {
    child: std::process::Child,
    out: std::sync::Arc<std::sync::Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl WsClients {
    fn start(port: u16, n: usize) -> WsClients {
        use std::io::BufRead;
        let mut child = std::process::Command::new("node")
            .arg(app("ws_clients.js"))
            .arg(port.to_string())
            .arg(n.to_string())
            .env("MAX_SECONDS", "60")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("node ws_clients.js");
        let out = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = out.clone();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let mut o = sink.lock().unwrap();
                o.push_str(&line);
                o.push('\n');
            }
        });
        WsClients {
            child,
            out,
            reader: Some(reader),
        }
    }

    fn last(&self) -> serde_json::Value {
        let out = self.out.lock().unwrap();
        out.lines()
            .last()
            .and_then(|l| serde_json::from_str(l).ok())
            .unwrap_or(serde_json::Value::Null)
    }

    fn wait_opened(&self, n: u64) {
        let deadline = Instant::now() + WAIT;
        while self.last()["opened"].as_u64().unwrap_or(0) < n {
            assert!(Instant::now() < deadline, "clients opened: {}", self.last());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn finish(mut self) -> serde_json::Value {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            Signal::SIGTERM,
        );
        let deadline = Instant::now() + WAIT;
        while self.child.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "the WebSocket clients did not stop"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // Its stdout is closed now: the reader has every line.
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
        self.last()
    }
}

impl Drop for WsClients {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn websocket_clients_get_a_normal_close_and_reconnect_to_the_new_workers() {
    websockets_close_normally_on_reload(&[]);
}

#[test]
fn websocket_clients_in_proxy_mode_get_a_normal_close_without_waiting_the_drain_timeout() {
    // socket.io's long-polling needs stickiness: ip-hash.
    websockets_close_normally_on_reload(&["--balance", "proxy", "--strategy", "ip-hash"]);
}

/// The WebSocket app with `opts`, two ready workers (returned), `n`
/// connected clients and a keep-alive load.
fn ws_cluster(opts: &[&str], n: u64) -> (Master, HashSet<u32>, WsClients, Load) {
    let m = Master::start_json(&cmd(opts, &["node", &app("ws_app.js")]), None);
    m.wait_events("two ready workers", |e| of_kind(e, "ready").count() >= 2);
    let first: HashSet<u32> = m.live_pids().into_iter().collect();
    let clients = WsClients::start(m.addr.port(), n as usize);
    clients.wait_opened(n);
    let keep_alive = Load::start(m.addr, 2, true);
    (m, first, clients, keep_alive)
}

/// Some client ended up on one of the workers serving now.
fn reached_new_workers(seen: &serde_json::Value, now: &HashSet<u32>) {
    let served: HashSet<u64> = seen["pids"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p.as_u64())
        .collect();
    assert!(
        now.iter().any(|p| served.contains(&u64::from(*p))),
        "clients reconnected to the new workers {now:?}: {seen}"
    );
}

fn websockets_close_normally_on_reload(extra: &[&str]) {
    let (mut m, first, clients, keep_alive) =
        ws_cluster(&[&["--drain-timeout", "20s"], extra].concat(), 6);
    let started = Instant::now();
    for i in 1..=2 {
        m.signal(Signal::SIGHUP);
        m.wait_events(&format!("reload {i}"), |e| complete_reloads(e) >= i);
    }
    let events = m.wait_events("the predecessors to exit", |e| {
        of_kind(e, "exited").count() >= 4
    });
    let took = started.elapsed();
    // Clients reconnected to the workers that serve now, then stop them.
    let now: HashSet<u32> = m.live_pids().into_iter().collect();
    let deadline = Instant::now() + WAIT;
    while !clients.last()["pids"].as_array().is_some_and(|p| {
        p.iter()
            .any(|p| p.as_u64().is_some_and(|p| now.contains(&(p as u32))))
    }) {
        assert!(
            Instant::now() < deadline,
            "no client reached the new workers {now:?}: {}",
            clients.last()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let seen = clients.finish();
    let ka = keep_alive.finish();
    let log = m.log();
    assert!(ka.errors.is_empty(), "{}\n{log}", summary(&ka.errors));
    let codes = seen["codes"].as_object().unwrap();
    assert!(!codes.is_empty(), "the clients saw no close: {seen}");
    assert!(
        codes.keys().all(|c| c == "1001"),
        "only normal closes (1001), no 1006: {seen}\n{log}"
    );
    for e in of_kind(&events, "exited") {
        assert_eq!(e["exit"]["code"], 0, "nothing SIGKILLed: {e}\n{log}");
    }
    assert_eq!(of_kind(&events, "drain_timeout").count(), 0, "{log}");
    assert!(
        took < Duration::from_secs(20),
        "the old workers lingered: {took:?}\n{log}"
    );
    let now: HashSet<u32> = m.live_pids().into_iter().collect();
    reached_new_workers(&seen, &now);
    assert!(now.is_disjoint(&first));
    m.signal(Signal::SIGTERM);
    assert!(m.wait_exit().success(), "{}", m.log());
}

/// GET /child (a route that runs `sleep 1`) from `n` threads until the
/// deadline; the statuses that were not 200.
fn child_requests(addr: std::net::SocketAddr, n: usize, until: Instant) -> Vec<String> {
    let threads: Vec<_> = (0..n)
        .map(|_| {
            std::thread::spawn(move || {
                let mut bad = Vec::new();
                while Instant::now() < until {
                    if let Err(e) = get(addr, "/child") {
                        bad.push(e);
                    }
                }
                bad
            })
        })
        .collect();
    threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect()
}

/// Requests to a route that runs `sleep 1` while a reload replaces both
/// workers: the ones that failed.
fn child_requests_over_a_reload(extra: &[&str]) -> (Master, Vec<String>) {
    let m = Master::start_json(
        &cmd(extra, &["node", &app("express_stop_handler.js")]),
        None,
    );
    m.wait_events("two ready workers", |e| of_kind(e, "ready").count() >= 2);
    let until = Instant::now() + Duration::from_secs(5);
    let addr = m.addr;
    let load = std::thread::spawn(move || child_requests(addr, 4, until));
    std::thread::sleep(Duration::from_millis(1200));
    m.signal(Signal::SIGHUP);
    m.wait_events("the reload", |e| complete_reloads(e) >= 1);
    let bad = load.join().unwrap();
    (m, bad)
}

#[test]
fn a_child_process_of_a_request_finishes_during_a_reload() {
    let (m, bad) = child_requests_over_a_reload(&[]);
    assert!(
        bad.is_empty(),
        "requests whose child was killed: {bad:?}\n{}",
        m.log()
    );
}

#[test]
fn kill_mode_group_still_stops_the_whole_group_at_once() {
    let (m, bad) = child_requests_over_a_reload(&["--kill-mode", "group"]);
    // The old behaviour, kept as an option: the sleep gets SIGTERM too.
    assert!(
        bad.iter().any(|e| e.contains("500")),
        "the group's children were signalled: {bad:?}\n{}",
        m.log()
    );
}

/// A file the release fixtures read at start: the code "deployed" before
/// a reload. Removed when dropped.
struct Release(PathBuf);

impl Release {
    fn new(name: &str) -> Release {
        let path = std::env::temp_dir().join(format!("herd-{name}-{}", std::process::id()));
        let r = Release(path);
        r.set("good");
        r
    }

    fn set(&self, mode: &str) {
        std::fs::write(&self.0, mode).unwrap();
    }

    fn env(&self) -> String {
        format!("RELEASE_FILE={}", self.0.display())
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Deploys `bad_mode` of a release fixture and reloads under load: the
/// reload is aborted with `explaining` among the reported lines, no request
/// fails, and only the old workers serve.
fn a_broken_release_is_rolled_back(name: &str, program: &[&str], bad_mode: &str, explaining: &str) {
    let release = Release::new(name);
    let m = Master::start_json(&cmd(&["-e", &release.env()], program), None);
    // Some programs cannot say they are ready: wait until both started.
    m.wait_log("both to start", |l| l.matches("mode=good").count() >= 2);
    let old: HashSet<u32> = m.live_pids().into_iter().collect();
    let keep_alive = Load::start(m.addr, 2, true);
    let fresh = Load::start(m.addr, 2, false);
    keep_alive.wait_answered(20);

    release.set(bad_mode);
    m.signal(Signal::SIGHUP);
    let events = m.wait_events("the abort", |e| !aborted_reloads(e).is_empty());
    let report = aborted_reloads(&events)[0].clone();
    let lines = report["failure"]["last_output"].to_string();
    assert!(lines.contains(explaining), "the explaining line: {report}");
    std::thread::sleep(Duration::from_millis(500));
    let ka = keep_alive.finish();
    let fr = fresh.finish();
    assert!(
        ka.errors.is_empty() && fr.errors.is_empty(),
        "{} / {}\n{}",
        summary(&ka.errors),
        summary(&fr.errors),
        m.log()
    );
    let now: HashSet<u32> = m.live_pids().into_iter().collect();
    assert!(
        old.is_subset(&now),
        "the old workers still serve: {old:?} {now:?}"
    );
    assert!(ka.pids.iter().chain(&fr.pids).all(|p| old.contains(p)));
}

#[test]
fn a_broken_release_of_a_python_server_is_rolled_back_while_the_old_workers_serve() {
    // No readiness: the settle window catches the import error.
    let py = fixture("tests/fixtures/py_release.py");
    a_broken_release_is_rolled_back(
        "py-release",
        &["python3", &py],
        "crash",
        "ModuleNotFoundError",
    );
}

#[test]
fn a_node_release_with_a_missing_module_is_reported_with_the_cannot_find_module_line() {
    let js = fixture("tests/fixtures/release.js");
    a_broken_release_is_rolled_back(
        "node-release",
        &["node", &js],
        "missing",
        "Cannot find module",
    );
}

#[test]
fn a_worker_that_binds_a_herd_port_itself_is_told_what_to_do_instead() {
    // A program herd cannot help (here Node without the preload) binds the
    // port herd already holds.
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let script = format!("require('http').createServer().listen({port}, '127.0.0.1')");
    let m = Master::start_json(
        &s(&[
            "-w",
            "1",
            "-l",
            &listen,
            "--crash-limit",
            "2",
            "--no-node-preload",
            "node",
            "-e",
            &script,
        ]),
        None,
    );
    let events = m.wait_events("a port conflict", |e| {
        of_kind(e, "port_conflict").count() >= 1
    });
    let e = of_kind(&events, "port_conflict").next().unwrap();
    assert_eq!(e["port"], port, "{e}");
    assert_eq!(e["slot"], 0, "{e}");
}

#[test]
fn websocket_tunnels_in_http_mode_close_normally_at_once_on_reload() {
    // HTTP mode tunnels each WebSocket through the master. A retiring Node
    // worker ends its tunnels itself (the preload closes them with 1001),
    // so it hears its stop signal at once, not at the drain timeout: the
    // clients reconnect to the new workers through the same master.
    let (mut m, first, clients, keep_alive) =
        ws_cluster(&["--balance", "http", "--drain-timeout", "60s"], 4);
    m.signal(Signal::SIGHUP);
    m.wait_events("the reload", |e| complete_reloads(e) == 1);
    let events = m.wait_events("the predecessors to exit", |e| {
        of_kind(e, "exited").count() >= 2
    });
    // Told to stop at once, with their tunnels open: no drain timeout.
    assert_eq!(of_kind(&events, "drain_signal").count(), 0, "{}", m.log());
    let now: HashSet<u32> = m.live_pids().into_iter().collect();
    let deadline = Instant::now() + WAIT;
    while clients.last()["opened"].as_u64().unwrap_or(0) < 8 {
        assert!(
            Instant::now() < deadline,
            "no reconnect: {}",
            clients.last()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let seen = clients.finish();
    keep_alive.finish_without_failures();
    assert_eq!(seen["errors"], 0, "{seen}");
    let codes = seen["codes"].as_object().unwrap();
    assert!(
        codes.keys().all(|c| c == "1001"),
        "only normal closes: {seen}"
    );
    for e in of_kind(&events, "exited") {
        assert_eq!(e["exit"]["code"], 0, "nothing SIGKILLed: {e}");
    }
    reached_new_workers(&seen, &now);
    assert!(now.is_disjoint(&first));
    m.signal(Signal::SIGTERM);
    assert!(m.wait_exit().success(), "{}", m.log());
}

#[test]
fn express_and_fastify_reload_in_http_mode_without_errors() {
    // The apps as their docs start them; the master owns every client
    // connection and sends each request to a worker.
    let m = Master::start_json(
        &cmd(
            &["--balance", "http"],
            &["node", &app("express_stop_handler.js")],
        ),
        None,
    );
    reloads_fail_nothing(m, 3);
    let m = Master::start_json(
        &cmd(&["--balance", "http"], &["node", &app("fastify_app.js")]),
        None,
    );
    reloads_fail_nothing(m, 2);
}
