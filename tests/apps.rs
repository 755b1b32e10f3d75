//! What a PM2 user meets first, with the installed binaries (`herd`,
//! `herdctl`): an ecosystem file read as it is, herd.toml with several apps
//! under one herd, reloads by difference, readiness as PM2 means it, and
//! programs that bind $PORT served in the default mode.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use common::*;
use nix::sys::signal::Signal;

fn herd_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_herd"))
}

/// herdctl, the installed binary: (exit code, stdout, stderr).
fn ctl(args: &[&str], tweak: impl FnOnce(&mut std::process::Command)) -> (i32, String, String) {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_herdctl"));
    c.args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    tweak(&mut c);
    let child = c.spawn().expect("herdctl");
    let out = wait_output(child);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A child's output, waited for with a timeout (three times the usual
/// wait: `reload all` replaces every worker of every app in turn).
fn wait_output(mut child: std::process::Child) -> std::process::Output {
    let deadline = std::time::Instant::now() + 3 * WAIT;
    while child.try_wait().expect("try_wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

/// A directory of the test's own, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!(
            "herd-{what}-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }

    fn join(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Each app's address, from the `listening` events (which name the app).
fn addrs(m: &Master, apps: usize) -> HashMap<String, SocketAddr> {
    let events = m.wait_events(&format!("{apps} apps listening"), |e| {
        of_kind(e, "listening").count() >= apps
    });
    of_kind(&events, "listening")
        .map(|e| {
            (
                e["cluster"].as_str().expect("a cluster name").to_owned(),
                e["addr"].as_str().unwrap().parse().unwrap(),
            )
        })
        .collect()
}

/// The events of one app.
fn app_events(m: &Master, app: &str, kind: &str) -> Vec<serde_json::Value> {
    of_kind(&m.events(), kind)
        .filter(|e| e["cluster"] == app)
        .cloned()
        .collect()
}

fn wait_app_kind(m: &Master, app: &str, kind: &str, n: usize) {
    m.wait_events(&format!("{n} `{kind}` of {app}"), |e| {
        of_kind(e, kind).filter(|e| e["cluster"] == app).count() >= n
    });
}

/// Reaches `addr` from the loopback when the app listens on every address.
fn loopback(addr: SocketAddr) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], addr.port()))
}

#[test]
fn an_ecosystem_file_runs_two_express_apps_with_their_env_blocks_and_reloads_both_under_load() {
    let dir = TempDir::new("eco");
    let app = fixture("tests/fixtures/apps/express_env.js");
    let cwd = fixture("tests/fixtures/apps");
    // As PM2's docs write it: cluster mode, env and env_production, and a
    // field herd has no equivalent for.
    let file = dir.join("ecosystem.config.js");
    std::fs::write(
        &file,
        format!(
            r#"module.exports = {{
  apps: [
    {{ name: 'web', script: '{app}', cwd: '{cwd}', instances: 2, exec_mode: 'cluster',
       env: {{ PORT: 0, GREETING: 'dev' }}, env_production: {{ GREETING: 'prod-web' }},
       kill_timeout: 5000 }},
    {{ name: 'api', script: '{app}', cwd: '{cwd}', instances: 2, exec_mode: 'cluster',
       env: {{ PORT: 0, GREETING: 'dev' }}, env_production: {{ GREETING: 'prod-api' }},
       max_memory_restart: '500M', source_map_support: true }},
  ],
}};
"#
        ),
    )
    .unwrap();
    let control = control_path();
    let c = control.display().to_string();
    let m = Master::start_binary(
        herd_bin(),
        &s(&[
            "--control",
            &c,
            "start",
            &file.display().to_string(),
            "--env",
            "production",
        ]),
    );
    let addrs = addrs(&m, 2);
    wait_app_kind(&m, "web", "ready", 2);
    wait_app_kind(&m, "api", "ready", 2);
    // The ignored field is named once, in a notice of its own.
    let ignored: Vec<_> = m
        .events()
        .into_iter()
        .filter(|e| e["notice"] == "config_ignored")
        .collect();
    assert_eq!(ignored.len(), 1, "{ignored:?}");
    assert!(ignored[0]["message"]
        .as_str()
        .unwrap()
        .contains("source_map_support"));
    // --env production picked each app's block.
    for (name, greeting) in [("web", "prod-web"), ("api", "prod-api")] {
        let body = get(loopback(addrs[name]), "/").unwrap();
        assert!(body.contains(&format!("greeting={greeting}")), "{body}");
    }
    let before: HashMap<&str, Vec<u32>> = ["web", "api"]
        .iter()
        .map(|a| {
            (
                *a,
                app_events(&m, a, "ready")
                    .iter()
                    .map(|e| pid_field(e, "pid"))
                    .collect(),
            )
        })
        .collect();

    // Both apps under load, kept-alive and fresh connections, while
    // `herdctl reload all` rolls every worker of both.
    let loads: Vec<(Load, Load)> = ["web", "api"]
        .iter()
        .map(|a| {
            let at = loopback(addrs[*a]);
            (Load::start(at, 2, true), Load::start(at, 2, false))
        })
        .collect();
    for (ka, fr) in &loads {
        ka.wait_answered(20);
        fr.wait_answered(5);
    }
    let (code, out, err) = ctl(&["--control", &c, "--json", "reload", "all"], |_| {});
    assert_eq!(code, 0, "{out}{err}");
    let reports: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(reports.len(), 2, "{out}");
    for r in &reports {
        assert_eq!(r["replaced"].as_array().unwrap().len(), 2, "{r}");
        assert!(r["failure"].is_null(), "{r}");
    }
    for (ka, _) in &loads {
        let n = ka.answered();
        ka.wait_answered(n + 20);
    }
    for (i, (ka, fr)) in loads.into_iter().enumerate() {
        let ka = ka.finish();
        let fr = fr.finish();
        assert!(
            ka.errors.is_empty() && fr.errors.is_empty(),
            "app {i}: {} kept-alive and {} fresh requests failed: {}{}\n{}",
            ka.errors.len(),
            fr.errors.len(),
            summary(&ka.errors),
            summary(&fr.errors),
            m.log()
        );
        assert!(ka.ok > 0 && fr.ok > 0);
    }
    // Every worker of both apps was replaced, and the new ones serve.
    for a in ["web", "api"] {
        wait_app_kind(&m, a, "ready", 4);
        let body = get(loopback(addrs[a]), "/").unwrap();
        assert!(!before[a].contains(&pid_of(&body)), "{a}: {body}");
    }
    // SIGTERM stops both apps and the herd, cleanly.
    let mut m = m;
    let workers = m.live_pids();
    m.signal(Signal::SIGTERM);
    assert!(m.wait_exit().success(), "{}", m.log());
    wait_dead(&workers, "the workers of both apps");
}

/// A herd.toml with apps `a` and `b` (and `c` when `with_c`), a's
/// environment saying `release`.
fn write_toml(path: &Path, release: &str, with_c: bool, extra: &str) {
    let server = fixture("examples/node/server.js");
    let mut text = format!(
        "# two Node apps\n[apps.a]\ncommand = [\"node\", \"{server}\"]\nworkers = 1\nlisten = \"127.0.0.1:0\"\n{extra}\n[apps.a.env]\nRELEASE = \"{release}\"\n\n[apps.b]\ncommand = [\"node\", \"{server}\"]\nworkers = 1\nlisten = \"127.0.0.1:0\"\n"
    );
    if with_c {
        text.push_str(&format!(
            "\n[apps.c]\ncommand = \"node {server}\"\nworkers = 2\nlisten = \"127.0.0.1:0\"\n"
        ));
    }
    std::fs::write(path, text).unwrap();
}

#[test]
fn a_reload_of_herd_toml_applies_the_difference_and_leaves_the_other_apps_alone() {
    let dir = TempDir::new("toml");
    let file = dir.join("herd.toml");
    write_toml(&file, "1", false, "");
    let control = control_path();
    let c = control.display().to_string();
    let m = Master::start_binary(
        herd_bin(),
        &s(&["--control", &c, "--config", &file.display().to_string()]),
    );
    addrs(&m, 2);
    wait_app_kind(&m, "a", "ready", 1);
    wait_app_kind(&m, "b", "ready", 1);
    let b_pid = pid_field(&app_events(&m, "b", "ready")[0], "pid");

    // a's environment changes and c is added: a reloads, c starts, b is
    // not touched.
    write_toml(&file, "2", true, "");
    let (code, out, err) = ctl(&["--control", &c, "--json", "reload"], |_| {});
    assert_eq!(code, 0, "{out}{err}");
    let changes: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(changes["reloaded"], serde_json::json!(["a"]), "{changes}");
    assert_eq!(changes["started"], serde_json::json!(["c"]), "{changes}");
    assert_eq!(changes["unchanged"], serde_json::json!(["b"]), "{changes}");
    wait_app_kind(&m, "c", "ready", 2);
    assert_eq!(app_events(&m, "a", "reload_finished").len(), 1);
    assert_eq!(app_events(&m, "b", "spawned").len(), 1, "b was left alone");
    assert!(alive(b_pid));

    // A file with a mistake changes nothing, and says where it is.
    write_toml(&file, "2", true, "drain_timout = \"5s\"");
    let (code, _, err) = ctl(&["--control", &c, "reload"], |_| {});
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("drain_timout"), "{err}");
    let (code, out, _) = ctl(&["--control", &c, "--json", "ls"], |_| {});
    assert_eq!(code, 0);
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    let names: Vec<&str> = listed["apps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "b", "c"]);

    // c removed: stopped; SIGHUP does what herdctl reload does.
    write_toml(&file, "2", false, "");
    let c_pids: Vec<u32> = app_events(&m, "c", "ready")
        .iter()
        .map(|e| pid_field(e, "pid"))
        .collect();
    m.signal(Signal::SIGHUP);
    wait_app_kind(&m, "c", "stopped", 1);
    wait_dead(&c_pids, "app c's workers");
    assert!(alive(b_pid));
    assert_eq!(app_events(&m, "a", "reload_finished").len(), 1);

    // b's drain timeout and restart policy change: taken as they are, no
    // worker replaced.
    let text = std::fs::read_to_string(&file).unwrap().replace(
        "[apps.b]\n",
        "[apps.b]\ndrain-timeout = \"7s\"\nrestart = \"on-failure\"\n",
    );
    std::fs::write(&file, text).unwrap();
    let (code, out, err) = ctl(&["--control", &c, "--json", "reload"], |_| {});
    assert_eq!(code, 0, "{out}{err}");
    let changes: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(changes["updated"], serde_json::json!(["b"]), "{changes}");
    assert!(alive(b_pid));
    assert_eq!(app_events(&m, "b", "spawned").len(), 1);
    let (_, out, _) = ctl(&["--control", &c, "--json", "describe", "b"], |_| {});
    let d: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(d["info"]["options"]["drain_timeout"], "7s", "{d}");

    // One app by name, from herdctl: only its workers are replaced.
    let (code, _, err) = ctl(&["--control", &c, "reload", "b"], |_| {});
    assert_eq!(code, 0, "{err}");
    wait_dead(&[b_pid], "b's first worker");
    assert_eq!(app_events(&m, "a", "reload_finished").len(), 1);
    // An app that does not run is named in the refusal.
    let (code, _, err) = ctl(&["--control", &c, "restart", "nope"], |_| {});
    assert_eq!(code, 5, "{err}");
}

#[test]
fn the_help_names_the_control_sockets_real_place() {
    let out = std::process::Command::new(herd_bin())
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    // Where a master with --name demo puts its socket under this runtime
    // directory (the herdctl test below finds sockets there).
    assert!(
        help.contains("$XDG_RUNTIME_DIR/herd/control/NAME.sock"),
        "{help}"
    );
    assert!(help.contains("/tmp/herd-UID/control/NAME.sock"), "{help}");
}

#[test]
fn an_unknown_key_in_herd_toml_is_refused_before_anything_starts() {
    let dir = TempDir::new("badkey");
    let file = dir.join("herd.toml");
    write_toml(&file, "1", false, "drain_timout = \"5s\"");
    let mut m = Master::spawn_program(
        herd_bin(),
        &s(&["start", &file.display().to_string()]),
        |_| {},
    );
    let status = m.wait_exit();
    assert_eq!(status.code(), Some(2), "{}", m.log());
    let log = m.log();
    assert!(
        log.contains("drain_timout") && log.contains("herd.toml"),
        "{log}"
    );
    assert!(m.spawned_pids().is_empty());
}

#[test]
fn a_pm2_app_that_never_says_ready_serves_after_listen_timeout_as_under_pm2() {
    let dir = TempDir::new("waitready");
    let file = dir.join("ecosystem.json");
    std::fs::write(
        &file,
        serde_json::json!({ "apps": [{
            "name": "late",
            "script": fixture("tests/fixtures/never_ready.js"),
            "instances": 1,
            "wait_ready": true,
            "listen_timeout": 1000,
            "env": { "PORT": 0 }
        }]})
        .to_string(),
    )
    .unwrap();
    let m = Master::start_binary(herd_bin(), &s(&["start", &file.display().to_string()]));
    let addr = addrs(&m, 1)["late"];
    m.wait_events("the ready_assumed notice", |e| {
        e.iter().any(|e| e["notice"] == "ready_assumed")
    });
    wait_app_kind(&m, "late", "ready", 1);
    let body = get(loopback(addr), "/").unwrap();
    assert_eq!(pid_of(&body), m.live_pids()[0]);
    assert!(app_events(&m, "late", "start_timeout").is_empty());
}

#[test]
fn herds_wait_ready_fails_fast_on_an_app_that_listens_but_never_says_ready() {
    let mut m = Master::spawn_program(
        herd_bin(),
        &s(&[
            "--log-format",
            "json",
            "-w",
            "2",
            "-l",
            "127.0.0.1:0",
            "--wait-ready",
            "--start-timeout",
            "1s",
            "node",
            &fixture("tests/fixtures/never_ready.js"),
        ]),
        |_| {},
    );
    let status = m.wait_exit();
    assert_eq!(status.code(), Some(1), "{}", m.log());
    let events = m.events();
    // Each slot says why, once, and is not restarted.
    let never: Vec<_> = events
        .iter()
        .filter(|e| e["notice"] == "never_ready")
        .collect();
    assert_eq!(never.len(), 2, "{}", m.log());
    assert!(never[0]["message"]
        .as_str()
        .unwrap()
        .contains("process.send('ready')"));
    assert_eq!(of_kind(&events, "restart_scheduled").count(), 0);
    assert_eq!(of_kind(&events, "slot_failed").count(), 2);
    assert_eq!(m.spawned_pids().len(), 2);
}

#[test]
fn a_python_server_that_binds_port_serves_and_reloads_losslessly_in_the_default_mode() {
    let m = Master::start_binary(
        herd_bin(),
        &s(&[
            "-w",
            "2",
            "-l",
            "127.0.0.1:0",
            "python3",
            &fixture("tests/fixtures/port_app.py"),
        ]),
    );
    let chosen: Vec<_> = of_kind(&m.events(), "balance_chosen").cloned().collect();
    assert_eq!(chosen.len(), 1, "{}", m.log());
    assert_eq!(chosen[0]["balance"], "http");
    assert_eq!(chosen[0]["proxy_port"], true);
    m.wait_kind("ready", 2);
    // Start-up ends with one line: how many are ready, and where.
    let serving = m.wait_kind("serving", 1);
    let serving = of_kind(&serving, "serving").next().unwrap();
    assert_eq!(
        (serving["ready"].as_u64(), serving["workers"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(
        serving["urls"][0],
        format!("http://127.0.0.1:{}", m.addr.port())
    );
    let run = reload_under_load(&m, 2, 2, 2, |_| {});
    assert!(run.served_by().len() >= 4, "{:?}", run.served_by());
}

#[test]
fn uvicorn_told_to_bind_port_by_its_shell_line_gets_http_mode_and_reloads_losslessly() {
    let mut args = s(&["-w", "2", "-l", "127.0.0.1:0"]);
    args.extend(uvicorn_server());
    let m = Master::start_binary(herd_bin(), &args);
    let chosen: Vec<_> = of_kind(&m.events(), "balance_chosen").cloned().collect();
    assert_eq!(chosen[0]["balance"], "http", "{}", m.log());
    m.wait_kind("ready", 2);
    reload_under_load(&m, 2, 2, 1, |_| {});
}

#[test]
fn a_go_net_http_server_serves_and_reloads_losslessly_in_the_default_mode() {
    // .ci/run installs Go; a machine without it cannot build the server.
    let Some(go) = on_path("go") else {
        panic!("this test builds a Go server: install Go (golang-go), as .ci/run does");
    };
    let dir = TempDir::new("go");
    let src = fixture("tests/fixtures/go_server");
    let out = dir.join("go-server");
    let built = std::process::Command::new(go)
        .args(["build", "-o", &out.display().to_string(), "."])
        .current_dir(&src)
        .env("GOCACHE", dir.join("cache"))
        .env("GOFLAGS", "-mod=mod")
        .output()
        .expect("go build");
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let m = Master::start_binary(
        herd_bin(),
        &s(&["-w", "2", "-l", "127.0.0.1:0", &out.display().to_string()]),
    );
    let chosen: Vec<_> = of_kind(&m.events(), "balance_chosen").cloned().collect();
    assert_eq!(chosen[0]["balance"], "http", "{}", m.log());
    m.wait_kind("ready", 2);
    let body = get(m.addr, "/").unwrap();
    assert!(body.starts_with("go pid="), "{body}");
    let run = reload_under_load(&m, 2, 2, 1, |_| {});
    assert!(run.keep_alive.ok > 0);
}

#[test]
fn herdctl_without_a_name_lists_every_app_of_every_herd_and_finds_an_app_by_name() {
    // A runtime directory of the test's own, as XDG_RUNTIME_DIR: the
    // default control sockets of both herds go there.
    let runtime = TempDir::new("xdg");
    std::fs::set_permissions(
        &runtime.0,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let xdg = runtime.0.display().to_string();
    let sockets = runtime.join("herd/control");
    let one = Master::start_binary_with(
        herd_bin(),
        &s(&[
            "--control",
            &sockets.join("one.sock").display().to_string(),
            "--name",
            "one",
            "-w",
            "1",
            "-l",
            "127.0.0.1:0",
            "node",
            &fixture("examples/node/server.js"),
        ]),
        |c| {
            c.env("XDG_RUNTIME_DIR", &xdg);
        },
    );
    let dir = TempDir::new("two");
    let file = dir.join("herd.toml");
    write_toml(&file, "1", false, "");
    let two = Master::start_binary_with(
        herd_bin(),
        &s(&[
            "--control",
            &sockets.join("two.sock").display().to_string(),
            "start",
            &file.display().to_string(),
        ]),
        |c| {
            c.env("XDG_RUNTIME_DIR", &xdg);
        },
    );
    one.wait_kind("ready", 1);
    wait_app_kind(&two, "a", "ready", 1);
    wait_app_kind(&two, "b", "ready", 1);
    let env = |c: &mut std::process::Command| {
        c.env("XDG_RUNTIME_DIR", &xdg);
    };
    let (code, out, err) = ctl(&["--json", "ls"], env);
    assert_eq!(code, 0, "{err}");
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut names: Vec<&str> = listed["apps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["a", "b", "one"]);
    // The text table: a line per app, then its workers.
    let (code, text, _) = ctl(&["ls"], env);
    assert_eq!(code, 0);
    assert_eq!(
        text.lines().filter(|l| l.contains("master pid")).count(),
        3,
        "{text}"
    );
    // An app found by name in whichever herd runs it.
    let (code, out, err) = ctl(&["--json", "reload", "b"], env);
    assert_eq!(code, 0, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["replaced"].as_array().unwrap().len(), 1);
    wait_app_kind(&two, "b", "reload_finished", 1);
    assert!(app_events(&two, "a", "reload_started").is_empty());
    // Without an app, a command that needs one master says there are two.
    let (code, _, _) = ctl(&["reload"], env);
    assert_eq!(code, 2);
    // `stop all` stops every app of both herds, and both herds exit.
    let (code, _, err) = ctl(&["stop", "all"], env);
    assert_eq!(code, 0, "{err}");
    for mut m in [one, two] {
        assert!(m.wait_exit().success(), "{}", m.log());
    }
}

#[test]
fn a_file_changed_under_watch_is_one_reload_under_load_and_an_ignored_one_is_none() {
    let dir = TempDir::new("watch");
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("node_modules")).unwrap();
    std::fs::write(src.join("app.js"), "// v1\n").unwrap();
    let m = Master::start_binary(
        herd_bin(),
        &s(&[
            "-w",
            "2",
            "-l",
            "127.0.0.1:0",
            "--cwd",
            &dir.0.display().to_string(),
            "--watch=src",
            "--ignore-watch",
            "*.tmp",
            "--watch-delay",
            "300ms",
            "node",
            &fixture("examples/node/server.js"),
        ]),
    );
    m.wait_kind("ready", 2);
    let ka = Load::start(m.addr, 2, true);
    let fr = Load::start(m.addr, 2, false);
    ka.wait_answered(20);
    // A burst of saves, as an editor or a deploy makes them: one reload.
    for i in 2..5 {
        std::fs::write(src.join("app.js"), format!("// v{i}\n")).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(30));
    }
    m.wait_events("the reload the change asked for", |e| {
        complete_reloads(e) == 1
    });
    let changed = m.wait_kind("watch_changed", 1);
    let changed = of_kind(&changed, "watch_changed").next().unwrap().clone();
    assert_eq!(
        changed["changed"],
        serde_json::json!(["app.js"]),
        "{changed}"
    );
    let n = ka.answered();
    ka.wait_answered(n + 20);
    let (ka, fr) = (ka.finish(), fr.finish());
    assert!(
        ka.errors.is_empty() && fr.errors.is_empty(),
        "{}{}\n{}",
        summary(&ka.errors),
        summary(&fr.errors),
        m.log()
    );
    // Changes that are ignored: node_modules, a log file, --ignore-watch.
    std::fs::write(src.join("node_modules/dep.js"), "x").unwrap();
    std::fs::write(src.join("server.log"), "x").unwrap();
    std::fs::write(src.join("cache.tmp"), "x").unwrap();
    // Then one that counts: if the ignored ones had counted, they would
    // have made a burst of their own before it.
    std::thread::sleep(std::time::Duration::from_millis(600));
    std::fs::write(src.join("app.js"), "// v5\n").unwrap();
    m.wait_events("the second reload", |e| complete_reloads(e) == 2);
    let all = m.wait_kind("watch_changed", 2);
    let bursts: Vec<_> = of_kind(&all, "watch_changed").collect();
    assert_eq!(bursts.len(), 2, "{}", m.log());
    assert_eq!(bursts[1]["changed"], serde_json::json!(["app.js"]));
}

#[test]
fn a_cron_schedule_reloads_the_cluster_each_time_it_comes() {
    // Every second (six fields: seconds first), to see two in a test.
    let m = Master::start_binary(
        herd_bin(),
        &s(&[
            "-w",
            "1",
            "-l",
            "127.0.0.1:0",
            "--cron-reload",
            "* * * * * *",
            "node",
            &fixture("examples/node/server.js"),
        ]),
    );
    let scheduled = m.wait_kind("cron_scheduled", 1);
    let next = of_kind(&scheduled, "cron_scheduled").next().unwrap()["next"].clone();
    assert!(next.as_str().is_some_and(|t| t.len() >= 19), "{next}");
    m.wait_events("two scheduled reloads", |e| complete_reloads(e) >= 2);
    assert!(of_kind(&m.events(), "cron_reload").count() >= 2);
    // A schedule that is not one is refused before anything starts.
    let mut bad = Master::spawn_program(
        herd_bin(),
        &s(&["--cron-reload", "at three", "node", "x.js"]),
        |_| {},
    );
    assert_eq!(bad.wait_exit().code(), Some(2), "{}", bad.log());
}

#[test]
fn herd_startup_writes_a_unit_that_runs_the_file_as_the_user_with_their_path_and_systemd_accepts_it(
) {
    let dir = TempDir::new("startup");
    let file = dir.join("herd.toml");
    write_toml(&file, "1", false, "");
    let units = dir.join("units");
    std::fs::create_dir_all(&units).unwrap();
    let out = std::process::Command::new(herd_bin())
        .args(["startup", "systemd", "start", "herd.toml", "--unit-dir"])
        .arg(&units)
        .current_dir(&dir.0)
        // Asked through sudo by this user, whose PATH found node.
        .env("SUDO_USER", "www-data")
        .env(
            "PATH",
            format!("/opt/nvm/bin:{}", std::env::var("PATH").unwrap()),
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let name = std::fs::read_dir(&units)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "service"))
        .expect("a service unit");
    let text = std::fs::read_to_string(&name).unwrap();
    let value = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key}= in\n{text}"))
            .to_owned()
    };
    let exec: Vec<String> = value("ExecStart").split(' ').map(str::to_owned).collect();
    assert!(Path::new(&exec[0]).is_absolute(), "{text}");
    let config = std::fs::canonicalize(&file).unwrap();
    assert_eq!(
        exec[1..],
        ["--config".to_owned(), config.display().to_string()],
        "{text}"
    );
    assert_eq!(value("User"), "www-data");
    assert!(
        value("Environment").starts_with("PATH=/opt/nvm/bin:"),
        "{text}"
    );
    assert_eq!(
        Path::new(&value("WorkingDirectory")),
        std::fs::canonicalize(&dir.0).unwrap()
    );
    assert!(value("ExecReload").contains("-HUP"), "{text}");
    // --print shows the same unit and writes nothing.
    let empty = dir.join("print-only");
    std::fs::create_dir_all(&empty).unwrap();
    let printed = std::process::Command::new(herd_bin())
        .args(["startup", "--print", "start", "herd.toml", "--unit-dir"])
        .arg(&empty)
        .current_dir(&dir.0)
        .env("SUDO_USER", "www-data")
        .env(
            "PATH",
            format!("/opt/nvm/bin:{}", std::env::var("PATH").unwrap()),
        )
        .output()
        .unwrap();
    assert!(printed.status.success());
    let printed = String::from_utf8_lossy(&printed.stdout);
    assert!(printed.contains(&text), "{printed}");
    assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0);
    // systemd's own check of the unit, where systemd is installed (.ci/run
    // installs it).
    if let Some(analyze) = on_path("systemd-analyze") {
        let verify = std::process::Command::new(analyze)
            .arg("verify")
            .arg(&name)
            .output()
            .unwrap();
        assert!(
            verify.status.success() && verify.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&verify.stderr)
        );
    }
}

#[test]
fn with_time_every_line_on_the_terminal_starts_with_the_time() {
    let mut m = Master::spawn_program(
        herd_bin(),
        &s(&[
            "--time=utc",
            "-w",
            "2",
            "-l",
            "127.0.0.1:0",
            "node",
            &fixture("examples/node/server.js"),
        ]),
        |_| {},
    );
    // Both workers said they listen, and were forwarded.
    m.wait_log("both workers' lines", |l| {
        l.matches("listening").count() >= 2
    });
    m.signal(Signal::SIGTERM);
    assert!(m.wait_exit().success());
    let stamped = |l: &str| {
        let b = l.as_bytes();
        l.len() > 25
            && b[4] == b'-'
            && b[10] == b'T'
            && &l[23..25] == "Z "
            && l[..4].chars().all(|c| c.is_ascii_digit())
            && chrono_like(&l[..23])
    };
    fn chrono_like(t: &str) -> bool {
        t.chars().enumerate().all(|(i, c)| {
            matches!(i, 4 | 7) && c == '-'
                || i == 10 && c == 'T'
                || matches!(i, 13 | 16) && c == ':'
                || i == 19 && c == '.'
                || c.is_ascii_digit()
        })
    }
    let log = m.log();
    let lines: Vec<&str> = log.lines().filter(|l| !l.is_empty()).collect();
    assert!(lines.len() >= 8, "{log}");
    for l in &lines {
        assert!(stamped(l), "not stamped: {l:?}\n{log}");
    }
}

#[test]
fn herds_own_output_redirected_into_the_watched_directory_does_not_reload_it() {
    use std::os::unix::process::CommandExt;
    // As a user runs it: `herd --watch node app.js > herd.out 2>&1` in the
    // app's directory, with the real Express app.
    let dir = TempDir::new("watch-out");
    std::fs::copy(
        fixture("tests/fixtures/apps/express_app.js"),
        dir.join("app.js"),
    )
    .unwrap();
    std::os::unix::fs::symlink(
        fixture("tests/fixtures/apps/node_modules"),
        dir.join("node_modules"),
    )
    .unwrap();
    let out = std::fs::File::create(dir.join("herd.out")).unwrap();
    let mut child = std::process::Command::new(herd_bin())
        .args([
            "--watch",
            "--watch-delay",
            "200ms",
            "-w",
            "1",
            "-l",
            "127.0.0.1:0",
        ])
        .args(["--no-control", "--log-format", "json", "node", "app.js"])
        .current_dir(&dir.0)
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .process_group(0)
        .spawn()
        .unwrap();
    let _guard = GroupGuard(nix::unistd::Pid::from_raw(child.id() as i32));
    let events = |kind: &str| {
        std::fs::read_to_string(dir.join("herd.out"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&format!("\"event\":\"{kind}\"")))
            .count()
    };
    let deadline = std::time::Instant::now() + WAIT;
    while events("ready") < 1 {
        assert!(std::time::Instant::now() < deadline, "no worker ready");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::fs::write(
        dir.join("app.js"),
        std::fs::read_to_string(dir.join("app.js")).unwrap() + "// edit\n",
    )
    .unwrap();
    while events("reload_finished") < 1 {
        assert!(std::time::Instant::now() < deadline, "no reload");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // Its lines about the reload went to herd.out: they are no change.
    std::thread::sleep(std::time::Duration::from_millis(800));
    assert_eq!(events("watch_changed"), 1);
    assert_eq!(events("reload_started"), 1);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        Signal::SIGTERM,
    )
    .unwrap();
    let _ = wait_child(&mut child, "herd");
}
