//! A running master: the `cluster` example as a real process, what it
//! logs and its JSON events, killed with its workers when the test ends.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

use super::*;

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
        Self::start_binary_with(binary, args, |_| {})
    }

    /// [`Master::start_binary`] with the command adjusted by `tweak`.
    pub fn start_binary_with(
        binary: &Path,
        args: &[String],
        tweak: impl FnOnce(&mut Command),
    ) -> Master {
        let mut all = s(&["--log-format", "json"]);
        all.extend(args.iter().cloned());
        let mut m = Self::spawn_program(binary, &all, tweak);
        let events = m.wait_events("the listening event", |e| {
            of_kind(e, "listening").count() > 0
        });
        m.addr = of_kind(&events, "listening").next().unwrap()["addr"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .unwrap();
        m
    }

    /// Starts `program` (the herd binary, a copy of it) without waiting.
    pub fn spawn_program(
        program: &Path,
        args: &[String],
        tweak: impl FnOnce(&mut Command),
    ) -> Master {
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
        live_pids_in(&self.events())
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
