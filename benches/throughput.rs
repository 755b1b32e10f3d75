//! HTTP throughput: herd's balance modes against Node's own `cluster`
//! module, PM2 and HAProxy, side by side on this machine.
//!
//! ```text
//! apt-get install wrk haproxy      # wrk is required, haproxy optional
//! npm install --no-save pm2        # optional
//! cargo bench --bench throughput
//! ```
//!
//! Every setup serves `examples/node/server.js` with the same number of
//! workers. The setups take turns (round after round, so that a noisy
//! neighbour hits all of them alike), each measured with wrk for a few
//! seconds with keep-alive and with a fresh connection per request. The
//! table shows median requests per second and the ratio to Node's
//! `cluster` module. Compare ratios within one run, not numbers across
//! machines.
//!
//! `cargo bench --bench throughput -- attacks` measures instead, for
//! herd's HTTP mode, HAProxy and nginx: the CPU that slow request heads
//! cost the front, and its memory before, during and after a burst of
//! clients.

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::free_port;

const WORKERS: usize = 2;
const ROUNDS: usize = 5;
const SECONDS: u32 = 4;
const CONNECTIONS: u32 = 32;
const START_WAIT: Duration = Duration::from_secs(30);

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn which(name: &str) -> Option<PathBuf> {
    let local = root().join("node_modules/.bin").join(name);
    if local.exists() {
        return Some(local);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.exists())
    })
}

/// A running setup; everything it started dies with it.
struct Running {
    children: Vec<Child>,
    cleanup: Option<Box<dyn FnOnce()>>,
    addr: SocketAddr,
    /// The process that holds the clients' connections (the master, the
    /// proxy), whose memory per idle client is reported; none when the
    /// workers hold them.
    front: Option<u32>,
}

impl Drop for Running {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        std::thread::sleep(Duration::from_millis(300));
        for c in &mut self.children {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = c.wait();
        }
        if let Some(f) = self.cleanup.take() {
            f();
        }
    }
}

fn spawn(cmd: &mut Command) -> Child {
    use std::os::unix::process::CommandExt;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

fn wait_serving(addr: SocketAddr) {
    let deadline = Instant::now() + START_WAIT;
    loop {
        if let Ok(mut s) = std::net::TcpStream::connect(addr) {
            use std::io::{Read, Write};
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n");
            let mut out = String::new();
            if s.read_to_string(&mut out).is_ok() && out.starts_with("HTTP/1.1 200") {
                // Every worker up, not just the first.
                std::thread::sleep(Duration::from_millis(500));
                return;
            }
        }
        assert!(Instant::now() < deadline, "nothing answers on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn server_js() -> String {
    root().join("examples/node/server.js").display().to_string()
}

fn herd(mode: &'static str) -> impl Fn() -> Running {
    herd_with(mode, &[])
}

fn herd_with(mode: &'static str, extra: &'static [&'static str]) -> impl Fn() -> Running {
    move || {
        let mut running = serving_on(|port| {
            let mut cmd = Command::new(root().join("target/release/examples/cluster"));
            cmd.args([
                "-w",
                &WORKERS.to_string(),
                "-l",
                &format!("127.0.0.1:{port}"),
            ])
            .args(["--balance", mode])
            .args(extra)
            .args(["node", &server_js()]);
            cmd
        });
        if mode == "proxy" || mode == "http" {
            running.front = Some(running.children[0].id());
        }
        running
    }
}

/// Starts the command `make(port)` builds on a free port and waits until
/// it answers there.
fn serving_on(make: impl FnOnce(u16) -> Command) -> Running {
    let port = free_port();
    let child = spawn(&mut make(port));
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_serving(addr);
    Running {
        children: vec![child],
        cleanup: None,
        addr,
        front: None,
    }
}

fn node_cluster() -> Running {
    serving_on(|port| {
        let mut cmd = Command::new("node");
        cmd.arg(root().join("examples/node/cluster_baseline.js"))
            .env("WORKERS", WORKERS.to_string())
            .env("PORT", port.to_string());
        cmd
    })
}

fn single_worker() -> Running {
    serving_on(|port| {
        let mut cmd = Command::new("node");
        cmd.arg(server_js()).env("PORT", port.to_string());
        cmd
    })
}

fn pm2(bin: PathBuf) -> impl Fn() -> Running {
    move || {
        let home = std::env::temp_dir().join(format!("herd-tp-pm2-{}", std::process::id()));
        let port = free_port();
        let status = Command::new(&bin)
            .args([
                "start",
                &server_js(),
                "-i",
                &WORKERS.to_string(),
                "--name",
                "tp",
            ])
            .env("PM2_HOME", &home)
            .env("PORT", port.to_string())
            .stdout(Stdio::null())
            .status()
            .expect("pm2 start");
        assert!(status.success());
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        wait_serving(addr);
        let bin = bin.clone();
        Running {
            children: vec![],
            cleanup: Some(Box::new(move || {
                let _ = Command::new(&bin)
                    .arg("kill")
                    .env("PM2_HOME", &home)
                    .stdout(Stdio::null())
                    .status();
                let _ = std::fs::remove_dir_all(&home);
            })),
            addr,
            front: None,
        }
    }
}

/// `WORKERS` single Node servers on ports of their own: the children and
/// the ports.
fn node_backends() -> (Vec<Child>, Vec<u16>) {
    let mut children = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..WORKERS {
        let port = free_port();
        children.push(spawn(
            Command::new("node")
                .arg(server_js())
                .env("PORT", port.to_string()),
        ));
        wait_serving(SocketAddr::from(([127, 0, 0, 1], port)));
        ports.push(port);
    }
    (children, ports)
}

/// HAProxy in front of single Node servers: `mode tcp`, or `mode http`
/// with its connection reuse towards the servers.
fn haproxy(bin: PathBuf, http: bool) -> impl Fn() -> Running {
    move || {
        let (mut children, ports) = node_backends();
        let servers: String = ports
            .iter()
            .enumerate()
            .map(|(i, port)| format!("    server w{i} 127.0.0.1:{port}\n"))
            .collect();
        let mode = if http {
            "http\n    http-reuse always\n    option http-keep-alive"
        } else {
            "tcp"
        };
        let port = free_port();
        let cfg = std::env::temp_dir().join(format!("herd-tp-haproxy-{}.cfg", std::process::id()));
        std::fs::write(
            &cfg,
            format!(
                "global\n    maxconn 4096\ndefaults\n    mode {mode}\n    timeout connect 5s\n    \
                 timeout client 30s\n    timeout server 30s\nfrontend f\n    bind 127.0.0.1:{port}\n    \
                 default_backend b\nbackend b\n    balance roundrobin\n{servers}"
            ),
        )
        .unwrap();
        children.push(spawn(Command::new(&bin).args(["-db", "-f"]).arg(&cfg)));
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        wait_serving(addr);
        Running {
            front: children.last().map(Child::id),
            children,
            cleanup: Some(Box::new(move || {
                let _ = std::fs::remove_file(&cfg);
            })),
            addr,
        }
    }
}

/// nginx in front of single Node servers, `proxy_pass` to an upstream with
/// a `keepalive` pool.
fn nginx(bin: PathBuf) -> impl Fn() -> Running {
    move || {
        let (mut children, ports) = node_backends();
        let servers: String = ports
            .iter()
            .map(|port| format!("server 127.0.0.1:{port}; "))
            .collect();
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("herd-tp-nginx-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("nginx.conf");
        std::fs::write(
            &cfg,
            format!(
                "daemon off; worker_processes auto; pid {dir}/nginx.pid; error_log {dir}/error.log;\n\
                 events {{ worker_connections 4096; }}\n\
                 http {{ access_log off; client_body_temp_path {dir}; proxy_temp_path {dir};\n\
                 upstream b {{ {servers}keepalive 64; }}\n\
                 server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://b; \
                 proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }} }}\n",
                dir = dir.display()
            ),
        )
        .unwrap();
        children.push(spawn(
            Command::new(&bin).arg("-p").arg(&dir).arg("-c").arg(&cfg),
        ));
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        wait_serving(addr);
        Running {
            front: children.last().map(Child::id),
            children,
            cleanup: Some(Box::new(move || {
                let _ = std::fs::remove_dir_all(&dir);
            })),
            addr,
        }
    }
}

/// What wrk measured: requests per second (0 when it failed) and the
/// 99th percentile latency in milliseconds.
#[derive(Debug, Clone, Copy)]
struct Measured {
    rps: f64,
    p99_ms: f64,
}

fn wrk(addr: SocketAddr, keep_alive: bool) -> Measured {
    let mut cmd = Command::new("wrk");
    cmd.args([
        "-t",
        "1",
        "-c",
        &CONNECTIONS.to_string(),
        "-d",
        &format!("{SECONDS}s"),
        "--latency",
    ]);
    if !keep_alive {
        cmd.args(["-H", "Connection: close"]);
    }
    cmd.arg(format!("http://{addr}{}", path()));
    let out = cmd.output().expect("run wrk");
    let text = String::from_utf8_lossy(&out.stdout);
    let errors = text
        .lines()
        .any(|l| l.contains("Socket errors") || l.contains("Non-2xx"));
    if errors && keep_alive {
        eprintln!("wrk reported errors for {addr}:\n{text}");
    }
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    let p99_ms = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .and_then(|v| milliseconds(v.trim()))
        .unwrap_or(f64::NAN);
    Measured { rps, p99_ms }
}

/// wrk's "12.34ms", "850.00us", "1.02s" in milliseconds.
fn milliseconds(text: &str) -> Option<f64> {
    let unit_at = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(unit_at);
    let n: f64 = number.parse().ok()?;
    Some(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => return None,
    })
}

/// Idle keep-alive clients opened to measure what each costs.
const IDLE_CLIENTS: usize = 2000;

/// `pid` and its children running the same program (nginx's workers;
/// not herd's Node workers).
fn front_pids(pid: u32) -> Vec<String> {
    let comm = |p: &str| std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
    let me = pid.to_string();
    let name = comm(&me);
    let mut pids: Vec<String> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|p| p.bytes().all(|b| b.is_ascii_digit()))
        .filter(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            // pid (comm) state ppid ...
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1));
            ppid == Some(me.as_str()) && comm(p) == name
        })
        .collect();
    pids.push(me);
    pids
}

/// Resident memory in KB of the front processes of `pid`.
fn front_rss_kb(pid: u32) -> u64 {
    let rss = |p: &str| {
        std::fs::read_to_string(format!("/proc/{p}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    front_pids(pid).iter().map(|p| rss(p)).sum()
}

/// CPU time in clock ticks (user and system) of the front processes of
/// `pid`.
fn front_cpu_ticks(pid: u32) -> u64 {
    let ticks = |p: &str| {
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
        // After "(comm)": state is field 3, utime 14 and stime 15.
        stat.rsplit_once(')').map_or(0, |(_, rest)| {
            rest.split_whitespace()
                .skip(11)
                .take(2)
                .filter_map(|t| t.parse::<u64>().ok())
                .sum()
        })
    };
    front_pids(pid).iter().map(|p| ticks(p)).sum()
}

/// Slow heads at once: each client sends a request head of about
/// `SLOW_HEAD_BYTES` one byte at a time, all clients in turn, a millisecond
/// between turns. Returns the front's CPU ticks meanwhile.
fn slow_heads_cpu(running: &Running) -> Option<u64> {
    use std::io::Write;
    let front = running.front?;
    let pad: String = (0..)
        .map(|i| format!("X-Pad-{i}: {}\r\n", "a".repeat(32)))
        .take(SLOW_HEAD_BYTES / 44)
        .collect();
    let head = format!("GET / HTTP/1.1\r\nHost: b\r\n{pad}\r\n").into_bytes();
    let mut clients: Vec<std::net::TcpStream> = (0..SLOW_CLIENTS)
        .map(|_| std::net::TcpStream::connect(running.addr))
        .collect::<Result<_, _>>()
        .ok()?;
    for c in &clients {
        c.set_nodelay(true).ok()?;
    }
    let before = front_cpu_ticks(front);
    for i in 0..head.len() {
        for c in &mut clients {
            c.write_all(&head[i..=i]).ok()?;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(500));
    Some(front_cpu_ticks(front).saturating_sub(before))
}

/// The front's memory (KB) idle, with `BURST_CLIENTS` keep-alive clients
/// that each made a request, and two seconds after they all left.
fn burst_memory(running: &Running) -> Option<(u64, u64, u64)> {
    use std::io::{Read, Write};
    let front = running.front?;
    let idle = front_rss_kb(front);
    let mut clients = Vec::with_capacity(BURST_CLIENTS);
    for _ in 0..BURST_CLIENTS {
        let mut c = std::net::TcpStream::connect(running.addr).ok()?;
        c.write_all(b"GET / HTTP/1.1\r\nHost: b\r\n\r\n").ok()?;
        clients.push(c);
    }
    for c in &mut clients {
        c.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let _ = c.read(&mut [0u8; 4096]);
    }
    let peak = front_rss_kb(front);
    drop(clients);
    std::thread::sleep(Duration::from_secs(3));
    Some((idle, peak, front_rss_kb(front)))
}

/// `cargo bench --bench throughput -- --bench attacks`: what slow heads
/// cost the front in CPU, and whether a burst's memory comes back, for
/// herd's HTTP mode, nginx and HAProxy side by side.
fn attacks(setups: Vec<Setup>) {
    println!(
        "{SLOW_CLIENTS} clients each sending a {SLOW_HEAD_BYTES}-byte head a byte at a time; \
         {BURST_CLIENTS} keep-alive clients that made a request, then left"
    );
    println!("| setup | CPU ticks for the slow heads | vs nginx | RSS idle KB | with the clients | 3 s after they left | after / idle |");
    println!("|---|---|---|---|---|---|---|");
    let mut nginx_ticks = None;
    let mut rows = Vec::new();
    for (name, start) in &setups {
        let running = start();
        let ticks = slow_heads_cpu(&running);
        drop(running);
        let running = start();
        let memory = burst_memory(&running);
        drop(running);
        if name.starts_with("nginx") {
            nginx_ticks = ticks;
        }
        rows.push((name.clone(), ticks, memory));
    }
    for (name, ticks, memory) in rows {
        let vs = match (ticks, nginx_ticks) {
            (Some(t), Some(n)) if n > 0 => format!("{:.2}", t as f64 / n as f64),
            _ => "-".into(),
        };
        let (idle, peak, after) = memory.unwrap_or((0, 0, 0));
        println!(
            "| {name} | {} | {vs} | {idle} | {peak} | {after} | {:.2} |",
            ticks.map_or("-".into(), |t| t.to_string()),
            after as f64 / idle.max(1) as f64
        );
    }
}

/// Slow-head clients, and the size of each one's head.
const SLOW_CLIENTS: usize = 100;
const SLOW_HEAD_BYTES: usize = 4096;
/// Clients in the burst (within nginx's and HAProxy's connection limits
/// here).
const BURST_CLIENTS: usize = 3000;

/// KB of the front process's memory per idle keep-alive client that has
/// made one request.
fn idle_cost(running: &Running) -> Option<f64> {
    use std::io::{Read, Write};
    let front = running.front?;
    let before = front_rss_kb(front);
    let mut clients = Vec::with_capacity(IDLE_CLIENTS);
    for _ in 0..IDLE_CLIENTS {
        let mut c = std::net::TcpStream::connect(running.addr).ok()?;
        c.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        c.write_all(b"GET / HTTP/1.1\r\nHost: b\r\n\r\n").ok()?;
        let mut answer = [0u8; 4096];
        let n = c.read(&mut answer).ok()?;
        if !answer[..n].starts_with(b"HTTP/1.1 200") {
            return None;
        }
        clients.push(c);
    }
    std::thread::sleep(Duration::from_secs(1));
    let after = front_rss_kb(front);
    Some(after.saturating_sub(before) as f64 / IDLE_CLIENTS as f64)
}

/// The path every request asks for: `HERD_BENCH_PATH`, e.g. `/bytes/65536`
/// for large responses; `/` by default.
fn path() -> String {
    std::env::var("HERD_BENCH_PATH").unwrap_or_else(|_| "/".into())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

type Setup = (String, Box<dyn Fn() -> Running>);

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    if which("wrk").is_none() {
        println!("wrk is not installed (apt-get install wrk): nothing measured");
        return;
    }
    let built = Command::new(env!("CARGO"))
        .args(["build", "--release", "--example", "cluster"])
        .current_dir(root())
        .status()
        .expect("cargo build");
    assert!(built.success(), "building the cluster example failed");

    let mut setups: Vec<Setup> = vec![
        ("node cluster module".into(), Box::new(node_cluster)),
        ("herd reuseport".into(), Box::new(herd("reuseport"))),
        ("herd shared".into(), Box::new(herd("shared"))),
        ("herd proxy".into(), Box::new(herd("proxy"))),
        ("herd http".into(), Box::new(herd("http"))),
        (
            "herd proxy (splice)".into(),
            Box::new(herd_with("proxy", &["--proxy-splice"])),
        ),
        ("single node process".into(), Box::new(single_worker)),
    ];
    match which("pm2") {
        Some(bin) => setups.push(("PM2 cluster mode".into(), Box::new(pm2(bin)))),
        None => println!("(PM2 not installed: npm install --no-save pm2 to compare)"),
    }
    match which("haproxy") {
        Some(bin) => {
            setups.push((
                "HAProxy tcp mode".into(),
                Box::new(haproxy(bin.clone(), false)),
            ));
            setups.push(("HAProxy http mode".into(), Box::new(haproxy(bin, true))));
        }
        None => println!("(HAProxy not installed: apt-get install haproxy to compare)"),
    }
    match which("nginx") {
        Some(bin) => setups.push(("nginx proxy_pass".into(), Box::new(nginx(bin)))),
        None => println!("(nginx not installed: apt-get install nginx to compare)"),
    }

    if std::env::args().any(|a| a == "attacks") {
        setups.retain(|(name, _)| {
            ["herd http", "HAProxy http mode", "nginx proxy_pass"].contains(&name.as_str())
        });
        return attacks(setups);
    }
    // HERD_BENCH_ONLY="herd proxy,HAProxy tcp mode" keeps the baseline
    // and the setups named.
    if let Ok(only) = std::env::var("HERD_BENCH_ONLY") {
        let wanted: Vec<&str> = only.split(',').map(str::trim).collect();
        let mut i = 0;
        setups.retain(|(name, _)| {
            i += 1;
            i == 1 || wanted.contains(&name.as_str())
        });
    }
    let mut keep: Vec<Vec<Measured>> = vec![Vec::new(); setups.len()];
    let mut fresh: Vec<Vec<Measured>> = vec![Vec::new(); setups.len()];
    let mut idle: Vec<Option<f64>> = vec![None; setups.len()];
    for round in 0..ROUNDS {
        for (i, (name, start)) in setups.iter().enumerate() {
            let running = start();
            keep[i].push(wrk(running.addr, true));
            fresh[i].push(wrk(running.addr, false));
            eprintln!(
                "round {}: {name}: {:.0} keep-alive, {:.0} fresh req/s",
                round + 1,
                keep[i][round].rps,
                fresh[i][round].rps
            );
            if round == ROUNDS - 1 {
                idle[i] = idle_cost(&running);
            }
        }
    }
    let rps = |v: &[Measured]| median(v.iter().map(|m| m.rps).collect());
    let p99 = |v: &[Measured]| median(v.iter().map(|m| m.p99_ms).collect());
    let base_keep = rps(&keep[0]);
    let base_fresh = rps(&fresh[0]);
    println!(
        "{WORKERS} workers of examples/node/server.js, GET {}, wrk -t1 -c{CONNECTIONS} -d{SECONDS}s, \
         median of {ROUNDS} alternating rounds; memory of the process holding the clients' \
         connections per idle keep-alive client ({IDLE_CLIENTS} of them)",
        path()
    );
    println!(
        "| setup | keep-alive req/s | vs node cluster | p99 ms | fresh connection req/s | \
         vs node cluster | p99 ms | KB per idle client |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (i, (name, _)) in setups.iter().enumerate() {
        let k = rps(&keep[i]);
        let f = rps(&fresh[i]);
        let idle = idle[i].map_or("-".to_string(), |kb| format!("{kb:.1}"));
        println!(
            "| {name} | {k:.0} | {:.2} | {:.2} | {f:.0} | {:.2} | {:.2} | {idle} |",
            k / base_keep,
            p99(&keep[i]),
            f / base_fresh,
            p99(&fresh[i]),
        );
    }
}
