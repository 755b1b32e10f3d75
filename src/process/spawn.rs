//! fork/exec of one worker with the socket-activation fd contract.
//!
//! std's `Command` builds `envp` before it forks, so it cannot put the
//! child's own pid into `LISTEN_PID`. Here everything is prepared before the
//! fork (every string, every pointer array, the scratch space for the fd
//! shuffle); between fork and exec the child calls only async-signal-safe
//! functions and writes its pid digits into a fixed-width slot of the
//! prepared environment block.
//!
//! Forks happen on one long-lived thread (see [`super::spawner`]) because
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked exits, not the
//! process.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;

use nix::fcntl::OFlag;
use nix::libc;
use nix::unistd::Pid;

/// Everything needed to start one worker, owned so that it can cross to the
/// spawner thread.
#[derive(Debug)]
pub(crate) struct SpawnRequest {
    /// The resolved path of the program, given to `execve`.
    pub(crate) path: CString,
    /// argv, starting with argv\[0\] (the program as the user wrote it).
    pub(crate) argv: Vec<CString>,
    /// The complete environment except `LISTEN_PID`, which the child writes.
    pub(crate) env: Vec<(OsString, OsString)>,
    /// Listening sockets, in the order they become fds 3, 4, ...: the
    /// request's own duplicates of the master's.
    pub(crate) listen_fds: Vec<OwnedFd>,
    /// Further fds after the sockets (Node's IPC channel), owned: the
    /// master's copies close once the worker has them.
    pub(crate) extra_fds: Vec<OwnedFd>,
    /// Working directory, if not the master's.
    pub(crate) cwd: Option<CString>,
    /// `cgroup.procs` of the worker's cgroup: the child moves itself there.
    pub(crate) cgroup_procs: Option<OwnedFd>,
    /// The user the worker runs as, if not the master's.
    pub(crate) credentials: Option<Credentials>,
    /// Ask for SIGKILL when the forking thread ends: only when no sentinel
    /// watches the master (see [`super::sentinel`]).
    pub(crate) pdeathsig: bool,
}

/// A user to run a worker as: uid, gid and supplementary groups, resolved
/// before the fork.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Credentials {
    pub(crate) uid: libc::uid_t,
    pub(crate) gid: libc::gid_t,
    pub(crate) groups: Vec<libc::gid_t>,
}

/// A worker that has been exec'd.
#[derive(Debug)]
pub(crate) struct Spawned {
    pub(crate) pid: Pid,
    /// Readable once the process exits; used to reap exactly this child.
    pub(crate) pidfd: OwnedFd,
    /// Read ends of the worker's stdout and stderr pipes.
    pub(crate) stdout: OwnedFd,
    pub(crate) stderr: OwnedFd,
}

/// A spawn that failed, with the step that failed.
#[derive(Debug)]
pub(crate) struct SpawnError {
    pub(crate) stage: &'static str,
    pub(crate) source: io::Error,
}

impl SpawnError {
    fn new(stage: &'static str, source: io::Error) -> Self {
        SpawnError { stage, source }
    }
}

/// Steps the child can fail at, reported through the exec-status pipe.
const STAGES: &[&str] = &[
    "setting up file descriptors",
    "setting the parent-death signal",
    "changing directory",
    "exec",
    "changing to the worker's user and groups",
];
const STAGE_FDS: u8 = 0;
const STAGE_PDEATHSIG: u8 = 1;
const STAGE_CHDIR: u8 = 2;
const STAGE_EXEC: u8 = 3;
const STAGE_CREDENTIALS: u8 = 4;

/// Standard (non-realtime) signals are 1..32 on Linux.
const NSIG_STANDARD: libc::c_int = 32;

const LISTEN_PID_PREFIX: &[u8] = b"LISTEN_PID=";
/// Room for the decimal digits of any pid_t plus the terminating NUL.
const PID_DIGITS: usize = 20;

/// Forks and execs one worker. Must run on the spawner thread.
pub(crate) fn spawn(req: SpawnRequest) -> Result<Spawned, SpawnError> {
    let fds_err = |e: nix::Error| SpawnError::new("preparing pipes", io::Error::from(e));

    // ---- Everything the child needs, allocated before the fork. ----
    let mut env_entries: Vec<Vec<u8>> = req
        .env
        .iter()
        .filter(|(k, _)| !k.is_empty() && !k.as_bytes().contains(&b'='))
        .map(|(k, v)| env_entry(k, v))
        .collect();
    let pid_slot: Option<*mut u8> = if req.listen_fds.is_empty() {
        None
    } else {
        let mut entry = LISTEN_PID_PREFIX.to_vec();
        entry.extend_from_slice(&[0u8; PID_DIGITS + 1]);
        env_entries.push(entry);
        let last = env_entries.last_mut().expect("just pushed");
        // SAFETY: the offset is within the entry, which is never resized
        // again; the pointer stays valid while `env_entries` lives, i.e.
        // until this function returns (the child execs or exits before).
        Some(unsafe { last.as_mut_ptr().add(LISTEN_PID_PREFIX.len()) })
    };
    let mut envp: Vec<*const libc::c_char> =
        env_entries.iter().map(|e| e.as_ptr().cast()).collect();
    envp.push(std::ptr::null());
    let mut argv: Vec<*const libc::c_char> = req.argv.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());

    let devnull = nix::fcntl::open(
        "/dev/null",
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| SpawnError::new("opening /dev/null", e.into()))?;
    let (out_r, out_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(fds_err)?;
    let (err_r, err_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(fds_err)?;
    let (status_r, status_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(fds_err)?;

    // fd i of the worker comes from sources[i].
    let mut sources: Vec<RawFd> = vec![devnull.as_raw_fd(), out_w.as_raw_fd(), err_w.as_raw_fd()];
    sources.extend(req.listen_fds.iter().map(|fd| fd.as_raw_fd()));
    sources.extend(req.extra_fds.iter().map(|fd| fd.as_raw_fd()));
    // Scratch space the child fills with high duplicates, allocated now.
    let mut scratch: Vec<RawFd> = vec![-1; sources.len()];
    let child = ChildPlan {
        path: req.path.as_ptr(),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        pid_slot,
        sources: &sources,
        scratch: scratch.as_mut_ptr(),
        status_w: status_w.as_raw_fd(),
        cwd: req.cwd.as_ref().map(|c| c.as_ptr()),
        parent: nix::unistd::getpid().as_raw(),
        cgroup_procs: req.cgroup_procs.as_ref().map(|fd| fd.as_raw_fd()),
        credentials: req
            .credentials
            .as_ref()
            .map(|c| (c.uid, c.gid, c.groups.as_ptr(), c.groups.len())),
        pdeathsig: req.pdeathsig,
    };

    // SAFETY: fork in a multi-threaded process is sound as long as the child
    // only calls async-signal-safe functions until it execs or _exits, which
    // is what `run_child` does (no allocation, no locks, no std I/O).
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(SpawnError::new("fork", io::Error::last_os_error()));
    }
    if pid == 0 {
        // SAFETY: we are the child of a fork; see `run_child`.
        unsafe { run_child(&child) }
    }
    let pid = Pid::from_raw(pid);

    // The child calls setpgid itself; doing it here too closes the race in
    // which the master signals the group before the child got there. EACCES
    // after the child's exec is expected and harmless.
    let _ = nix::unistd::setpgid(pid, pid);
    // Drop our copies of the child's ends, or EOF never comes.
    drop((devnull, out_w, err_w, status_w));
    let pidfd = pidfd_open(pid);

    // The status pipe closes on a successful exec (CLOEXEC) or carries the
    // failing stage and errno.
    let mut buf = [0u8; 5];
    let n = read_full(&status_r, &mut buf);
    if n == buf.len() {
        // The child _exits at once; reap it so no zombie is left behind.
        let _ = nix::sys::wait::waitpid(pid, None);
        let stage = STAGES.get(buf[0] as usize).copied().unwrap_or("exec");
        let errno = i32::from_ne_bytes([buf[1], buf[2], buf[3], buf[4]]);
        return Err(SpawnError::new(stage, io::Error::from_raw_os_error(errno)));
    }
    let pidfd = match pidfd {
        Ok(fd) => fd,
        Err(e) => {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(pid, None);
            return Err(SpawnError::new(
                "pidfd_open (Linux 5.3 or newer is needed)",
                e,
            ));
        }
    };
    // Keep the prepared block alive until here; the child has its own copy.
    drop((env_entries, envp, argv, scratch, sources, req));
    Ok(Spawned {
        pid,
        pidfd,
        stdout: out_r,
        stderr: err_r,
    })
}

fn env_entry(k: &OsStr, v: &OsStr) -> Vec<u8> {
    let mut e = Vec::with_capacity(k.len() + v.len() + 2);
    e.extend_from_slice(k.as_bytes());
    e.push(b'=');
    e.extend(v.as_bytes().iter().copied().filter(|&b| b != 0));
    e.push(0);
    e
}

fn read_full(fd: &OwnedFd, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match nix::unistd::read(fd, &mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => break,
        }
    }
    n
}

/// Opens a pidfd for our own, not yet reaped child: the pid cannot be
/// recycled before we reap it, so the pidfd refers to the right process.
fn pidfd_open(pid: Pid) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1;
    // it touches no memory of ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = RawFd::try_from(fd).map_err(io::Error::other)?;
    // SAFETY: the kernel just returned this fd to us and nothing else owns it.
    // pidfds are always close-on-exec.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// What the child does, as raw pointers into memory prepared by the parent.
struct ChildPlan<'a> {
    path: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    pid_slot: Option<*mut u8>,
    sources: &'a [RawFd],
    scratch: *mut RawFd,
    status_w: RawFd,
    cwd: Option<*const libc::c_char>,
    parent: libc::pid_t,
    cgroup_procs: Option<RawFd>,
    /// uid, gid, and the supplementary groups as a pointer and a length.
    credentials: Option<(libc::uid_t, libc::gid_t, *const libc::gid_t, usize)>,
    pdeathsig: bool,
}

/// The child between fork and exec.
///
/// # Safety
///
/// Must only be called in the child right after `fork`. Every call below is
/// async-signal-safe (setpgid, write to cgroup.procs, setgroups, setgid, setuid, prctl,
/// getppid, getpid, fcntl, dup2,
/// syscall(close_range), sigprocmask, sigaction via `signal`, chdir, execve,
/// write, _exit), and all memory it writes (the pid slot, the scratch array)
/// is the child's private copy of buffers the parent allocated before fork.
unsafe fn run_child(plan: &ChildPlan<'_>) -> ! {
    unsafe {
        // Own process group: stopping a worker signals its whole tree.
        libc::setpgid(0, 0);
        // Its own cgroup, which no descendant can leave (before the fd
        // shuffle below reuses the number). Without it the worker still
        // runs, held by its process group only.
        if let Some(fd) = plan.cgroup_procs {
            super::cgroup::enter(fd);
        }
        // The worker's own user, groups first (they need the privilege the
        // uid change gives up). Before the parent-death signal: a change of
        // credentials clears it.
        if let Some((uid, gid, groups, n)) = plan.credentials {
            if libc::setgroups(n, groups) != 0 || libc::setgid(gid) != 0 || libc::setuid(uid) != 0 {
                fail(plan.status_w, STAGE_CREDENTIALS);
            }
        }

        // Die with the master, where no sentinel does that. If the master
        // already died between fork and here, no signal will come, so
        // check by hand.
        if plan.pdeathsig
            && libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
        {
            fail(plan.status_w, STAGE_PDEATHSIG);
        }
        if libc::getppid() != plan.parent {
            libc::_exit(1);
        }

        // Move the status pipe and every source above the target range so
        // that no dup2 below overwrites a source it still needs.
        let first_free = plan.sources.len() as RawFd;
        let status_w = libc::fcntl(plan.status_w, libc::F_DUPFD_CLOEXEC, first_free);
        if status_w < 0 {
            libc::_exit(126);
        }
        for (i, &src) in plan.sources.iter().enumerate() {
            let high = libc::fcntl(src, libc::F_DUPFD_CLOEXEC, first_free);
            if high < 0 {
                fail(status_w, STAGE_FDS);
            }
            *plan.scratch.add(i) = high;
        }
        // dup2 to a *different* fd clears FD_CLOEXEC on the target, which is
        // what makes fds 0..n survive exec (dup2(fd, fd) would not).
        for i in 0..plan.sources.len() {
            if libc::dup2(*plan.scratch.add(i), i as RawFd) < 0 {
                fail(status_w, STAGE_FDS);
            }
        }
        // Everything else, including fds an embedding program opened without
        // CLOEXEC, is closed by exec.
        close_others_on_exec(first_free);

        // A clean signal state: the master's runtime may block signals on
        // this thread and ignores SIGPIPE; ignored dispositions survive exec.
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        for sig in 1..NSIG_STANDARD {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }

        if let Some(cwd) = plan.cwd {
            if libc::chdir(cwd) != 0 {
                fail(status_w, STAGE_CHDIR);
            }
        }

        if let Some(slot) = plan.pid_slot {
            write_decimal(slot, libc::getpid() as u64);
        }

        libc::execve(plan.path, plan.argv, plan.envp);
        fail(status_w, STAGE_EXEC)
    }
}

/// Reports the failing stage and errno to the parent and exits.
///
/// # Safety
///
/// Child side of fork only; uses write and _exit.
unsafe fn fail(status_w: RawFd, stage: u8) -> ! {
    unsafe {
        let errno = *libc::__errno_location();
        let e = errno.to_ne_bytes();
        let msg = [stage, e[0], e[1], e[2], e[3]];
        libc::write(status_w, msg.as_ptr().cast(), msg.len());
        libc::_exit(127)
    }
}

/// Marks every fd from `first` up as close-on-exec.
///
/// # Safety
///
/// Child side of fork only; uses syscall, getrlimit and fcntl.
unsafe fn close_others_on_exec(first: RawFd) {
    unsafe {
        let r = libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        );
        if r == 0 {
            return;
        }
        // Kernels before 5.11: walk the fd table up to the limit.
        let mut lim: libc::rlimit = std::mem::zeroed();
        let max = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur.min(1 << 20) as RawFd
        } else {
            1 << 16
        };
        for fd in first..max {
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        }
    }
}

/// Writes `n` in decimal followed by NUL at `slot`, which has room for
/// [`PID_DIGITS`] digits plus the NUL. No allocation.
///
/// # Safety
///
/// `slot` must point to at least `PID_DIGITS + 1` writable bytes.
unsafe fn write_decimal(slot: *mut u8, mut n: u64) {
    let mut digits = [0u8; PID_DIGITS];
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 || len == PID_DIGITS {
            break;
        }
    }
    for i in 0..len {
        // SAFETY: i < len <= PID_DIGITS, within the slot.
        unsafe { *slot.add(i) = digits[len - 1 - i] };
    }
    // SAFETY: len <= PID_DIGITS, so the NUL is within the slot too.
    unsafe { *slot.add(len) = 0 };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_is_written_in_place_and_terminated() {
        let mut buf = [b'x'; PID_DIGITS + 1];
        for (n, text) in [(0u64, "0"), (7, "7"), (4194304, "4194304")] {
            // SAFETY: buf has PID_DIGITS + 1 bytes.
            unsafe { write_decimal(buf.as_mut_ptr(), n) };
            let end = buf.iter().position(|&b| b == 0).unwrap();
            assert_eq!(&buf[..end], text.as_bytes());
        }
    }

    #[test]
    fn env_entries_are_nul_terminated_pairs() {
        let e = env_entry(OsStr::new("A"), OsStr::new("b\0c"));
        assert_eq!(e, b"A=bc\0");
    }
}
