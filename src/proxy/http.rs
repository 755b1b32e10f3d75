//! HTTP balance mode (feature `http`): the master speaks HTTP/1.1 to the
//! clients and forwards each *request* to a worker.
//!
//! A client's connection belongs to the master: it is served by hyper, and
//! every request on it is balanced on its own (the strategies of proxy
//! mode, counting requests in flight instead of connections) and sent over
//! a pooled keep-alive connection to the worker's private listener. So a
//! worker can be retired without the client noticing, whatever the app
//! does with its own connections when told to stop: it gets no new
//! request, its idle pooled connections are dropped, and the stop signal
//! follows once its last request has been answered (see
//! `Supervisor::defers_stop_signal`).
//!
//! A request that could not be delivered (the worker closed the pooled
//! connection, refused it, or died before answering) is sent once more to
//! another worker if nothing of it reached the first (hyper hands back a
//! request it did not write), or if it is idempotent and had no body.
//! Otherwise the client gets `502`. A response head that takes longer than
//! the response timeout is a `504`; no ready worker within
//! [`NO_WORKER_WAIT`] a `503` with `Retry-After`. `Connection: Upgrade`
//! (WebSocket) is tunnelled once the worker answers `101`; the tunnel counts
//! as a request in flight for as long as it is open.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream, UnixStream};

use super::{admit, Backend, Counted, Counters, ProxyConfig, Rotation, Target};
use crate::balance::{hash_ip, Picker};
use crate::net::Cidr;

/// How long a request waits for a ready worker before it is answered 503.
pub const NO_WORKER_WAIT: Duration = Duration::from_secs(10);
/// The largest request head read; a larger one is answered 431.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// An idle pooled connection older than this is not reused: servers close
/// theirs after a few seconds (Node's default is 5 s), and a request sent
/// on one being closed would have to be retried.
const POOL_IDLE: Duration = Duration::from_secs(2);
/// Idle connections kept per worker.
const POOL_MAX: usize = 256;
/// The cookie that pins a client to a slot (`Builder::sticky_cookie`).
pub const STICKY_COOKIE: &str = "herd_slot";

/// A request's body on its way to a worker.
type UpBody = BoxBody<Bytes, hyper::Error>;
type Sender = hyper::client::conn::http1::SendRequest<UpBody>;
/// What the client gets.
type DownBody = BoxBody<Bytes, hyper::Error>;

/// An idle keep-alive connection to a worker's private listener.
pub(crate) struct Pooled {
    address: usize,
    sender: Sender,
    since: Instant,
}

/// A worker's idle connections.
#[derive(Default)]
pub(crate) struct Pool(Mutex<Vec<Pooled>>);

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pool")
    }
}

impl Pool {
    /// Drops every idle connection: the worker sees them close.
    pub(crate) fn clear(&self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    fn take(&self, address: usize) -> Option<Sender> {
        let mut idle = self.0.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(p) = idle.pop() {
            if p.address == address && p.since.elapsed() < POOL_IDLE && p.sender.is_ready() {
                return Some(p.sender);
            }
        }
        None
    }

    fn put(&self, address: usize, sender: Sender) {
        let mut idle = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < POOL_MAX {
            idle.push(Pooled {
                address,
                sender,
                since: Instant::now(),
            });
        }
    }
}

/// What every connection of one public address shares.
pub(crate) struct Shared {
    address: usize,
    rotation: Arc<Rotation>,
    picker: Mutex<Picker>,
    config: ProxyConfig,
    counters: Arc<Counters>,
    metrics: crate::metrics::Http,
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
            metrics: crate::metrics::Http::default(),
            trusted,
        })
    }

    /// An error the master answers itself: counted, logged (throttled).
    fn fail(&self, status: StatusCode, reason: &str) -> Response<DownBody> {
        self.counters.http_error(status.as_u16(), || {
            format!("http: answered {status} to a client: {reason}")
        });
        answer(status, reason)
    }
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
        let Some(permit) = admit(&slots, &counters).await else {
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
async fn serve(client: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let header_timeout = shared.config.header_timeout;
    let service = hyper::service::service_fn(move |req| {
        let shared = shared.clone();
        async move {
            let started = Instant::now();
            let response = handle(req, peer, &shared).await;
            shared
                .metrics
                .record(response.status().as_u16(), started.elapsed());
            Ok::<_, Infallible>(response)
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(MAX_HEADER_BYTES)
        .serve_connection(TokioIo::new(client), service)
        .with_upgrades()
        .await;
}

/// A short answer from the master itself.
fn answer(status: StatusCode, reason: &str) -> Response<DownBody> {
    let mut r = Response::new(
        Full::new(Bytes::from(format!("{reason}\n")))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if status == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut()
            .insert(hyper::header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    r
}

/// Sets `X-Forwarded-For`, `-Proto` and `-Host`. An untrusted client's
/// own are replaced (it could claim any address); a trusted proxy's are
/// kept, with the proxy's address appended to `X-Forwarded-For`.
fn forwarded(req: &mut Request<Incoming>, peer: SocketAddr, trusted: &[Cidr]) {
    let headers = req.headers_mut();
    let ip = peer.ip().to_string();
    let trust = trusted.iter().any(|c| c.contains(peer.ip()));
    let before = headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .filter(|_| trust);
    let chain = match before {
        Some(before) => format!("{before}, {ip}"),
        None => ip,
    };
    let host = headers.get(hyper::header::HOST).cloned();
    for (name, value) in [
        ("x-forwarded-for", HeaderValue::from_str(&chain).ok()),
        ("x-forwarded-proto", Some(HeaderValue::from_static("http"))),
        ("x-forwarded-host", host),
    ] {
        let name = HeaderName::from_static(name);
        if trust && name != "x-forwarded-for" && headers.contains_key(&name) {
            continue;
        }
        match value {
            Some(v) => {
                headers.insert(name, v);
            }
            None => {
                headers.remove(name);
            }
        }
    }
}

/// Removes the hop-by-hop headers (RFC 9110, 7.6.1): `Connection`, those
/// it names, and the fixed ones. Each side of the master has its own
/// connection: a client's `Connection: close` must not close the pooled
/// connection to the worker, and a worker's must not close the client's.
fn strip_hop_by_hop(headers: &mut hyper::HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(hyper::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        hyper::header::CONNECTION,
        hyper::header::TE,
        hyper::header::TRAILER,
        hyper::header::UPGRADE,
        hyper::header::PROXY_AUTHENTICATE,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
    ] {
        headers.remove(name);
    }
}

/// Whether a request may be sent again after its worker failed before
/// answering: nothing would happen twice.
fn replayable(req: &Request<UpBody>) -> bool {
    matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    ) && req.body().is_end_stream()
}

fn is_upgrade(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(hyper::header::CONNECTION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        })
}

/// Forwards one request, retrying once where that is safe.
async fn handle(
    mut req: Request<Incoming>,
    peer: SocketAddr,
    shared: &Shared,
) -> Response<DownBody> {
    forwarded(&mut req, peer, &shared.trusted);
    if is_upgrade(&req) {
        return tunnel(req, peer, shared).await;
    }
    strip_hop_by_hop(req.headers_mut());
    let pinned = if shared.config.sticky {
        cookie_slot(req.headers())
    } else {
        None
    };
    let (parts, body) = req.into_parts();
    let mut req = Some(Request::from_parts(parts, body.boxed()));
    let mut tried: Option<u32> = None;
    for _attempt in 0..2 {
        let Some(request) = req.take() else { break };
        let wanted = if tried.is_none() { pinned } else { None };
        let Some((counted, backend)) = pick(shared, peer, tried, wanted).await else {
            return shared.fail(
                StatusCode::SERVICE_UNAVAILABLE,
                "no worker is ready to take the request",
            );
        };
        tried = Some(backend.pid);
        let replay = replayable(&request);
        // What may be sent again if this attempt fails: the request itself
        // when hyper hands it back unwritten, or a copy of its head when it
        // has no body and is idempotent.
        let copy = replay.then(|| head_copy(&request));
        let mut sender = match connection(&backend, shared.address).await {
            Ok(s) => s,
            Err(_) => {
                backend
                    .connect_errors
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                req = Some(request);
                continue;
            }
        };
        backend
            .total
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let sent = tokio::time::timeout(
            shared.config.response_timeout,
            sender.try_send_request(request),
        )
        .await;
        match sent {
            Ok(Ok(mut response)) => {
                strip_hop_by_hop(response.headers_mut());
                if shared.config.sticky && pinned != Some(backend.slot) {
                    set_cookie(&mut response, backend.slot);
                }
                return response.map(|body| {
                    Tracked {
                        inner: body,
                        done: Some(Done {
                            counted,
                            sender,
                            address: shared.address,
                        }),
                    }
                    .boxed()
                });
            }
            Ok(Err(mut e)) => {
                // Unwritten: it can go to another worker as it is.
                req = e.take_message().or(copy);
                if req.is_none() {
                    return shared.fail(
                        StatusCode::BAD_GATEWAY,
                        &format!(
                            "the worker failed while the request was sent: {}",
                            e.error()
                        ),
                    );
                }
            }
            Err(_) => {
                return shared.fail(
                    StatusCode::GATEWAY_TIMEOUT,
                    "the worker did not answer in time",
                )
            }
        }
    }
    shared.fail(StatusCode::BAD_GATEWAY, "no worker could take the request")
}

/// A copy of a request without a body.
fn head_copy(req: &Request<UpBody>) -> Request<UpBody> {
    let mut copy = Request::new(
        http_body_util::Empty::new()
            .map_err(|never| match never {})
            .boxed(),
    );
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    copy
}

/// The slot a request's sticky cookie names.
fn cookie_slot(headers: &hyper::HeaderMap) -> Option<usize> {
    headers
        .get_all(hyper::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| {
            let (name, value) = c.trim().split_once('=')?;
            (name == STICKY_COOKIE)
                .then(|| value.parse().ok())
                .flatten()
        })
}

/// Pins the client to `slot` from now on.
fn set_cookie(response: &mut Response<Incoming>, slot: usize) {
    let cookie = format!("{STICKY_COOKIE}={slot}; Path=/; HttpOnly; SameSite=Lax");
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(hyper::header::SET_COOKIE, v);
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

/// An idle pooled connection to `backend`, or a new one.
async fn connection(backend: &Backend, address: usize) -> std::io::Result<Sender> {
    if let Some(sender) = backend.pool.take(address) {
        return Ok(sender);
    }
    // The PORT contract has one port for every address.
    let target = backend
        .addrs
        .get(address)
        .or(backend.addrs.first())
        .ok_or_else(|| std::io::Error::other("the worker has no private listener"))?;
    handshake(target, false).await
}

/// A new HTTP/1 connection to a worker's private listener.
async fn handshake(target: &Target, upgrades: bool) -> std::io::Result<Sender> {
    async fn over<S>(stream: S, upgrades: bool) -> std::io::Result<Sender>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        if upgrades {
            tokio::spawn(conn.with_upgrades());
        } else {
            tokio::spawn(conn);
        }
        Ok(sender)
    }
    match target {
        Target::Tcp(addr) => {
            let s = TcpStream::connect(addr).await?;
            let _ = s.set_nodelay(true);
            over(s, upgrades).await
        }
        Target::Unix(path) => over(UnixStream::connect(path).await?, upgrades).await,
    }
}

/// A `Connection: Upgrade` request: forwarded on a connection of its own;
/// after the worker's `101`, both sides are joined until either closes.
async fn tunnel(
    mut req: Request<Incoming>,
    peer: SocketAddr,
    shared: &Shared,
) -> Response<DownBody> {
    let pinned = if shared.config.sticky {
        cookie_slot(req.headers())
    } else {
        None
    };
    let Some((counted, backend)) = pick(shared, peer, None, pinned).await else {
        return shared.fail(
            StatusCode::SERVICE_UNAVAILABLE,
            "no worker is ready to take the request",
        );
    };
    let target = backend
        .addrs
        .get(shared.address)
        .or(backend.addrs.first())
        .cloned();
    let Some(target) = target else {
        return shared.fail(
            StatusCode::BAD_GATEWAY,
            "the worker has no private listener",
        );
    };
    let mut sender = match handshake(&target, true).await {
        Ok(s) => s,
        Err(e) => {
            backend
                .connect_errors
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return shared.fail(
                StatusCode::BAD_GATEWAY,
                &format!("cannot reach the worker: {e}"),
            );
        }
    };
    backend
        .total
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let client_side = hyper::upgrade::on(&mut req);
    let (parts, body) = req.into_parts();
    let mut response = match sender
        .send_request(Request::from_parts(parts, body.boxed()))
        .await
    {
        Ok(r) => r,
        Err(e) => return shared.fail(StatusCode::BAD_GATEWAY, &format!("the worker failed: {e}")),
    };
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let worker_side = hyper::upgrade::on(&mut response);
        tokio::spawn(async move {
            if let (Ok(client), Ok(worker)) = (client_side.await, worker_side.await) {
                let mut client = TokioIo::new(client);
                let mut worker = TokioIo::new(worker);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut worker).await;
            }
            // The tunnel counted as a request in flight until now.
            drop(counted);
        });
        return response.map(|b| b.boxed());
    }
    response.map(|body| {
        Tracked {
            inner: body,
            done: None,
        }
        .boxed()
    })
}

/// What ends with a response: the request's count, and the connection,
/// back to the pool once the whole body went through.
struct Done {
    counted: Counted,
    sender: Sender,
    address: usize,
}

impl Done {
    fn finish(self, complete: bool) {
        let backend = &self.counted.backend;
        // A draining worker's connections close with their last response.
        if complete && !backend.draining.load(std::sync::atomic::Ordering::Acquire) {
            backend.pool.put(self.address, self.sender);
        }
        drop(self.counted);
    }
}

/// A worker's response body on its way to the client.
struct Tracked {
    inner: Incoming,
    done: Option<Done>,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => {
                if let Some(done) = self.done.take() {
                    done.finish(true);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(done) = self.done.take() {
                    done.finish(false);
                }
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        // An empty body (HEAD, 204) is never polled: it is complete.
        if let Some(done) = self.done.take() {
            done.finish(self.inner.is_end_stream());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> hyper::HeaderMap {
        let mut h = hyper::HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn the_sticky_cookie_is_found_among_others_and_garbage_is_ignored() {
        let h = headers(&[("cookie", "a=1; herd_slot=2"), ("cookie", "b=3")]);
        assert_eq!(cookie_slot(&h), Some(2));
        assert_eq!(cookie_slot(&headers(&[("cookie", "herd_slot=x")])), None);
        assert_eq!(cookie_slot(&headers(&[("cookie", "herd_slots=1")])), None);
        assert_eq!(cookie_slot(&headers(&[])), None);
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut h = headers(&[
            ("connection", "close, x-private"),
            ("keep-alive", "timeout=5"),
            ("x-private", "1"),
            ("te", "trailers"),
            ("content-length", "3"),
            ("x-kept", "1"),
        ]);
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["content-length", "x-kept"]);
    }

    #[test]
    fn only_idempotent_requests_without_a_body_are_replayed() {
        let req = |method: Method, body: &'static str| {
            let body = Full::new(Bytes::from(body))
                .map_err(|never| match never {})
                .boxed();
            Request::builder().method(method).body(body).unwrap()
        };
        assert!(replayable(&req(Method::GET, "")));
        assert!(replayable(&req(Method::HEAD, "")));
        assert!(!replayable(&req(Method::GET, "body")));
        assert!(!replayable(&req(Method::POST, "")));
        assert!(!replayable(&req(Method::DELETE, "")));
    }
}
