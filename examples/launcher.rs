//! `launcher`: one binary that is both the master and its own workers (the
//! same-binary pattern), with an admin endpoint, using herd's public API
//! only.
//!
//! ```text
//! cargo run --example launcher            # app on :3000, admin on 127.0.0.1:9000
//! curl localhost:9000/workers             # the worker table as JSON
//! curl -X POST localhost:9000/reload      # a rolling reload; its report as JSON
//! ```
//!
//! Run by hand, it is the launcher: it builds a cluster whose command is
//! its own executable, and serves the admin endpoint from the same tokio
//! runtime. Started by herd (`herd::worker::slot()` is set), it is a
//! worker: it serves the app on the sockets herd passes, with
//! `herd::worker::http::serve`, which drains without losing a request.
//!
//! `PORT` (default 3000), `ADMIN_PORT` (default 9000) and `WORKERS`
//! (default 2) configure it; port 0 lets the kernel choose. It prints one
//! JSON line with both addresses on stdout when it listens, and every
//! cluster event as a JSON line on stderr (the `serde` feature).

use std::convert::Infallible;
use std::net::SocketAddr;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};

type Body = Full<Bytes>;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> Result<T, String> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .map_err(|_| format!("{name}=`{v}` is not a valid value")),
        Err(_) => Ok(default),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    if herd::worker::slot().is_some() {
        worker().await
    } else {
        launcher().await
    }
}

/// The worker half: the app itself.
async fn worker() -> Result<(), Box<dyn std::error::Error>> {
    let listeners = herd::worker::tcp_listeners()?;
    let pid = std::process::id();
    let slot = herd::worker::slot().unwrap_or(0);
    herd::worker::http::serve(listeners, move |_req: Request<Incoming>| async move {
        let text = format!("pid={pid} slot={slot}\n");
        Ok::<_, Infallible>(Response::new(Body::new(Bytes::from(text))))
    })
    .await?;
    Ok(())
}

/// The launcher half: the cluster, and the admin endpoint beside it.
async fn launcher() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = env_or("PORT", 3000)?;
    let admin_port: u16 = env_or("ADMIN_PORT", 9000)?;
    let workers: usize = env_or("WORKERS", 2)?;

    let cluster = herd::Cluster::builder()
        .name("launcher")
        // The same binary, re-executed as each worker.
        .command(std::env::current_exe()?)
        .workers(workers)
        .listen(SocketAddr::from(([0, 0, 0, 0], port)))
        // Its events go out as JSON below, not as herd's text lines.
        .log_events(false)
        // This program is the whole service: SIGTERM and Ctrl-C stop the
        // cluster, SIGHUP reloads it (a library takes no signal unasked).
        .handle_signals(true)
        .build()?;
    let handle = cluster.handle();

    let admin =
        tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], admin_port))).await?;
    println!(
        "{}",
        serde_json::json!({
            "app": cluster.local_addrs()[0].to_string(),
            "admin": admin.local_addr()?.to_string(),
        })
    );

    // Every event as a JSON line; a reader that falls behind says how many
    // it missed and goes on (the stream ends after the cluster stopped).
    let mut events = handle.event_stream();
    tokio::spawn(async move {
        use tokio_stream::StreamExt;
        while let Some(event) = events.next().await {
            match event {
                Ok(event) => {
                    if let Ok(line) = serde_json::to_string(&event) {
                        eprintln!("{line}");
                    }
                }
                Err(herd::Missed(n)) => eprintln!("{{\"missed_events\":{n}}}"),
            }
        }
    });

    let admin_handle = handle.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = admin.accept().await {
            let handle = admin_handle.clone();
            let service = hyper::service::service_fn(move |req| admin_request(req, handle.clone()));
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });

    // Until SIGTERM or SIGINT: the workers drain, then run() returns.
    cluster.run().await?;
    Ok(())
}

/// `GET /workers`: the worker table. `POST /reload`: a rolling reload and
/// its report (500 when it was aborted).
async fn admin_request(
    req: Request<Incoming>,
    handle: herd::Handle,
) -> Result<Response<Body>, Infallible> {
    let json = |status: StatusCode, value: serde_json::Value| {
        Response::builder()
            .status(status)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Body::new(Bytes::from(value.to_string() + "\n")))
            .expect("a valid response")
    };
    let (parts, body) = req.into_parts();
    // Read the request's body, if any, before answering.
    let _ = body.collect().await;
    Ok(match (parts.method, parts.uri.path()) {
        (Method::GET, "/workers") => json(
            StatusCode::OK,
            serde_json::json!({
                "phase": handle.phase(),
                "workers": handle.workers(),
            }),
        ),
        (Method::POST, "/reload") => match handle.reload().await {
            Ok(report) => json(
                if report.is_complete() {
                    StatusCode::OK
                } else {
                    StatusCode::INTERNAL_SERVER_ERROR
                },
                serde_json::to_value(&report).unwrap_or_default(),
            ),
            Err(e) => json(
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({ "error": e.chain() }),
            ),
        },
        _ => json(
            StatusCode::NOT_FOUND,
            serde_json::json!({ "error": "GET /workers or POST /reload" }),
        ),
    })
}
