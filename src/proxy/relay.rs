//! Copying a proxied connection's bytes both ways, holding no buffer while
//! it is idle.
//!
//! A buffer is taken when a side becomes readable and given back once it
//! has nothing more to read, so an idle connection costs the master its
//! task and two socket registrations, not two 16 KiB buffers (tokio's
//! `copy_bidirectional` keeps both for the connection's life: 21 KB of
//! master memory per idle client). A connection on which nothing moves
//! either way for the idle timeout is closed.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use socket2::SockRef;
use tokio::net::{TcpStream, UnixStream};

use super::now_ms;

/// How much one read takes at most.
const BUFFER: usize = 16 * 1024;

/// How a relay ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Ended {
    /// Both sides finished (or one failed).
    Done,
    /// Nothing moved for the idle timeout.
    Idle,
}

/// A stream the relay can copy from and to without holding a buffer:
/// TCP (clients, most workers) or Unix (private listeners that only the
/// master may reach).
pub(crate) trait Duplex: Sync {
    /// Waits until a read may make progress.
    fn readable(&self) -> impl std::future::Future<Output = io::Result<()>> + Send;
    /// Reads what is there, without waiting.
    fn try_read_buf(&self, buf: &mut Vec<u8>) -> io::Result<usize>;
    /// Waits until a write may make progress.
    fn writable(&self) -> impl std::future::Future<Output = io::Result<()>> + Send;
    /// Writes what fits, without waiting.
    fn try_write(&self, buf: &[u8]) -> io::Result<usize>;
    /// Passes an EOF on.
    fn shutdown_write(&self);
    /// Makes the coming close a reset (`SO_LINGER` 0), to pass a peer's
    /// reset on.
    fn reset_on_close(&self);
}

macro_rules! duplex {
    ($t:ty) => {
        impl Duplex for $t {
            fn readable(&self) -> impl std::future::Future<Output = io::Result<()>> + Send {
                <$t>::readable(self)
            }
            fn try_read_buf(&self, buf: &mut Vec<u8>) -> io::Result<usize> {
                <$t>::try_read_buf(self, buf)
            }
            fn writable(&self) -> impl std::future::Future<Output = io::Result<()>> + Send {
                <$t>::writable(self)
            }
            fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
                <$t>::try_write(self, buf)
            }
            fn shutdown_write(&self) {
                let _ = SockRef::from(self).shutdown(std::net::Shutdown::Write);
            }
            fn reset_on_close(&self) {
                let _ = SockRef::from(self).set_linger(Some(Duration::ZERO));
            }
        }
    };
}

duplex!(TcpStream);
duplex!(UnixStream);

/// Copies `a` to `b` and `b` to `a` until both directions are done (each
/// passes its EOF on as a half-close), or nothing moved for `idle`.
///
/// A side that fails (a reset, or a write to a peer that is gone) ends the
/// relay at once, and the other side is reset as it closes: a client that
/// resets frees the worker's connection (and its count) at once instead of
/// leaving it open for ever, and a worker that resets (it closed with the
/// client's next request unread) resets the client, which can then retry,
/// instead of hanging it.
pub(crate) async fn relay<A: Duplex, B: Duplex>(a: &A, b: &B, idle: Option<Duration>) -> Ended {
    let last = AtomicU64::new(now_ms());
    let both = async {
        let ab = one_way(a, b, &last);
        let ba = one_way(b, a, &last);
        tokio::pin!(ab, ba);
        let (mut ab_done, mut ba_done) = (false, false);
        while !(ab_done && ba_done) {
            let failed = tokio::select! {
                r = &mut ab, if !ab_done => { ab_done = true; r.err() }
                r = &mut ba, if !ba_done => { ba_done = true; r.err() }
            };
            if failed.is_some() {
                a.reset_on_close();
                b.reset_on_close();
                return;
            }
        }
    };
    match idle {
        None => {
            both.await;
            Ended::Done
        }
        Some(limit) => tokio::select! {
            () = both => Ended::Done,
            () = idle_for(&last, limit) => Ended::Idle,
        },
    }
}

/// Copies `from` to `to` until `from` ends; an error from either side
/// (the other direction cannot go on either).
async fn one_way<F: Duplex, T: Duplex>(from: &F, to: &T, last: &AtomicU64) -> io::Result<()> {
    loop {
        from.readable().await?;
        let mut buf = Vec::with_capacity(BUFFER);
        loop {
            buf.clear();
            match from.try_read_buf(&mut buf) {
                Ok(0) => {
                    to.shutdown_write();
                    return Ok(());
                }
                Ok(_) => {
                    last.store(now_ms(), Ordering::Relaxed);
                    write_all(to, &buf).await?;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        // Idle again: the buffer goes back before the next wait.
    }
}

pub(crate) async fn write_all<T: Duplex>(to: &T, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        to.writable().await?;
        match to.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

async fn idle_for(last: &AtomicU64, limit: Duration) {
    let limit_ms = limit.as_millis() as u64;
    loop {
        let quiet = now_ms().saturating_sub(last.load(Ordering::Relaxed));
        if quiet >= limit_ms {
            return;
        }
        tokio::time::sleep(Duration::from_millis(limit_ms - quiet)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair() -> (TcpStream, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (a, b) = tokio::join!(TcpStream::connect(addr), l.accept());
        (a.unwrap(), b.unwrap().0)
    }

    #[tokio::test]
    async fn bytes_go_both_ways_and_a_half_close_is_passed_on() {
        let (mut client, proxy_client) = pair().await;
        let (proxy_up, mut server) = pair().await;
        let relay = tokio::spawn(async move { relay(&proxy_client, &proxy_up, None).await });
        client.write_all(b"ping").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"ping");
        server.write_all(&vec![7u8; 100_000]).await.unwrap();
        server.shutdown().await.unwrap();
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(back.len(), 100_000);
        assert_eq!(relay.await.unwrap(), Ended::Done);
    }

    #[tokio::test]
    async fn a_connection_quiet_for_the_idle_timeout_is_closed() {
        let (mut client, proxy_client) = pair().await;
        let (proxy_up, _server) = pair().await;
        let ended = relay(&proxy_client, &proxy_up, Some(Duration::from_millis(50))).await;
        assert_eq!(ended, Ended::Idle);
        drop(proxy_client);
        let mut buf = [0u8; 1];
        assert_eq!(client.read(&mut buf).await.unwrap(), 0, "closed");
    }
}
