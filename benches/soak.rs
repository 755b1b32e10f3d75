//! A chaos soak: the real master and a real Express + ws app under mixed
//! load for minutes, with a seeded random schedule of faults, in each
//! balance mode.
//!
//! ```text
//! cargo bench --bench soak                           # 60 s per mode, a new seed
//! cargo bench --bench soak -- --seconds 600 --seed 42 --mode http
//! ```
//!
//! The load, all at once: kept-alive and fresh GETs whose answers must be
//! their own (`/echo/<id>`), long requests, uploads, Server-Sent Events
//! streams and WebSockets (tests/fixtures/apps/soak_app.js, Express and
//! ws as their docs write them).
//!
//! The faults: SIGKILL of a worker and of a worker's child, a rolling
//! reload by SIGHUP, a reload by herdctl while another may run, a scale
//! up or down by herdctl, a control client that sends garbage or connects
//! and stays silent, a broken release in the middle of a reload (new
//! workers exit at start for a moment), a worker that grows past
//! `--max-memory` (recycled), a worker that hangs for seconds; in http
//! mode a worker that writes stray responses, and each worker is recycled
//! after 20,000 requests; in reuseport mode a worker that shuts the
//! listening socket down, and upgrades of the master in place (SIGUSR2).
//! The seed is printed; the same seed replays the same schedule of faults
//! (what the machine's timing makes of it may differ).
//!
//! A failure is explained by a kill when a SIGKILL (the soak's, or the
//! master's at a drain timeout) came less than 2 s before it, and by a
//! listener shut down likewise: the soak does not know which worker held
//! the request. In http mode a GET is never explained: the master sends
//! it again.
//!
//! For each mode it prints a table: per kind of client what was sent,
//! what failed and what explains it, streams opened and those the server
//! ended properly (close frame, last chunk); the faults injected; answers
//! that were not to their own request; processes, cgroups, client
//! sockets and zombies left behind; the master's memory and fds at the
//! start, their peak, and at the end of the load (back to the workers of
//! the start: its fds must be those of the start, its memory within 10 %); whether every reload
//! that started finished; and what contradicts itself (a slot replaced
//! from a pid that was not its worker, two slots with one pid, a worker
//! still counted as open once every client has left). Anything
//! unexplained, left behind, crossed or contradictory fails the run,
//! naming the seed.

#[path = "soak/clients.rs"]
mod clients;
#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use clients::{Clients, Kind, Tally};
use common::{
    controlled, fd_count, fixture, herdctl, live_pids_in, of_kind, pid_field, wait_dead, Master,
};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Workers at the start; scaling stays between one and [`MAX_WORKERS`].
const WORKERS: usize = 2;
const MAX_WORKERS: usize = 4;
/// How long after a SIGKILL (or a listener shut down) a failure is still
/// its doing, where the worker that held it is not known.
const FAULT_WINDOW: Duration = Duration::from_secs(2);
/// The master's memory at the end of the load may exceed its start by
/// this much (percent).
const RSS_GROWTH_LIMIT: u64 = 10;

/// A small, seeded generator (xorshift64*): the same seed, the same run.
pub struct Rng(pub u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    Kill,
    /// SIGKILL of a worker's child (the app's helper).
    KillChild,
    Reload,
    HerdctlReload,
    Scale,
    /// A control client that sends garbage, or connects and says nothing.
    BadControlClient,
    /// A broken release in the middle of a reload: new workers exit at
    /// start for a moment while a reload runs.
    BrokenRelease,
    /// A worker grows past `--max-memory` and is recycled.
    Leak,
    /// A worker blocks for seconds.
    Hang,
    /// http mode: a worker writes a response nobody asked for on a
    /// connection the master pools.
    Stray,
    /// reuseport mode: a worker shuts the listening socket down.
    ShutListener,
    /// reuseport mode: the master replaces itself in place (SIGUSR2).
    Upgrade,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::KillChild => "kill child",
            Fault::Reload => "SIGHUP",
            Fault::HerdctlReload => "herdctl reload",
            Fault::Scale => "scale",
            Fault::BadControlClient => "bad control client",
            Fault::BrokenRelease => "broken release",
            Fault::Leak => "leak",
            Fault::Hang => "hang",
            Fault::Stray => "stray response",
            Fault::ShutListener => "listener shut down",
            Fault::Upgrade => "upgrade",
        }
    }

    /// The next fault, by weight, among those of `mode`.
    fn pick(rng: &mut Rng, mode: &str) -> Fault {
        match rng.below(20) {
            0..=2 => Fault::Kill,
            3..=5 => Fault::KillChild,
            6..=7 => Fault::Reload,
            8..=9 => Fault::HerdctlReload,
            10..=11 => Fault::Scale,
            12 => Fault::BadControlClient,
            13 => Fault::BrokenRelease,
            14 => Fault::Leak,
            15 => Fault::Hang,
            16 if mode == "http" => Fault::Stray,
            17 if mode == "reuseport" => Fault::ShutListener,
            18 if mode == "reuseport" => Fault::Upgrade,
            16 | 19 => Fault::Kill,
            _ => Fault::Reload,
        }
    }
}

/// What one kind of client saw, with its failures sorted by cause.
#[derive(Default)]
struct ClientRow {
    tally: Tally,
    by_kill: usize,
    by_listener: usize,
    unexplained: Vec<String>,
}

/// What one mode's run saw.
#[derive(Default)]
struct Report {
    faults: BTreeMap<Fault, u32>,
    clients: Vec<(Kind, ClientRow)>,
    /// Answers that were not to the request sent.
    crossed: Vec<String>,
    /// Worker processes and their children alive after the master's stop.
    left_behind: usize,
    /// Children of workers that outlived their worker, at the end of the
    /// load.
    orphans: usize,
    /// Cgroups of the cluster left after the stop (None: no cgroup v2).
    cgroups_left: Option<usize>,
    /// The master's connections from clients still open once every
    /// client has left.
    client_sockets: usize,
    rss_kb: (u64, u64, u64),
    anon_kb: (u64, u64, u64),
    fds: (usize, usize, usize),
    /// The master's fds by kind at the start and the end.
    fd_kinds: (BTreeMap<String, usize>, BTreeMap<String, usize>),
    /// The master's sockets at the start and the end.
    sockets: (Vec<String>, Vec<String>),
    upgrades: usize,
    reloads_started: usize,
    reloads_finished: usize,
    memory_recycles: usize,
    listener_replacements: usize,
    /// HTTP mode: stray responses the master dropped.
    strays_dropped: usize,
    /// The master's children that exited and were not reaped, at the end
    /// of the load.
    zombies: usize,
    /// HTTP mode: the reasons the master gave for the errors it answered.
    master_errors: Vec<String>,
    /// Events and tables that contradict each other.
    contradictions: Vec<String>,
    /// The master's log, kept for a failed run.
    log: String,
}

impl Report {
    fn unexplained(&self) -> usize {
        self.clients.iter().map(|(_, r)| r.unexplained.len()).sum()
    }

    fn rss_growth_percent(&self) -> u64 {
        let (start, _, end) = self.rss_kb;
        (end.saturating_sub(start) * 100)
            .checked_div(start)
            .unwrap_or(0)
    }

    /// What makes the run fail, if anything.
    fn failures(&self) -> Vec<&'static str> {
        [
            (self.unexplained() > 0, "unexplained failures"),
            (!self.crossed.is_empty(), "answers to another request"),
            (!self.contradictions.is_empty(), "contradictions"),
            (self.left_behind > 0, "processes left behind"),
            (self.orphans > 0, "children that outlived their worker"),
            (self.cgroups_left.unwrap_or(0) > 0, "cgroups left behind"),
            (self.client_sockets > 0, "client connections left open"),
            (self.fds.2 > self.fds.0, "fds left open in the master"),
            (self.zombies > 0, "zombies"),
            (
                self.reloads_finished < self.reloads_started,
                "reloads that never finished",
            ),
            (
                self.rss_growth_percent() > RSS_GROWTH_LIMIT,
                "master memory grew",
            ),
        ]
        .into_iter()
        .filter_map(|(bad, what)| bad.then_some(what))
        .collect()
    }
}

/// One process as /proc tells it: (pid, ppid, state, command name).
struct Proc {
    pid: u32,
    ppid: u32,
    state: char,
    comm: String,
}

fn processes() -> Vec<Proc> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let (left, rest) = stat.rsplit_once(')')?;
            let comm = left.split_once('(')?.1.to_owned();
            let mut rest = rest.split_whitespace();
            let state = rest.next()?.chars().next()?;
            let ppid = rest.next()?.parse().ok()?;
            Some(Proc {
                pid,
                ppid,
                state,
                comm,
            })
        })
        .collect()
}

fn alive(pid: u32) -> bool {
    // A zombie is gone for this purpose: only its parent's reap is left.
    processes().iter().any(|p| p.pid == pid && p.state != 'Z')
}

/// The socket inodes `pid` holds.
fn socket_inodes(pid: Pid) -> HashSet<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            l.to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect()
}

/// `pid`'s sockets as /proc/net tells them: TCP with its local and
/// remote port and state, or unix with its path (a diagnosis of fds left
/// open).
fn socket_lines(pid: Pid) -> Vec<String> {
    let inodes = socket_inodes(pid);
    let mut out = Vec::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6", "/proc/net/unix"] {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        for l in text.lines().skip(1) {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (inode, what) = if file.ends_with("unix") {
                (f.get(6), format!("unix {}", f.get(7).unwrap_or(&"")))
            } else {
                let port = |a: Option<&&str>| {
                    a.and_then(|a| a.rsplit_once(':'))
                        .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
                        .unwrap_or(0)
                };
                (
                    f.get(9),
                    format!(
                        "tcp {} -> {} state {}",
                        port(f.get(1)),
                        port(f.get(2)),
                        f.get(3).unwrap_or(&"")
                    ),
                )
            };
            if inode
                .and_then(|i| i.parse::<u64>().ok())
                .is_some_and(|i| inodes.contains(&i))
            {
                out.push(what);
            }
        }
    }
    out.sort();
    out
}

/// `pid`'s TCP connections on local port `port` (not its listeners).
fn connections_on(pid: Pid, port: u16) -> usize {
    let inodes = socket_inodes(pid);
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|t| t.lines().skip(1).map(str::to_owned).collect::<Vec<_>>())
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let local_port = f
                .get(1)
                .and_then(|a| a.rsplit_once(':'))
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            let listening = f.get(3) == Some(&"0A");
            let inode = f.get(9).and_then(|i| i.parse::<u64>().ok());
            local_port == Some(port) && !listening && inode.is_some_and(|i| inodes.contains(&i))
        })
        .count()
}

/// The directory of the master's cgroup where cgroup v2 is mounted.
fn cgroup_v2_dir(pid: Pid) -> Option<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    if !root.join("cgroup.controllers").exists() {
        return None;
    }
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let rel = own.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(root.join(rel.trim_start_matches('/')))
}

/// The cluster cgroups of master `pid` below `dir`.
fn herd_cgroups(dir: &Path, pid: Pid) -> usize {
    let prefix = format!("herd-{pid}-");
    std::fs::read_dir(dir).map_or(0, |d| {
        d.filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .count()
    })
}

/// What the events and the master's table say that cannot all be true.
fn contradictions(events: &[serde_json::Value], table: &serde_json::Value) -> Vec<String> {
    use std::collections::HashMap;
    let mut out = Vec::new();
    // Each slot's workers alive, as the events tell it: spawned, not yet
    // exited (its current worker, a successor, a predecessor draining).
    let mut live: HashMap<u64, HashSet<u64>> = HashMap::new();
    for e in events {
        let kind = e["event"].as_str().unwrap_or("");
        let (Some(slot), Some(pid)) = (
            e["slot"].as_u64(),
            e["pid"].as_u64().or(e["old_pid"].as_u64()),
        ) else {
            continue;
        };
        match kind {
            "spawned" => {
                live.entry(slot).or_default().insert(pid);
            }
            "exited" => {
                live.entry(slot).or_default().remove(&pid);
            }
            "replaced" => {
                let new = e["new_pid"].as_u64().unwrap_or(0);
                let workers = live.entry(slot).or_default();
                for (what, p) in [("old", pid), ("new", new)] {
                    if !workers.contains(&p) {
                        out.push(format!(
                            "slot {slot}: replaced with {what} pid {p}, not a live worker of the slot ({workers:?})"
                        ));
                    }
                }
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
    status_kb(pid, "VmRSS:")
}

/// The master's own memory: its resident anonymous pages (VmRSS less the
/// pages of its binary and libraries, which the kernel may drop).
fn anon_kb(pid: Pid) -> u64 {
    status_kb(pid, "RssAnon:")
}

fn status_kb(pid: Pid, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// What `pid`'s fds are, by kind (socket, pipe, pidfd, file), counted.
fn fd_kinds(pid: Pid) -> BTreeMap<String, usize> {
    let mut kinds = BTreeMap::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let target = std::fs::read_link(e.path()).map_or("?".into(), |t| t.display().to_string());
        let kind = target.split(':').next().unwrap_or("?").to_owned();
        *kinds.entry(kind).or_default() += 1;
    }
    kinds
}

fn soak(mode: &str, seed: u64, seconds: u64) -> Report {
    // Mixed first, so that neighbouring seeds (8 and 9) differ.
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let workers = WORKERS.to_string();
    // While this file exists the app fails at start: a broken release.
    let broken =
        std::env::temp_dir().join(format!("herd-soak-broken-{}-{mode}", std::process::id()));
    let _ = std::fs::remove_file(&broken);
    let broken_env = format!("SOAK_BROKEN={}", broken.display());
    let mut args = vec![
        "-w",
        &workers,
        "--balance",
        mode,
        "--drain-timeout",
        "5s",
        // A broken release restarts in a loop while it lasts: the slot is
        // not given up on.
        "--crash-limit",
        "0",
        // The leak fault takes a worker past this: it is replaced.
        "--max-memory",
        "150M",
        "--sample-interval",
        "200ms",
        "-e",
        &broken_env,
    ];
    // http mode also recycles each worker after 20,000 requests
    // (gunicorn's max_requests), as a reload does.
    if mode == "http" {
        args.extend(["--max-requests", "20000"]);
    }
    let (m, control) = controlled(
        &args,
        &["node".into(), fixture("tests/fixtures/apps/soak_app.js")],
    );
    m.wait_kind("ready", WORKERS);
    let master = m.pid();
    let cgroups = cgroup_v2_dir(master);
    let mut report = Report {
        fds: (fd_count(master), 0, 0),
        fd_kinds: (fd_kinds(master), BTreeMap::new()),
        sockets: (socket_lines(master), Vec::new()),
        ..Report::default()
    };
    let clients = Clients::start(m.addr, seed);
    clients.wait_answered(50);
    // The master's memory at the start is taken after one reload under
    // load: by then the code of every path it takes is paged in, which
    // is its binary, not memory it holds.
    m.signal(Signal::SIGHUP);
    m.wait_kind("reload_finished", 1);
    std::thread::sleep(Duration::from_millis(500));
    report.rss_kb.0 = rss_kb(master);
    report.anon_kb.0 = anon_kb(master);

    // When a worker was SIGKILLed (by the soak, or by the master at a
    // drain timeout), and when a listener was shut down.
    let mut kills: Vec<Instant> = Vec::new();
    let mut killed: HashSet<u32> = HashSet::new();
    let mut shut: Vec<Instant> = Vec::new();
    let mut master_kills = 0;
    let mut background: Vec<std::thread::JoinHandle<Tally>> = Vec::new();
    let mut helpers: HashSet<u32> = HashSet::new();
    let mut target = WORKERS;
    let mut idle_clients = Vec::new();
    let mut last_tick = Instant::now();
    let began = Instant::now();
    let mut timeline: Vec<(Instant, String)> = Vec::new();
    let mut seen_events = 0;
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200 + rng.below(800)));
        report.rss_kb.1 = report.rss_kb.1.max(rss_kb(master));
        report.anon_kb.1 = report.anon_kb.1.max(anon_kb(master));
        report.fds.1 = report.fds.1.max(fd_count(master));
        let events = m.events();
        let by_master: Vec<u32> = of_kind(&events, "drain_timeout")
            .chain(of_kind(&events, "watchdog_timeout"))
            .map(|e| pid_field(e, "pid"))
            .collect();
        if by_master.len() > master_kills {
            kills.push(last_tick);
            master_kills = by_master.len();
            killed.extend(by_master);
        }
        last_tick = Instant::now();
        let live = live_pids_in(&events);
        let procs = processes();
        let children: Vec<u32> = procs
            .iter()
            .filter(|p| live.contains(&p.ppid) && p.comm == "sleep" && p.state != 'Z')
            .map(|p| p.pid)
            .collect();
        helpers.extend(&children);
        let fault = Fault::pick(&mut rng, mode);
        *report.faults.entry(fault).or_default() += 1;
        // The timeline of a failed run: events as the soak saw them come,
        // and each fault.
        for e in &events[seen_events..] {
            timeline.push((Instant::now(), format!("event {e}")));
        }
        seen_events = events.len();
        timeline.push((
            Instant::now(),
            format!("fault {} (live {live:?})", fault.name()),
        ));
        match fault {
            Fault::Kill => {
                if live.is_empty() {
                    continue;
                }
                let pid = live[rng.below(live.len() as u64) as usize];
                kills.push(Instant::now());
                killed.insert(pid);
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
            Fault::KillChild => {
                if let Some(&pid) = children.get(rng.below(children.len().max(1) as u64) as usize) {
                    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                }
            }
            Fault::Reload => m.signal(Signal::SIGHUP),
            Fault::HerdctlReload => {
                // Not waited for: it may overlap the next faults.
                let control = control.clone();
                background.push(std::thread::spawn(move || {
                    let _ = herdctl(&control, &["reload"]);
                    Tally::default()
                }));
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
            }
            Fault::Upgrade => m.signal(Signal::SIGUSR2),
            Fault::BrokenRelease => {
                let _ = std::fs::write(&broken, "");
                m.signal(Signal::SIGHUP);
                std::thread::sleep(Duration::from_millis(300 + rng.below(700)));
                let _ = std::fs::remove_file(&broken);
            }
            Fault::Leak | Fault::Hang | Fault::ShutListener => {
                let path = match fault {
                    Fault::Leak => "/leak/100".to_owned(),
                    Fault::Hang => format!("/hang/{}", 1000 + rng.below(2000)),
                    _ => {
                        shut.push(Instant::now());
                        "/shutdown-listener".to_owned()
                    }
                };
                let addr = m.addr;
                background.push(std::thread::spawn(move || {
                    // Its answer does not matter (a hang may meet a kill).
                    let _ = common::get(addr, &path);
                    Tally::default()
                }));
            }
            Fault::Stray => {
                let addr = m.addr;
                let n = rng.next();
                background.push(std::thread::spawn(move || stray_client(addr, n)));
            }
        }
    }
    let _ = std::fs::remove_file(&broken);
    let mut strays = Tally::default();
    for h in background {
        let t = h.join().expect("a fault thread panicked");
        strays.crossed.extend(t.crossed);
        strays.failures.extend(t.failures);
    }
    // The load goes on while the last reloads end and the cluster settles.
    m.wait_events("the reloads to end", |e| {
        of_kind(e, "reload_finished").count() >= of_kind(e, "reload_started").count()
    });
    std::thread::sleep(Duration::from_secs(2));
    let tallies = clients.finish();
    drop(idle_clients);
    // Back to the workers of the start (a scale may be refused while a
    // slot drains: tried again), then a moment for what closes after
    // the clients: the master's fds must be those of the start.
    let back = Instant::now() + common::WAIT;
    while herdctl(&control, &["scale", &workers]).0 != 0 && Instant::now() < back {
        std::thread::sleep(Duration::from_millis(500));
    }
    std::thread::sleep(Duration::from_secs(3));
    report.rss_kb.2 = rss_kb(master);
    report.anon_kb.2 = anon_kb(master);
    report.zombies = zombies_of(master);
    report.fds.2 = fd_count(master);
    report.fd_kinds.1 = fd_kinds(master);
    report.sockets.1 = socket_lines(master);
    report.client_sockets = connections_on(master, m.addr.port());
    let events = m.events();
    let live = live_pids_in(&events);
    let procs = processes();
    report.orphans = procs
        .iter()
        .filter(|p| helpers.contains(&p.pid) && p.state != 'Z' && !live.contains(&p.ppid))
        .count();

    let within = |times: &[Instant], t: &Instant| {
        times.iter().any(|k| {
            *k <= *t + Duration::from_millis(200) && t.saturating_duration_since(*k) < FAULT_WINDOW
        })
    };
    let mut all = tallies;
    all.push((Kind::KeepAlive, strays));
    for (kind, tally) in all {
        let mut row = ClientRow::default();
        for f in &tally.failures {
            // In http mode a GET is sent again: nothing explains its loss.
            let excusable = mode != "http" || !f.idempotent;
            // Where the worker that held it is known, only its kill
            // explains the failure; otherwise a kill just before it.
            let by_kill = match f.pid {
                Some(pid) => killed.contains(&pid),
                None => within(&kills, &f.at),
            };
            if excusable && by_kill {
                row.by_kill += 1;
            } else if excusable && f.pid.is_none() && within(&shut, &f.at) {
                row.by_listener += 1;
            } else {
                // What the events say of its worker, for the diagnosis.
                let story: Vec<&str> = f.pid.map_or(Vec::new(), |pid| {
                    events
                        .iter()
                        .filter(|e| {
                            e["pid"].as_u64() == Some(u64::from(pid))
                                || e["old_pid"].as_u64() == Some(u64::from(pid))
                        })
                        .filter_map(|e| e["event"].as_str())
                        .collect()
                });
                row.unexplained.push(format!(
                    "{}: {} (pid {:?}: {story:?})",
                    kind.name(),
                    f.what,
                    f.pid
                ));
                timeline.push((
                    f.at,
                    format!("FAILED {}: {} (pid {:?})", kind.name(), f.what, f.pid),
                ));
            }
        }
        report.crossed.extend(tally.crossed.iter().cloned());
        row.tally = tally;
        match report.clients.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, r)) => {
                r.by_kill += row.by_kill;
                r.by_listener += row.by_listener;
                r.unexplained.extend(row.unexplained);
                r.tally.ok += row.tally.ok;
                r.tally.failures.extend(row.tally.failures);
            }
            None => report.clients.push((kind, row)),
        }
    }
    // What the master said of the errors it answered itself (HTTP mode).
    report.master_errors = events
        .iter()
        .filter(|e| e["notice"] == "http_error")
        .filter_map(|e| e["message"].as_str().map(str::to_owned))
        .collect();
    report.reloads_started = of_kind(&events, "reload_started").count();
    report.reloads_finished = of_kind(&events, "reload_finished").count();
    report.upgrades = of_kind(&events, "upgraded").count();
    report.memory_recycles = of_kind(&events, "memory_limit").count();
    report.listener_replacements = of_kind(&events, "listener_replaced").count();
    report.strays_dropped = events
        .iter()
        .filter(|e| e["notice"] == "worker_protocol_error")
        .count();
    let (_, table, _) = herdctl(&control, &["ls", "--json"]);
    let table: serde_json::Value = serde_json::from_str(&table).unwrap_or_default();
    report.contradictions = contradictions(&events, &table);
    let spawned = m.spawned_pids();
    timeline.sort_by_key(|(at, _)| *at);
    let lines: Vec<String> = timeline
        .iter()
        .map(|(at, what)| {
            format!(
                "{:8.3} {what}",
                at.saturating_duration_since(began).as_secs_f64()
            )
        })
        .collect();
    report.log = format!(
        "{}\n--- the soak's timeline (s from the start of the load)\n{}\n",
        m.log(),
        lines.join("\n")
    );
    finish(m);
    report.left_behind = spawned
        .iter()
        .chain(&helpers)
        .filter(|&&p| alive(p))
        .count();
    report.cgroups_left = cgroups.map(|dir| herd_cgroups(&dir, master));
    let _ = std::fs::remove_dir_all(control.parent().unwrap_or(&control));
    report
}

/// Five requests to `/stray/<id>` on one kept-alive connection: the
/// worker writes a second response after each, which must reach nobody.
fn stray_client(addr: std::net::SocketAddr, n: u64) -> Tally {
    let mut t = Tally::default();
    let mut conn = None;
    for i in 0..5 {
        let tag = format!("s{n}-{i}");
        let request = format!("GET /stray/{tag} HTTP/1.1\r\nHost: soak\r\n\r\n");
        match common::keep_alive_request(addr, &mut conn, request.as_bytes()) {
            Ok(body) if body.starts_with(&format!("{tag} ")) => t.ok += 1,
            Ok(body) => t.crossed.push(format!("/stray/{tag} answered {body:?}")),
            Err(e) => t.failures.push(clients::Failure {
                what: e,
                at: Instant::now(),
                idempotent: true,
                pid: None,
            }),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    t
}

/// Children of `pid` that exited and were not reaped.
fn zombies_of(pid: Pid) -> usize {
    processes()
        .iter()
        .filter(|p| p.state == 'Z' && p.ppid == pid.as_raw() as u32)
        .count()
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

fn print(mode: &str, seed: u64, seconds: u64, r: &Report) {
    println!();
    println!("### {mode} (seed {seed}, {seconds} s)");
    println!();
    println!("| client | ok | failed | explained by a kill | by a listener shut down | unexplained | streams | ended by the server |");
    println!("|---|---|---|---|---|---|---|---|");
    for (kind, row) in &r.clients {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            kind.name(),
            row.tally.ok,
            row.tally.failures.len(),
            row.by_kill,
            row.by_listener,
            row.unexplained.len(),
            row.tally.streams,
            row.tally.ended_by_server,
        );
    }
    let faults: Vec<String> = r
        .faults
        .iter()
        .map(|(f, n)| format!("{} {n}", f.name()))
        .collect();
    println!();
    println!("| what | seen |");
    println!("|---|---|");
    println!("| faults | {} |", faults.join(", "));
    println!(
        "| reloads started / finished | {} / {} |",
        r.reloads_started, r.reloads_finished
    );
    println!(
        "| upgrades, memory recycles, listeners replaced, strays dropped | {}, {}, {}, {} |",
        r.upgrades, r.memory_recycles, r.listener_replacements, r.strays_dropped
    );
    println!("| answers not to their own request | {} |", r.crossed.len());
    println!(
        "| left behind: processes, orphaned children, zombies, cgroups, client sockets | {}, {}, {}, {}, {} |",
        r.left_behind,
        r.orphans,
        r.zombies,
        r.cgroups_left.map_or("no cgroup v2".to_owned(), |n| n.to_string()),
        r.client_sockets
    );
    println!(
        "| master RSS KB start / peak / end | {} / {} / {} (+{} %) |",
        r.rss_kb.0,
        r.rss_kb.1,
        r.rss_kb.2,
        r.rss_growth_percent()
    );
    println!(
        "| of which its own (RssAnon) KB start / peak / end | {} / {} / {} |",
        r.anon_kb.0, r.anon_kb.1, r.anon_kb.2
    );
    println!(
        "| master fds start / peak / end | {} / {} / {} |",
        r.fds.0, r.fds.1, r.fds.2
    );
    println!("| contradictions | {} |", r.contradictions.len());
    let unexplained: Vec<&String> = r.clients.iter().flat_map(|(_, c)| &c.unexplained).collect();
    if !unexplained.is_empty() {
        println!(
            "  {mode}: unexplained failures, first: {:?}",
            &unexplained[..unexplained.len().min(5)]
        );
        if !r.master_errors.is_empty() {
            println!(
                "  {mode}: the master said: {:?}",
                &r.master_errors[..r.master_errors.len().min(5)]
            );
        }
    }
    if r.fds.2 > r.fds.0 {
        println!(
            "  {mode}: the master's fds at the start {:?}, at the end {:?}",
            r.fd_kinds.0, r.fd_kinds.1
        );
        println!(
            "  {mode}: its sockets at the start {:?}, at the end {:?}",
            r.sockets.0, r.sockets.1
        );
    }
    if !r.crossed.is_empty() {
        println!(
            "  {mode}: crossed answers, first: {:?}",
            &r.crossed[..r.crossed.len().min(5)]
        );
    }
    if !r.contradictions.is_empty() {
        println!(
            "  {mode}: contradictions, first: {:?}",
            &r.contradictions[..r.contradictions.len().min(5)]
        );
    }
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
    let mut failed = Vec::new();
    for mode in &modes {
        let r = soak(mode, seed, seconds);
        print(mode, seed, seconds, &r);
        let why = r.failures();
        if !why.is_empty() {
            let log = std::env::temp_dir().join(format!("herd-soak-{seed}-{mode}.log"));
            let _ = std::fs::write(&log, &r.log);
            println!(
                "  {mode}: FAILED: {} (the master's log: {})",
                why.join(", "),
                log.display()
            );
            failed.push(mode.clone());
        }
    }
    if !failed.is_empty() {
        println!(
            "soak FAILED in {} (seed {seed}; replay: --seed {seed})",
            failed.join(", ")
        );
        std::process::exit(1);
    }
}
