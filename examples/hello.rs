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
//! It serves with `herd::worker::http::serve` (feature `hyper`), which
//! reports readiness with `sd_notify(READY=1)` when `NOTIFY_SOCKET` is set,
//! pings the watchdog when `WATCHDOG_USEC` is, and on SIGTERM drains: it
//! stops accepting (new connections wait on the master's socket for the
//! next worker), answers every further request with `Connection: close`,
//! closes keep-alive connections that stay idle for a moment, lets requests
//! in flight finish, and returns; hello then exits 0.
//!
//! At start it prints one line with its pid, `LISTEN_PID` and the fds it
//! inherited, before it opens anything itself, so that tests can check the
//! fd contract.

use std::convert::Infallible;
use std::net::TcpListener as StdListener;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};

/// Highest fd looked at in the start-up report.
const FD_SCAN_LIMIT: i32 = 1024;
/// Longest delay `/sleep/<ms>` and `/hang/<ms>` accept.
const MAX_SLEEP: Duration = Duration::from_secs(60);

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
    let body = Bytes::from(body);
    // herd's drain: stop accepting, `Connection: close`, idle keep-alive
    // connections closed after a grace, requests in flight finished.
    herd::worker::http::serve(listeners, move |req| {
        let body = body.clone();
        async move { Ok::<_, Infallible>(answer(req, body).await) }
    })
    .await?;
    println!("hello: pid={} drained, exiting", std::process::id());
    Ok(())
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
