//! Proxy mode's state, in one place: the accept loops, every worker's
//! backend (shared with the handles), which backends are in rotation, the
//! master's copies of each worker's private listeners, and where backends
//! report that they are idle or refuse connections. The supervisor calls
//! it at each step of a worker's life; nothing else keeps proxy state.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use nix::unistd::Pid;
use socket2::Socket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::tcp::{accept_loop, pass_on};
use super::{
    private_listener, private_unix_listener, Backend, Counters, ProxyConfig, Registry, Rotation,
    Target,
};
use crate::net::Listeners;
use crate::types::{Error, Result};

/// Proxy mode, running.
pub(crate) struct Plane {
    config: ProxyConfig,
    rotation: Arc<Rotation>,
    backends: Registry,
    counters: Arc<Counters>,
    /// Where draining backends report that they are idle.
    idle_tx: mpsc::UnboundedSender<u32>,
    /// Where backends report a worker that closed its private listener.
    refusing_tx: mpsc::UnboundedSender<u32>,
    /// With a PROXY header: where the private Unix listeners live (0700,
    /// the master's user's).
    private_dir: Option<PathBuf>,
    /// The master's copies of each worker's private listeners, kept until
    /// the worker is reaped, so that connections queued there but never
    /// accepted are passed on instead of reset.
    private_copies: HashMap<Pid, Vec<Socket>>,
}

/// How proxy mode runs.
pub(crate) struct Settings {
    pub(crate) config: ProxyConfig,
    /// The most client connections at once.
    pub(crate) limit: usize,
    /// Private listeners are Unix sockets (with a PROXY header).
    pub(crate) private_unix: bool,
    /// Seeds the strategies' random choices.
    pub(crate) seed: u64,
    /// HTTP mode: peers whose X-Forwarded-* are kept.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) trusted: Arc<[crate::Cidr]>,
}

/// What [`Plane::start`] hands back besides the plane.
pub(crate) struct Started {
    pub(crate) plane: Plane,
    /// The accept loops, one per public address.
    pub(crate) tasks: Vec<JoinHandle<()>>,
}

impl Plane {
    /// Starts accepting on every public socket of `listeners`. Backends
    /// report on `idle_tx` when a draining one has no connection left, on
    /// `refusing_tx` when a worker closed its private listener.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when a socket cannot be shared with the accept loop,
    /// or the private socket directory cannot be made.
    pub(crate) fn start(
        settings: Settings,
        listeners: &Listeners,
        backends: Registry,
        counters: Arc<Counters>,
        idle_tx: mpsc::UnboundedSender<u32>,
        refusing_tx: mpsc::UnboundedSender<u32>,
    ) -> Result<Started> {
        let Settings {
            config,
            limit,
            private_unix,
            seed,
            trusted,
        } = settings;
        // Only HTTP mode reads X-Forwarded-For from trusted proxies.
        #[cfg(not(feature = "http"))]
        let _ = trusted;
        let rotation = Arc::new(Rotation::default());
        counters
            .limit
            .store(limit, std::sync::atomic::Ordering::Relaxed);
        let slots = Arc::new(tokio::sync::Semaphore::new(limit));
        let mut tasks = Vec::new();
        for (i, public) in listeners.public().enumerate() {
            let std_listener: std::net::TcpListener = public
                .try_clone()
                .map_err(|e| Error::io("sharing a listening socket with the proxy", e))?
                .into();
            std_listener
                .set_nonblocking(true)
                .map_err(|e| Error::io("setting the proxy socket non-blocking", e))?;
            let listener = tokio::net::TcpListener::from_std(std_listener)
                .map_err(|e| Error::io("registering the proxy socket", e))?;
            let (rotation, seed, slots, counters) = (
                rotation.clone(),
                seed ^ i as u64,
                slots.clone(),
                counters.clone(),
            );
            #[cfg(feature = "http")]
            if config.http {
                let shared =
                    super::http::Shared::new(i, rotation, config, seed, counters, trusted.clone());
                tasks.push(tokio::spawn(super::http::accept_loop(
                    listener, slots, shared,
                )));
                continue;
            }
            tasks.push(tokio::spawn(accept_loop(
                listener, i, rotation, config, seed, slots, counters,
            )));
        }
        let private_dir = if private_unix {
            Some(crate::node::private_dir()?)
        } else {
            None
        };
        Ok(Started {
            plane: Plane {
                config,
                rotation,
                backends,
                counters,
                idle_tx,
                refusing_tx,
                private_dir,
                private_copies: HashMap::new(),
            },
            tasks,
        })
    }

    /// A worker's private listeners, one per public address in the same
    /// order (the accept loop of address i forwards to listener i). With a
    /// PROXY header, which the worker believes, they are Unix sockets only
    /// this user can reach; a loopback port would let any local user
    /// connect and claim any client address.
    pub(crate) fn private_listeners(
        &self,
        slot: usize,
        generation: u64,
        addresses: usize,
    ) -> io::Result<Vec<(Socket, Target)>> {
        let backlog = crate::net::default_backlog();
        (0..addresses)
            .map(|i| match &self.private_dir {
                Some(dir) => {
                    let path = dir.join(format!(
                        "proxy-{}-{slot}-{generation}-{i}.sock",
                        std::process::id()
                    ));
                    private_unix_listener(&path, backlog).map(|s| (s, Target::Unix(path)))
                }
                None => private_listener(backlog).map(|(s, addr)| (s, Target::Tcp(addr))),
            })
            .collect()
    }

    /// Registers a new worker: on the private listeners the master made
    /// for it (its copies are kept), or on the port it binds itself.
    pub(crate) fn add(
        &mut self,
        slot: usize,
        pid: Pid,
        private: Option<Vec<(Socket, Target)>>,
        port: Option<SocketAddr>,
    ) {
        let (addrs, inodes) = match private {
            Some(listeners) => {
                let (sockets, addrs): (Vec<Socket>, Vec<Target>) = listeners.into_iter().unzip();
                let inodes = sockets.iter().map(inode_of).collect();
                self.private_copies.insert(pid, sockets);
                (addrs, inodes)
            }
            None => match port {
                Some(p) => (vec![Target::Tcp(p)], Vec::new()),
                None => return,
            },
        };
        self.registry().insert(
            pid.as_raw() as u32,
            Backend::new(
                slot,
                pid.as_raw() as u32,
                addrs,
                inodes,
                self.idle_tx.clone(),
                self.refusing_tx.clone(),
            ),
        );
    }

    /// The worker's backend, if it has one.
    pub(crate) fn backend(&self, pid: Pid) -> Option<Arc<Backend>> {
        self.registry().get(&(pid.as_raw() as u32)).cloned()
    }

    /// Puts exactly these workers in rotation, in order.
    pub(crate) fn rotate(&self, serving: impl Iterator<Item = Pid>) {
        let backends = self.registry();
        let serving: Vec<Arc<Backend>> = serving
            .filter_map(|pid| backends.get(&(pid.as_raw() as u32)).cloned())
            .collect();
        drop(backends);
        self.rotation.replace(serving);
    }

    /// A worker was reaped: its backend goes, its socket files go, and
    /// what is still queued on its private listeners (connections it never
    /// accepted) is passed on. Returns how many were passed on.
    pub(crate) fn reaped(&mut self, pid: Pid) -> usize {
        let backend = self.registry().remove(&(pid.as_raw() as u32));
        let passed = self.pass_on_queued(pid);
        if let Some(backend) = backend {
            backend.close_kept();
            for t in &backend.addrs {
                if let Target::Unix(path) = t {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
        passed
    }

    /// A live worker closed its private listener: the master's copy would
    /// keep it listening for nobody, so what is queued there is passed on
    /// and the copy closed. Returns how many were passed on.
    pub(crate) fn refusing(&mut self, pid: Pid) -> usize {
        self.pass_on_queued(pid)
    }

    fn pass_on_queued(&mut self, pid: Pid) -> usize {
        let Some(copies) = self.private_copies.remove(&pid) else {
            return 0;
        };
        let mut passed = 0;
        for (address, socket) in copies.iter().enumerate() {
            for conn in crate::net::rescue::drain_queue(socket) {
                passed += 1;
                tokio::spawn(pass_on(
                    conn,
                    address,
                    self.rotation.clone(),
                    self.config,
                    self.counters.clone(),
                ));
            }
        }
        passed
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Arc<Backend>>> {
        self.backends.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The inode of a socket, as a number.
fn inode_of(socket: &Socket) -> u64 {
    nix::sys::stat::fstat(socket).map_or(0, |st| st.st_ino)
}
