//! The mechanism of the exec: fds made to survive it, the environment,
//! and `execve` itself on the spawner thread.

use std::ffi::{CString, OsStr, OsString};
use std::io::{self, Seek, Write};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};

use super::ENV;
use crate::types::{Error, Result};

/// A memfd holding `text`, rewound; close-on-exec unless `inherit`.
pub(crate) fn memfd(text: &str, inherit: bool) -> io::Result<OwnedFd> {
    let flags = if inherit {
        nix::sys::memfd::MFdFlags::empty()
    } else {
        nix::sys::memfd::MFdFlags::MFD_CLOEXEC
    };
    let fd = nix::sys::memfd::memfd_create(c"herd-upgrade", flags)?;
    let mut file = std::fs::File::from(fd);
    file.write_all(text.as_bytes())?;
    file.rewind()?;
    Ok(OwnedFd::from(file))
}

/// A duplicate of `fd` that survives exec.
pub(crate) fn inheritable(fd: impl AsFd) -> io::Result<OwnedFd> {
    let raw = nix::fcntl::fcntl(fd.as_fd(), nix::fcntl::FcntlArg::F_DUPFD(3))?;
    // SAFETY: F_DUPFD just returned this new fd; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// The environment for the new binary: this process's, without what
/// described the sockets it was started with (they are described in the
/// state now) or an earlier upgrade, with `extra` added.
pub(crate) fn environment(extra: (&str, String)) -> Vec<(OsString, OsString)> {
    const DROP: &[&str] = &[ENV, "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"];
    let mut env: Vec<(OsString, OsString)> = std::env::vars_os()
        .filter(|(k, _)| !DROP.iter().any(|d| OsStr::new(d) == k))
        .collect();
    env.push((extra.0.into(), extra.1.into()));
    env
}

/// What the spawner thread needs to exec the new binary.
#[derive(Debug)]
pub(crate) struct ExecRequest {
    pub(crate) path: CString,
    pub(crate) argv: Vec<CString>,
    pub(crate) env: Vec<CString>,
    /// Ignore the master's signals across the exec (the new master installs
    /// its handlers): a SIGTERM in the gap would end the master.
    pub(crate) ignore_signals: bool,
}

/// Converts to C strings; an interior NUL is an error naming the culprit.
pub(crate) fn c_string(what: &str, bytes: &[u8]) -> Result<CString> {
    CString::new(bytes).map_err(|_| Error::Upgrade {
        reason: format!("{what} contains a NUL byte"),
    })
}

/// The signals `run()` handles, ignored across the exec.
pub(crate) const MASTER_SIGNALS: &[nix::libc::c_int] = &[
    nix::libc::SIGTERM,
    nix::libc::SIGINT,
    nix::libc::SIGQUIT,
    nix::libc::SIGHUP,
    nix::libc::SIGTTIN,
    nix::libc::SIGTTOU,
    nix::libc::SIGUSR2,
];

/// Replaces this process with the new binary. Runs on the spawner thread.
/// Returns only if `execve` failed, with the signal handling as it was.
pub(crate) fn exec(req: &ExecRequest) -> io::Error {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let mut argv: Vec<*const nix::libc::c_char> = req.argv.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const nix::libc::c_char> = req.env.iter().map(|e| e.as_ptr()).collect();
    envp.push(std::ptr::null());
    let ignore = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
    let mut saved = Vec::new();
    if req.ignore_signals {
        for &raw in MASTER_SIGNALS {
            let Ok(sig) = Signal::try_from(raw) else {
                continue;
            };
            // SAFETY: installing SIG_IGN runs no code of ours in a handler;
            // the previous action is restored below if exec fails.
            if let Ok(old) = unsafe { sigaction(sig, &ignore) } {
                saved.push((sig, old));
            }
        }
    }
    // SAFETY: every pointer is into a NUL-terminated string or array that
    // lives until this function returns; on success execve does not return.
    unsafe { nix::libc::execve(req.path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    let error = io::Error::last_os_error();
    for (sig, old) in saved {
        // SAFETY: puts back exactly the action that was installed before.
        let _ = unsafe { sigaction(sig, &old) };
    }
    error
}
