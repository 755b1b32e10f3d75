//! Processes the tests start or look at: liveness, children, fds, and
//! guards that kill a process group when dropped.

use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use super::*;

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

/// Whether process `pid` holds a socket that listens on TCP port `port`
/// (by /proc: the listening rows of that port whose inodes are among its
/// fds), whoever else may listen on the port since.
pub fn holds_listener_on(pid: u32, port: u16) -> bool {
    let mut listening = Vec::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let local_port = f
                .get(1)
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if f.len() > 9 && f[3] == "0A" && local_port == Some(port) {
                listening.push(f[9].to_owned());
            }
        }
    }
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .filter_map(|t| {
                    let t = t.to_string_lossy().into_owned();
                    Some(t.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
                })
                .any(|ino| listening.contains(&ino))
        })
        .unwrap_or(false)
}
