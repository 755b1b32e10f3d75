//! Test harness: runs the `cluster` example as a real master process,
//! captures what it logs, talks HTTP to it, and kills every process it
//! started when the test ends, pass or fail.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

/// Upper bound for anything a test waits for; generous because CI machines
/// are shared and slow, never a performance assertion.
pub const WAIT: Duration = Duration::from_secs(20);
/// Socket timeout for one HTTP exchange.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

pub fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let p = dir.join("examples").join(name);
    assert!(
        p.exists(),
        "{} is missing: run the tests with `cargo test`, which builds the examples \
         (`cargo test --test X` does not: run `cargo build --examples` first)",
        p.display()
    );
    p
}

pub fn hello() -> String {
    example("hello").display().to_string()
}

pub fn fixture(rel: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(rel)
        .display()
        .to_string()
}

pub fn node_server() -> Vec<String> {
    vec!["node".into(), fixture("examples/node/server.js")]
}

pub fn hello_server() -> Vec<String> {
    vec![hello()]
}

/// A running `cluster` example.
pub struct Master {
    pub child: Child,
    log: Arc<Mutex<String>>,
    pub addr: SocketAddr,
    exited: Option<ExitStatus>,
}

fn capture(stream: impl Read + Send + 'static, log: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            let mut l = log.lock().unwrap();
            l.push_str(&line);
            l.push('\n');
        }
    });
}

impl Master {
    /// Starts the master with `args` (options, then the program) and
    /// `--log-format json`, and waits until it says where it listens.
    pub fn start(args: &[String]) -> Master {
        Self::start_json(args, None)
    }

    /// [`Master::start`] with the command adjusted by `tweak`.
    pub fn start_with(args: &[String], tweak: impl FnOnce(&mut Command)) -> Master {
        Self::start_json_with(args, tweak)
    }

    /// Starts the master with `--log-format json` (then `args`), in `dir`
    /// when given, and waits until it says where it listens.
    pub fn start_json(args: &[String], dir: Option<&Path>) -> Master {
        Self::start_json_with(args, |c| {
            if let Some(d) = dir {
                c.current_dir(d);
            }
        })
    }

    /// [`Master::start_json`] with the command adjusted by `tweak`.
    pub fn start_json_with(args: &[String], tweak: impl FnOnce(&mut Command)) -> Master {
        let mut all = s(&["--log-format", "json"]);
        all.extend(args.iter().cloned());
        let mut m = Self::spawn_with(&all, tweak);
        let events = m.wait_events("the listening event", |e| {
            of_kind(e, "listening").count() > 0
        });
        let addr = of_kind(&events, "listening").next().unwrap()["addr"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in the listening event:\n{}", m.log()));
        m.addr = addr;
        m
    }

    /// Every JSON event the master printed so far, in order.
    pub fn events(&self) -> Vec<serde_json::Value> {
        self.log()
            .lines()
            .filter(|l| l.starts_with('{'))
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| e.get("event").is_some())
            .collect()
    }

    /// Waits until `pred` holds for the events so far; panics with the log.
    pub fn wait_events(
        &self,
        what: &str,
        pred: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + WAIT;
        loop {
            let events = self.events();
            if pred(&events) {
                return events;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}; the cluster logged:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the master reported at least `n` events of `kind`.
    pub fn wait_kind(&self, kind: &str, n: usize) -> Vec<serde_json::Value> {
        self.wait_events(&format!("{n} `{kind}` event(s)"), |e| {
            of_kind(e, kind).count() >= n
        })
    }

    /// Waits for the event of `kind` about worker `pid` and returns it.
    pub fn wait_pid_event(&self, kind: &str, pid: u32) -> serde_json::Value {
        let events = self.wait_events(&format!("`{kind}` of pid {pid}"), |e| {
            of_kind(e, kind).any(|e| pid_field(e, "pid") == pid)
        });
        let found = of_kind(&events, kind).find(|e| pid_field(e, "pid") == pid);
        found.unwrap().clone()
    }

    /// Starts the master without waiting for anything (for bad input).
    pub fn spawn(args: &[String]) -> Master {
        Self::spawn_with(args, |_| {})
    }

    fn spawn_with(args: &[String], tweak: impl FnOnce(&mut Command)) -> Master {
        Self::spawn_program(&example("cluster"), args, tweak)
    }

    /// [`Master::start`] of a copy of the cluster example at `binary`.
    pub fn start_binary(binary: &Path, args: &[String]) -> Master {
        let mut all = s(&["--log-format", "json"]);
        all.extend(args.iter().cloned());
        let mut m = Self::spawn_program(binary, &all, |_| {});
        let events = m.wait_events("the listening event", |e| {
            of_kind(e, "listening").count() > 0
        });
        m.addr = of_kind(&events, "listening").next().unwrap()["addr"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .unwrap();
        m
    }

    fn spawn_program(program: &Path, args: &[String], tweak: impl FnOnce(&mut Command)) -> Master {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(program);
        cmd.args(control_args(args))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        tweak(&mut cmd);
        let mut child = cmd.spawn().expect("spawn the cluster example");
        let log = Arc::new(Mutex::new(String::new()));
        capture(child.stdout.take().unwrap(), log.clone());
        capture(child.stderr.take().unwrap(), log.clone());
        Master {
            child,
            log,
            addr: "0.0.0.0:0".parse().unwrap(),
            exited: None,
        }
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until `pred` holds for the whole log; panics with the log.
    pub fn wait_log(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        self.wait_log_for(what, WAIT, pred)
    }

    pub fn wait_log_for(&self, what: &str, limit: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let log = self.log();
            if pred(&log) {
                return log;
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}; the cluster logged:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn count(&self, needle: &str) -> usize {
        self.log().matches(needle).count()
    }

    /// Pids of every worker the master reported spawning, in order.
    pub fn spawned_pids(&self) -> Vec<u32> {
        of_kind(&self.events(), "spawned")
            .map(|e| pid_field(e, "pid"))
            .collect()
    }

    /// Pids of workers that are running now (spawned, not reported exited).
    pub fn live_pids(&self) -> Vec<u32> {
        let events = self.events();
        let exited: Vec<u32> = of_kind(&events, "exited")
            .map(|e| pid_field(e, "pid"))
            .collect();
        of_kind(&events, "spawned")
            .map(|e| pid_field(e, "pid"))
            .filter(|p| !exited.contains(p))
            .collect()
    }

    /// Waits for `n` workers whose start-up line contains `ready_marker`.
    pub fn wait_ready(&self, n: usize, ready_marker: &str) -> Vec<u32> {
        self.wait_log(&format!("{n} workers ready"), |l| {
            l.matches(ready_marker).count() >= n
        });
        self.live_pids()
    }

    pub fn signal(&self, sig: Signal) {
        kill(self.pid(), sig).expect("signal the master");
    }

    /// Waits for the master to exit; panics with the log on timeout.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                self.exited = Some(status);
                // Let the capture threads drain the pipes.
                std::thread::sleep(Duration::from_millis(100));
                return status;
            }
            if Instant::now() > deadline {
                panic!("the master did not exit; it logged:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// GET `path` on a fresh connection.
    pub fn get(&self, path: &str) -> Result<String, String> {
        get(self.addr, path)
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        // Workers first (their groups), then the master; PDEATHSIG would
        // take the workers too, but their own children only die with the
        // group.
        for pid in self.live_pids() {
            let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        let _ = killpg(self.pid(), Signal::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- the cluster logged ----\n{}", self.log());
        }
    }
}

fn connect(addr: SocketAddr) -> Result<TcpStream, String> {
    let target = if addr.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    };
    let s = TcpStream::connect_timeout(&target, IO_TIMEOUT).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    Ok(s)
}

/// One HTTP/1.1 GET on a fresh connection; Ok(body) only for a 200.
pub fn get(addr: SocketAddr, path: &str) -> Result<String, String> {
    let mut s = connect(addr)?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Err(format!("incomplete response: {text:?}"));
    };
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("status: {}", head.lines().next().unwrap_or("")));
    }
    Ok(body.to_owned())
}

/// The pid a worker answered with (`pid=<n> slot=<s>`).
pub fn pid_of(body: &str) -> u32 {
    body.split_whitespace()
        .find_map(|w| w.strip_prefix("pid="))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {body:?}"))
}

pub fn alive(pid: u32) -> bool {
    // A zombie is dead for our purposes; /proc tells the difference.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Waits until every pid is gone; panics naming the survivors.
pub fn wait_dead(pids: &[u32], what: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let alive: Vec<_> = pids.iter().copied().filter(|&p| alive(p)).collect();
        if alive.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            for &p in &alive {
                let _ = killpg(Pid::from_raw(p as i32), Signal::SIGKILL);
            }
            panic!("{what}: still alive: {alive:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Children of `pid` by /proc, with their state letter.
pub fn children(pid: Pid) -> Vec<(u32, char)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(p) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        let Some(rest) = stat.rsplit(')').next() else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.len() > 2 && fields[1] == pid.as_raw().to_string() {
            out.push((p, fields[0].chars().next().unwrap_or('?')));
        }
    }
    out
}

pub fn fd_count(pid: Pid) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The value of `key=value` in a log line; panics naming the line.
pub fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

/// The worker's pid and its child's pid from the stubborn fixture's line.
pub fn stubborn_pids(m: &Master) -> (u32, u32) {
    let log = m.wait_log("the stubborn worker", |l| l.contains("child="));
    let line = log.lines().find(|l| l.contains("child=")).unwrap();
    let pid = |k: &str| field(line, k).parse().unwrap();
    (pid("pid"), pid("child"))
}

/// The events of one kind.
pub fn of_kind<'a>(
    events: &'a [serde_json::Value],
    kind: &'a str,
) -> impl Iterator<Item = &'a serde_json::Value> + 'a {
    events.iter().filter(move |e| e["event"] == kind)
}

/// A pid field of an event; panics naming the event.
pub fn pid_field(event: &serde_json::Value, key: &str) -> u32 {
    event[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no {key} in {event}")) as u32
}

/// Reloads that finished without a failure.
pub fn complete_reloads(events: &[serde_json::Value]) -> usize {
    of_kind(events, "reload_finished")
        .filter(|e| e["failure"].is_null())
        .count()
}

/// Workers that exited with code 0.
pub fn clean_exits(events: &[serde_json::Value]) -> usize {
    of_kind(events, "exited")
        .filter(|e| e["exit"]["code"] == 0)
        .count()
}

/// Reloads that were aborted.
pub fn aborted_reloads(events: &[serde_json::Value]) -> Vec<&serde_json::Value> {
    of_kind(events, "reload_finished")
        .filter(|e| !e["failure"].is_null())
        .collect()
}

/// SIGKILLs a process group when dropped, pass or fail.
pub struct GroupGuard(pub Pid);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        let _ = killpg(self.0, Signal::SIGKILL);
    }
}

/// A master (in a process group of its own) whose one worker floods
/// stdout; its stdout and stderr are pipes for the caller, who may leave
/// them unread.
pub fn flooding_master(extra: &[&str]) -> (Child, GroupGuard) {
    use std::os::unix::process::CommandExt;
    let child = Command::new(example("cluster"))
        .args(control_args(&[]))
        .args(["-w", "1", "-l", "127.0.0.1:0"])
        .args(extra)
        .args(["sh", "-c", "while :; do echo flood flood flood flood; done"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("spawn the cluster example");
    let guard = GroupGuard(Pid::from_raw(child.id() as i32));
    (child, guard)
}

/// Waits for `child` to exit; panics naming `what` at the deadline.
pub fn wait_child(child: &mut Child, what: &str) -> ExitStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        assert!(Instant::now() < deadline, "{what} did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A control socket of its own for each master a test starts (tests run
/// in parallel, and the default path is per program name), unless the
/// test chose one.
pub fn control_args(args: &[String]) -> Vec<String> {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    if args.iter().any(|a| a == "--control" || a == "--no-control") {
        return Vec::new();
    }
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir()
        .join(format!("herd-test-{}-{n}", std::process::id()))
        .join("control.sock");
    vec!["--control".into(), path.display().to_string()]
}

/// Where `program` is on PATH, if it is installed.
pub fn on_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// A loopback port that is free now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

/// A master on a kernel-chosen loopback port: `-l 127.0.0.1:0`, then
/// `extra`, then `program`.
pub fn cmd(extra: &[&str], program: &[String]) -> Vec<String> {
    let mut v = s(&["-l", "127.0.0.1:0"]);
    v.extend(s(extra));
    v.extend(program.iter().cloned());
    v
}

/// Options then program: `args(&["-w", "2"], &program)`.
pub fn args(opts: &[&str], program: &[String]) -> Vec<String> {
    let mut a = s(opts);
    a.extend(program.iter().cloned());
    a
}

/// What a load run saw.
#[derive(Debug, Default)]
pub struct LoadStats {
    pub ok: u64,
    pub errors: Vec<String>,
    pub pids: std::collections::HashSet<u32>,
}

/// A load client inside the test: `concurrency` threads sending `GET /`
/// until stopped, each error, reset and non-200 counted.
pub struct Load {
    stop: Arc<std::sync::atomic::AtomicBool>,
    answered: Arc<std::sync::atomic::AtomicU64>,
    threads: Vec<std::thread::JoinHandle<LoadStats>>,
}

/// The most requests one load thread sends, so that a test that forgets to
/// stop it still ends.
const LOAD_MAX_REQUESTS: u64 = 2_000_000;

impl Load {
    pub fn start(addr: SocketAddr, concurrency: usize, keep_alive: bool) -> Load {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let answered = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let threads = (0..concurrency)
            .map(|_| {
                let stop = stop.clone();
                let answered = answered.clone();
                std::thread::spawn(move || {
                    let mut stats = LoadStats::default();
                    let mut conn: Option<KeepAlive> = None;
                    let mut n = 0;
                    while !stop.load(std::sync::atomic::Ordering::SeqCst) && n < LOAD_MAX_REQUESTS {
                        n += 1;
                        let result = if keep_alive {
                            keep_alive_get(addr, &mut conn)
                        } else {
                            get(addr, "/")
                        };
                        match result {
                            Ok(body) => {
                                stats.ok += 1;
                                answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                stats.pids.insert(pid_of(&body));
                            }
                            Err(e) => stats.errors.push(e),
                        }
                    }
                    stats
                })
            })
            .collect();
        Load {
            stop,
            answered,
            threads,
        }
    }

    /// Waits until `n` requests have been answered so far.
    /// Requests answered so far.
    pub fn answered(&self) -> u64 {
        self.answered.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn wait_answered(&self, n: u64) {
        let deadline = Instant::now() + WAIT;
        while self.answered.load(std::sync::atomic::Ordering::Relaxed) < n {
            assert!(Instant::now() < deadline, "the load got no {n} answers");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the load and asserts that no request failed.
    pub fn finish_without_failures(self) -> LoadStats {
        let stats = self.finish();
        assert!(
            stats.errors.is_empty(),
            "failed requests: {:?}",
            stats.errors
        );
        stats
    }

    pub fn finish(self) -> LoadStats {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut all = LoadStats::default();
        for t in self.threads {
            let s = t.join().expect("load thread");
            all.ok += s.ok;
            all.errors.extend(s.errors);
            all.pids.extend(s.pids);
        }
        all
    }
}

/// A kept-alive connection and what it has buffered.
pub struct KeepAlive {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// One GET on a kept-alive connection (opened if needed); the connection is
/// dropped when the server says `Connection: close`.
pub fn keep_alive_get(addr: SocketAddr, conn: &mut Option<KeepAlive>) -> Result<String, String> {
    if conn.is_none() {
        *conn = Some(KeepAlive {
            stream: connect(addr)?,
            buf: Vec::new(),
        });
    }
    let c = conn.as_mut().unwrap();
    let result = exchange(c);
    match &result {
        Ok((_, close)) if !close => {}
        _ => *conn = None,
    }
    result.map(|(body, _)| body)
}

fn exchange(c: &mut KeepAlive) -> Result<(String, bool), String> {
    c.stream
        .write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        .map_err(|e| format!("keep-alive write: {e}"))?;
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = find(&c.buf, b"\r\n\r\n") {
            break i;
        }
        let n = c
            .stream
            .read(&mut chunk)
            .map_err(|e| format!("keep-alive read: {e}"))?;
        if n == 0 {
            return Err(format!(
                "keep-alive: closed after {} bytes of a response",
                c.buf.len()
            ));
        }
        c.buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&c.buf[..head_end]).to_ascii_lowercase();
    if !head.starts_with("http/1.1 200") {
        return Err(format!("status: {}", head.lines().next().unwrap_or("")));
    }
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("no content-length in {head:?}"))?;
    let close = head
        .lines()
        .any(|l| l.starts_with("connection:") && l.contains("close"));
    let total = head_end + 4 + length;
    while c.buf.len() < total {
        let n = c
            .stream
            .read(&mut chunk)
            .map_err(|e| format!("keep-alive body read: {e}"))?;
        if n == 0 {
            return Err("keep-alive: closed in the body".into());
        }
        c.buf.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&c.buf[head_end + 4..total]).into_owned();
    c.buf.drain(..total);
    Ok((body, close))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A control socket path of a test's own, in a directory of its own.
pub fn control_path() -> PathBuf {
    std::env::temp_dir()
        .join(format!("herd-ctl-{}-{}", std::process::id(), free_port()))
        .join("control.sock")
}

/// A master started with a control socket of its own, and that socket.
pub fn controlled(extra: &[&str], program: &[String]) -> (Master, std::path::PathBuf) {
    let path = control_path();
    let mut args = s(&["--control", &path.display().to_string()]);
    args.extend(cmd(extra, program));
    (Master::start(&args), path)
}

/// Runs herdctl against `path`: (exit code, stdout, stderr).
pub fn herdctl(path: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    herdctl_as(path, args, None)
}

/// [`herdctl`] as another user.
pub fn herdctl_as(
    path: &std::path::Path,
    args: &[&str],
    uid: Option<u32>,
) -> (i32, String, String) {
    use std::os::unix::process::CommandExt;
    let mut c = std::process::Command::new(example("herdctl"));
    c.arg("--control").arg(path).args(args);
    if let Some(uid) = uid {
        c.uid(uid).gid(uid);
    }
    let mut child = c
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("herdctl");
    let status = wait_child(&mut child, "herdctl");
    let mut out = String::new();
    let mut err = String::new();
    use std::io::Read;
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status.code().unwrap_or(-1), out, err)
}

/// A list of pids in a JSON event (`upgraded`'s `workers`).
pub fn pids_in(event: &serde_json::Value, key: &str) -> Vec<u32> {
    event[key]
        .as_array()
        .unwrap_or_else(|| panic!("no {key} list in {event}"))
        .iter()
        .map(|p| p.as_u64().expect("a pid") as u32)
        .collect()
}

/// Reads one answer from `c`: until its head and the body its
/// Content-Length announces are in, or the peer closes.
pub fn read_answer(c: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
        let text = String::from_utf8_lossy(&answer);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_owned)
                })
                .and_then(|v| v.trim().parse::<usize>().ok());
            if length.is_some_and(|n| body.len() >= n) {
                break;
            }
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

pub fn status_of(text: &str) -> u16 {
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"))
}

/// Sends `request` on a new connection and returns the status code and
/// the whole answer.
pub fn raw(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut c = TcpStream::connect(addr).unwrap();
    // Longer than one exchange: the master holds a request up to 10 s for
    // a ready worker before its 503.
    c.set_read_timeout(Some(WAIT)).unwrap();
    c.write_all(request).unwrap();
    let text = read_answer(&mut c);
    (status_of(&text), text)
}
