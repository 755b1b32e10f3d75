//! The control API (feature `control`): what `herdctl` talks to.
//!
//! HTTP/1.1 with JSON on a Unix socket. The socket is created `0600` in a
//! directory created `0700`, and every connection's peer credentials are
//! checked as well: only the master's own uid (and root) is served. A
//! malformed or hostile client cannot disturb the master: at most
//! [`MAX_CONNECTIONS`] connections are served at once (more are answered
//! 503 and closed), request headers must come within [`HEADER_TIMEOUT`],
//! bodies of at most [`MAX_BODY`] bytes within [`BODY_TIMEOUT`].
//!
//! | request | answer |
//! |---|---|
//! | `GET /v1/workers` | `{"name", "phase", "pid", "upgrades", "workers": [WorkerInfo...]}` |
//! | `POST /v1/reload` | the [`crate::ReloadReport`] |
//! | `POST /v1/restart/N` | the report of slot N's soft restart |
//! | `POST /v1/signal` `{"signal": "USR1", "slot": N?}` | `{"pids": [...]}` |
//! | `POST /v1/scale` `{"workers": N}` or `{"by": ±N}` | `{"from", "to"}` |
//! | `POST /v1/stop` | `{"stopping": true}`, then a graceful stop |
//! | `POST /v1/upgrade` | `{"upgrading": true, "upgrades": N}` once the new binary passed its pre-flight; then the master re-executes it |
//! | `GET /v1/logs?slot=N&lines=K` | `{"lines": [OutputLine...]}` |
//! | `GET /v1/logs?follow=1&slot=N` | the kept lines, then each new one: one `OutputLine` per line |
//! | `GET /v1/journal?slot=N&lines=K` | `{"entries": [...]}`: herd's events and the workers' lines in the order the master saw them, each `{"time_ms", "slot", "pid", "stream": "out"/"err"/"herd", "line"}` (herd's with `"level"` and the typed `"event"`) |
//! | `GET /v1/journal?follow=1&slot=N&lines=K` | the same entries, then each new one, one per line, until the cluster stops |
//! | `GET /v1/describe` | `{"name", "phase", "pid", "info", "workers", "exits", "tail"}`: what the program said of how it runs the app ([`Apps::set_info`]), every slot, the last exits and each slot's last lines |
//! | `GET /v1/apps` | `{"pid", "apps": [...]}`: each app as `GET /v1/workers` shows it |
//!
//! A herd that runs several apps ([`serve_apps`]) serves them all on one
//! socket: every request above takes `?app=NAME`, and one without goes to
//! the only app (with several it is refused, kind `app_required`). There,
//! `POST /v1/reload` without an app re-reads the config file and answers
//! with the [`Changes`]; `POST /v1/stop` without one stops every app.
//!
//! An error is `{"error": "a sentence", "kind": "no_such_slot"}` with a 4xx
//! or 5xx status.
//!
//! A Rust program drives a running master with [`Client`], which herdctl
//! uses too: typed answers ([`Status`], [`crate::ReloadReport`],
//! [`crate::OutputLine`]) and typed refusals ([`ClientError`]).
//!
//! [`serve`] answers on its own Unix socket; [`service`] is the same API
//! as a tower `Service` that a program mounts in its own server (an axum
//! router, behind its own authentication). The limits that protect the
//! master on its socket are per connection (how many, how slow), which
//! hyper's connection builder and a semaphore give directly: a tower layer
//! limits requests, which a slow client never completes.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{json, Value};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;

mod apps;
mod client;
mod journal;

pub use apps::{Apps, Changes, Reconfigure};
pub use client::{Client, ClientError, JournalEntry, Status};
pub use journal::{JOURNAL_BYTES, JOURNAL_ENTRIES};

use crate::observe::event::OutputLine;
use crate::types::{Error, ErrorKind, Result};
use crate::{Handle, Signal};

/// Connections served at once; more wait in the listen queue.
pub const MAX_CONNECTIONS: usize = 64;
/// A client must send its request headers within this.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// And its body within this.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest request body read.
pub const MAX_BODY: usize = 64 * 1024;
/// Worker lines kept per slot for `GET /v1/logs`.
pub const LOG_LINES: usize = 200;

/// Where a cluster named `name` serves its control API when no path is
/// given: in [`default_dir`], `NAME.sock`.
pub fn default_path(name: &str) -> PathBuf {
    default_dir().join(format!("{name}.sock"))
}

/// Where control sockets go by default: `$XDG_RUNTIME_DIR/herd/control`,
/// or `/tmp/herd-UID/control`.
pub fn default_dir() -> PathBuf {
    let base = match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if Path::new(&d).is_dir() => PathBuf::from(d).join("herd"),
        _ => std::env::temp_dir().join(format!("herd-{}", nix::unistd::geteuid())),
    };
    base.join("control")
}

/// The control API, serving until dropped (which removes the socket).
#[derive(Debug)]
pub struct ControlServer {
    path: PathBuf,
    apps: Apps,
    task: JoinHandle<()>,
    /// Log streams (`follow`) still open.
    streams: Arc<std::sync::atomic::AtomicUsize>,
}

impl ControlServer {
    /// Once the cluster has stopped: waits (up to a second) until every
    /// log stream has told its client that the cluster ended.
    pub async fn finish(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while self.streams.load(std::sync::atomic::Ordering::Acquire) > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The apps it serves ([`Apps::set_info`] adds to what `describe`
    /// says of one).
    pub fn apps(&self) -> &Apps {
        &self.apps
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Serves the control API for `handle` on a Unix socket at `path`.
///
/// # Errors
///
/// [`Error::ControlInUse`] when another master answers on `path`;
/// [`Error::Io`] when the directory or the socket cannot be made.
pub async fn serve(handle: Handle, path: impl AsRef<Path>) -> Result<ControlServer> {
    let path = path.as_ref().to_path_buf();
    let io = |what: &str, e| Error::io(format!("{what} {}", path.display()), e);
    prepare_dir(&path)?;
    // After an upgrade in place, the socket the previous master served:
    // clients queued on it during the exec are answered by this one.
    let key = format!("control:{}", path.display());
    let listener = match handle.take_carried(&key) {
        Some(fd) => {
            let std = std::os::unix::net::UnixListener::from(fd);
            std.set_nonblocking(true)
                .map_err(|e| io("taking over the control socket", e))?;
            Some(UnixListener::from_std(std).map_err(|e| io("taking over the control socket", e))?)
        }
        None => None,
    };
    let listener = match listener {
        Some(l) => l,
        None => bind(&path).await?,
    };
    handle
        .carry(&key, &listener)
        .map_err(|e| io("keeping the control socket for an upgrade", e))?;
    Ok(serving(listener, path, State::single(handle)))
}

/// Serves the control API of several apps (a herd that runs a config
/// file) on one Unix socket at `path`; `apps` may change while it serves.
/// No upgrade in place carries this socket.
///
/// # Errors
///
/// As [`serve`].
pub async fn serve_apps(apps: Apps, path: impl AsRef<Path>) -> Result<ControlServer> {
    let path = path.as_ref().to_path_buf();
    prepare_dir(&path)?;
    let listener = bind(&path).await?;
    Ok(serving(listener, path, State::new(apps)))
}

fn serving(listener: UnixListener, path: PathBuf, state: Arc<State>) -> ControlServer {
    let streams = state.streams.clone();
    let apps = state.apps.clone();
    let task = tokio::spawn(async move {
        accept(listener, state).await;
    });
    ControlServer {
        path,
        apps,
        task,
        streams,
    }
}

/// Makes (or checks) the directory the socket goes in.
fn prepare_dir(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // The default directories, every directory herd creates on the
        // way, and a parent that others could write: the user's alone, or
        // refused (another local user could swap the socket).
        let default = default_dir();
        if dir == default {
            if let Some(base) = default.parent() {
                crate::private_dir::ensure(base, 0o700)?;
            }
        }
        if dir == default || !dir.exists() {
            crate::private_dir::ensure(dir, 0o700)?;
        } else {
            crate::private_dir::check_chosen(dir)?;
        }
    }
    Ok(())
}

/// Binds the control socket at `path`, unless another master answers there.
async fn bind(path: &Path) -> Result<UnixListener> {
    let io = |what: &str, e| Error::io(format!("{what} {}", path.display()), e);
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(Error::ControlInUse {
                path: path.to_path_buf(),
            });
        }
        // Left by a master that died: nobody answers there.
        std::fs::remove_file(path).map_err(|e| io("removing the stale socket", e))?;
    }
    let listener = UnixListener::bind(path).map_err(|e| io("binding the control socket", e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| io("restricting the control socket", e))?;
    Ok(listener)
}

struct State {
    apps: Apps,
    streams: Arc<std::sync::atomic::AtomicUsize>,
}

impl State {
    fn new(apps: Apps) -> Arc<State> {
        Arc::new(State {
            apps,
            streams: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        })
    }

    /// The API of one cluster: its one app, named as the cluster is.
    fn single(handle: Handle) -> Arc<State> {
        let apps = Apps::new();
        let name = handle.name().unwrap_or_default().to_owned();
        apps.insert(&name, handle);
        State::new(apps)
    }

    /// The app a request names (`?app=`), or the only one.
    fn app<B>(&self, req: &Request<B>) -> std::result::Result<apps::Entry, Box<Response<Body>>> {
        match query(req, "app") {
            Some(name) => self.apps.entry(&name).ok_or_else(|| {
                Box::new(refuse(
                    StatusCode::NOT_FOUND,
                    "no_such_app",
                    format!(
                        "no app `{name}` runs here (apps: {})",
                        self.apps.names().join(", ")
                    ),
                ))
            }),
            None => {
                let mut all = self.apps.entries();
                if all.len() == 1 {
                    return Ok(all.remove(0));
                }
                Err(Box::new(refuse(
                    StatusCode::BAD_REQUEST,
                    "app_required",
                    format!(
                        "this herd runs {} apps ({}): name one (?app=NAME)",
                        all.len(),
                        self.apps.names().join(", ")
                    ),
                )))
            }
        }
    }
}

/// The control API as a tower `Service`, for a program that mounts it in
/// a server of its own ([`service`]): every request of the table above,
/// answered as [`serve`] answers it. Cheap to clone.
///
/// What [`serve`] does around it is then the program's to do: check who
/// asks (the API can stop and re-execute the master), limit connections
/// and how slow a client may be.
#[derive(Clone)]
pub struct ControlService {
    state: Arc<State>,
}

impl std::fmt::Debug for ControlService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ControlService")
    }
}

/// Ends the log collector with the last clone of the service.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The body of the API's answers.
pub type ControlBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// The control API of the cluster behind `handle` as a tower `Service`
/// (mount it under a path of your own, behind your own authentication).
/// Call it within a tokio runtime: it starts the task that keeps each
/// slot's last lines.
pub fn service(handle: Handle) -> ControlService {
    ControlService {
        state: State::single(handle),
    }
}

impl<B> tower_service::Service<Request<B>> for ControlService
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<ControlBody>;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<
            dyn std::future::Future<Output = std::result::Result<Self::Response, Infallible>>
                + Send,
        >,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::result::Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let state = self.state.clone();
        Box::pin(async move { Ok(respond(req, &state).await) })
    }
}

/// The last lines of each slot's workers.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<HashMap<usize, VecDeque<OutputLine>>>>);

impl Logs {
    /// The kept lines of `handle`'s workers, and the task that keeps them.
    fn collect(handle: &Handle) -> (Logs, JoinHandle<()>) {
        let logs = Logs::default();
        let mut output = handle.output();
        let keep = logs.clone();
        let task = tokio::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                match output.recv().await {
                    Ok(line) => keep.push(line),
                    Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => return,
                }
            }
        });
        (logs, task)
    }

    fn push(&self, line: OutputLine) {
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let slot = all.entry(line.slot).or_default();
        if slot.len() == LOG_LINES {
            slot.pop_front();
        }
        slot.push_back(line);
    }

    fn last(&self, slot: Option<usize>, lines: usize) -> Vec<OutputLine> {
        let all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut slots: Vec<_> = all
            .keys()
            .copied()
            .filter(|s| slot.is_none_or(|x| x == *s))
            .collect();
        slots.sort_unstable();
        slots
            .into_iter()
            .flat_map(|s| {
                let l = &all[&s];
                l.iter().skip(l.len().saturating_sub(lines)).cloned()
            })
            .collect()
    }
}

async fn accept(listener: UnixListener, state: Arc<State>) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let me = nix::unistd::geteuid().as_raw();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        // The file mode should already have kept other users out.
        let allowed = stream
            .peer_cred()
            .is_ok_and(|c| c.uid() == me || c.uid() == 0);
        let permit = permits.clone().try_acquire_owned().ok();
        let verdict = match (allowed, &permit) {
            (false, _) => Some((
                StatusCode::FORBIDDEN,
                "forbidden",
                "only the master's own user (or root) may use its control API",
            )),
            (true, None) => Some((
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                "too many control connections are open; try again",
            )),
            (true, Some(_)) => None,
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move {
                    Ok::<_, Infallible>(match verdict {
                        Some((status, kind, why)) => refuse(status, kind, why),
                        None => respond(req, &state).await,
                    })
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                // A refused client gets its answer and the door.
                .keep_alive(verdict.is_none())
                .serve_connection(TokioIo::new(stream), service)
                .await;
            drop(permit);
        });
    }
}

type Body = ControlBody;

fn reply(status: StatusCode, value: Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(value.to_string() + "\n")).boxed())
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
}

/// A body that streams what the channel carries, until it closes.
struct Stream(tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for Stream {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<std::result::Result<hyper::body::Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|line| line.map(|b| Ok(hyper::body::Frame::data(b))))
    }
}

/// `GET /v1/logs?follow=1`: the kept lines, then every new one, one JSON
/// object per line, until the client goes or the cluster stops.
fn follow(state: &State, app: &apps::Entry, slot: Option<usize>, lines: usize) -> Response<Body> {
    use std::sync::atomic::Ordering;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(256);
    let mut output = app.handle.output();
    // The stream ends with the cluster: its events end after `Stopped`.
    let mut events = app.handle.events();
    let kept = app.logs.last(slot, lines);
    let open = state.streams.clone();
    open.fetch_add(1, Ordering::AcqRel);
    tokio::spawn(async move {
        use tokio::sync::broadcast::error::RecvError;
        let encode = |l: &OutputLine| Bytes::from(to_json(l).to_string() + "\n");
        let mut ended = false;
        for l in &kept {
            if tx.send(encode(l)).await.is_err() {
                ended = true;
                break;
            }
        }
        while !ended {
            tokio::select! {
                line = output.recv() => match line {
                    Ok(l) if slot.is_none_or(|s| s == l.slot) => {
                        ended = tx.send(encode(&l)).await.is_err();
                    }
                    Ok(_) | Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => ended = true,
                },
                event = events.recv() => {
                    ended = matches!(event, Err(RecvError::Closed));
                }
            }
        }
        // The body ends when `tx` is dropped; then the client is told.
        drop(tx);
        tokio::time::sleep(Duration::from_millis(20)).await;
        open.fetch_sub(1, Ordering::AcqRel);
    });
    Response::builder()
        .header(hyper::header::CONTENT_TYPE, "application/x-ndjson")
        .body(Stream(rx).boxed())
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
}

/// `GET /v1/journal?follow=1`: the kept entries, then every new one, one
/// JSON object per line, until the client goes or the cluster stops.
fn follow_journal(
    state: &State,
    app: &apps::Entry,
    slot: Option<usize>,
    lines: usize,
) -> Response<Body> {
    use std::sync::atomic::Ordering;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(256);
    // Subscribed before the kept entries are read: an entry written in
    // between comes twice and is skipped by its number.
    let mut live = app.journal.subscribe();
    let kept = app.journal.last(slot, lines);
    let open = state.streams.clone();
    open.fetch_add(1, Ordering::AcqRel);
    tokio::spawn(async move {
        use tokio::sync::broadcast::error::RecvError;
        let encode = |e: &journal::Entry| Bytes::from(format!("{}\n", e.text));
        let mut seen = 0;
        let mut ended = false;
        for e in &kept {
            seen = e.seq;
            if tx.send(encode(e)).await.is_err() {
                ended = true;
                break;
            }
        }
        while !ended {
            match live.recv().await {
                Ok(e) if e.seq > seen => {
                    seen = e.seq;
                    let last = e.last;
                    if journal::about(&e, slot) {
                        ended = tx.send(encode(&e)).await.is_err();
                    }
                    ended |= last;
                }
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => ended = true,
            }
        }
        drop(tx);
        tokio::time::sleep(Duration::from_millis(20)).await;
        open.fetch_sub(1, Ordering::AcqRel);
    });
    Response::builder()
        .header(hyper::header::CONTENT_TYPE, "application/x-ndjson")
        .body(Stream(rx).boxed())
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
}

fn refuse(status: StatusCode, kind: &str, error: impl std::fmt::Display) -> Response<Body> {
    reply(status, json!({ "error": error.to_string(), "kind": kind }))
}

fn failed(e: &Error) -> Response<Body> {
    // The same classification a program gets from Error::kind(); the
    // `kind` strings the API has always sent stay.
    let (status, kind) = match (e, e.kind()) {
        (Error::NoWorker { .. }, _) => (StatusCode::CONFLICT, "no_worker"),
        (Error::Busy { .. }, _) => (StatusCode::CONFLICT, "busy"),
        (_, ErrorKind::NotFound) => (StatusCode::NOT_FOUND, "no_such_slot"),
        (_, ErrorKind::NotRunning) => (StatusCode::CONFLICT, "not_running"),
        (_, ErrorKind::Conflict) => (StatusCode::CONFLICT, "conflict"),
        (_, ErrorKind::Usage) => (StatusCode::BAD_REQUEST, "invalid"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "failed"),
    };
    refuse(status, kind, e.chain())
}

/// One app as `GET /v1/workers` shows it.
fn status(app: &apps::Entry) -> Value {
    let handle = &app.handle;
    json!({
        "name": handle.name().map(str::to_owned).or_else(|| (!app.name.is_empty()).then(|| app.name.clone())),
        "phase": to_json(&handle.phase()),
        "pid": std::process::id(),
        "upgrades": handle.upgrades(),
        "balance": handle.balance().to_string(),
        "addrs": handle.local_addrs().iter().map(ToString::to_string).collect::<Vec<_>>(),
        "proxied": to_json(&handle.proxied_connections()),
        "workers": to_json(&handle.workers()),
    })
}

fn to_json<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

/// The request's body as JSON (an empty body is `{}`).
async fn body<B>(req: Request<B>) -> std::result::Result<Value, Response<Body>>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let limited = Limited::new(req.into_body(), MAX_BODY);
    let bytes = match tokio::time::timeout(BODY_TIMEOUT, limited.collect()).await {
        Err(_) => {
            return Err(refuse(
                StatusCode::REQUEST_TIMEOUT,
                "slow_body",
                "the body took too long",
            ))
        }
        Ok(Err(e)) => {
            return Err(refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                "bad_body",
                format!("the body cannot be read (at most {MAX_BODY} bytes): {e}"),
            ))
        }
        Ok(Ok(b)) => b.to_bytes(),
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        refuse(
            StatusCode::BAD_REQUEST,
            "bad_json",
            format!("the body is not JSON: {e}"),
        )
    })
}

fn query<B>(req: &Request<B>, key: &str) -> Option<String> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then(|| v.to_owned())
    })
}

async fn respond<B>(req: Request<B>, state: &State) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    match (&method, path.as_str()) {
        (&Method::GET, "/v1/apps") => {
            let apps: Vec<Value> = state.apps.entries().iter().map(status).collect();
            return reply(
                StatusCode::OK,
                json!({ "pid": std::process::id(), "apps": apps }),
            );
        }
        (&Method::POST, "/v1/reload") if query(&req, "app").is_none() => {
            if let Some(tx) = state.apps.reconfigurer() {
                let (reply_tx, reply_rx) = tokio::sync::oneshot::channel();
                if tx.send(Reconfigure { reply: reply_tx }).await.is_err() {
                    return refuse(StatusCode::CONFLICT, "not_running", "the herd is stopping");
                }
                return match reply_rx.await {
                    Ok(Ok(changes)) => reply(StatusCode::OK, to_json(&changes)),
                    Ok(Err(why)) => refuse(StatusCode::UNPROCESSABLE_ENTITY, "bad_config", why),
                    Err(_) => refuse(StatusCode::CONFLICT, "not_running", "the herd is stopping"),
                };
            }
        }
        (&Method::POST, "/v1/stop")
            if query(&req, "app").is_none() && state.apps.entries().len() > 1 =>
        {
            for app in state.apps.entries() {
                tokio::spawn(async move {
                    let _ = app.handle.shutdown().await;
                });
            }
            return reply(StatusCode::ACCEPTED, json!({ "stopping": true }));
        }
        _ => {}
    }
    let app = match state.app(&req) {
        Ok(app) => app,
        Err(refused) => return *refused,
    };
    let handle = &app.handle;
    match (&method, path.as_str()) {
        (&Method::GET, "/v1/workers") => reply(StatusCode::OK, status(&app)),
        (&Method::GET, "/v1/describe") => {
            let entries: Vec<Value> = app
                .journal
                .last(None, JOURNAL_ENTRIES)
                .iter()
                .map(journal::Entry::json)
                .collect();
            let exits: Vec<Value> = entries
                .iter()
                .filter(|e| e["event"]["event"] == "exited")
                .map(|e| {
                    let mut exit = e["event"].clone();
                    exit["time_ms"] = e["time_ms"].clone();
                    exit
                })
                .rev()
                .take(10)
                .collect();
            let mut tail = serde_json::Map::new();
            for w in handle.workers() {
                let lines: Vec<Value> = entries
                    .iter()
                    .filter(|e| e["slot"] == w.slot && e["stream"] != "herd")
                    .rev()
                    .take(10)
                    .cloned()
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                tail.insert(w.slot.to_string(), Value::Array(lines));
            }
            let mut answer = status(&app);
            answer["info"] = state.apps.info(&app.name);
            answer["exits"] = Value::Array(exits);
            answer["tail"] = Value::Object(tail);
            reply(StatusCode::OK, answer)
        }
        (&Method::POST, "/v1/upgrade") => {
            let before = handle.upgrades();
            match handle.upgrade().await {
                Ok(()) => reply(
                    StatusCode::OK,
                    json!({ "upgrading": true, "upgrades": before }),
                ),
                Err(e @ Error::Upgrade { .. }) => {
                    refuse(StatusCode::CONFLICT, "upgrade_failed", e.chain())
                }
                Err(e) => failed(&e),
            }
        }
        (&Method::POST, "/v1/reload") => match handle.reload().await {
            Ok(report) => reply(StatusCode::OK, to_json(&report)),
            Err(e) => failed(&e),
        },
        (&Method::POST, p) if p.starts_with("/v1/restart/") => {
            let Ok(slot) = p["/v1/restart/".len()..].parse::<usize>() else {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    "invalid",
                    format!("`{p}` names no slot number"),
                );
            };
            match handle.restart(slot).await {
                Ok(report) => reply(StatusCode::OK, to_json(&report)),
                Err(e) => failed(&e),
            }
        }
        (&Method::POST, "/v1/signal") => {
            let body = match body(req).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            let Some(name) = body["signal"].as_str() else {
                return refuse(StatusCode::BAD_REQUEST, "invalid", "`signal` is missing");
            };
            let signal: Signal = match name.parse() {
                Ok(s) => s,
                Err(e) => return failed(&e),
            };
            let slots: Vec<usize> = match body.get("slot").and_then(Value::as_u64) {
                Some(s) => vec![s as usize],
                None => handle
                    .workers()
                    .iter()
                    .filter(|w| w.pid.is_some())
                    .map(|w| w.slot)
                    .collect(),
            };
            let mut pids = Vec::new();
            for slot in slots {
                match handle.signal(slot, signal).await {
                    Ok(pid) => pids.push(pid),
                    Err(e) => return failed(&e),
                }
            }
            reply(StatusCode::OK, json!({ "pids": pids }))
        }
        (&Method::POST, "/v1/scale") => {
            let body = match body(req).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            let result = match (body["workers"].as_u64(), body["by"].as_i64()) {
                (Some(n), None) => handle.scale(n as usize).await,
                (None, Some(d)) => handle.scale_by(d as isize).await,
                _ => {
                    return refuse(
                        StatusCode::BAD_REQUEST,
                        "invalid",
                        "give `workers` (a count) or `by` (a difference)",
                    )
                }
            };
            match result {
                Ok((from, to)) => reply(StatusCode::OK, json!({ "from": from, "to": to })),
                Err(e) => failed(&e),
            }
        }
        (&Method::POST, "/v1/stop") => {
            let handle = handle.clone();
            tokio::spawn(async move {
                let _ = handle.shutdown().await;
            });
            reply(StatusCode::ACCEPTED, json!({ "stopping": true }))
        }
        (&Method::GET, "/v1/journal") => {
            let slot = query(&req, "slot").and_then(|s| s.parse().ok());
            let lines = query(&req, "lines")
                .and_then(|s| s.parse().ok())
                .unwrap_or(JOURNAL_ENTRIES);
            if query(&req, "follow").is_some_and(|f| f == "1") {
                return follow_journal(state, &app, slot, lines);
            }
            // The entries as they are kept: JSON text, not parsed again.
            let entries: Vec<std::sync::Arc<str>> = app
                .journal
                .last(slot, lines)
                .into_iter()
                .map(|e| e.text)
                .collect();
            Response::builder()
                .header(hyper::header::CONTENT_TYPE, "application/json")
                .body(
                    Full::new(Bytes::from(format!(
                        "{{\"entries\":[{}]}}\n",
                        entries.join(",")
                    )))
                    .boxed(),
                )
                .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
        }
        (&Method::GET, "/v1/logs") => {
            let slot = query(&req, "slot").and_then(|s| s.parse().ok());
            let lines = query(&req, "lines")
                .and_then(|s| s.parse().ok())
                .unwrap_or(LOG_LINES);
            if query(&req, "follow").is_some_and(|f| f == "1") {
                return follow(state, &app, slot, lines);
            }
            reply(
                StatusCode::OK,
                json!({ "lines": to_json(&app.logs.last(slot, lines)) }),
            )
        }
        _ => refuse(
            StatusCode::NOT_FOUND,
            "no_such_request",
            format!("no {method} {path}; see herd::control's docs"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_statuses_by_their_kind() {
        let status = |e: Error| failed(&e).status();
        let busy = Error::Busy {
            what: "scale",
            reason: "a reload is running".into(),
        };
        assert_eq!(status(busy), StatusCode::CONFLICT);
        assert_eq!(status(Error::NotRunning), StatusCode::CONFLICT);
        assert_eq!(status(Error::ZeroWorkers), StatusCode::BAD_REQUEST);
        assert_eq!(
            status(Error::NoSuchSlot { slot: 9, slots: 2 }),
            StatusCode::NOT_FOUND
        );
        let io = Error::io("spawning", std::io::Error::other("x"));
        assert_eq!(status(io), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[tokio::test]
    async fn the_api_answers_as_a_tower_service_without_a_socket() {
        use http_body_util::BodyExt;
        use tower_service::Service;
        let cluster = crate::Cluster::builder()
            .command("sh")
            .args(["-c", "sleep 30"])
            .workers(1)
            .without_sockets()
            .log_events(false)
            .build()
            .unwrap();
        let handle = cluster.handle();
        let mut api = service(handle.clone());
        let ask = |method: &str, uri: &str, body: &str| {
            Request::builder()
                .method(method)
                .uri(uri)
                .body(Full::new(Bytes::from(body.to_owned())))
                .unwrap()
        };
        // Before run(): the table answers at once, a scale is refused.
        let answer = api.call(ask("GET", "/v1/workers", "")).await.unwrap();
        assert_eq!(answer.status(), StatusCode::OK);
        let bytes = answer.into_body().collect().await.unwrap().to_bytes();
        let value: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(value["phase"], "created", "{value}");
        let missing = api.call(ask("GET", "/v1/nothing", "")).await.unwrap();
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        let bad = api.call(ask("POST", "/v1/scale", "{nope")).await.unwrap();
        assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
        drop(cluster);
        let gone = api
            .call(ask("POST", "/v1/scale", r#"{"by": 1}"#))
            .await
            .unwrap();
        assert_eq!(gone.status(), StatusCode::CONFLICT, "not running");
    }
}
