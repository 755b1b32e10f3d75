//! Proxy mode: the master accepts every connection, chooses a worker and
//! forwards the bytes.
//!
//! Each worker process gets a private listener on loopback for each public
//! address, created by the master and passed as fds 3, 4, ... in the same
//! order, so the same worker programs run unchanged in every balance mode
//! (an app with a main and an admin server gets each on its own port). The master keeps a `Backend` per worker with an
//! exact count of its open connections; the supervisor decides which
//! backends are in the `Rotation`. One accept task per public address picks
//! with [`crate::balance::Picker`] and hands each connection to a task of
//! its own, so a slow worker never blocks the accept loop.

#[cfg(feature = "http")]
pub(crate) mod h1;
pub(crate) mod header;
#[cfg(feature = "http")]
pub(crate) mod http;
pub(crate) mod plane;
pub(crate) mod relay;
pub(crate) mod splice;
pub(crate) mod trim;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::sync::{mpsc, Notify};

use crate::balance::{hash_ip, ActiveCount, Candidate, Picker, Strategy};
pub use header::ProxyProtocol;

/// Where a worker's private listener is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// A loopback port (the PORT contract, or no PROXY header to trust).
    Tcp(SocketAddr),
    /// A Unix socket only the master's user can reach: with a PROXY header,
    /// which the worker believes, nobody else may connect.
    Unix(std::path::PathBuf),
}

/// One worker process as the proxy sees it.
#[derive(Debug)]
pub(crate) struct Backend {
    pub(crate) slot: usize,
    pub(crate) pid: u32,
    /// The worker's private listener for each public address, in order.
    pub(crate) addrs: Vec<Target>,
    /// The slot mixed into a hash key, stable across the slot's workers.
    key: u64,
    active: ActiveCount,
    /// Connections forwarded to it, ever.
    pub(crate) total: AtomicU64,
    /// Connections to it that could not be made.
    pub(crate) connect_errors: AtomicU64,
    /// Out of rotation and waiting for its connections to end.
    draining: AtomicBool,
    /// Told the supervisor it is idle (once), on this channel.
    idle_sent: AtomicBool,
    idle: mpsc::UnboundedSender<u32>,
    /// Inodes of its private listeners, to check that the worker still
    /// holds them (the master keeps copies, which keep them listening).
    inodes: Vec<u64>,
    /// When the worker was last seen holding them (ms since `EPOCH`).
    checked_at: AtomicU64,
    /// The worker closed its listener: it gets no more connections.
    refusing: AtomicBool,
    /// Where a refusing worker is reported (once).
    refusing_tx: mpsc::UnboundedSender<u32>,
    /// HTTP mode: idle keep-alive connections to it.
    #[cfg(feature = "http")]
    pub(crate) pool: Pool,
}

#[cfg(feature = "http")]
type Pool = http::Pool;

/// How long a check that a worker still holds its listener is trusted.
const HOLD_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

pub(crate) fn now_ms() -> u64 {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    EPOCH
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

/// Whether process `pid` has an fd on the socket with this inode.
fn holds_socket(pid: u32, inode: u64) -> bool {
    let want = format!("socket:[{inode}]");
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        // Cannot look (gone, or no /proc): assume it does.
        return true;
    };
    dir.flatten()
        .any(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.as_os_str() == want.as_str()))
}

impl Backend {
    /// A backend for the worker `pid` listening on `addrs` (its private
    /// listeners, whose socket inodes are `inodes`); once it drains to zero
    /// connections its pid is sent on `idle`. The master keeps a copy of
    /// each private listener until the worker is reaped (then it passes on
    /// what the worker never accepted); a worker found to have closed its
    /// own is reported on `refusing_tx`, and skipped.
    pub(crate) fn new(
        slot: usize,
        pid: u32,
        addrs: Vec<Target>,
        inodes: Vec<u64>,
        idle: mpsc::UnboundedSender<u32>,
        refusing_tx: mpsc::UnboundedSender<u32>,
    ) -> Arc<Self> {
        Arc::new(Backend {
            slot,
            pid,
            addrs,
            inodes,
            // Checked at the first pick.
            checked_at: AtomicU64::new(0),
            refusing: AtomicBool::new(false),
            refusing_tx,
            key: (slot as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5851_f42d_4c95_7f2d,
            active: ActiveCount::default(),
            total: AtomicU64::new(0),
            connect_errors: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            idle_sent: AtomicBool::new(false),
            idle,
            #[cfg(feature = "http")]
            pool: Default::default(),
        })
    }

    /// Whether the worker has closed its private listener (checked at most
    /// once per [`HOLD_CHECK`]; reported to the supervisor once).
    fn refuses(&self) -> bool {
        if self.refusing.load(Ordering::Acquire) {
            return true;
        }
        let now = now_ms();
        let last = self.checked_at.load(Ordering::Relaxed);
        if self.inodes.is_empty()
            || (last != 0 && now.saturating_sub(last) < HOLD_CHECK.as_millis() as u64)
        {
            return false;
        }
        self.checked_at.store(now, Ordering::Relaxed);
        if self.inodes.iter().all(|&i| holds_socket(self.pid, i)) {
            return false;
        }
        if !self.refusing.swap(true, Ordering::AcqRel) {
            let _ = self.refusing_tx.send(self.pid);
        }
        true
    }

    /// Open connections.
    pub(crate) fn active(&self) -> u32 {
        self.active.get()
    }

    /// Takes the backend out of service: once its count is zero the
    /// supervisor hears of it on the idle channel. Returns true when it is
    /// idle already.
    pub(crate) fn start_draining(&self) -> bool {
        self.draining.store(true, Ordering::Release);
        // Its idle connections close now; busy ones after their response.
        #[cfg(feature = "http")]
        self.pool.clear();
        self.active() == 0 && !self.idle_sent.swap(true, Ordering::AcqRel)
    }
}

impl Candidate for Arc<Backend> {
    #[inline]
    fn key(&self) -> u64 {
        self.key
    }
    #[inline]
    fn active(&self) -> u32 {
        self.active.get()
    }
}

/// A counted connection to a backend; the count drops with it, however the
/// connection ends, and a draining backend that reaches zero is reported.
struct Counted {
    backend: Arc<Backend>,
    /// Its position in the rotation it was picked from.
    index: usize,
}

impl Counted {
    fn new(backends: &[Arc<Backend>], index: usize) -> Self {
        let backend = backends[index].clone();
        backend.active.open();
        Counted { backend, index }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let left = self.backend.active.close();
        if left == 0
            && self.backend.draining.load(Ordering::Acquire)
            && !self.backend.idle_sent.swap(true, Ordering::AcqRel)
        {
            let _ = self.backend.idle.send(self.backend.pid);
        }
    }
}

/// Creates a worker's private listener on loopback.
pub(crate) fn private_listener(backlog: u32) -> std::io::Result<(Socket, SocketAddr)> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    socket.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    let addr = socket
        .local_addr()?
        .as_socket()
        .ok_or_else(|| std::io::Error::other("private listener has no address"))?;
    Ok((socket, addr))
}

/// Creates a worker's private listener as a Unix socket at `path`, which
/// only this user may connect to (0600, in a 0700 directory).
pub(crate) fn private_unix_listener(
    path: &std::path::Path,
    backlog: u32,
) -> std::io::Result<Socket> {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::remove_file(path);
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    socket.bind(&socket2::SockAddr::unix(path)?)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    Ok(socket)
}

/// The backends new connections may go to; the supervisor replaces the set,
/// the accept loops read it.
#[derive(Debug, Default)]
pub(crate) struct Rotation {
    set: Mutex<Arc<Vec<Arc<Backend>>>>,
    version: AtomicU64,
    changed: Notify,
}

impl Rotation {
    /// Replaces the set if it differs (by pid, in order).
    pub(crate) fn replace(&self, backends: Vec<Arc<Backend>>) {
        let mut set = self.set.lock().unwrap_or_else(|p| p.into_inner());
        let same =
            set.len() == backends.len() && set.iter().zip(&backends).all(|(a, b)| a.pid == b.pid);
        if same {
            return;
        }
        *set = Arc::new(backends);
        self.version.fetch_add(1, Ordering::AcqRel);
        self.changed.notify_waiters();
    }

    fn snapshot(&self) -> (u64, Arc<Vec<Arc<Backend>>>) {
        let set = self.set.lock().unwrap_or_else(|p| p.into_inner());
        (self.version.load(Ordering::Acquire), set.clone())
    }

    /// The set, once it is not empty.
    async fn serving(&self) -> (u64, Arc<Vec<Arc<Backend>>>) {
        loop {
            let notified = self.changed.notified();
            let (version, backends) = self.snapshot();
            if !backends.is_empty() {
                return (version, backends);
            }
            notified.await;
        }
    }
}

/// A port on loopback that is free now, for a worker that binds `PORT`
/// itself (the PORT contract).
pub(crate) fn free_port() -> std::io::Result<SocketAddr> {
    std::net::TcpListener::bind(("127.0.0.1", 0))?.local_addr()
}

/// How often the readiness probe tries to connect.
const PROBE_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);

/// Connects to `addr` until it answers, then reports `pid` ready. Gives up
/// when nobody listens for the notes any more; the start timeout bounds it.
pub(crate) async fn probe(
    addr: SocketAddr,
    pid: nix::unistd::Pid,
    notes: mpsc::UnboundedSender<crate::ready::Note>,
) {
    loop {
        if TcpStream::connect(addr).await.is_ok() {
            let _ = notes.send(crate::ready::Note::Ready(pid));
            return;
        }
        if notes.is_closed() {
            return;
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}

/// Every worker's backend by pid, shared by the supervisor (which adds and
/// removes) and handles (which read the counts).
pub(crate) type Registry = Arc<Mutex<std::collections::HashMap<u32, Arc<Backend>>>>;

/// What every accept loop shares.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProxyConfig {
    pub(crate) strategy: Strategy,
    pub(crate) header: Option<ProxyProtocol>,
    /// Forward with splice(2) instead of copying through user space.
    pub(crate) splice: bool,
    /// Close a connection on which nothing moved for this long.
    pub(crate) idle_timeout: Option<std::time::Duration>,
    /// HTTP mode: requests, not connections, are balanced.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) http: bool,
    /// HTTP mode: a cookie pins each client to a slot.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) sticky: bool,
    /// HTTP mode: how long a client may take to send a request head, and
    /// an idle keep-alive client connection is kept.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) header_timeout: std::time::Duration,
    /// HTTP mode: how long a worker may take to send a response head.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) response_timeout: std::time::Duration,
}

/// HTTP mode: how long a client may take to send a request head (a
/// slowloris is cut off then), and an idle keep-alive connection is kept.
pub const DEFAULT_HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// HTTP mode: how long a worker may take to send a response head before
/// the client gets `504`.
pub const DEFAULT_RESPONSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Default time a proxied connection may stay quiet both ways before it is
/// closed (long enough for WebSocket apps that ping every minute or so).
pub const DEFAULT_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// Proxy mode's limits and how often they bit, shared by the accept loops
/// and handles.
#[derive(Debug)]
pub(crate) struct Counters {
    /// The most connections open at once.
    pub(crate) limit: std::sync::atomic::AtomicUsize,
    /// Times a new connection had to wait because the limit was reached.
    pub(crate) at_limit: AtomicU64,
    /// Connections closed for being idle.
    pub(crate) idle_closed: AtomicU64,
    /// HTTP mode: the master's own 4xx, 502, 503 and 504 answers.
    pub(crate) bad_request: AtomicU64,
    pub(crate) bad_gateway: AtomicU64,
    pub(crate) unavailable: AtomicU64,
    pub(crate) gateway_timeout: AtomicU64,
    /// HTTP mode: responses a worker sent with no request outstanding.
    pub(crate) worker_protocol_errors: AtomicU64,
    throttle: Mutex<crate::observe::throttle::LogThrottle>,
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    error_throttle: Mutex<crate::observe::throttle::LogThrottle>,
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    protocol_throttle: Mutex<crate::observe::throttle::LogThrottle>,
    /// Open client connections, for giving a burst's memory back.
    trim: Arc<trim::Trim>,
    log: crate::observe::log::Log,
}

/// The connections the master forwards to one worker now (see
/// [`crate::Handle::proxied_connections`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Proxied {
    /// The worker's slot.
    pub slot: usize,
    /// The worker's pid.
    pub pid: u32,
    /// Connections open to it.
    pub open: u32,
}

/// What proxy mode's limits did (see [`crate::Handle::proxy_stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct ProxyStats {
    /// The most client connections open at once (`--max-connections`).
    pub limit: usize,
    /// Times a new client had to wait in the listen queue because the
    /// limit was reached.
    pub limit_reached: u64,
    /// Client connections closed because nothing moved for the idle
    /// timeout.
    pub idle_closed: u64,
    /// HTTP mode: requests the master refused itself (`400` malformed or
    /// ambiguous, `501` an unknown transfer coding, `408` a body that
    /// stopped coming, `431` head too large, `405` CONNECT).
    pub bad_request: u64,
    /// HTTP mode: requests the master answered `502 Bad Gateway` (the
    /// worker failed and the request could not be sent again).
    pub bad_gateway: u64,
    /// HTTP mode: requests answered `503` (no ready worker in time).
    pub unavailable: u64,
    /// HTTP mode: requests answered `504` (no response head in time).
    pub gateway_timeout: u64,
    /// HTTP mode: responses a worker sent with no request outstanding
    /// (on an idle pooled connection, or after its answer); each closed
    /// that connection and was reported as a
    /// [`crate::Notice::WorkerProtocolError`].
    pub worker_protocol_errors: u64,
}

impl Counters {
    pub(crate) fn new(log: crate::observe::log::Log) -> Counters {
        Counters {
            limit: Default::default(),
            at_limit: Default::default(),
            idle_closed: Default::default(),
            bad_request: Default::default(),
            bad_gateway: Default::default(),
            unavailable: Default::default(),
            gateway_timeout: Default::default(),
            worker_protocol_errors: Default::default(),
            throttle: Default::default(),
            error_throttle: Default::default(),
            protocol_throttle: Default::default(),
            trim: Default::default(),
            log,
        }
    }

    pub(crate) fn stats(&self) -> ProxyStats {
        ProxyStats {
            limit: self.limit.load(Ordering::Relaxed),
            limit_reached: self.at_limit.load(Ordering::Relaxed),
            idle_closed: self.idle_closed.load(Ordering::Relaxed),
            bad_request: self.bad_request.load(Ordering::Relaxed),
            bad_gateway: self.bad_gateway.load(Ordering::Relaxed),
            unavailable: self.unavailable.load(Ordering::Relaxed),
            gateway_timeout: self.gateway_timeout.load(Ordering::Relaxed),
            worker_protocol_errors: self.worker_protocol_errors.load(Ordering::Relaxed),
        }
    }

    /// HTTP mode: counts an error the master answered itself, and logs
    /// it (one line a second at most).
    #[cfg(feature = "http")]
    fn http_error(&self, status: u16, text: impl FnOnce() -> String) {
        let counter = match status {
            503 => &self.unavailable,
            504 => &self.gateway_timeout,
            400..=499 | 501 => &self.bad_request,
            _ => &self.bad_gateway,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.notice(
            &self.error_throttle,
            None,
            crate::observe::event::Notice::HttpError,
            text,
        );
    }

    /// HTTP mode: counts a response worker `slot` sent with no request
    /// outstanding, and logs it naming the slot (one line a second at
    /// most).
    #[cfg(feature = "http")]
    fn worker_protocol_error(&self, slot: usize, text: impl FnOnce() -> String) {
        self.worker_protocol_errors.fetch_add(1, Ordering::Relaxed);
        let notice = crate::observe::event::Notice::WorkerProtocolError;
        self.notice(&self.protocol_throttle, Some(slot), notice, text);
    }

    fn log(&self, text: impl FnOnce() -> String) {
        self.notice(
            &self.throttle,
            None,
            crate::observe::event::Notice::ConnectionLimit,
            text,
        );
    }

    /// Logs a `notice` (about `slot`, if one) unless `throttle` has let one
    /// through this second.
    fn notice(
        &self,
        throttle: &Mutex<crate::observe::throttle::LogThrottle>,
        slot: Option<usize>,
        notice: crate::observe::event::Notice,
        text: impl FnOnce() -> String,
    ) {
        let line = throttle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .line(std::time::Instant::now(), text);
        if let Some(line) = line {
            self.log.notice(slot, notice, line);
        }
    }
}

/// A permit for one more client connection. At the limit, new clients wait
/// in the listen queue (not reset, and the master keeps the fds it needs to
/// restart workers). None once the limit is gone (the cluster ended).
async fn admit(
    slots: &Arc<tokio::sync::Semaphore>,
    counters: &Counters,
    release: fn(),
) -> Option<Admitted> {
    if slots.available_permits() == 0 {
        counters.at_limit.fetch_add(1, Ordering::Relaxed);
        counters.log(|| {
            format!(
                "proxy: {} connections open, the limit (--max-connections); new ones wait in \
                 the listen queue",
                counters.limit.load(Ordering::Relaxed)
            )
        });
    }
    let permit = slots.clone().acquire_owned().await.ok()?;
    counters.trim.opened();
    Some(Admitted {
        _permit: permit,
        trim: counters.trim.clone(),
        release,
    })
}

/// One client connection's place under the limit; when it goes, the
/// memory of a burst that left is given back (see [`trim`]).
pub(crate) struct Admitted {
    _permit: tokio::sync::OwnedSemaphorePermit,
    trim: Arc<trim::Trim>,
    /// Drops what the plane keeps for reuse, before a trim.
    release: fn(),
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.trim.closed(self.release);
    }
}

/// Accepts on `listener` for as long as the task lives. While no backend
/// is in rotation it stops accepting, so new connections wait in the
/// listen queue instead of being reset.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    address: usize,
    rotation: Arc<Rotation>,
    config: ProxyConfig,
    seed: u64,
    slots: Arc<tokio::sync::Semaphore>,
    counters: Arc<Counters>,
) {
    let mut picker = Picker::new(config.strategy, seed);
    let (mut version, mut backends) = rotation.snapshot();
    loop {
        if backends.is_empty() {
            (version, backends) = rotation.serving().await;
        }
        let Some(permit) = admit(&slots, &counters, || {}).await else {
            return;
        };
        let (client, peer) = match listener.accept().await {
            Ok(c) => c,
            // Out of fds and the like: wait a moment rather than spin.
            Err(_) => {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        if rotation.version.load(Ordering::Acquire) != version {
            (version, backends) = rotation.snapshot();
        }
        let Some(first) = picker.pick(backends.as_slice(), hash_ip(peer.ip())) else {
            // The set emptied while we accepted: hand it to the first
            // backend that comes back.
            let rotation = rotation.clone();
            let counters = counters.clone();
            tokio::spawn(async move {
                let (_, b) = rotation.serving().await;
                let first = Counted::new(&b, 0);
                forward(client, peer, address, b, first, config, &counters).await;
                drop(permit);
            });
            continue;
        };
        // Counted at the pick, so that the next pick sees it.
        let first = Counted::new(&backends, first);
        let counters = counters.clone();
        let backends = backends.clone();
        tokio::spawn(async move {
            forward(client, peer, address, backends, first, config, &counters).await;
            drop(permit);
        });
    }
}

/// Forwards a connection that a worker never accepted (the master took it
/// from the worker's private listener after the worker was reaped) to a
/// backend in rotation, as soon as there is one. The bytes the master
/// already forwarded, a PROXY header included, are still unread in it and
/// go along.
pub(crate) async fn pass_on(
    conn: Socket,
    address: usize,
    rotation: Arc<Rotation>,
    config: ProxyConfig,
    counters: Arc<Counters>,
) {
    if conn.set_nonblocking(true).is_err() {
        return;
    }
    let unix = conn.domain().is_ok_and(|d| d == Domain::UNIX);
    let (_, backends) = rotation.serving().await;
    let first = Counted::new(&backends, 0);
    let Some((counted, upstream)) = connect(&backends, first, address).await else {
        return;
    };
    if unix {
        let Ok(client) = UnixStream::from_std(std::os::unix::net::UnixStream::from(
            std::os::fd::OwnedFd::from(conn),
        )) else {
            return;
        };
        upstream.carry(&client, None, config, &counters).await;
    } else {
        let Ok(client) = TcpStream::from_std(std::net::TcpStream::from(conn)) else {
            return;
        };
        upstream.carry(&client, None, config, &counters).await;
    }
    drop(counted);
}

/// A connection to a worker's private listener (proxy mode relays it;
/// HTTP mode pools it).
pub(crate) enum Upstream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Upstream {
    pub(crate) async fn open(target: &Target) -> std::io::Result<Upstream> {
        Ok(match target {
            Target::Tcp(addr) => {
                let s = TcpStream::connect(addr).await?;
                let _ = s.set_nodelay(true);
                Upstream::Tcp(s)
            }
            Target::Unix(path) => Upstream::Unix(UnixStream::connect(path).await?),
        })
    }

    /// Sends the header, then relays until the connection ends.
    async fn carry<C: relay::Duplex>(
        &self,
        client: &C,
        header: Option<&[u8]>,
        config: ProxyConfig,
        counters: &Counters,
    ) {
        match self {
            Upstream::Tcp(u) => carry(client, u, header, config, counters).await,
            Upstream::Unix(u) => carry(client, u, header, config, counters).await,
        }
    }
}

/// Connects to the chosen backend (`first`), or the next ones after it if
/// that fails or it closed its listener: the counted backend and the
/// connection, or None when no backend takes it.
async fn connect(
    backends: &Arc<Vec<Arc<Backend>>>,
    first: Counted,
    address: usize,
) -> Option<(Counted, Upstream)> {
    let n = backends.len();
    let start = first.index;
    let mut chosen = Some(first);
    for attempt in 0..n {
        let counted = match chosen.take() {
            Some(c) => c,
            None => Counted::new(backends, (start + attempt) % n),
        };
        if counted.backend.refuses() {
            continue;
        }
        // The PORT contract has one port for every address.
        let addrs = &counted.backend.addrs;
        let Some(target) = addrs.get(address).or(addrs.first()) else {
            continue;
        };
        match Upstream::open(target).await {
            Ok(upstream) => {
                counted.backend.total.fetch_add(1, Ordering::Relaxed);
                return Some((counted, upstream));
            }
            Err(_) => {
                counted
                    .backend
                    .connect_errors
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    None
}

/// Connects to the chosen backend (`first`), or the next ones if that fails
/// (no client byte has been read yet), then copies both ways until both
/// sides are done; a half-close is passed on.
async fn forward(
    client: TcpStream,
    peer: SocketAddr,
    address: usize,
    backends: Arc<Vec<Arc<Backend>>>,
    first: Counted,
    config: ProxyConfig,
    counters: &Counters,
) {
    let _ = client.set_nodelay(true);
    // No backend took it: the client sees the connection close.
    let Some((counted, upstream)) = connect(&backends, first, address).await else {
        return;
    };
    let header = config
        .header
        .map(|v| header::encode(v, peer, client.local_addr().unwrap_or(peer)));
    match &upstream {
        Upstream::Tcp(u) if config.splice => {
            if send_header(u, header.as_deref()).await.is_ok() {
                let _ = splice::bidirectional(&client, u).await;
            }
        }
        _ => {
            upstream
                .carry(&client, header.as_deref(), config, counters)
                .await
        }
    }
    drop(counted);
}

/// Writes the PROXY header, if any, before the client's bytes.
async fn send_header<U: relay::Duplex>(upstream: &U, header: Option<&[u8]>) -> std::io::Result<()> {
    if let Some(bytes) = header {
        relay::write_all(upstream, bytes).await?;
    }
    Ok(())
}

/// Sends the header, then relays until the connection ends.
async fn carry<C: relay::Duplex, U: relay::Duplex>(
    client: &C,
    upstream: &U,
    header: Option<&[u8]>,
    config: ProxyConfig,
    counters: &Counters,
) {
    if send_header(upstream, header).await.is_err() {
        return;
    }
    if relay::relay(client, upstream, config.idle_timeout).await == relay::Ended::Idle {
        counters.idle_closed.fetch_add(1, Ordering::Relaxed);
    }
}
