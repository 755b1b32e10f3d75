//! The worker's contract: what a spawned program finds in its environment.
//!
//! One place says which variables are herd's (set for each worker, never
//! inherited, never the builder's to set), which of the master's own must
//! not leak, and what each spawn adds: the socket-activation variables,
//! the worker's identity, readiness channels and the Node preload's
//! settings. Everything else is the master's environment with the
//! builder's changes.

use std::ffi::{OsStr, OsString};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::types::{Error, Result};

/// Variables herd sets for each worker itself, or that belong to the
/// master's own supervisor and must not leak into workers (a worker that
/// inherited systemd's `NOTIFY_SOCKET` would talk to systemd directly).
const RESERVED: &[&str] = &[
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
    "WATCHDOG_PID",
    "WATCHDOG_USEC",
    crate::worker::SLOT_ENV,
    crate::worker::GENERATION_ENV,
    "NODE_APP_INSTANCE",
    "HERD_LISTEN",
    "HERD_READY_PIPE",
    "HERD_WAIT_READY",
    "HERD_SERVE_AFTER_MS",
    "HERD_PRELOAD",
    "HERD_STOP_SIGNAL",
    crate::upgrade::ENV,
];

/// Variables a worker must not inherit from the master, and that are not
/// the builder's to set either: a master started by a Node parent over IPC
/// has `NODE_CHANNEL_FD`, and a worker that inherited it would talk to the
/// master's parent (and time out its readiness).
const INHERITED_ONLY: &[&str] = &["NODE_CHANNEL_FD", "NODE_CHANNEL_SERIALIZATION_MODE"];

fn is_herds(name: &OsStr) -> bool {
    RESERVED
        .iter()
        .chain(INHERITED_ONLY)
        .any(|r| OsStr::new(r) == name)
}

/// Refuses changes to names that are not variable names or are herd's.
///
/// # Errors
///
/// [`Error::InvalidSetting`] naming the variable.
pub(crate) fn check_changes(ops: &[(OsString, Option<OsString>)]) -> Result<()> {
    for (key, _) in ops {
        let name = key.to_string_lossy();
        if name.is_empty() || name.contains('=') {
            return Err(Error::InvalidSetting {
                setting: "env",
                reason: format!("`{name}` is not a variable name"),
            });
        }
        if is_herds(key) {
            return Err(Error::InvalidSetting {
                setting: "env",
                reason: format!(
                    "`{name}` is herd's to set for each worker (or the master's own), not yours"
                ),
            });
        }
    }
    Ok(())
}

/// The master's environment less herd's names, with the builder's
/// additions and removals applied in order: what every worker starts from.
pub(crate) fn base(ops: &[(OsString, Option<OsString>)]) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> =
        std::env::vars_os().filter(|(k, _)| !is_herds(k)).collect();
    for (key, value) in ops {
        env.retain(|(k, _)| k != key);
        if let Some(v) = value {
            env.push((key.clone(), v.clone()));
        }
    }
    env
}

/// How the worker reports readiness besides sd_notify.
pub(crate) enum Channel<'a> {
    /// The preload's pipe (found by inode wherever the app runs).
    ReadyPipe(&'a OwnedFd),
    /// Node's IPC channel, at the first fd after the sockets.
    NodeIpc,
}

/// The Node preload's settings.
pub(crate) struct Preload<'a> {
    pub(crate) path: &'a Path,
    /// The app says when it is ready (`process.send('ready')`).
    pub(crate) wait_ready: bool,
    /// With `wait_ready`: move to herd's sockets after this long anyway.
    pub(crate) serve_after: Option<std::time::Duration>,
    pub(crate) stop_signal: Signal,
}

/// What one spawn adds to the base environment.
pub(crate) struct Spawn<'a> {
    pub(crate) slot: usize,
    pub(crate) generation: u64,
    /// The sockets that become fds 3, 4, ...
    pub(crate) sockets: &'a [OwnedFd],
    /// The public port an app would ask for, for each socket.
    pub(crate) public_ports: &'a [u16],
    /// The PORT contract: the port the worker binds itself.
    pub(crate) port: Option<u16>,
    pub(crate) notify_socket: Option<&'a str>,
    pub(crate) watchdog: Option<Duration>,
    pub(crate) channel: Option<Channel<'a>>,
    pub(crate) preload: Option<Preload<'a>>,
}

impl Spawn<'_> {
    /// The worker's whole environment, but `LISTEN_PID` (which the child
    /// writes after the fork).
    pub(crate) fn env(&self, base: &[(OsString, OsString)]) -> Vec<(OsString, OsString)> {
        let mut env = base.to_vec();
        let mut set = |k: &str, v: OsString| {
            env.retain(|(ek, _)| ek != k);
            env.push((k.into(), v));
        };
        if let Some(port) = self.port {
            set("PORT", port.to_string().into());
        }
        if !self.sockets.is_empty() {
            let names: Vec<String> = (0..self.sockets.len())
                .map(|i| format!("listen{i}"))
                .collect();
            set("LISTEN_FDS", self.sockets.len().to_string().into());
            set("LISTEN_FDNAMES", names.join(":").into());
        }
        set(crate::worker::SLOT_ENV, self.slot.to_string().into());
        set(
            crate::worker::GENERATION_ENV,
            self.generation.to_string().into(),
        );
        // PM2 sets NODE_APP_INSTANCE to the instance index; apps use it to
        // run a job on one instance only.
        set("NODE_APP_INSTANCE", self.slot.to_string().into());
        if let Some(notify) = self.notify_socket {
            set("NOTIFY_SOCKET", notify.into());
        }
        if let Some(w) = self.watchdog {
            set("WATCHDOG_USEC", w.as_micros().to_string().into());
        }
        match &self.channel {
            Some(Channel::ReadyPipe(fd)) => set("HERD_READY_PIPE", inode(*fd).into()),
            Some(Channel::NodeIpc) => {
                set(
                    "NODE_CHANNEL_FD",
                    (3 + self.sockets.len()).to_string().into(),
                );
                set("NODE_CHANNEL_SERIALIZATION_MODE", "json".into());
            }
            None => {}
        }
        if let Some(preload) = &self.preload {
            // Each socket by inode, with the public port an app would ask
            // for: the preload matches listen(port) by port.
            let sockets: Vec<String> = self
                .sockets
                .iter()
                .zip(self.public_ports)
                .map(|(fd, port)| format!("{}:{port}", inode(fd)))
                .collect();
            set("HERD_LISTEN", sockets.join(",").into());
            if preload.wait_ready {
                set("HERD_WAIT_READY", "1".into());
                if let Some(after) = preload.serve_after {
                    set("HERD_SERVE_AFTER_MS", after.as_millis().to_string().into());
                }
            }
            let require = format!("--require \"{}\"", preload.path.display());
            let options = match base.iter().find(|(k, _)| k == "NODE_OPTIONS") {
                Some((_, old)) => format!("{} {require}", old.to_string_lossy()),
                None => require,
            };
            set("NODE_OPTIONS", options.into());
            set("HERD_PRELOAD", preload.path.as_os_str().to_owned());
            set("HERD_STOP_SIGNAL", preload.stop_signal.as_str().into());
        }
        env
    }
}

/// The inode of an fd (0 if it cannot be read): how the preload recognises
/// the fds the master passed, whatever their numbers in its process.
fn inode(fd: &impl std::os::fd::AsFd) -> String {
    nix::sys::stat::fstat(fd)
        .map_or(0, |st| st.st_ino)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_base_drops_herds_names_and_applies_changes_in_order() {
        let ops = vec![
            (OsString::from("HERD_TEST_A"), Some(OsString::from("1"))),
            (OsString::from("HERD_TEST_A"), Some(OsString::from("2"))),
            (OsString::from("HERD_TEST_B"), Some(OsString::from("x"))),
            (OsString::from("HERD_TEST_B"), None),
        ];
        let env = base(&ops);
        let get = |k: &str| env.iter().find(|(ek, _)| ek == k).map(|(_, v)| v.clone());
        assert_eq!(get("HERD_TEST_A"), Some(OsString::from("2")));
        assert_eq!(get("HERD_TEST_B"), None);
        assert!(env.iter().all(|(k, _)| !is_herds(k)));
    }

    #[test]
    fn herds_names_and_non_names_are_refused_naming_them() {
        for bad in [
            "LISTEN_FDS",
            "HERD_WORKER_SLOT",
            "NODE_CHANNEL_FD",
            "",
            "A=B",
        ] {
            let e = check_changes(&[(OsString::from(bad), None)])
                .unwrap_err()
                .to_string();
            assert!(e.contains(&format!("`{bad}`")), "{e}");
        }
        assert!(check_changes(&[(OsString::from("DATABASE_URL"), None)]).is_ok());
    }

    #[test]
    fn a_spawn_sets_each_name_once_and_appends_the_preload_to_node_options() {
        let (r, w) = nix::unistd::pipe().unwrap();
        drop(r);
        let sock = OwnedFd::from(std::net::TcpListener::bind("127.0.0.1:0").unwrap());
        let base = vec![
            (
                OsString::from("NODE_OPTIONS"),
                OsString::from("--max-old-space-size=512"),
            ),
            (OsString::from("PORT"), OsString::from("1")),
        ];
        let spawn = Spawn {
            slot: 1,
            generation: 4,
            sockets: std::slice::from_ref(&sock),
            public_ports: &[3000],
            port: Some(4567),
            notify_socket: None,
            watchdog: None,
            channel: Some(Channel::ReadyPipe(&w)),
            preload: Some(Preload {
                path: Path::new("/x/preload.js"),
                wait_ready: true,
                serve_after: None,
                stop_signal: Signal::SIGINT,
            }),
        };
        let env = spawn.env(&base);
        let get = |k: &str| {
            let all: Vec<_> = env.iter().filter(|(ek, _)| ek == k).collect();
            assert!(all.len() <= 1, "{k} set twice");
            all.first().map(|(_, v)| v.to_string_lossy().into_owned())
        };
        assert_eq!(get("PORT").as_deref(), Some("4567"));
        assert_eq!(get("LISTEN_FDS").as_deref(), Some("1"));
        assert_eq!(get("HERD_WORKER_SLOT").as_deref(), Some("1"));
        assert_eq!(get("NODE_APP_INSTANCE").as_deref(), Some("1"));
        assert_eq!(get("HERD_WORKER_GENERATION").as_deref(), Some("4"));
        assert_eq!(
            get("NODE_OPTIONS").as_deref(),
            Some("--max-old-space-size=512 --require \"/x/preload.js\"")
        );
        assert_eq!(get("HERD_WAIT_READY").as_deref(), Some("1"));
        assert_eq!(get("HERD_STOP_SIGNAL").as_deref(), Some("SIGINT"));
        assert!(get("HERD_LISTEN").unwrap().ends_with(":3000"));
        assert!(get("HERD_READY_PIPE").is_some_and(|i| i != "0"));
        assert!(get("NODE_CHANNEL_FD").is_none());
    }
}
