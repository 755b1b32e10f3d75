//! Proxy mode: the master accepts every connection, chooses a worker and
//! forwards the bytes (`tcp`) or the requests (`http`).
//!
//! Each worker process gets a private listener on loopback for each public
//! address, created by the master and passed as fds 3, 4, ... in the same
//! order, so the same worker programs run unchanged in every balance mode
//! (an app with a main and an admin server gets each on its own port).
//!
//! What both planes share sits here: the master keeps a `Backend` per
//! worker with an exact count of its open connections (`backend`); the
//! supervisor decides which backends are in the `Rotation`; the
//! connection limit, its admission and the counts are in `counters`;
//! connections to a worker in `upstream`; byte relaying in `relay`
//! and `splice`; giving a burst's memory back in `trim`; starting and
//! stopping the accept tasks in `plane`. One accept task per public
//! address picks with [`crate::balance::Picker`] and hands each connection
//! to a task of its own, so a slow worker never blocks the accept loop.

pub(crate) mod backend;
pub(crate) mod counters;
#[cfg(feature = "http")]
pub(crate) mod http;
pub(crate) mod plane;
pub(crate) mod relay;
pub(crate) mod splice;
pub(crate) mod tcp;
pub(crate) mod trim;
pub(crate) mod upstream;

pub(crate) use backend::{now_ms, Backend, Counted, Registry, Rotation, Target};
pub(crate) use counters::{admit, Counters};
pub use counters::{Proxied, ProxyStats};
pub use tcp::header::ProxyProtocol;
pub(crate) use upstream::{free_port, private_listener, private_unix_listener, probe, Upstream};

use crate::balance::Strategy;

/// What every accept loop shares.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProxyConfig {
    pub(crate) strategy: Strategy,
    pub(crate) header: Option<ProxyProtocol>,
    /// Forward with splice(2) instead of copying through user space.
    pub(crate) splice: bool,
    /// Close a connection on which nothing moved for this long.
    pub(crate) idle_timeout: Option<std::time::Duration>,
    /// HTTP mode: requests, not connections, are balanced.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) http: bool,
    /// HTTP mode: a cookie pins each client to a slot.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) sticky: bool,
    /// HTTP mode: how long a client may take to send a request head, and
    /// an idle keep-alive client connection is kept.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) header_timeout: std::time::Duration,
    /// HTTP mode: how long a worker may take to send a response head.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) response_timeout: std::time::Duration,
}

/// HTTP mode: how long a client may take to send a request head (a
/// slowloris is cut off then), and an idle keep-alive connection is kept.
pub const DEFAULT_HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// HTTP mode: how long a worker may take to send a response head before
/// the client gets `504`.
pub const DEFAULT_RESPONSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Default time a proxied connection may stay quiet both ways before it is
/// closed (long enough for WebSocket apps that ping every minute or so).
pub const DEFAULT_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);
