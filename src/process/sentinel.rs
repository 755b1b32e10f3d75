//! What ends the workers when the master is killed.
//!
//! The master may die by SIGKILL (the OOM killer, `kill -9`, an abort).
//! The sentinel, a `/bin/sh` started with the cluster in a session of its
//! own and deaf to every catchable signal, reads a pipe whose only write
//! end is the master's. The master writes `+PGID` when it starts a worker
//! and `-PGID` once it has reaped it. When the master is gone, for whatever
//! reason, the sentinel reads EOF, writes the cluster cgroup's
//! `cgroup.kill` (where there is one) and SIGKILLs every process group
//! still listed.
//!
//! This is a process, not `PR_SET_PDEATHSIG`, because that signal is tied
//! to the *thread* that forked the worker: an upgrade of the master execs
//! the new binary, which ends every thread but one, and the workers it
//! adopted would die at the upgrade after. The sentinel is a child of the
//! process, survives the exec, and its pipe is handed on with the rest.

use std::ffi::CString;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::fcntl::OFlag;
use nix::libc;
use nix::unistd::Pid;

/// The sentinel's shell, present on every Linux system herd runs on.
const SHELL: &str = "/bin/sh";
/// Keeps the listed groups in `$g` until EOF, then kills the cgroup whose
/// `cgroup.kill` is `$0` (unless it is `-`) and every group left.
const SCRIPT: &str = r#"g=' '
while read -r l; do
  case $l in
    +*) g="$g${l#+} " ;;
    -*) case $g in *" ${l#-} "*) g="${g%%" ${l#-} "*} ${g#*" ${l#-} "}" ;; esac ;;
  esac
done
[ "$0" = - ] || echo 1 > "$0"
for p in $g; do kill -9 -"$p"; done"#;

/// What `ps` shows of the sentinel after its name: it runs the script
/// from its environment.
const SHOWN: &str = ": ends the workers if the herd master dies; eval \"$HERD_SENTINEL\"";

/// The cluster's sentinel: the write end of its pipe and its pid.
#[derive(Debug)]
pub(crate) struct Sentinel {
    pipe: std::fs::File,
    pid: Pid,
}

impl Sentinel {
    /// Starts a sentinel that also kills the cgroup whose `cgroup.kill` is
    /// `kill_path`.
    pub(crate) fn start(kill_path: Option<&Path>) -> io::Result<Sentinel> {
        // Everything the child needs, prepared before the fork. It execs a
        // shell rather than living on as a copy of the master, which would
        // pin every page the master (an embedding program, maybe large)
        // had at the fork.
        let nul = |e| io::Error::other(e);
        let sh = CString::new(SHELL).map_err(nul)?;
        let target = match kill_path {
            Some(p) => CString::new(p.as_os_str().as_bytes()).map_err(nul)?,
            None => CString::new("-").map_err(nul)?,
        };
        // The script goes in the environment, so that `ps` shows a short
        // line that says what the process is, not the whole script.
        let argv_owned = [
            CString::new("herd-sentinel").map_err(nul)?,
            CString::new("-c").map_err(nul)?,
            CString::new(SHOWN).map_err(nul)?,
            target,
        ];
        let mut argv: Vec<*const libc::c_char> = argv_owned.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());
        let path_env = CString::new("PATH=/usr/bin:/bin").map_err(nul)?;
        let script_env = CString::new(format!("HERD_SENTINEL={SCRIPT}")).map_err(nul)?;
        let envp: [*const libc::c_char; 3] =
            [path_env.as_ptr(), script_env.as_ptr(), std::ptr::null()];
        if !Path::new(SHELL).exists() {
            return Err(io::Error::new(io::ErrorKind::NotFound, SHELL));
        }
        let (read_end, write_end) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        let r = read_end.as_raw_fd();
        // SAFETY: the child runs only async-signal-safe calls (setsid,
        // signal, fcntl, dup2, close_range, execve, _exit) on memory and fds
        // prepared before the fork, and never returns.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        if pid == 0 {
            // SAFETY: we are the child of a fork; see `child`.
            unsafe { child(r, sh.as_ptr(), argv.as_ptr(), envp.as_ptr()) }
        }
        drop(read_end);
        // A sentinel that stopped reading (SIGSTOP) must not stall the
        // master's event loop once the pipe is full: a lost line is better.
        nix::fcntl::fcntl(&write_end, nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
        Ok(Sentinel {
            pipe: std::fs::File::from(write_end),
            pid: Pid::from_raw(pid),
        })
    }

    /// The sentinel a previous master started (an upgrade).
    pub(crate) fn adopt(pipe: OwnedFd, pid: i32) -> Sentinel {
        Sentinel {
            pipe: std::fs::File::from(pipe),
            pid: Pid::from_raw(pid),
        }
    }

    /// The write end of its pipe, and its pid (for an upgrade).
    pub(crate) fn parts(&self) -> (&std::fs::File, Pid) {
        (&self.pipe, self.pid)
    }

    /// Lists a worker's process group, to be killed if the master dies.
    pub(crate) fn track(&self, pgid: Pid) {
        let _ = (&self.pipe).write_all(format!("+{pgid}\n").as_bytes());
    }

    /// Takes a reaped worker's process group off the list.
    pub(crate) fn untrack(&self, pgid: Pid) {
        let _ = (&self.pipe).write_all(format!("-{pgid}\n").as_bytes());
    }

    /// Stops the sentinel (it kills what is still listed) and reaps it.
    /// Blocking for a moment: call it off the event loop.
    pub(crate) fn finish(self) {
        let Sentinel { pipe, pid } = self;
        drop(pipe);
        let _ = nix::sys::wait::waitpid(pid, None);
    }
}

/// The sentinel, between fork and exec: out of the master's session,
/// deaf to catchable signals (ignored dispositions survive exec), the pipe
/// as stdin, nothing else of the master's open, then the shell.
///
/// # Safety
///
/// Child side of fork only: async-signal-safe calls on memory and fds the
/// parent prepared before the fork.
unsafe fn child(
    pipe: libc::c_int,
    sh: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
) -> ! {
    unsafe {
        // A Ctrl-C or a killpg meant for the master's group must not
        // reach it.
        libc::setsid();
        for sig in 1..32 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP && sig != libc::SIGCHLD {
                libc::signal(sig, libc::SIG_IGN);
            }
        }
        let high = libc::fcntl(pipe, libc::F_DUPFD_CLOEXEC, 64);
        if high < 0 || libc::dup2(high, 0) < 0 {
            libc::_exit(1);
        }
        // Not even its stdout and stderr: the master's may be pipes whose
        // readers wait for EOF.
        libc::syscall(libc::SYS_close_range, 1u32, u32::MAX, 0u32);
        libc::execve(sh, argv, envp);
        libc::_exit(127)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn alive(pid: Pid) -> bool {
        // A zombie counts as gone.
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false)
    }

    fn wait_gone(pid: Pid) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if !alive(pid) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// A `sleep` leading a process group of its own, killed and reaped on
    /// drop whatever the test did.
    struct Leader(std::process::Child);

    impl Leader {
        fn start() -> Leader {
            use std::os::unix::process::CommandExt;
            Leader(
                std::process::Command::new("sleep")
                    .arg("30")
                    .process_group(0)
                    .spawn()
                    .unwrap(),
            )
        }

        fn pid(&self) -> Pid {
            Pid::from_raw(self.0.id() as i32)
        }
    }

    impl Drop for Leader {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[test]
    fn the_groups_still_listed_are_killed_when_the_master_end_closes() {
        let listed = Leader::start();
        let untracked = Leader::start();
        let sentinel = Sentinel::start(None).unwrap();
        sentinel.track(listed.pid());
        sentinel.track(untracked.pid());
        sentinel.untrack(untracked.pid());
        sentinel.finish();
        assert!(wait_gone(listed.pid()), "the listed group was killed");
        assert!(
            alive(untracked.pid()),
            "the group taken off the list was left alone"
        );
    }
}
