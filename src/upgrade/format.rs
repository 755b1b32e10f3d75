//! The description of a running cluster that crosses `execve` as text:
//! sockets, slots and workers named by fd number, read back and checked
//! by the successor.

use std::collections::HashSet;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::Duration;

use crate::types::{Balance, Error, Exit, Result, WorkerState};

/// The first line of the description; a master that reads another refuses.
const FORMAT: &str = "herd-upgrade 1";

/// How a worker's readiness channel is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChannelKind {
    /// The Node preload's pipe.
    Pipe,
    /// Node's IPC channel.
    Ipc,
}

/// One listening address: its sockets in slot order, and the order the
/// kernel's reuseport group holds them in.
#[derive(Debug)]
pub(crate) struct ListenerState<F> {
    pub(crate) addr: SocketAddr,
    pub(crate) order: Vec<usize>,
    pub(crate) fds: Vec<F>,
}

/// One slot.
#[derive(Debug)]
pub(crate) struct SlotState {
    pub(crate) index: usize,
    pub(crate) spawns: u64,
    pub(crate) restarts: u32,
    pub(crate) generation: u64,
    pub(crate) state: WorkerState,
    pub(crate) last_exit: Option<Exit>,
}

/// One live worker and the master's ends of its fds.
#[derive(Debug)]
pub(crate) struct WorkerRecord<F> {
    pub(crate) slot: usize,
    pub(crate) pid: i32,
    pub(crate) generation: u64,
    /// How long it has run.
    pub(crate) age: Duration,
    /// How long it has been ready.
    pub(crate) ready_for: Option<Duration>,
    pub(crate) pidfd: F,
    pub(crate) output: Option<(F, F)>,
    pub(crate) channel: Option<(ChannelKind, F)>,
    /// The process that runs the app, when not the worker itself.
    pub(crate) app: Option<i32>,
    pub(crate) cgroup: Option<PathBuf>,
}

/// Everything a master hands to its successor. `F` is a raw fd number in
/// the text and while checking, an owned fd once adopted.
#[derive(Debug)]
pub(crate) struct State<F> {
    /// How many upgrades this cluster has been through, this one included.
    pub(crate) upgrades: u32,
    pub(crate) balance: Balance,
    pub(crate) backlog: u32,
    pub(crate) steered: Vec<usize>,
    pub(crate) steer_broken: bool,
    pub(crate) listeners: Vec<ListenerState<F>>,
    /// The workers' notify socket and its `NOTIFY_SOCKET` value.
    pub(crate) notify: Option<(F, String)>,
    /// The cluster's cgroup.
    pub(crate) cgroup: Option<PathBuf>,
    /// The sentinel's pipe and pid.
    pub(crate) sentinel: Option<(F, i32)>,
    pub(crate) slots: Vec<SlotState>,
    pub(crate) workers: Vec<WorkerRecord<F>>,
    /// Fds the program asked to carry, by key.
    pub(crate) carried: Vec<(String, F)>,
}

/// Escapes a value so that it holds no space, `=`, `%` or newline.
fn escape(text: &[u8]) -> String {
    let mut out = String::with_capacity(text.len());
    for &b in text {
        if b.is_ascii_graphic() && b != b'%' && b != b'=' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn unescape(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len());
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

fn list<T: ToString>(items: &[T]) -> String {
    if items.is_empty() {
        return "-".into();
    }
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn exit_text(exit: Option<Exit>) -> String {
    match exit {
        None => "-".into(),
        Some(Exit::Code(c)) => format!("code:{c}"),
        Some(Exit::Signal(s)) => format!("signal:{}", s.name()),
    }
}

impl State<RawFd> {
    /// The description as text.
    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        let mut line = |s: String| {
            out.push_str(&s);
            out.push('\n');
        };
        line(FORMAT.into());
        let balance = match self.balance {
            Balance::Shared => "shared",
            _ => "reuseport",
        };
        line(format!(
            "master upgrades={} balance={balance} backlog={} steered={} steer_broken={}",
            self.upgrades,
            self.backlog,
            list(&self.steered),
            u8::from(self.steer_broken)
        ));
        for l in &self.listeners {
            line(format!(
                "listen addr={} order={} fds={}",
                l.addr,
                list(&l.order),
                list(&l.fds)
            ));
        }
        if let Some((fd, name)) = &self.notify {
            line(format!("notify fd={fd} name={}", escape(name.as_bytes())));
        }
        if let Some(dir) = &self.cgroup {
            line(format!("cgroup dir={}", escape(dir.as_os_str().as_bytes())));
        }
        if let Some((pipe, pid)) = &self.sentinel {
            line(format!("sentinel pipe={pipe} pid={pid}"));
        }
        for s in &self.slots {
            line(format!(
                "slot index={} spawns={} restarts={} generation={} state={} exit={}",
                s.index,
                s.spawns,
                s.restarts,
                s.generation,
                s.state,
                exit_text(s.last_exit)
            ));
        }
        for w in &self.workers {
            let output = match &w.output {
                Some((o, e)) => format!("{o},{e}"),
                None => "-".into(),
            };
            let channel = match &w.channel {
                Some((ChannelKind::Pipe, fd)) => format!("pipe:{fd}"),
                Some((ChannelKind::Ipc, fd)) => format!("ipc:{fd}"),
                None => "-".into(),
            };
            line(format!(
                "worker slot={} pid={} generation={} age_ms={} ready_ms={} pidfd={} output={output} \
                 channel={channel} app={} cgroup={}",
                w.slot,
                w.pid,
                w.generation,
                w.age.as_millis(),
                w.ready_for
                    .map_or("-".into(), |d| d.as_millis().to_string()),
                w.pidfd,
                w.app.map_or("-".into(), |p| p.to_string()),
                w.cgroup
                    .as_ref()
                    .map_or("-".into(), |p| escape(p.as_os_str().as_bytes())),
            ));
        }
        for (key, fd) in &self.carried {
            line(format!("carry key={} fd={fd}", escape(key.as_bytes())));
        }
        line("end".into());
        out
    }

    /// Every fd the description names.
    fn fds(&self) -> Vec<RawFd> {
        let mut fds: Vec<RawFd> = Vec::new();
        for l in &self.listeners {
            fds.extend(&l.fds);
        }
        fds.extend(self.notify.iter().map(|(fd, _)| *fd));
        fds.extend(self.sentinel.iter().map(|(fd, _)| *fd));
        for w in &self.workers {
            fds.push(w.pidfd);
            if let Some((o, e)) = w.output {
                fds.extend([o, e]);
            }
            fds.extend(w.channel.iter().map(|(_, fd)| *fd));
        }
        fds.extend(self.carried.iter().map(|(_, fd)| *fd));
        fds
    }

    /// Reads a description. Errors say what is wrong with it.
    pub(crate) fn decode(text: &str) -> std::result::Result<Self, String> {
        let mut lines = text.lines();
        match lines.next() {
            Some(FORMAT) => {}
            Some(other) => {
                return Err(format!(
                    "the running master describes itself as `{other}`, and this binary reads \
                     `{FORMAT}`"
                ))
            }
            None => return Err("the description is empty".into()),
        }
        let mut state = State {
            upgrades: 0,
            balance: Balance::ReusePort,
            backlog: 0,
            steered: Vec::new(),
            steer_broken: false,
            listeners: Vec::new(),
            notify: None,
            cgroup: None,
            sentinel: None,
            slots: Vec::new(),
            workers: Vec::new(),
            carried: Vec::new(),
        };
        let mut ended = false;
        for line in lines {
            let (kind, rest) = line.split_once(' ').unwrap_or((line, ""));
            let fields = Fields::parse(rest).ok_or_else(|| format!("bad line `{line}`"))?;
            let bad = |what: &str| format!("bad {what} in `{line}`");
            match kind {
                "master" => {
                    state.upgrades = fields.num("upgrades").ok_or_else(|| bad("upgrades"))?;
                    state.balance = match fields.get("balance") {
                        Some("shared") => Balance::Shared,
                        Some("reuseport") => Balance::ReusePort,
                        _ => return Err(bad("balance")),
                    };
                    state.backlog = fields.num("backlog").ok_or_else(|| bad("backlog"))?;
                    state.steered = fields.list("steered").ok_or_else(|| bad("steered"))?;
                    state.steer_broken = fields.get("steer_broken") == Some("1");
                }
                "listen" => state.listeners.push(ListenerState {
                    addr: fields.num("addr").ok_or_else(|| bad("addr"))?,
                    order: fields.list("order").ok_or_else(|| bad("order"))?,
                    fds: fields.list("fds").ok_or_else(|| bad("fds"))?,
                }),
                "notify" => {
                    let fd = fields.num("fd").ok_or_else(|| bad("fd"))?;
                    let name = fields.text("name").ok_or_else(|| bad("name"))?;
                    state.notify = Some((fd, name));
                }
                "cgroup" => state.cgroup = Some(fields.path("dir").ok_or_else(|| bad("dir"))?),
                "sentinel" => {
                    let pipe = fields.num("pipe").ok_or_else(|| bad("pipe"))?;
                    let pid = fields.num("pid").ok_or_else(|| bad("pid"))?;
                    state.sentinel = Some((pipe, pid));
                }
                "slot" => state.slots.push(SlotState {
                    index: fields.num("index").ok_or_else(|| bad("index"))?,
                    spawns: fields.num("spawns").ok_or_else(|| bad("spawns"))?,
                    restarts: fields.num("restarts").ok_or_else(|| bad("restarts"))?,
                    generation: fields.num("generation").ok_or_else(|| bad("generation"))?,
                    state: match fields.get("state") {
                        Some("ready") => WorkerState::Ready,
                        Some("exited") => WorkerState::Exited,
                        Some("failed") => WorkerState::Failed,
                        _ => return Err(bad("state")),
                    },
                    last_exit: match fields.get("exit") {
                        Some("-") => None,
                        Some(e) => Some(parse_exit(e).ok_or_else(|| bad("exit"))?),
                        None => return Err(bad("exit")),
                    },
                }),
                "worker" => {
                    let output = match fields.get("output") {
                        Some("-") => None,
                        Some(_) => match fields.list::<RawFd>("output").as_deref() {
                            Some([o, e]) => Some((*o, *e)),
                            _ => return Err(bad("output")),
                        },
                        None => return Err(bad("output")),
                    };
                    let channel = match fields.get("channel") {
                        Some("-") => None,
                        Some(c) => {
                            let (kind, fd) = c.split_once(':').ok_or_else(|| bad("channel"))?;
                            let kind = match kind {
                                "pipe" => ChannelKind::Pipe,
                                "ipc" => ChannelKind::Ipc,
                                _ => return Err(bad("channel")),
                            };
                            Some((kind, fd.parse().map_err(|_| bad("channel"))?))
                        }
                        None => return Err(bad("channel")),
                    };
                    state.workers.push(WorkerRecord {
                        slot: fields.num("slot").ok_or_else(|| bad("slot"))?,
                        pid: fields.num("pid").ok_or_else(|| bad("pid"))?,
                        generation: fields.num("generation").ok_or_else(|| bad("generation"))?,
                        age: Duration::from_millis(
                            fields.num("age_ms").ok_or_else(|| bad("age_ms"))?,
                        ),
                        ready_for: match fields.get("ready_ms") {
                            Some("-") => None,
                            _ => Some(Duration::from_millis(
                                fields.num("ready_ms").ok_or_else(|| bad("ready_ms"))?,
                            )),
                        },
                        pidfd: fields.num("pidfd").ok_or_else(|| bad("pidfd"))?,
                        output,
                        channel,
                        app: match fields.get("app") {
                            Some("-") => None,
                            _ => Some(fields.num("app").ok_or_else(|| bad("app"))?),
                        },
                        cgroup: match fields.get("cgroup") {
                            Some("-") => None,
                            _ => Some(fields.path("cgroup").ok_or_else(|| bad("cgroup"))?),
                        },
                    });
                }
                "carry" => {
                    let key = fields.text("key").ok_or_else(|| bad("key"))?;
                    let fd = fields.num("fd").ok_or_else(|| bad("fd"))?;
                    state.carried.push((key, fd));
                }
                "end" => ended = true,
                _ => return Err(format!("unknown line `{line}`")),
            }
        }
        if !ended {
            return Err("the description is cut short".into());
        }
        state.check()?;
        Ok(state)
    }

    /// The description is consistent: each slot once and in order, each
    /// worker in a slot that exists, each fd named once, as many sockets
    /// per address as the mode needs.
    fn check(&self) -> std::result::Result<(), String> {
        if self.listeners.is_empty() && self.slots.is_empty() {
            return Err("no slots".into());
        }
        for (i, s) in self.slots.iter().enumerate() {
            if s.index != i {
                return Err(format!("slot {} is listed in place {i}", s.index));
            }
        }
        let mut seen = HashSet::new();
        for w in &self.workers {
            let slot = self.slots.get(w.slot).ok_or_else(|| {
                format!(
                    "worker {} is in slot {}, which is not listed",
                    w.pid, w.slot
                )
            })?;
            if slot.state != WorkerState::Ready || !seen.insert(w.slot) {
                return Err(format!(
                    "slot {} does not have exactly one ready worker",
                    w.slot
                ));
            }
        }
        if let Some(s) = self
            .slots
            .iter()
            .find(|s| s.state == WorkerState::Ready && !seen.contains(&s.index))
        {
            return Err(format!("slot {} is ready without a worker", s.index));
        }
        let sockets = match self.balance {
            Balance::Shared => 1,
            _ => self.slots.len(),
        };
        for l in &self.listeners {
            if l.fds.len() != sockets || l.order.len() != l.fds.len() {
                return Err(format!(
                    "{} has {} sockets for {} slots",
                    l.addr,
                    l.fds.len(),
                    self.slots.len()
                ));
            }
        }
        let mut fds = HashSet::new();
        for fd in self.fds() {
            if fd < 3 || !fds.insert(fd) {
                return Err(format!("fd {fd} is named twice or is a standard stream"));
            }
        }
        Ok(())
    }

    /// Takes ownership of every fd the description names: they were
    /// inherited across exec for this process alone.
    ///
    /// # Errors
    ///
    /// An fd that is not open (the description does not match the process).
    pub(super) fn adopt(self) -> std::result::Result<State<OwnedFd>, String> {
        for fd in self.fds() {
            // F_GETFD fails with EBADF for an fd that is not open.
            if !is_open(fd) {
                return Err(format!("fd {fd} is named but not open"));
            }
        }
        let own = |fd: RawFd| -> OwnedFd {
            // SAFETY: the fd is open (checked above), the description names
            // it exactly once (checked by `check`), and the previous master
            // left it to this process alone: nothing else owns it.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            // Ours from now on: not for any child's exec.
            let _ = nix::fcntl::fcntl(
                &fd,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            );
            fd
        };
        Ok(State {
            upgrades: self.upgrades,
            balance: self.balance,
            backlog: self.backlog,
            steered: self.steered,
            steer_broken: self.steer_broken,
            listeners: self
                .listeners
                .into_iter()
                .map(|l| ListenerState {
                    addr: l.addr,
                    order: l.order,
                    fds: l.fds.into_iter().map(own).collect(),
                })
                .collect(),
            notify: self.notify.map(|(fd, name)| (own(fd), name)),
            cgroup: self.cgroup,
            sentinel: self.sentinel.map(|(fd, pid)| (own(fd), pid)),
            slots: self.slots,
            workers: self
                .workers
                .into_iter()
                .map(|w| WorkerRecord {
                    slot: w.slot,
                    pid: w.pid,
                    generation: w.generation,
                    age: w.age,
                    ready_for: w.ready_for,
                    pidfd: own(w.pidfd),
                    output: w.output.map(|(o, e)| (own(o), own(e))),
                    channel: w.channel.map(|(k, fd)| (k, own(fd))),
                    app: w.app,
                    cgroup: w.cgroup,
                })
                .collect(),
            carried: self
                .carried
                .into_iter()
                .map(|(k, fd)| (k, own(fd)))
                .collect(),
        })
    }
}

fn parse_exit(text: &str) -> Option<Exit> {
    match text.split_once(':')? {
        ("code", c) => Some(Exit::Code(c.parse().ok()?)),
        ("signal", s) => Some(Exit::Signal(s.parse().ok()?)),
        _ => None,
    }
}

/// `key=value` fields of one line.
struct Fields<'a>(Vec<(&'a str, &'a str)>);

impl<'a> Fields<'a> {
    fn parse(text: &'a str) -> Option<Self> {
        text.split(' ')
            .filter(|t| !t.is_empty())
            .map(|t| t.split_once('='))
            .collect::<Option<Vec<_>>>()
            .map(Fields)
    }

    fn get(&self, key: &str) -> Option<&'a str> {
        self.0.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }

    fn num<T: std::str::FromStr>(&self, key: &str) -> Option<T> {
        self.get(key)?.parse().ok()
    }

    fn list<T: std::str::FromStr>(&self, key: &str) -> Option<Vec<T>> {
        match self.get(key)? {
            "-" => Some(Vec::new()),
            v => v.split(',').map(|x| x.parse().ok()).collect(),
        }
    }

    fn text(&self, key: &str) -> Option<String> {
        String::from_utf8(unescape(self.get(key)?)?).ok()
    }

    fn path(&self, key: &str) -> Option<PathBuf> {
        let bytes = unescape(self.get(key)?)?;
        Some(PathBuf::from(
            <OsString as std::os::unix::ffi::OsStringExt>::from_vec(bytes),
        ))
    }
}

/// Whether `fd` is open in this process.
pub(super) fn is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD reads the fd's flags and changes nothing; on a number
    // that is not open it fails with EBADF.
    unsafe { nix::libc::fcntl(fd, nix::libc::F_GETFD) >= 0 }
}

impl<F> State<F> {
    /// Whether a master configured with `balance` can take this over.
    ///
    /// # Errors
    ///
    /// [`Error::Upgrade`] naming the difference.
    pub(crate) fn compatible(&self, balance: Balance) -> Result<()> {
        if balance.is_proxy() {
            return Err(Error::Upgrade {
                reason: format!(
                    "the new configuration balances with {balance}, the running cluster with {}: \
                     proxy mode cannot be upgraded in place",
                    self.balance
                ),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> State<RawFd> {
        State {
            upgrades: 2,
            balance: Balance::ReusePort,
            backlog: 511,
            steered: vec![0, 1],
            steer_broken: false,
            listeners: vec![ListenerState {
                addr: "127.0.0.1:8080".parse().unwrap(),
                order: vec![1, 0],
                fds: vec![10, 11],
            }],
            notify: Some((12, "@herd/1/0".into())),
            cgroup: Some(PathBuf::from("/sys/fs/cgroup/a b/herd-1-0")),
            sentinel: Some((13, 77)),
            slots: vec![
                SlotState {
                    index: 0,
                    spawns: 3,
                    restarts: 2,
                    generation: 2,
                    state: WorkerState::Ready,
                    last_exit: Some(Exit::Signal(crate::Signal::KILL)),
                },
                SlotState {
                    index: 1,
                    spawns: 1,
                    restarts: 0,
                    generation: 0,
                    state: WorkerState::Failed,
                    last_exit: Some(Exit::Code(1)),
                },
            ],
            workers: vec![WorkerRecord {
                slot: 0,
                pid: 4242,
                generation: 2,
                age: Duration::from_millis(1500),
                ready_for: Some(Duration::from_millis(1000)),
                pidfd: 14,
                output: Some((15, 16)),
                channel: Some((ChannelKind::Pipe, 17)),
                app: Some(4250),
                cgroup: Some(PathBuf::from("/sys/fs/cgroup/x/w0-2")),
            }],
            carried: vec![("control:/tmp/my dir/herd.sock".into(), 18)],
        }
    }

    #[test]
    fn the_description_round_trips_through_text() {
        let text = sample().encode();
        let back = State::decode(&text).unwrap();
        assert_eq!(back.encode(), text);
        assert_eq!(back.carried[0].0, "control:/tmp/my dir/herd.sock");
        assert_eq!(
            back.cgroup.as_deref(),
            Some(std::path::Path::new("/sys/fs/cgroup/a b/herd-1-0"))
        );
        assert_eq!(back.workers[0].channel, Some((ChannelKind::Pipe, 17)));
        assert_eq!(
            back.slots[0].last_exit,
            Some(Exit::Signal(crate::Signal::KILL))
        );
    }

    #[test]
    fn another_format_a_cut_description_and_reused_fds_are_refused() {
        let text = sample().encode();
        let other = text.replacen("herd-upgrade 1", "herd-upgrade 2", 1);
        assert!(State::decode(&other)
            .unwrap_err()
            .contains("herd-upgrade 2"));
        let cut = text.replace("end\n", "");
        assert!(State::decode(&cut).unwrap_err().contains("cut short"));
        let twice = text.replace("pidfd=14", "pidfd=10");
        assert!(State::decode(&twice).unwrap_err().contains("fd 10"));
        let missing = text.replace("fds=10,11", "fds=10");
        assert!(State::decode(&missing).is_err());
        let orphan = text.replace("worker slot=0", "worker slot=5");
        assert!(State::decode(&orphan).unwrap_err().contains("slot 5"));
    }

    #[test]
    fn adopting_refuses_a_description_of_fds_this_process_does_not_have() {
        let mut state = sample();
        state.listeners[0].fds = vec![900_001, 900_002];
        assert!(state.adopt().unwrap_err().contains("not open"));
    }
}
