//! `hello`: a small HTTP worker for herd, written in Rust.
//!
//! ```text
//! cargo run --release --example cluster -- target/release/examples/hello
//! ```
//!
//! It serves on the sockets herd passes (fd 3, ...) or, run alone, on
//! `$PORT` (default 3000). `GET /` answers `pid=<pid> slot=<slot>`;
//! `GET /sleep/<ms>` answers the same after a delay; `GET /hang/<ms>`
//! blocks the whole worker that long (a hung worker, for watchdog tests).
//!
//! It reports readiness with `sd_notify(READY=1)` when `NOTIFY_SOCKET` is
//! set, and pings the watchdog when `WATCHDOG_USEC` is. On SIGTERM it
//! drains: it stops accepting (new connections wait on the master's socket
//! for the next worker), answers every further request with
//! `Connection: close`, closes keep-alive connections that stay idle for
//! a moment, lets requests in flight finish, and exits 0.
//!
//! At start it prints one line with its pid, `LISTEN_PID` and the fds it
//! inherited, before it opens anything itself, so that tests can check the
//! fd contract.

use std::convert::Infallible;
use std::net::TcpListener as StdListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

/// Highest fd looked at in the start-up report.
const FD_SCAN_LIMIT: i32 = 1024;
/// Longest delay `/sleep/<ms>` and `/hang/<ms>` accept.
const MAX_SLEEP: Duration = Duration::from_secs(60);
/// While draining, a keep-alive connection is closed once it has been idle
/// this long; until then a request on it is answered with
/// `Connection: close`, so a client in mid-cycle is told, not cut.
const IDLE_GRACE: Duration = Duration::from_millis(250);

fn open_fds() -> Vec<i32> {
    (0..FD_SCAN_LIMIT)
        .filter(|&fd| {
            // SAFETY: F_GETFD only reads the flags of an fd number; it does
            // not touch memory and is harmless on a closed fd (EBADF).
            unsafe { nix::libc::fcntl(fd, nix::libc::F_GETFD) >= 0 }
        })
        .collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Before the runtime exists, so that only inherited fds are open.
    let fds = open_fds();
    let pid = std::process::id();
    let slot = herd::worker::slot().map_or("-".to_owned(), |s| s.to_string());
    println!(
        "hello: pid={pid} slot={slot} generation={} listen_pid={} listen_fds={} fds={}",
        herd::worker::generation().map_or("-".to_owned(), |g| g.to_string()),
        std::env::var("LISTEN_PID").unwrap_or_default(),
        std::env::var("LISTEN_FDS").unwrap_or_default(),
        fds.iter()
            .map(|f| f.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );

    let listeners: Vec<StdListener> = if std::env::var_os("LISTEN_FDS").is_some() {
        herd::worker::tcp_listeners()?
    } else {
        let port = std::env::var("PORT").unwrap_or_else(|_| "3000".into());
        vec![StdListener::bind(format!("0.0.0.0:{port}"))?]
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(serve(listeners, format!("pid={pid} slot={slot}\n")))
}

async fn serve(
    listeners: Vec<StdListener>,
    body: String,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut term = signal(SignalKind::terminate())?;
    let graceful = GracefulShutdown::new();
    let draining = Arc::new(AtomicBool::new(false));
    if let Some(interval) = herd::worker::watchdog_interval() {
        tokio::spawn(async move {
            loop {
                let _ = herd::worker::notify_watchdog();
                tokio::time::sleep(interval / 2).await;
            }
        });
    }
    let (conn_tx, mut conn_rx) = tokio::sync::mpsc::channel(64);
    let mut acceptors = Vec::new();
    for l in listeners {
        l.set_nonblocking(true)?;
        let l = TcpListener::from_std(l)?;
        let tx = conn_tx.clone();
        acceptors.push(tokio::spawn(async move {
            while let Ok((stream, _)) = l.accept().await {
                if tx.send(stream).await.is_err() {
                    break;
                }
            }
        }));
    }
    drop(conn_tx);
    // The inherited sockets were listening before we started: ready now.
    let _ = herd::worker::notify_ready();
    let body = Bytes::from(body);
    let serve_one = |stream: tokio::net::TcpStream| {
        let body = body.clone();
        let draining = draining.clone();
        let service = hyper::service::service_fn(move |req| {
            respond(req, body.clone(), draining.load(Ordering::SeqCst))
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
        });
    };
    loop {
        tokio::select! {
            Some(stream) = conn_rx.recv() => serve_one(stream),
            _ = term.recv() => break,
        }
    }
    // Stop accepting: new connections stay queued on the master's socket
    // for the next worker. Connections already accepted are served;
    // requests in flight finish; idle keep-alive connections close.
    let _ = herd::worker::notify_stopping();
    draining.store(true, Ordering::SeqCst);
    for a in &acceptors {
        a.abort();
    }
    while let Ok(stream) = conn_rx.try_recv() {
        serve_one(stream);
    }
    tokio::time::sleep(IDLE_GRACE).await;
    graceful.shutdown().await;
    println!("hello: pid={} drained, exiting", std::process::id());
    Ok(())
}

async fn respond(
    req: Request<Incoming>,
    body: Bytes,
    draining: bool,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut response = answer(req, body).await;
    if draining {
        response.headers_mut().insert(
            hyper::header::CONNECTION,
            hyper::header::HeaderValue::from_static("close"),
        );
    }
    Ok(response)
}

async fn answer(req: Request<Incoming>, body: Bytes) -> Response<Full<Bytes>> {
    if let Some(ms) = req.uri().path().strip_prefix("/hang/") {
        let ms = ms.parse::<u64>().unwrap_or(0);
        println!("hello: pid={} hanging for {ms}ms", std::process::id());
        // Deliberately blocks the runtime, watchdog pings included.
        std::thread::sleep(Duration::from_millis(ms).min(MAX_SLEEP));
    }
    if let Some(ms) = req.uri().path().strip_prefix("/sleep/") {
        let Ok(ms) = ms.parse::<u64>() else {
            return Response::builder()
                .status(400)
                .body(Full::new(Bytes::from_static(b"bad delay\n")))
                .expect("static response");
        };
        let delay = Duration::from_millis(ms).min(MAX_SLEEP);
        println!(
            "hello: pid={} request {} started",
            std::process::id(),
            req.uri().path()
        );
        tokio::time::sleep(delay).await;
    }
    Response::new(Full::new(body))
}
