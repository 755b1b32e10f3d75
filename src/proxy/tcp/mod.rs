//! The TCP plane: each connection goes to one worker and its bytes are
//! relayed (or spliced) both ways until both sides are done.

pub(crate) mod header;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use socket2::{Domain, Socket};
use tokio::net::{TcpListener, TcpStream, UnixStream};

use crate::balance::{hash_ip, Picker};

use super::{admit, relay, splice, Backend, Counted, Counters, ProxyConfig, Rotation, Upstream};

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
        if rotation.version() != version {
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
        carry_upstream(&upstream, &client, None, config, &counters).await;
    } else {
        let Ok(client) = TcpStream::from_std(std::net::TcpStream::from(conn)) else {
            return;
        };
        carry_upstream(&upstream, &client, None, config, &counters).await;
    }
    drop(counted);
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
        _ => carry_upstream(&upstream, &client, header.as_deref(), config, counters).await,
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

/// Sends the header, then relays until the connection ends.
async fn carry_upstream<C: relay::Duplex>(
    upstream: &Upstream,
    client: &C,
    header: Option<&[u8]>,
    config: ProxyConfig,
    counters: &Counters,
) {
    match upstream {
        Upstream::Tcp(u) => carry(client, u, header, config, counters).await,
        Upstream::Unix(u) => carry(client, u, header, config, counters).await,
    }
}
