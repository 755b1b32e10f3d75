//! Rolling reload, herd against PM2, side by side on this machine.
//!
//! ```text
//! npm install --no-save pm2        # optional: without it only herd runs
//! cargo bench --bench reload
//! ```
//!
//! For 2, 4 and 8 workers of the same unmodified Node app
//! (`tests/fixtures/plain_app.js`) it measures the wall time of a rolling
//! reload (herd: `Handle::reload()` until the report; PM2: `pm2 reload`
//! until the command returns) and counts the requests that failed while a
//! keep-alive load ran through three reloads. Times are medians of those
//! three reloads; compare the two columns of one run, not runs across
//! machines.
//!
//! A second table runs, at 2 workers, the patterns real apps use (the test
//! apps in tests/fixtures/apps, with `npm ci` run there): Express with the
//! production guide's stop handler (under PM2 it handles SIGINT, PM2's stop
//! signal) and PM2's wait_ready (`--wait-ready` for both).

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{free_port, get, Load};

const RELOADS: usize = 3;
const LOAD_CONNECTIONS: usize = 4;
const WORKER_COUNTS: [usize; 3] = [2, 4, 8];
/// How long a freshly started cluster gets to answer.
const START_WAIT: Duration = Duration::from_secs(30);

struct Row {
    median: Duration,
    failed: usize,
    ok: u64,
}

/// One app and how each side runs it.
struct Case {
    name: &'static str,
    app: &'static str,
    wait_ready: bool,
    /// The signal the app handles under PM2 (its default stop signal).
    pm2_env: &'static [(&'static str, &'static str)],
}

const PLAIN: Case = Case {
    name: "plain http app",
    app: "tests/fixtures/plain_app.js",
    wait_ready: false,
    pm2_env: &[],
};

const PATTERNS: [Case; 2] = [
    Case {
        name: "Express, own stop handler",
        app: "tests/fixtures/apps/express_stop_handler.js",
        wait_ready: false,
        pm2_env: &[("APP_STOP_SIGNAL", "SIGINT")],
    },
    Case {
        name: "wait_ready (1.5 s async init)",
        app: "tests/fixtures/apps/wait_ready.js",
        wait_ready: true,
        pm2_env: &[],
    },
];

fn app(case: &Case) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(case.app)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn wait_serving(addr: SocketAddr) {
    let deadline = Instant::now() + START_WAIT;
    while get(addr, "/").is_err() {
        assert!(Instant::now() < deadline, "nothing answers on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn herd(case: &Case, workers: usize) -> Row {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let cluster = herd::Cluster::builder()
            .command("node")
            .arg(app(case))
            .wait_ready(case.wait_ready)
            .start_timeout(Duration::from_secs(10))
            .workers(workers)
            .listen("127.0.0.1:0".parse().unwrap())
            .handle_signals(false)
            .log_events(false)
            .forward_output(false)
            .build()
            .expect("build the herd cluster");
        let addr = cluster.local_addrs()[0];
        let handle = cluster.handle();
        let run = tokio::spawn(cluster.run());
        tokio::task::spawn_blocking(move || wait_serving(addr))
            .await
            .unwrap();
        // Every slot ready, not just one.
        tokio::time::timeout(START_WAIT, async {
            while handle
                .workers()
                .iter()
                .any(|w| w.state != herd::WorkerState::Ready)
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("every worker ready");
        let load = Load::start(addr, LOAD_CONNECTIONS, true);
        let mut times = Vec::new();
        for _ in 0..RELOADS {
            let t = Instant::now();
            let report = handle.reload().await.expect("reload");
            assert!(report.is_complete(), "{report}");
            times.push(t.elapsed());
        }
        // Let the last predecessors drain under load.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let stats = tokio::task::spawn_blocking(move || load.finish())
            .await
            .unwrap();
        handle.shutdown().await.unwrap();
        run.await.unwrap().unwrap();
        Row {
            median: median(times),
            failed: stats.errors.len(),
            ok: stats.ok,
        }
    })
}

fn pm2_binary() -> Option<PathBuf> {
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join("node_modules/.bin/pm2");
    if local.exists() {
        return Some(local);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("pm2"))
            .find(|p| p.exists())
    })
}

fn pm2(bin: &Path, case: &Case, workers: usize) -> Row {
    let home = std::env::temp_dir().join(format!("herd-bench-pm2-{}", std::process::id()));
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(bin)
            .args(args)
            .env("PM2_HOME", &home)
            .env("PORT", port.to_string())
            .envs(case.pm2_env.iter().copied())
            .output()
            .expect("run pm2");
        assert!(
            out.status.success(),
            "pm2 {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let app = app(case);
    let n = workers.to_string();
    let mut start = vec![
        "start",
        app.to_str().unwrap(),
        "-i",
        &n,
        "--name",
        "herd-bench",
    ];
    if case.wait_ready {
        start.extend(["--wait-ready", "--listen-timeout", "10000"]);
    }
    run(&start);
    wait_serving(addr);
    // PM2 starts its cluster workers one after the other.
    std::thread::sleep(Duration::from_secs(2));
    let load = Load::start(addr, LOAD_CONNECTIONS, true);
    let mut times = Vec::new();
    for _ in 0..RELOADS {
        let t = Instant::now();
        run(&["reload", "herd-bench"]);
        times.push(t.elapsed());
    }
    std::thread::sleep(Duration::from_millis(500));
    let stats = load.finish();
    run(&["kill"]);
    let _ = std::fs::remove_dir_all(&home);
    Row {
        median: median(times),
        failed: stats.errors.len(),
        ok: stats.ok,
    }
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` must not run this.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let pm2_bin = pm2_binary();
    println!(
        "rolling reload of {} Node workers, {RELOADS} reloads under {LOAD_CONNECTIONS} keep-alive connections",
        WORKER_COUNTS.map(|n| n.to_string()).join("/")
    );
    println!("| workers | herd reload | herd failed / ok | PM2 reload | PM2 failed / ok |");
    println!("|---|---|---|---|---|");
    for n in WORKER_COUNTS {
        let h = herd(&PLAIN, n);
        let p = pm2_bin.as_deref().map(|b| pm2(b, &PLAIN, n));
        let pm2_cols = match p {
            Some(p) => format!("{} ms | {} / {}", p.median.as_millis(), p.failed, p.ok),
            None => "not installed | -".into(),
        };
        println!(
            "| {n} | {} ms | {} / {} | {pm2_cols} |",
            h.median.as_millis(),
            h.failed,
            h.ok
        );
    }
    println!();
    println!("patterns of real apps, 2 workers, {RELOADS} reloads under {LOAD_CONNECTIONS} keep-alive connections");
    println!("| app | herd reload | herd failed / ok | PM2 reload | PM2 failed / ok |");
    println!("|---|---|---|---|---|");
    for case in &PATTERNS {
        let h = herd(case, 2);
        let p = pm2_bin.as_deref().map(|b| pm2(b, case, 2));
        let pm2_cols = match p {
            Some(p) => format!("{} ms | {} / {}", p.median.as_millis(), p.failed, p.ok),
            None => "not installed | -".into(),
        };
        println!(
            "| {} | {} ms | {} / {} | {pm2_cols} |",
            case.name,
            h.median.as_millis(),
            h.failed,
            h.ok
        );
    }
    if pm2_bin.is_none() {
        println!("(npm install --no-save pm2 to compare with PM2)");
    }
}
