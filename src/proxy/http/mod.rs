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
//! Heads are parsed and rewritten by [`h1`]; bodies stream through
//! as they come, never whole in memory. A request that could not be
//! delivered (the worker's connection failed before any of it was
//! written, or it was refused) goes to another worker; so does one whose
//! worker closed or died before any byte of an answer, if it is idempotent
//! and has no body: each worker in rotation gets it before the client gets
//! `502`. A response
//! head that takes longer than the response timeout is a `504`; no ready
//! worker within [`NO_WORKER_WAIT`] a `503` with `Retry-After`.
//! `Connection: Upgrade` (WebSocket) is tunnelled once the worker answers
//! `101`; the tunnel counts as a request in flight for as long as it is
//! open.
//!
//! An idle client connection holds no buffer: one is taken when a request
//! arrives and given back once it has been answered.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use socket2::SockRef;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

mod buffers;
mod exchange;
pub(crate) mod h1;
mod pool;

use buffers::Buffers;
use exchange::{forward, tunnel};
pub(crate) use pool::Pool;
use pool::{Taken, Worker};

use super::{admit, Backend, Counted, Counters, ProxyConfig, Rotation, Upstream};
use crate::balance::{hash_ip, Picker};
use crate::types::Cidr;
use h1::{Framing, RequestHead};

/// The most workers one request is offered to before the client gets 502
/// (each at most once; fewer when fewer are in rotation).
const MAX_ATTEMPTS: usize = 8;
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
    /// The worker sent more than the answer: a response nobody asked
    /// for. Its connections are not reused from now on.
    stray: bool,
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
    // Workers that failed this request: it goes to each other worker in
    // rotation before the client hears of it (a reload or a crash can take
    // more than one worker at once).
    // On the stack: a request allocates nothing for its retries.
    let mut tried = [0u32; MAX_ATTEMPTS];
    let mut tried_n = 0;
    let mut failure = "no worker could take the request";
    let mut attempt = 0;
    // The last worker tried refused the connection.
    let mut refused = false;
    while attempt < MAX_ATTEMPTS {
        let wanted = if attempt == 0 { request.pinned } else { None };
        attempt += 1;
        let version = shared.rotation.version();
        let Some((counted, backend)) = pick(shared, peer, &tried[..tried_n], wanted).await else {
            let reason = "no worker is ready to take the request";
            let kept = shared.answer(client, 503, reason, keep, started).await;
            return after_error(kept, &request);
        };
        if tried[..tried_n].contains(&backend.pid) && refused {
            // Every worker in rotation refused the connection: they are
            // dead and not reaped yet. Wait for the rotation to change (a
            // replacement, or the dead taken out) rather than spend the
            // attempts on them; the wait for a worker bounds it.
            drop(counted);
            let waited = tokio::time::timeout(
                NO_WORKER_WAIT.saturating_sub(started.elapsed()),
                shared.rotation.changed_since(version),
            )
            .await;
            if waited.is_err() {
                break;
            }
            refused = false;
            continue;
        }
        // Every worker in rotation may have failed it already: then one of
        // them again, on its next connection (a pooled one the worker had
        // just closed is the commonest failure).
        if !tried[..tried_n].contains(&backend.pid) {
            tried[tried_n] = backend.pid;
            tried_n += 1;
        }
        let mut up = match connection(&backend, shared, &request).await {
            Ok(up) => up,
            Err(Unreachable::Connect) => {
                backend.connect_errors.fetch_add(1, Ordering::Relaxed);
                failure = "cannot connect to the worker";
                refused = true;
                continue;
            }
            Err(Unreachable::Closing) => {
                failure = "the worker closed its connections";
                continue;
            }
        };
        refused = false;
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
                    if answered.stray {
                        backend.kept::<Pool>().distrust();
                    }
                    if answered.reusable && !backend.is_draining() {
                        // A draining worker's connections close with their
                        // last answer.
                        backend.kept::<Pool>().put(
                            shared.address,
                            up,
                            worker(&backend),
                            &shared.counters,
                        );
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
            .kept::<Pool>()
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

/// Picks a worker in rotation (waiting up to [`NO_WORKER_WAIT`] for one):
/// slot `wanted`'s if it is in rotation, else by the strategy, other than
/// `not` when there is another; counted from now on.
async fn pick(
    shared: &Shared,
    peer: SocketAddr,
    not: &[u32],
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
    // The next worker in rotation that has not failed this request, if
    // there is one.
    for _ in 0..backends.len() {
        if !not.contains(&backends[index].pid) {
            break;
        }
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
