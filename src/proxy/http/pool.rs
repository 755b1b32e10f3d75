//! The master's keep-alive connections to each worker: the pool an idle
//! one waits in, the task per worker that watches idle ones for a stray
//! answer or a close, and splitting one for a request or a tunnel.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{tcp, unix};

use super::{POOL_IDLE, POOL_MAX};
use crate::proxy::backend::Kept;
use crate::proxy::{relay, Counters, Upstream};

// What HTTP mode does with a worker connection besides opening it:
// splitting it for a request, checking a pooled one, tunnelling.
impl Upstream {
    pub(super) fn split(&mut self) -> (UpRead<'_>, UpWrite<'_>) {
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

    pub(super) fn sock(&self) -> SockRef<'_> {
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
pub(super) enum UpRead<'a> {
    Tcp(tcp::ReadHalf<'a>),
    Unix(unix::ReadHalf<'a>),
}

/// The writing half of an [`Upstream`].
pub(super) enum UpWrite<'a> {
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
pub(super) struct Pooled {
    address: usize,
    up: Upstream,
    since: Instant,
}

/// What an idle connection's socket says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Idle {
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
    pub(super) fn idle_state(&self, cx: &mut Context<'_>) -> Idle {
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
/// A stray can also come while the connection already carries the next
/// request; then it is indistinguishable from that request's answer (for
/// any HTTP/1.1 proxy: the protocol has nothing that pairs an answer with
/// its request), and the real answer arrives unasked right after. So once
/// a worker has sent one stray, its connections are distrusted: none is
/// reused again, each request gets a connection of its own, and one put
/// back is only watched (a stray on it is reported) until it goes stale,
/// so a later stray reaches no client.
///
/// One watcher task per worker does it without a task per connection:
/// each idle socket is registered with the watcher's waker when it is put
/// back, so a socket that becomes readable wakes the watcher, which checks
/// them all; a connection taken out gets a no-op waker instead.
#[derive(Default)]
pub(crate) struct Pool(Arc<Mutex<PoolState>>);

#[derive(Default)]
pub(super) struct PoolState {
    idle: Vec<Pooled>,
    /// The watcher's waker, once it has run.
    watcher: Option<Waker>,
    /// A watcher task was started.
    watched: bool,
    /// The worker is gone: the watcher ends.
    closed: bool,
    /// The worker sent a stray response: none of its connections is
    /// taken again (those put back are only watched, until stale).
    distrusted: bool,
    /// The watcher's timer is set for the oldest idle connection going
    /// stale; without it, a connection put back wakes the watcher.
    timed: bool,
}

impl PoolState {
    /// The worker sent a stray: its idle connections go, and none is
    /// pooled again.
    fn distrust(&mut self) {
        self.distrusted = true;
        self.idle.clear();
    }
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
    pub(super) slot: usize,
    pub(super) pid: u32,
}

impl Worker {
    /// Counts and logs (once a second at most) a stray response.
    pub(super) fn stray(self, counters: &Counters, when: &str) {
        let Worker { slot, pid } = self;
        counters.worker_protocol_error(slot, || {
            format!(
                "http: slot {slot}: pid {pid} sent a response {when}, with no request \
                 outstanding; its connection was closed, and its connections are no \
                 longer reused (each request gets its own)"
            )
        });
    }
}

impl Kept for Pool {
    fn drain(&self) {
        self.clear();
    }

    fn close(&self) {
        Pool::close(self);
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

impl Pool {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
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

    /// The worker sent a stray: its idle connections go, and none is
    /// pooled again.
    pub(super) fn distrust(&self) {
        self.lock().distrust();
    }

    /// The most recently used idle connection for `address` that nothing
    /// came on.
    pub(super) fn take(&self, address: usize, worker: Worker, counters: &Counters) -> Taken {
        let mut cx = Context::from_waker(Waker::noop());
        let mut state = self.lock();
        if state.distrusted {
            return Taken::None;
        }
        let mut closed = false;
        while let Some(p) = state.idle.pop() {
            if p.address != address || p.since.elapsed() >= POOL_IDLE {
                continue;
            }
            // The no-op waker also stops this one waking the watcher.
            match p.up.idle_state(&mut cx) {
                Idle::Quiet => return Taken::Idle(p.up),
                Idle::Closed => closed = true,
                Idle::Stray => {
                    worker.stray(counters, "on an idle connection");
                    state.distrust();
                }
            }
        }
        if closed {
            Taken::WorkerClosing
        } else {
            Taken::None
        }
    }

    pub(super) fn put(
        &self,
        address: usize,
        up: Upstream,
        worker: Worker,
        counters: &Arc<Counters>,
    ) {
        let mut state = self.lock();
        // A distrusted worker's connection is still watched until it goes
        // stale, so that a stray behind its answer is seen and reported,
        // but it is never taken again.
        if state.closed || state.idle.len() >= POOL_MAX {
            return;
        }
        let waker = state.watcher.clone().unwrap_or(Waker::noop().clone());
        match up.idle_state(&mut Context::from_waker(&waker)) {
            Idle::Quiet => {}
            Idle::Closed => return,
            Idle::Stray => {
                state.distrust();
                return worker.stray(counters, "after its answer");
            }
        }
        state.idle.push(Pooled {
            address,
            up,
            since: Instant::now(),
        });
        if !state.timed {
            // The watcher sets its timer for this one.
            state.timed = true;
            if let Some(w) = &state.watcher {
                w.wake_by_ref();
            }
        }
        if !state.watched {
            state.watched = true;
            tokio::spawn(watch(self.0.clone(), worker, counters.clone()));
        }
    }
}

/// What [`Pool::take`] found.
pub(super) enum Taken {
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
/// anything on, or that stayed idle for [`POOL_IDLE`] (it would never be
/// taken again, and would hold a socket on both sides while the worker
/// lives), until the pool is dropped.
pub(super) async fn watch(pool: Arc<Mutex<PoolState>>, worker: Worker, counters: Arc<Counters>) {
    let mut expiry = Box::pin(tokio::time::sleep(POOL_IDLE));
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
        let mut stray = false;
        state.idle.retain(|p| match p.up.idle_state(cx) {
            _ if p.since.elapsed() >= POOL_IDLE => false,
            Idle::Quiet => true,
            Idle::Closed => false,
            Idle::Stray => {
                worker.stray(&counters, "on an idle connection");
                stray = true;
                false
            }
        });
        if stray {
            state.distrust();
        }
        // Woken again when the oldest idle connection goes stale.
        state.timed = false;
        if let Some(oldest) = state.idle.iter().map(|p| p.since).min() {
            let at = tokio::time::Instant::from_std(oldest + POOL_IDLE);
            expiry.as_mut().reset(at);
            state.timed = true;
            if std::future::Future::poll(expiry.as_mut(), cx).is_ready() {
                cx.waker().wake_by_ref();
            }
        }
        Poll::Pending
    })
    .await
}
