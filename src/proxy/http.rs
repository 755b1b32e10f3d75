//! HTTP balance mode (feature `http`): the master speaks HTTP/1.1 to the
//! clients and forwards each *request* to a worker.
//!
//! A client's connection belongs to the master, and every request on it
//! is balanced on its own (the strategies of proxy mode, counting requests
//! in flight instead of connections) and sent over a pooled keep-alive
//! connection to the worker's private listener. So a worker can be retired
//! without the client noticing, whatever the app does with its own
//! connections when told to stop: it gets no new request, its idle pooled
//! connections are dropped, and the stop signal follows once its last
//! request has been answered (see `Supervisor::defers_stop_signal`).
//!
//! Heads are parsed and rewritten by [`super::h1`]; bodies stream through
//! as they come, never whole in memory. A request that could not be
//! delivered (the worker's connection failed before any of it was
//! written, or it was refused) goes to another worker; one whose worker
//! closed or died before any byte of an answer is sent once more if it is
//! idempotent and has no body. Otherwise the client gets `502`. A response
//! head that takes longer than the response timeout is a `504`; no ready
//! worker within [`NO_WORKER_WAIT`] a `503` with `Retry-After`.
//! `Connection: Upgrade` (WebSocket) is tunnelled once the worker answers
//! `101`; the tunnel counts as a request in flight for as long as it is
//! open.
//!
//! An idle client connection holds no buffer: one is taken when a request
//! arrives and given back once it has been answered.

use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{tcp, unix, TcpListener, TcpStream};

use super::h1::{self, Answering, Body, Framing, Pass, RequestHead};
use super::{admit, relay, Backend, Counted, Counters, ProxyConfig, Rotation, Upstream};
use crate::balance::{hash_ip, Picker};
use crate::types::Cidr;

/// How long a request waits for a ready worker before it is answered 503.
pub const NO_WORKER_WAIT: Duration = Duration::from_secs(10);
/// An idle pooled connection older than this is not reused: servers close
/// theirs after a few seconds (Node's default is 5 s), and a request sent
/// on one being closed would have to be retried.
const POOL_IDLE: Duration = Duration::from_secs(2);
/// Idle connections kept per worker.
const POOL_MAX: usize = 256;
/// What one read asks for.
const READ: usize = 16 * 1024;
/// A buffer with less room than this grows before a read.
const READ_MIN: usize = 1024;

// What HTTP mode does with a worker connection besides opening it:
// splitting it for a request, checking a pooled one, tunnelling.
impl Upstream {
    fn split(&mut self) -> (UpRead<'_>, UpWrite<'_>) {
        match self {
            Upstream::Tcp(s) => {
                let (r, w) = s.split();
                (UpRead::Tcp(r), UpWrite::Tcp(w))
            }
            Upstream::Unix(s) => {
                let (r, w) = s.split();
                (UpRead::Unix(r), UpWrite::Unix(w))
            }
        }
    }

    fn sock(&self) -> SockRef<'_> {
        match self {
            Upstream::Tcp(s) => SockRef::from(s),
            Upstream::Unix(s) => SockRef::from(s),
        }
    }
}

impl relay::Duplex for Upstream {
    async fn readable(&self) -> io::Result<()> {
        match self {
            Upstream::Tcp(s) => s.readable().await,
            Upstream::Unix(s) => s.readable().await,
        }
    }
    fn try_read_buf(&self, buf: &mut Vec<u8>) -> io::Result<usize> {
        match self {
            Upstream::Tcp(s) => s.try_read_buf(buf),
            Upstream::Unix(s) => s.try_read_buf(buf),
        }
    }
    async fn writable(&self) -> io::Result<()> {
        match self {
            Upstream::Tcp(s) => s.writable().await,
            Upstream::Unix(s) => s.writable().await,
        }
    }
    fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Upstream::Tcp(s) => s.try_write(buf),
            Upstream::Unix(s) => s.try_write(buf),
        }
    }
    fn shutdown_write(&self) {
        let _ = self.sock().shutdown(std::net::Shutdown::Write);
    }
    fn reset_on_close(&self) {
        let _ = self.sock().set_linger(Some(Duration::ZERO));
    }
}

/// The reading half of an [`Upstream`].
enum UpRead<'a> {
    Tcp(tcp::ReadHalf<'a>),
    Unix(unix::ReadHalf<'a>),
}

/// The writing half of an [`Upstream`].
enum UpWrite<'a> {
    Tcp(tcp::WriteHalf<'a>),
    Unix(unix::WriteHalf<'a>),
}

impl AsyncRead for UpRead<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpRead::Tcp(r) => Pin::new(r).poll_read(cx, buf),
            UpRead::Unix(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpWrite<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpWrite::Tcp(w) => Pin::new(w).poll_write(cx, buf),
            UpWrite::Unix(w) => Pin::new(w).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpWrite::Tcp(w) => Pin::new(w).poll_flush(cx),
            UpWrite::Unix(w) => Pin::new(w).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpWrite::Tcp(w) => Pin::new(w).poll_shutdown(cx),
            UpWrite::Unix(w) => Pin::new(w).poll_shutdown(cx),
        }
    }
}

/// An idle keep-alive connection to a worker's private listener.
struct Pooled {
    address: usize,
    up: Upstream,
    since: Instant,
}

/// What an idle connection's socket says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Idle {
    /// Nothing came: it can carry a request.
    Quiet,
    /// The worker closed it (or it failed).
    Closed,
    /// The worker sent bytes nobody asked for: a stray response.
    Stray,
}

impl Upstream {
    /// Whether anything came on an idle connection, registering `cx`'s
    /// waker for the next thing that does. Costs no system call while the
    /// reactor has seen nothing since the last check.
    fn idle_state(&self, cx: &mut Context<'_>) -> Idle {
        loop {
            let ready = match self {
                Upstream::Tcp(s) => s.poll_read_ready(cx),
                Upstream::Unix(s) => s.poll_read_ready(cx),
            };
            match ready {
                Poll::Pending => return Idle::Quiet,
                Poll::Ready(Err(_)) => return Idle::Closed,
                Poll::Ready(Ok(())) => {}
            }
            // The reactor said readable (maybe only because the last read
            // of the previous answer did not run dry): a peek tells, and
            // an empty socket clears the readiness, so the next poll
            // registers the waker.
            let peek = || {
                let mut byte = [MaybeUninit::uninit(); 1];
                self.sock().peek(&mut byte)
            };
            let peeked = match self {
                Upstream::Tcp(s) => s.try_io(tokio::io::Interest::READABLE, peek),
                Upstream::Unix(s) => s.try_io(tokio::io::Interest::READABLE, peek),
            };
            match peeked {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Ok(n) if n > 0 => return Idle::Stray,
                _ => return Idle::Closed,
            }
        }
    }
}

/// A worker's idle connections, watched: one that the worker closes, or
/// on which it sends anything, is dropped at once. A stray response
/// (a late timer, a bug, a hostile app) would otherwise be read as the
/// answer to the next request sent on it, and every client after that
/// would get the answer meant for the one before (nginx and HAProxy drop
/// such connections too).
///
/// One watcher task per worker does it without a task per connection:
/// each idle socket is registered with the watcher's waker when it is put
/// back, so a socket that becomes readable wakes the watcher, which checks
/// them all; a connection taken out gets a no-op waker instead.
#[derive(Default)]
pub(crate) struct Pool(Arc<Mutex<PoolState>>);

#[derive(Default)]
struct PoolState {
    idle: Vec<Pooled>,
    /// The watcher's waker, once it has run.
    watcher: Option<Waker>,
    /// A watcher task was started.
    watched: bool,
    /// The worker is gone: the watcher ends.
    closed: bool,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pool")
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.close();
    }
}

/// Which worker a pool's connections go to, to report a stray response.
#[derive(Clone, Copy)]
pub(crate) struct Worker {
    slot: usize,
    pid: u32,
}

impl Worker {
    /// Counts and logs (once a second at most) a stray response.
    fn stray(self, counters: &Counters, when: &str) {
        let Worker { slot, pid } = self;
        counters.worker_protocol_error(slot, || {
            format!(
                "http: slot {slot}: pid {pid} sent a response {when}, with no request \
                 outstanding; its connection was closed"
            )
        });
    }
}

impl Pool {
    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops every idle connection: the worker sees them close.
    pub(crate) fn clear(&self) {
        self.lock().idle.clear();
    }

    /// The worker is gone: every idle connection is dropped, none is kept
    /// from now on, and the watcher ends. A connection the master made to
    /// a dead worker's listener may have been passed on to another worker;
    /// kept idle here, it would hold that worker's count up for ever.
    pub(crate) fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        state.idle.clear();
        if let Some(w) = state.watcher.take() {
            w.wake();
        }
    }

    /// The most recently used idle connection for `address` that nothing
    /// came on.
    fn take(&self, address: usize, worker: Worker, counters: &Counters) -> Taken {
        let mut cx = Context::from_waker(Waker::noop());
        let mut state = self.lock();
        let mut closed = false;
        while let Some(p) = state.idle.pop() {
            if p.address != address || p.since.elapsed() >= POOL_IDLE {
                continue;
            }
            // The no-op waker also stops this one waking the watcher.
            match p.up.idle_state(&mut cx) {
                Idle::Quiet => return Taken::Idle(p.up),
                Idle::Closed => closed = true,
                Idle::Stray => worker.stray(counters, "on an idle connection"),
            }
        }
        if closed {
            Taken::WorkerClosing
        } else {
            Taken::None
        }
    }

    fn put(&self, address: usize, up: Upstream, worker: Worker, counters: &Arc<Counters>) {
        let mut state = self.lock();
        if state.closed || state.idle.len() >= POOL_MAX {
            return;
        }
        let waker = state.watcher.clone().unwrap_or(Waker::noop().clone());
        match up.idle_state(&mut Context::from_waker(&waker)) {
            Idle::Quiet => {}
            Idle::Closed => return,
            Idle::Stray => return worker.stray(counters, "after its answer"),
        }
        state.idle.push(Pooled {
            address,
            up,
            since: Instant::now(),
        });
        if !state.watched {
            state.watched = true;
            tokio::spawn(watch(self.0.clone(), worker, counters.clone()));
        }
    }
}

/// What [`Pool::take`] found.
enum Taken {
    /// An idle connection nothing came on.
    Idle(Upstream),
    /// None for this address.
    None,
    /// None, and the worker had closed every one it had: it is probably
    /// exiting, so the request goes to another worker rather than on a
    /// new connection to this one.
    WorkerClosing,
}

/// Drops each idle connection of a pool that the worker closes or sends
/// anything on, until the pool is dropped.
async fn watch(pool: Arc<Mutex<PoolState>>, worker: Worker, counters: Arc<Counters>) {
    std::future::poll_fn(|cx| {
        let mut state = pool.lock().unwrap_or_else(|p| p.into_inner());
        if state.closed {
            return Poll::Ready(());
        }
        if !state
            .watcher
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            state.watcher = Some(cx.waker().clone());
        }
        state.idle.retain(|p| match p.up.idle_state(cx) {
            Idle::Quiet => true,
            Idle::Closed => false,
            Idle::Stray => {
                worker.stray(&counters, "on an idle connection");
                false
            }
        });
        Poll::Pending
    })
    .await
}

/// What every connection of one public address shares.
pub(crate) struct Shared {
    address: usize,
    rotation: Arc<Rotation>,
    picker: Mutex<Picker>,
    config: ProxyConfig,
    counters: Arc<Counters>,
    metrics: crate::observe::metrics::Http,
    /// Peers whose X-Forwarded-* are believed.
    trusted: Arc<[Cidr]>,
}

impl Shared {
    /// For public address `address`.
    pub(crate) fn new(
        address: usize,
        rotation: Arc<Rotation>,
        config: ProxyConfig,
        seed: u64,
        counters: Arc<Counters>,
        trusted: Arc<[Cidr]>,
    ) -> Arc<Shared> {
        Arc::new(Shared {
            address,
            rotation,
            picker: Mutex::new(Picker::new(config.strategy, seed)),
            config,
            counters,
            metrics: crate::observe::metrics::Http::default(),
            trusted,
        })
    }

    /// Answers an error itself (counted, logged at most once a second):
    /// whether the client's connection stays.
    async fn answer(
        &self,
        client: &mut TcpStream,
        status: u16,
        reason: &str,
        keep: bool,
        started: Instant,
    ) -> bool {
        self.counters.http_error(status, || {
            format!("http: answered {status} to a client: {reason}")
        });
        self.metrics.record(status, started.elapsed());
        client
            .write_all(&answer_bytes(status, reason, keep))
            .await
            .is_ok()
            && keep
    }
}

/// A short answer from the master itself.
fn answer_bytes(status: u16, reason: &str, keep: bool) -> Vec<u8> {
    let phrase = match status {
        400 => "Bad Request",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    };
    let body = format!("{reason}\n");
    format!(
        "HTTP/1.1 {status} {phrase}\r\ncontent-type: text/plain; charset=utf-8\r\n\
         content-length: {}\r\n{}{}\r\n{body}",
        body.len(),
        if status == 503 {
            "retry-after: 1\r\n"
        } else {
            ""
        },
        if keep { "" } else { "connection: close\r\n" },
    )
    .into_bytes()
}

/// Accepts clients on `listener` and serves each on a task of its own;
/// at most `slots` at once (the rest wait in the listen queue).
pub(crate) async fn accept_loop(
    listener: TcpListener,
    slots: Arc<tokio::sync::Semaphore>,
    shared: Arc<Shared>,
) {
    let counters = shared.counters.clone();
    loop {
        let Some(permit) = admit(&slots, &counters, Buffers::release).await else {
            return;
        };
        let (client, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = client.set_nodelay(true);
        let shared = shared.clone();
        tokio::spawn(async move {
            serve(client, peer, shared).await;
            drop(permit);
        });
    }
}

/// Serves one client connection until it closes.
async fn serve(mut client: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let who = h1::Client {
        ip: peer.ip(),
        trusted: shared.trusted.iter().any(|c| c.contains(peer.ip())),
        sticky: shared.config.sticky,
    };
    // A new client has usually sent its request by the time it is
    // accepted: read it now rather than wait for the reactor to report it.
    let mut buf = read_now(&client);
    serve_requests(&mut client, &mut buf, peer, who, &shared).await;
    Buffers::give(buf);
}

/// Serves requests on `client` until it closes, reading into `buf`.
async fn serve_requests(
    client: &mut TcpStream,
    buf: &mut Vec<u8>,
    peer: SocketAddr,
    who: h1::Client,
    shared: &Shared,
) {
    loop {
        let deadline = tokio::time::Instant::now() + shared.config.header_timeout;
        let (len, request) = match read_request(client, buf, who, deadline).await {
            Ok(Some(r)) => r,
            // Closed, or too slow: a slowloris is cut off here.
            Ok(None) => return,
            Err(reject) => {
                let (status, reason) = (reject.status, reject.reason);
                shared
                    .answer(client, status, reason, false, Instant::now())
                    .await;
                return;
            }
        };
        buf.drain(..len);
        // Boxed: its state (about 1.6 KB) is on the heap only while a
        // request is in flight, not in every idle client's task.
        match Box::pin(exchange(client, buf, request, peer, shared)).await {
            After::Keep => {}
            After::Close => return,
            After::Linger => return linger(client).await,
        }
        if buf.is_empty() {
            // Idle: the buffer goes back until the next request.
            Buffers::give(std::mem::take(buf));
        }
    }
}

/// Read buffers, reused: an idle client holds none, and a request takes
/// one for its head and one for its answer. Taking them from the heap each
/// time would cost more than the copy: the long-lived allocations of the
/// connections made meanwhile split the freed buffers, and each new client
/// grew the master by a buffer (17 KB per idle client, where HAProxy takes
/// one).
struct Buffers;

static BUFFERS: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
/// Buffers kept for reuse at most (each [`READ`] bytes).
const BUFFERS_KEPT: usize = 256;
/// Buffers kept after a burst of clients has left.
const BUFFERS_AFTER_TRIM: usize = 16;

impl Buffers {
    /// An empty buffer with room for a read.
    fn take() -> Vec<u8> {
        BUFFERS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(READ))
    }

    /// Frees the buffers kept for reuse but a few: after a burst of
    /// clients, before the heap is trimmed.
    fn release() {
        BUFFERS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .truncate(BUFFERS_AFTER_TRIM);
    }

    /// Gives `buf` back for reuse; one that grew for a large head is freed.
    fn give(mut buf: Vec<u8>) {
        if buf.capacity() < READ || buf.capacity() > 2 * READ {
            return;
        }
        buf.clear();
        let mut kept = BUFFERS.lock().unwrap_or_else(|p| p.into_inner());
        if kept.len() < BUFFERS_KEPT {
            kept.push(buf);
        }
    }
}

/// What the client has sent so far, read without waiting (tokio would
/// not try before the reactor reported the socket readable: a round trip
/// through `epoll_wait` for every new connection).
fn read_now(client: &TcpStream) -> Vec<u8> {
    use std::io::Read as _;
    let mut buf = Buffers::take();
    buf.resize(buf.capacity(), 0);
    match (&*SockRef::from(client)).read(&mut buf) {
        Ok(n) if n > 0 => {
            buf.truncate(n);
            buf
        }
        _ => {
            // Nothing yet: no buffer is held while waiting.
            Buffers::give(buf);
            Vec::new()
        }
    }
}

/// Reads a request head into `buf` by `deadline`: `Ok(None)` when the
/// client closed or took too long.
async fn read_request(
    client: &mut TcpStream,
    buf: &mut Vec<u8>,
    who: h1::Client,
    deadline: tokio::time::Instant,
) -> Result<Option<(usize, RequestHead)>, h1::Reject> {
    let mut scan = h1::HeadScan::default();
    loop {
        if !buf.is_empty() {
            let local = || client.local_addr().ok();
            if let Some(request) = h1::parse_request_scanned(buf, &mut scan, who, local)? {
                return Ok(Some(request));
            }
            // Part of a head: the rest must come by the deadline.
            if buf.capacity() - buf.len() < READ_MIN {
                buf.reserve(READ);
            }
            match tokio::time::timeout_at(deadline, client.read_buf(buf)).await {
                Ok(Ok(n)) if n > 0 => continue,
                _ => return Ok(None),
            }
        }
        // Idle: a buffer is taken only once there is something to read
        // (the socket may be reported readable when it is not, and a read
        // that waits would hold the buffer while the client idles).
        if !matches!(
            tokio::time::timeout_at(deadline, client.readable()).await,
            Ok(Ok(()))
        ) {
            return Ok(None);
        }
        if buf.capacity() < READ_MIN {
            *buf = Buffers::take();
        }
        match client.try_read_buf(buf) {
            Ok(n) if n > 0 => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                Buffers::give(std::mem::take(buf));
            }
            _ => return Ok(None),
        }
    }
}

/// How a request could not be forwarded.
#[derive(Debug)]
enum Failed {
    /// Nothing of it reached the worker: any request may go elsewhere.
    Unwritten,
    /// The worker closed or failed before any byte of an answer.
    Unanswered,
    /// The worker's answer cannot be passed on (before its head went out).
    BadResponse(&'static str),
    /// No response head within the response timeout.
    Timeout,
    /// The client's body is malformed.
    BadRequest(&'static str),
    /// The client's body stopped coming for the idle timeout.
    Stalled,
    /// The client is gone.
    Client,
    /// The answer broke off after its head went to the client: all that
    /// can be done is close the connection.
    Broken,
}

/// A request answered.
struct Answered {
    /// The client's connection stays open.
    keep_client: bool,
    /// The worker's connection may carry another request.
    reusable: bool,
    /// The worker switched protocols: what it sent after its `101`.
    switched: Option<Vec<u8>>,
    /// The worker answered before the client had sent all of its body.
    body_left: bool,
}

/// What becomes of the client's connection after a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    /// It carries the next request.
    Keep,
    /// It closes.
    Close,
    /// It closes, though the client may still be sending a body: see
    /// [`linger`].
    Linger,
}

/// How long a closing connection's unread body is read and dropped.
const LINGER: Duration = Duration::from_secs(2);

/// Closes a connection whose request body was not all read: the write
/// side first, then whatever the client still sends is read and dropped
/// until it closes too (or for [`LINGER`]). Closing at once would make the
/// kernel answer the unread bytes with a reset, which can destroy the
/// answer before the client has read it (nginx's `lingering_close`).
async fn linger(client: &mut TcpStream) {
    let _ = SockRef::from(&*client).shutdown(std::net::Shutdown::Write);
    let mut sink = Buffers::take();
    let _ = tokio::time::timeout(LINGER, async {
        loop {
            sink.clear();
            match client.read_buf(&mut sink).await {
                Ok(n) if n > 0 => {}
                _ => return,
            }
        }
    })
    .await;
    Buffers::give(sink);
}

/// Forwards one request and its answer, to another worker if the first
/// could not take it.
async fn exchange(
    client: &mut TcpStream,
    buf: &mut Vec<u8>,
    request: RequestHead,
    peer: SocketAddr,
    shared: &Shared,
) -> After {
    let started = Instant::now();
    // After the master's own error answer, the connection is kept only if
    // no unread body is left in it.
    let keep = request.keep_alive && !request.http10 && request.framing == Framing::Empty;
    let mut tried = None;
    let mut failure = "no worker could take the request";
    for attempt in 0..2 {
        let wanted = if attempt == 0 { request.pinned } else { None };
        let Some((counted, backend)) = pick(shared, peer, tried, wanted).await else {
            let reason = "no worker is ready to take the request";
            let kept = shared.answer(client, 503, reason, keep, started).await;
            return after_error(kept, &request);
        };
        tried = Some(backend.pid);
        let mut up = match connection(&backend, shared, &request).await {
            Ok(up) => up,
            Err(Unreachable::Connect) => {
                backend.connect_errors.fetch_add(1, Ordering::Relaxed);
                failure = "cannot connect to the worker";
                continue;
            }
            Err(Unreachable::Closing) => {
                failure = "the worker closed its connections";
                continue;
            }
        };
        backend.total.fetch_add(1, Ordering::Relaxed);
        let set_cookie =
            (shared.config.sticky && request.pinned != Some(backend.slot)).then_some(backend.slot);
        let to = (shared, worker(&backend));
        let result = forward(client, buf, &mut up, &request, to, set_cookie, started).await;
        let (status, reason) = match result {
            Ok(answered) => {
                let after = if let Some(early) = answered.switched {
                    tunnel(client, buf, up, &early, shared).await;
                    After::Close
                } else {
                    if answered.reusable && !backend.draining.load(Ordering::Acquire) {
                        // A draining worker's connections close with their
                        // last answer.
                        backend
                            .pool
                            .put(shared.address, up, worker(&backend), &shared.counters);
                    }
                    if answered.body_left {
                        After::Linger
                    } else if answered.keep_client {
                        After::Keep
                    } else {
                        After::Close
                    }
                };
                drop(counted);
                return after;
            }
            Err(Failed::Unwritten) => {
                failure = "the worker's connection failed";
                continue;
            }
            Err(Failed::Unanswered) if request.replayable() => {
                failure = "the worker closed the connection without answering";
                continue;
            }
            Err(Failed::Unanswered) => (
                502,
                "the worker closed the connection without answering, and the request cannot \
                 be sent again",
            ),
            Err(Failed::BadResponse(reason)) => (502, reason),
            Err(Failed::Timeout) => (504, "the worker did not answer in time"),
            Err(Failed::BadRequest(reason)) => (400, reason),
            Err(Failed::Stalled) => (408, "the request body stopped coming"),
            Err(Failed::Client | Failed::Broken) => return After::Close,
        };
        drop(counted);
        let kept = shared.answer(client, status, reason, keep, started).await;
        return after_error(kept, &request);
    }
    let kept = shared.answer(client, 502, failure, keep, started).await;
    after_error(kept, &request)
}

/// After the master's own answer to `request`: the connection stays if it
/// was `kept`, else it lingers if a body may still be coming.
fn after_error(kept: bool, request: &RequestHead) -> After {
    if kept {
        After::Keep
    } else if request.framing != Framing::Empty {
        After::Linger
    } else {
        After::Close
    }
}

/// An idle pooled connection to `backend` that nothing came on, or a new
/// one.
async fn connection(
    backend: &Backend,
    shared: &Shared,
    request: &RequestHead,
) -> Result<Upstream, Unreachable> {
    let address = shared.address;
    if !request.upgrade {
        match backend
            .pool
            .take(address, worker(backend), &shared.counters)
        {
            Taken::Idle(up) => return Ok(up),
            Taken::None => {}
            Taken::WorkerClosing => return Err(Unreachable::Closing),
        }
    }
    // The PORT contract has one port for every address.
    let target = backend
        .addrs
        .get(address)
        .or(backend.addrs.first())
        .ok_or(Unreachable::Connect)?;
    Upstream::open(target)
        .await
        .map_err(|_| Unreachable::Connect)
}

/// Why a request could not be sent to the worker picked for it.
enum Unreachable {
    /// Its connection could not be made.
    Connect,
    /// It closed every idle connection it had: it is on its way out.
    Closing,
}

fn worker(backend: &Backend) -> Worker {
    Worker {
        slot: backend.slot,
        pid: backend.pid,
    }
}

/// Sends `request` (its head, then its body as the client sends it) on
/// `up`, and passes the answer to the client.
async fn forward(
    client: &mut TcpStream,
    buf: &mut Vec<u8>,
    up: &mut Upstream,
    request: &RequestHead,
    (shared, worker): (&Shared, Worker),
    set_cookie: Option<usize>,
    started: Instant,
) -> Result<Answered, Failed> {
    let (mut client_read, mut client_write) = client.split();
    let (mut up_read, mut up_write) = up.split();
    let mut body = Body::new(request.framing);
    // The head goes with what of the body is here already, in one write.
    let mut first = Vec::new();
    let here = if request.framing == Framing::Empty {
        0
    } else {
        let n = body
            .take(buf, Pass::Verbatim, None)
            .map_err(|e| Failed::BadRequest(e.0))?;
        first.reserve(request.bytes.len() + n);
        first.extend_from_slice(&request.bytes);
        first.extend_from_slice(&buf[..n]);
        n
    };
    let head = if first.is_empty() {
        &request.bytes
    } else {
        &first
    };
    match up_write.write(head).await {
        Ok(n) if n > 0 => {
            if up_write.write_all(&head[n..]).await.is_err() {
                return Err(Failed::Unanswered);
            }
        }
        _ => return Err(Failed::Unwritten),
    }
    buf.drain(..here);

    let answered = AtomicBool::new(false);
    let answering = Answering {
        head: request.head,
        http10: request.http10,
        keep_alive: request.keep_alive,
        upgrade: request.upgrade,
        set_cookie,
    };
    let respond = respond(
        &mut up_read,
        &mut client_write,
        answering,
        (shared, worker),
        started,
        &answered,
    );
    // The rest of the body goes on while the answer is awaited: a worker
    // may answer before it has read it all.
    let mut sent = body.done();
    let send = pump(
        &mut body,
        Pass::Verbatim,
        buf,
        &mut client_read,
        &mut up_write,
        Vec::new(),
        shared.config.idle_timeout,
    );
    // The response timeout counts from the end of the request.
    let timeout = shared.config.response_timeout;
    let timer = tokio::time::sleep(timeout);
    let mut timing = sent;
    tokio::pin!(respond, send, timer);
    loop {
        tokio::select! {
            biased;
            result = &mut respond => {
                let mut answered = result?;
                if !sent {
                    // Its body was never all read: the client's
                    // connection cannot carry another request.
                    answered.keep_client = false;
                    answered.reusable = false;
                    answered.body_left = true;
                }
                return Ok(answered);
            }
            result = &mut send, if !sent => {
                sent = true;
                match result {
                    // The worker has the request, or failed while it was
                    // sent: its answer, or its absence, tells. Either
                    // way the response timeout runs from now.
                    Ok(()) | Err(Pumped::Write) => {
                        timer.as_mut().reset(tokio::time::Instant::now() + timeout);
                        timing = true;
                    }
                    Err(Pumped::Read) => return Err(Failed::Client),
                    Err(Pumped::Idle) if !answered.load(Ordering::Relaxed) => {
                        return Err(Failed::Stalled)
                    }
                    Err(Pumped::Idle) => return Err(Failed::Broken),
                    Err(Pumped::Bad(reason)) if !answered.load(Ordering::Relaxed) => {
                        return Err(Failed::BadRequest(reason))
                    }
                    Err(Pumped::Bad(_)) => return Err(Failed::Broken),
                }
            }
            () = &mut timer, if timing => {
                if !answered.load(Ordering::Relaxed) {
                    return Err(Failed::Timeout);
                }
                timing = false;
            }
        }
    }
}

/// Reads the worker's answer and passes it to the client: interim `1xx`
/// heads, the final head, and its body.
async fn respond(
    from: &mut UpRead<'_>,
    to: &mut tcp::WriteHalf<'_>,
    answering: Answering,
    (shared, worker): (&Shared, Worker),
    started: Instant,
    answered: &AtomicBool,
) -> Result<Answered, Failed> {
    let mut buf = Buffers::take();
    let result = answer(
        from,
        to,
        answering,
        (shared, worker),
        started,
        answered,
        &mut buf,
    )
    .await;
    Buffers::give(buf);
    result
}

/// [`respond`], reading into `buf`.
async fn answer(
    from: &mut UpRead<'_>,
    to: &mut tcp::WriteHalf<'_>,
    answering: Answering,
    (shared, worker): (&Shared, Worker),
    started: Instant,
    answered: &AtomicBool,
    buf: &mut Vec<u8>,
) -> Result<Answered, Failed> {
    let mut out = Vec::new();
    let mut interim = false;
    let head = loop {
        let mut scan = h1::HeadScan::default();
        let head = loop {
            if scan.end(buf).is_some() || buf.len() > h1::MAX_HEADER_BYTES {
                match h1::parse_response(buf, answering, &mut out) {
                    Ok(Some(head)) => break head,
                    Ok(None) => {}
                    Err(e) => return Err(Failed::BadResponse(e.0)),
                }
            }
            if buf.capacity() - buf.len() < READ_MIN {
                buf.reserve(READ);
            }
            match from.read_buf(buf).await {
                Ok(n) if n > 0 => {}
                _ if buf.is_empty() && !interim => return Err(Failed::Unanswered),
                _ => {
                    return Err(Failed::BadResponse(
                        "the worker closed the connection in the middle of its answer",
                    ))
                }
            }
        };
        buf.drain(..head.len);
        if head.status >= 200 || (head.status == 101 && answering.upgrade) {
            break head;
        }
        // 100 Continue, 103 Early Hints: on to an HTTP/1.1 client, and
        // the final answer follows.
        interim = true;
        if !answering.http10 {
            to.write_all(&out).await.map_err(|_| Failed::Client)?;
        }
        out.clear();
    };
    answered.store(true, Ordering::Relaxed);
    shared.metrics.record(head.status, started.elapsed());
    if head.status == 101 {
        to.write_all(&out).await.map_err(|_| Failed::Client)?;
        return Ok(Answered {
            keep_client: false,
            reusable: false,
            switched: Some(std::mem::take(buf)),
            body_left: false,
        });
    }
    let mut body = Body::new(head.framing);
    pump(
        &mut body,
        head.pass,
        buf,
        from,
        to,
        out,
        shared.config.idle_timeout,
    )
    .await
    .map_err(|e| match e {
        Pumped::Write => Failed::Client,
        Pumped::Read | Pumped::Bad(_) => Failed::Broken,
        Pumped::Idle => {
            shared.counters.idle_closed.fetch_add(1, Ordering::Relaxed);
            Failed::Broken
        }
    })?;
    if !buf.is_empty() {
        // More than the answer: the worker sent a response nobody asked
        // for, or will; this connection cannot be trusted again.
        worker.stray(&shared.counters, "right after its answer");
    }
    Ok(Answered {
        keep_client: !head.close_client,
        reusable: head.reusable && buf.is_empty(),
        switched: None,
        body_left: false,
    })
}

/// How a body could not be passed on.
#[derive(Debug)]
enum Pumped {
    /// Its sender failed or closed before its end.
    Read,
    /// Its recipient failed.
    Write,
    /// Its framing is broken.
    Bad(&'static str),
    /// Its sender sent nothing for the idle timeout.
    Idle,
}

/// Passes `body` from `from` to `to` as `pass` says, starting with what
/// is in `buf` and after `out` (a head to go first). What follows the
/// body is left in `buf`. A sender that sends nothing for `idle` in the
/// middle of a body has failed.
async fn pump<R, W>(
    body: &mut Body,
    pass: Pass,
    buf: &mut Vec<u8>,
    from: &mut R,
    to: &mut W,
    mut out: Vec<u8>,
    idle: Option<Duration>,
) -> Result<(), Pumped>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    loop {
        let n = body
            .take(buf, pass, Some(&mut out))
            .map_err(|e| Pumped::Bad(e.0))?;
        buf.drain(..n);
        if !out.is_empty() {
            to.write_all(&out).await.map_err(|_| Pumped::Write)?;
            out.clear();
        }
        if body.done() {
            return Ok(());
        }
        if buf.capacity() - buf.len() < READ_MIN {
            buf.reserve(READ);
        }
        let read = match idle {
            Some(limit) => tokio::time::timeout(limit, from.read_buf(buf))
                .await
                .map_err(|_| Pumped::Idle)?,
            None => from.read_buf(buf).await,
        };
        match read {
            Ok(n) if n > 0 => {}
            Ok(_) => {
                if !body.closed(pass, &mut out) {
                    return Err(Pumped::Read);
                }
                to.write_all(&out).await.map_err(|_| Pumped::Write)?;
                return Ok(());
            }
            Err(_) => return Err(Pumped::Read),
        }
    }
}

/// After a `101`: what either side sent early goes first, then the bytes
/// go both ways until either closes, or nothing moved for the idle
/// timeout.
async fn tunnel(
    client: &mut TcpStream,
    buf: &mut Vec<u8>,
    mut up: Upstream,
    early: &[u8],
    shared: &Shared,
) {
    if client.write_all(early).await.is_err() {
        return;
    }
    if !buf.is_empty() {
        let (_, mut up_write) = up.split();
        if up_write.write_all(buf).await.is_err() {
            return;
        }
        buf.clear();
    }
    if relay::relay(&*client, &up, shared.config.idle_timeout).await == relay::Ended::Idle {
        shared.counters.idle_closed.fetch_add(1, Ordering::Relaxed);
    }
}

/// Picks a worker in rotation (waiting up to [`NO_WORKER_WAIT`] for one):
/// slot `wanted`'s if it is in rotation, else by the strategy, other than
/// `not` when there is another; counted from now on.
async fn pick(
    shared: &Shared,
    peer: SocketAddr,
    not: Option<u32>,
    wanted: Option<usize>,
) -> Option<(Counted, Arc<Backend>)> {
    let (_, backends) = tokio::time::timeout(NO_WORKER_WAIT, shared.rotation.serving())
        .await
        .ok()?;
    if let Some(i) = wanted.and_then(|slot| backends.iter().position(|b| b.slot == slot)) {
        let counted = Counted::new(&backends, i);
        let backend = counted.backend.clone();
        return Some((counted, backend));
    }
    let mut index = {
        let mut picker = shared.picker.lock().unwrap_or_else(|p| p.into_inner());
        picker.pick(backends.as_slice(), hash_ip(peer.ip()))?
    };
    if not == Some(backends[index].pid) && backends.len() > 1 {
        index = (index + 1) % backends.len();
    }
    let counted = Counted::new(&backends, index);
    let backend = counted.backend.clone();
    Some((counted, backend))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_masters_own_answers_say_whether_the_connection_stays() {
        let text = String::from_utf8(answer_bytes(503, "no worker", true)).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{text}"
        );
        assert!(text.contains("retry-after: 1\r\n") && !text.contains("connection"));
        assert!(text.ends_with("content-length: 10\r\nretry-after: 1\r\n\r\nno worker\n"));
        let text = String::from_utf8(answer_bytes(400, "bad", false)).unwrap();
        assert!(text.contains("connection: close\r\n") && !text.contains("retry-after"));
    }
}
