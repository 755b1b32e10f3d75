//! A chaos soak: the real master and real workers under keep-alive and
//! fresh-connection load for minutes, with a seeded random schedule of
//! faults, in each balance mode.
//!
//! ```text
//! cargo bench --bench soak                           # 60 s per mode, a new seed
//! cargo bench --bench soak -- --seconds 600 --seed 42 --mode http
//! ```
//!
//! Faults: SIGKILL of a worker, a rolling reload by SIGHUP, a reload by
//! herdctl while another may run, a scale up or down by herdctl, a control
//! client that sends garbage or connects and stays silent, and in
//! reuseport mode an upgrade of the master in place (SIGUSR2), and a
//! broken release in the middle of a reload (new workers exit at start
//! for a moment); in http mode each worker is also recycled after 20,000
//! requests. The seed is
//! printed; the same seed replays the same schedule of faults (what the
//! machine's timing makes of it may differ).
//!
//! A failure counts as explained by a kill when a SIGKILL came less than
//! 2 s before it: the soak does not know which worker held the request.
//!
//! For each mode it prints what was sent and what failed, and for each
//! failure whether a fault explains it: only a request a SIGKILLed worker
//! already held may fail outside http mode, and in http mode a GET never
//! may. Then what was left behind (worker processes alive after the
//! master's stop, and the master's unreaped children at the end of the
//! load), the master's memory and fds at the start, their peak,
//! and at the end of the load, whether every reload that started
//! finished, and what contradicts itself: a slot replaced from a pid that
//! was not its worker, two slots with one pid, a worker still counted as
//! open once every client has left. Any unexplained failure, process left behind or unfinished
//! reload makes the run fail, naming the seed.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{controlled, hello, herdctl, of_kind, wait_dead, Load, Master};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Workers at the start; scaling stays between one and [`MAX_WORKERS`].
const WORKERS: usize = 2;
const MAX_WORKERS: usize = 4;
/// How long after a SIGKILL a failed request is still that kill's doing.
const KILL_WINDOW: Duration = Duration::from_secs(2);

/// A small, seeded generator (xorshift64*): the same seed, the same run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Kill,
    Reload,
    HerdctlReload,
    Scale,
    /// A control client that sends garbage, or connects and says nothing.
    BadControlClient,
    /// reuseport mode: the master replaces itself in place (SIGUSR2).
    Upgrade,
    /// A broken release in the middle of a reload: new workers exit at
    /// start for a moment while a reload runs (it must abort, and the old
    /// workers serve on).
    BrokenRelease,
}

/// What one mode's run saw.
#[derive(Default)]
struct Report {
    kills: u32,
    reloads: u32,
    scales: u32,
    others: u32,
    upgrades: usize,
    ok: u64,
    failed: usize,
    explained: usize,
    unexplained: Vec<String>,
    left_behind: usize,
    rss_kb: (u64, u64, u64),
    fds: (usize, usize, usize),
    reloads_started: usize,
    reloads_finished: usize,
    /// The master's children that exited and were not reaped, at the end
    /// of the load.
    zombies: usize,
    /// HTTP mode: the reasons the master gave for the errors it answered.
    master_errors: Vec<String>,
    /// Events and tables that contradict each other: a slot replaced
    /// from a pid that was not its worker, two slots with one pid, a
    /// worker counted as open after every client left.
    contradictions: Vec<String>,
}

/// What the events and the master's table say that cannot all be true.
fn contradictions(events: &[serde_json::Value], table: &serde_json::Value) -> Vec<String> {
    use std::collections::HashMap;
    let mut out = Vec::new();
    // Each slot's serving worker, as the events tell it.
    let mut current: HashMap<u64, u64> = HashMap::new();
    for e in events {
        let (Some(slot), kind) = (e["slot"].as_u64(), e["event"].as_str().unwrap_or("")) else {
            continue;
        };
        match kind {
            "ready" => {
                current
                    .entry(slot)
                    .or_insert(e["pid"].as_u64().unwrap_or(0));
            }
            "replaced" => {
                let old = e["old_pid"].as_u64().unwrap_or(0);
                if let Some(&was) = current.get(&slot) {
                    if was != old {
                        out.push(format!(
                            "slot {slot}: replaced pid {old}, but its worker was {was}"
                        ));
                    }
                }
                current.insert(slot, e["new_pid"].as_u64().unwrap_or(0));
            }
            "exited" if current.get(&slot) == e["pid"].as_u64().as_ref() => {
                current.remove(&slot);
            }
            _ => {}
        }
    }
    let workers = table["workers"].as_array().cloned().unwrap_or_default();
    let mut pids: Vec<u64> = workers.iter().filter_map(|w| w["pid"].as_u64()).collect();
    pids.sort_unstable();
    let before = pids.len();
    pids.dedup();
    if pids.len() != before {
        out.push(format!("two slots with one pid: {workers:?}"));
    }
    for p in table["proxied"].as_array().into_iter().flatten() {
        if p["open"].as_u64().unwrap_or(0) > 0 {
            out.push(format!(
                "pid {} still counts {} open after every client left",
                p["pid"], p["open"]
            ));
        }
    }
    out
}

fn rss_kb(pid: Pid) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// Children of `pid` that exited and were not reaped.
fn zombies_of(pid: Pid) -> usize {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| {
            // After the command's closing parenthesis: state, ppid, ...
            let mut rest = stat
                .rsplit_once(')')
                .map_or("", |(_, r)| r)
                .split_whitespace();
            let state = rest.next();
            let ppid = rest.next().and_then(|p| p.parse::<i32>().ok());
            state == Some("Z") && ppid == Some(pid.as_raw())
        })
        .count()
}

fn fd_count(pid: Pid) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

fn soak(mode: &str, seed: u64, seconds: u64) -> Report {
    // Mixed first, so that neighbouring seeds (8 and 9) differ.
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let workers = WORKERS.to_string();
    // http mode also recycles each worker after 20,000 requests
    // (gunicorn's max_requests), as a reload does.
    let recycle: &[&str] = if mode == "http" {
        &["--max-requests", "20000", "--sample-interval", "200ms"]
    } else {
        &[]
    };
    // The workers run hello through a launcher that fails at once while a
    // "broken" file exists: a broken release.
    let broken =
        std::env::temp_dir().join(format!("herd-soak-broken-{}-{mode}", std::process::id()));
    let _ = std::fs::remove_file(&broken);
    let launcher = format!(
        "[ -e '{}' ] && {{ echo 'Error: this release is broken' >&2; exit 1; }}; exec '{}'",
        broken.display(),
        hello()
    );
    let (m, control) = controlled(
        &[
            &[
                "-w",
                &workers,
                "--balance",
                mode,
                "--ready",
                "notify",
                "--drain-timeout",
                "5s",
                // A broken release restarts in a loop while it lasts: the
                // slot is not given up on.
                "--crash-limit",
                "0",
            ][..],
            recycle,
        ]
        .concat(),
        &["sh".into(), "-c".into(), launcher],
    );
    m.wait_kind("ready", WORKERS);
    let master = m.pid();
    let mut report = Report {
        rss_kb: (rss_kb(master), 0, 0),
        fds: (fd_count(master), 0, 0),
        ..Report::default()
    };
    let keep_alive = Load::start(m.addr, 3, true);
    let fresh = Load::start(m.addr, 2, false);
    keep_alive.wait_answered(20);

    let mut kills: Vec<Instant> = Vec::new();
    let mut herdctls: Vec<std::thread::JoinHandle<()>> = Vec::new();
    let mut target = WORKERS;
    let mut idle_clients = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200 + rng.below(800)));
        report.rss_kb.1 = report.rss_kb.1.max(rss_kb(master));
        report.fds.1 = report.fds.1.max(fd_count(master));
        let fault = match rng.below(13) {
            0..=3 => Fault::Kill,
            4..=5 => Fault::Reload,
            6..=7 => Fault::HerdctlReload,
            8..=9 => Fault::Scale,
            10 => Fault::BadControlClient,
            11 => Fault::BrokenRelease,
            // Upgrades in place exist in reuseport mode only.
            _ if mode == "reuseport" => Fault::Upgrade,
            _ => Fault::Reload,
        };
        match fault {
            Fault::Kill => {
                let live = m.live_pids();
                if live.is_empty() {
                    continue;
                }
                let pid = live[rng.below(live.len() as u64) as usize];
                kills.push(Instant::now());
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                report.kills += 1;
            }
            Fault::Reload => {
                m.signal(Signal::SIGHUP);
                report.reloads += 1;
            }
            Fault::HerdctlReload => {
                // Not waited for: it may overlap the next faults.
                let control = control.clone();
                herdctls.push(std::thread::spawn(move || {
                    let _ = herdctl(&control, &["reload"]);
                }));
                report.reloads += 1;
            }
            Fault::Scale => {
                let up = target == 1 || (target < MAX_WORKERS && rng.below(2) == 0);
                let by = if up { "+1" } else { "-1" };
                let (code, _, _) = herdctl(&control, &["scale", by]);
                // Refused while a reload runs or slots drain: that is a
                // conflict of the moment, not a failure.
                if code == 0 {
                    target = if up { target + 1 } else { target - 1 };
                }
                report.scales += 1;
            }
            Fault::BadControlClient => {
                // Garbage, then gone; or connected and silent for a while.
                if let Ok(mut c) = std::os::unix::net::UnixStream::connect(&control) {
                    use std::io::Write;
                    if rng.below(2) == 0 {
                        let _ = c.write_all(b"GARBAGE / HTTP/9\r\n\r\n");
                    } else {
                        idle_clients.push(c);
                    }
                }
                report.others += 1;
            }
            Fault::Upgrade => {
                m.signal(Signal::SIGUSR2);
                report.others += 1;
            }
            Fault::BrokenRelease => {
                let _ = std::fs::write(&broken, "");
                m.signal(Signal::SIGHUP);
                std::thread::sleep(Duration::from_millis(300 + rng.below(700)));
                let _ = std::fs::remove_file(&broken);
                report.reloads += 1;
                report.others += 1;
            }
        }
    }
    let _ = std::fs::remove_file(&broken);
    for h in herdctls {
        let _ = h.join();
    }
    // The load goes on while the last reloads end and the cluster settles.
    m.wait_events("the reloads to end", |e| {
        of_kind(e, "reload_finished").count() >= of_kind(e, "reload_started").count()
    });
    std::thread::sleep(Duration::from_secs(2));
    let ka = keep_alive.finish();
    let fr = fresh.finish();
    std::thread::sleep(Duration::from_secs(1));
    report.rss_kb.2 = rss_kb(master);
    report.zombies = zombies_of(master);
    report.fds.2 = fd_count(master);
    report.ok = ka.ok + fr.ok;

    let explained_by_kill = |t: &Instant| {
        kills.iter().any(|k| {
            *k <= *t + Duration::from_millis(200) && t.saturating_duration_since(*k) < KILL_WINDOW
        })
    };
    for (error, at) in ka
        .errors
        .iter()
        .zip(&ka.error_times)
        .chain(fr.errors.iter().zip(&fr.error_times))
    {
        report.failed += 1;
        if mode != "http" && explained_by_kill(at) {
            report.explained += 1;
        } else {
            report.unexplained.push(error.clone());
        }
    }
    let events = m.events();
    // What the master said of the errors it answered itself (HTTP mode).
    report.master_errors = events
        .iter()
        .filter(|e| e["notice"] == "http_error")
        .filter_map(|e| e["message"].as_str().map(str::to_owned))
        .collect();
    report.reloads_started = of_kind(&events, "reload_started").count();
    report.upgrades = of_kind(&events, "upgraded").count();
    drop(idle_clients);
    report.reloads_finished = of_kind(&events, "reload_finished").count();
    let (_, table, _) = herdctl(&control, &["ls", "--json"]);
    let table: serde_json::Value = serde_json::from_str(&table).unwrap_or_default();
    report.contradictions = contradictions(&events, &table);
    let spawned = m.spawned_pids();
    finish(m);
    report.left_behind = spawned
        .iter()
        .filter(|&&p| Path::new(&format!("/proc/{p}")).exists())
        .count();
    let _ = std::fs::remove_dir_all(control.parent().unwrap_or(&control));
    report
}

/// Stops the master and waits for every worker to be gone (the report
/// then counts what is not).
fn finish(mut m: Master) {
    let pids = m.live_pids();
    m.signal(Signal::SIGTERM);
    m.wait_exit();
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_dead(&pids, "workers after the stop");
    }));
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let seed: u64 = value("--seed")
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    let seconds: u64 = value("--seconds")
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let modes: Vec<String> = match value("--mode") {
        Some(m) => vec![m],
        None => ["reuseport", "proxy", "http"].map(String::from).to_vec(),
    };
    let built = Command::new(env!("CARGO"))
        .args(["build", "--release", "--examples"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("cargo build");
    assert!(built.success(), "building the examples failed");

    println!("soak: seed {seed}, {seconds} s per mode (replay: --seed {seed})");
    println!(
        "| mode | kills | reloads | scales | other faults | upgrades | ok | failed | explained by a kill | unexplained | \
         left behind | zombies | reloads started / finished | contradictions | master RSS KB start / peak / end | \
         master fds start / peak / end |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut failed = false;
    for mode in &modes {
        let r = soak(mode, seed, seconds);
        println!(
            "| {mode} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} | {} | {} / {} / {} | {} / {} / {} |",
            r.kills,
            r.reloads,
            r.scales,
            r.others,
            r.upgrades,
            r.ok,
            r.failed,
            r.explained,
            r.unexplained.len(),
            r.left_behind,
            r.zombies,
            r.reloads_started,
            r.reloads_finished,
            r.contradictions.len(),
            r.rss_kb.0,
            r.rss_kb.1,
            r.rss_kb.2,
            r.fds.0,
            r.fds.1,
            r.fds.2,
        );
        if !r.unexplained.is_empty() && !r.master_errors.is_empty() {
            println!(
                "  {mode}: the master said: {:?}",
                &r.master_errors[..r.master_errors.len().min(5)]
            );
        }
        if !r.unexplained.is_empty() {
            println!(
                "  {mode}: unexplained failures, first: {:?}",
                &r.unexplained[..r.unexplained.len().min(5)]
            );
        }
        if !r.contradictions.is_empty() {
            println!(
                "  {mode}: contradictions, first: {:?}",
                &r.contradictions[..r.contradictions.len().min(5)]
            );
        }
        failed |= !r.unexplained.is_empty()
            || !r.contradictions.is_empty()
            || r.left_behind > 0
            || r.zombies > 0
            || r.reloads_finished < r.reloads_started;
    }
    if failed {
        println!("soak FAILED (seed {seed})");
        std::process::exit(1);
    }
}
