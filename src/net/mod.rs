//! Listening sockets owned by the master.
//!
//! The master binds and listens on every address *before* any worker exists
//! and keeps its copy of every socket until the cluster stops, so connections
//! queued on a socket survive any worker: a crashed worker's queue waits for
//! its replacement instead of being reset.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};

use socket2::{Domain, Protocol, Socket, Type};

pub(crate) mod accepting;
pub(crate) mod rescue;
pub(crate) mod steer;
pub(crate) mod watch;

pub use crate::types::{Balance, Cidr};
use crate::types::{Error, Result};

/// Parses a listening address the way the CLI takes it: `3000` or `:3000`
/// (all IPv4 interfaces), `127.0.0.1:3000`, `[::1]:3000`, or `host:port`
/// (every address the name resolves to).
///
/// # Errors
///
/// [`Error::Parse`] naming the text.
pub fn parse_listen_addr(text: &str) -> Result<Vec<SocketAddr>> {
    use std::net::{Ipv4Addr, ToSocketAddrs};
    let err = |reason: &str| Error::Parse {
        what: "listen address",
        input: text.to_owned(),
        reason: reason.to_owned(),
    };
    let port_only = text.strip_prefix(':').unwrap_or(text);
    if !port_only.is_empty() && port_only.bytes().all(|b| b.is_ascii_digit()) {
        let port: u16 = port_only
            .parse()
            .map_err(|_| err("the port must be between 0 and 65535"))?;
        return Ok(vec![SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))]);
    }
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(vec![addr]);
    }
    if !text.contains(':') {
        return Err(err("expected HOST:PORT, [IPV6]:PORT or PORT"));
    }
    let addrs: Vec<SocketAddr> = text
        .to_socket_addrs()
        .map_err(|e| err(&format!("expected HOST:PORT, [IPV6]:PORT or PORT ({e})")))?
        .collect();
    if addrs.is_empty() {
        return Err(err("the host name resolves to no address"));
    }
    Ok(addrs)
}

/// The kernel's cap on a listen backlog (`net.core.somaxconn`), which is
/// also herd's default backlog.
pub fn default_backlog() -> u32 {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(DEFAULT_SOMAXCONN)
}

/// What Linux has used for `somaxconn` since 5.4, used when /proc is absent.
const DEFAULT_SOMAXCONN: u32 = 4096;

/// A listening socket as the builder was given it.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    /// An address to bind.
    Addr(SocketAddr),
    /// A socket the program already had.
    Fd(std::sync::Arc<std::os::fd::OwnedFd>),
}

/// A [`Source`] checked: an address to bind, or a socket that listens.
#[derive(Debug)]
pub(crate) enum Bound {
    Addr(SocketAddr),
    Socket(Socket, SocketAddr),
}

/// Checks a socket the program passed in and makes it listen: a bound TCP
/// socket, with `SO_REUSEPORT` when each slot is to get its own.
///
/// # Errors
///
/// [`Error::BadListener`] naming the fd and what is wrong with it.
pub(crate) fn adopt(fd: &std::os::fd::OwnedFd, balance: Balance, backlog: u32) -> Result<Bound> {
    use std::os::fd::AsRawFd;
    let raw = fd.as_raw_fd();
    let bad = |reason: String| Error::BadListener { fd: raw, reason };
    let socket = Socket::from(
        fd.try_clone()
            .map_err(|e| bad(format!("cannot duplicate it: {e}")))?,
    );
    match socket.r#type() {
        Ok(t) if t == Type::STREAM => {}
        Ok(_) => return Err(bad("it is not a stream (TCP) socket".into())),
        Err(e) if e.raw_os_error() == Some(nix::libc::ENOTSOCK) => {
            return Err(bad("it is not a socket".into()))
        }
        Err(e) => return Err(bad(format!("cannot read its type: {e}"))),
    }
    let addr = socket
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .ok_or_else(|| bad("it is not a TCP socket (herd passes TCP addresses only)".into()))?;
    if addr.port() == 0 {
        return Err(bad("it is not bound to an address".into()));
    }
    if balance == Balance::ReusePort && !socket.reuse_port().unwrap_or(false) {
        return Err(bad(format!(
            "it ({addr}) does not have SO_REUSEPORT, so the other slots cannot get sockets of \
             their own: set it (systemd: ReusePort=yes), or use Balance::Shared or \
             Balance::Proxy"
        )));
    }
    if !socket.is_listener().unwrap_or(false) {
        let backlog = i32::try_from(backlog).unwrap_or(i32::MAX);
        socket
            .listen(backlog)
            .map_err(|e| bad(format!("cannot listen on {addr}: {e}")))?;
    }
    // The copy is herd's: only the fd shuffle after fork hands it on.
    socket
        .set_cloexec(true)
        .map_err(|e| bad(format!("cannot set close-on-exec: {e}")))?;
    Ok(Bound::Socket(socket, addr))
}

/// The listeners as [`Listeners::describe`] shows them to an upgrade.
pub(crate) struct Layout<'a> {
    /// Per address: its sockets in slot order, and the group's order.
    pub(crate) groups: Vec<(SocketAddr, &'a [usize], Vec<std::os::fd::BorrowedFd<'a>>)>,
    pub(crate) steered: &'a [usize],
    pub(crate) steer_broken: bool,
    pub(crate) backlog: u32,
}

/// Every socket the master listens on, laid out by address and slot.
#[derive(Debug)]
pub(crate) struct Listeners {
    /// `sockets[address][k]`: for `ReusePort` one socket per slot, for
    /// `Shared` exactly one.
    sockets: Vec<Vec<Socket>>,
    /// The bound address of each configured address (the real port when
    /// port 0 was asked for).
    local: Vec<SocketAddr>,
    balance: Balance,
    backlog: u32,
    /// Reuseport: `order[address][position]` is the slot whose socket sits
    /// at that position of the kernel's group, which the steering program
    /// names. Slot order at first; a replaced socket leaves its place (the
    /// kernel moves the last one there) and joins at the end.
    order: Vec<Vec<usize>>,
    /// The slots new connections are steered to now.
    steered: Vec<usize>,
    /// Steering failed once (old kernel, no permission): the kernel's own
    /// hash decides, and queues of empty slots wait for their next worker.
    steer_broken: bool,
}

impl Listeners {
    /// Binds every address for `slots` worker slots.
    pub(crate) fn bind(
        sources: Vec<Bound>,
        balance: Balance,
        slots: usize,
        backlog: u32,
    ) -> Result<Self> {
        let mut sockets = Vec::with_capacity(sources.len());
        let mut local = Vec::with_capacity(sources.len());
        for source in sources {
            let group = match (source, balance) {
                (
                    Bound::Addr(addr),
                    Balance::Shared | Balance::Proxy { .. } | Balance::Http { .. },
                ) => {
                    vec![bind_one(addr, false, backlog)?]
                }
                (Bound::Addr(addr), Balance::ReusePort) => {
                    bind_reuseport_group(addr, slots, backlog)?
                }
                (
                    Bound::Socket(socket, _),
                    Balance::Shared | Balance::Proxy { .. } | Balance::Http { .. },
                ) => {
                    vec![socket]
                }
                // The given socket is slot 0's; the others join its group.
                (Bound::Socket(socket, addr), Balance::ReusePort) => {
                    let mut group = vec![socket];
                    for _ in 1..slots {
                        group.push(bind_one(addr, true, backlog)?);
                    }
                    group
                }
            };
            let bound = group[0]
                .local_addr()
                .map_err(|source| Error::Io {
                    context: "reading a listening socket's address".into(),
                    source,
                })?
                .as_socket()
                .ok_or_else(|| Error::Io {
                    context: "reading a listening socket's address".into(),
                    source: io::Error::other("not an IP socket"),
                })?;
            local.push(bound);
            sockets.push(group);
        }
        let order = sockets.iter().map(|g| (0..g.len()).collect()).collect();
        Ok(Listeners {
            sockets,
            local,
            balance,
            backlog,
            order,
            steered: Vec::new(),
            steer_broken: false,
        })
    }

    /// Listeners a previous master handed on (an upgrade): the sockets in
    /// slot order and the kernel's order of each address's group.
    ///
    /// # Errors
    ///
    /// [`Error::Upgrade`] when a socket does not listen at its address.
    pub(crate) fn inherited(carried: crate::upgrade::Sockets) -> Result<Self> {
        let crate::upgrade::Sockets {
            listeners: state,
            balance,
            backlog,
            steered,
            steer_broken,
        } = carried;
        let mut sockets = Vec::with_capacity(state.len());
        let mut local = Vec::with_capacity(state.len());
        let mut order = Vec::with_capacity(state.len());
        for l in state {
            let group: Vec<Socket> = l.fds.into_iter().map(Socket::from).collect();
            for socket in &group {
                let at = socket.local_addr().ok().and_then(|a| a.as_socket());
                if at != Some(l.addr) || !socket.is_listener().unwrap_or(false) {
                    return Err(Error::Upgrade {
                        reason: format!(
                            "an inherited socket for {} is not listening there ({at:?})",
                            l.addr
                        ),
                    });
                }
            }
            local.push(l.addr);
            order.push(l.order);
            sockets.push(group);
        }
        Ok(Listeners {
            sockets,
            local,
            balance,
            backlog,
            order,
            steered,
            steer_broken,
        })
    }

    /// What an upgrade hands on: per address, its sockets in slot order
    /// and the group's order; the slots steered to, whether steering
    /// broke, and the backlog.
    pub(crate) fn describe(&self) -> Layout<'_> {
        use std::os::fd::AsFd;
        let groups = self
            .sockets
            .iter()
            .zip(&self.local)
            .zip(&self.order)
            .map(|((group, addr), order)| {
                (
                    *addr,
                    order.as_slice(),
                    group.iter().map(|s| s.as_fd()).collect(),
                )
            })
            .collect();
        Layout {
            groups,
            steered: &self.steered,
            steer_broken: self.steer_broken,
            backlog: self.backlog,
        }
    }

    /// The addresses actually bound, in configuration order.
    pub(crate) fn local_addrs(&self) -> &[SocketAddr] {
        &self.local
    }

    /// Their ports, in the same order.
    pub(crate) fn ports(&self) -> Vec<u16> {
        self.local.iter().map(SocketAddr::port).collect()
    }

    /// The fds a worker in `slot` inherits, in address order (fd 3, 4, ...).
    /// None in proxy mode: workers get private listeners there.
    pub(crate) fn fds_for_slot(&self, slot: usize) -> Vec<RawFd> {
        self.sockets
            .iter()
            .filter_map(|group| match self.balance {
                Balance::Shared => Some(group[0].as_raw_fd()),
                Balance::ReusePort => Some(group[slot].as_raw_fd()),
                Balance::Proxy { .. } | Balance::Http { .. } => None,
            })
            .collect()
    }

    /// The public sockets, one per address, for the proxy's accept loops.
    pub(crate) fn public(&self) -> impl Iterator<Item = &Socket> {
        self.sockets.iter().map(|group| &group[0])
    }

    /// How workers share the addresses.
    pub(crate) fn balance(&self) -> Balance {
        self.balance
    }
}

impl Listeners {
    /// Whether slots have sockets of their own (and so can be steered).
    pub(crate) fn per_slot(&self) -> bool {
        self.balance == Balance::ReusePort
    }

    /// Steers new connections to the `live` slots, unless they are those
    /// steered to already or steering has failed before.
    ///
    /// # Errors
    ///
    /// The first failure to attach the steering program; from then on the
    /// kernel's own hash decides and this does nothing.
    pub(crate) fn steer_to(&mut self, live: &[usize]) -> io::Result<()> {
        if self.steer_broken || live.is_empty() || live == self.steered {
            return Ok(());
        }
        match self.steer(live) {
            Ok(()) => {
                self.steered = live.to_vec();
                Ok(())
            }
            Err(e) => {
                self.steer_broken = true;
                Err(e)
            }
        }
    }

    /// Whether new connections are steered away from `slot`, so that what
    /// is queued on its socket waits for nobody.
    pub(crate) fn steered_away(&self, slot: usize) -> bool {
        !self.steer_broken && !self.steered.is_empty() && !self.steered.contains(&slot)
    }

    /// Sends new connections only to the `live` slots' sockets. A no-op
    /// unless each slot has its own socket.
    pub(crate) fn steer(&self, live: &[usize]) -> io::Result<()> {
        if !self.per_slot() || live.is_empty() {
            return Ok(());
        }
        for (group, order) in self.sockets.iter().zip(&self.order) {
            let positions: Vec<u32> = live
                .iter()
                .filter_map(|&slot| order.iter().position(|&s| s == slot))
                .map(|p| p as u32)
                .collect();
            // Attached through a socket that is surely in the group.
            steer::steer(&group[live[0]], &positions)?;
        }
        Ok(())
    }

    /// The sockets that no longer listen (a worker called `shutdown` on
    /// its copy): (address index, slot or 0).
    pub(crate) fn dead(&self) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        for (a, group) in self.sockets.iter().enumerate() {
            for (k, socket) in group.iter().enumerate() {
                if !socket.is_listener().unwrap_or(true) {
                    out.push((a, k));
                }
            }
        }
        out
    }

    /// Replaces socket `k` of address `a` with a new one bound the same
    /// way; the next workers of the slot (of every slot, when shared) get
    /// it. The old one is closed here; workers still holding it accept
    /// nothing more from it.
    ///
    /// # Errors
    ///
    /// [`Error::AddressInUse`] or [`Error::Listen`] naming the address.
    pub(crate) fn replace(&mut self, a: usize, k: usize) -> Result<()> {
        let reuse_port = self.per_slot();
        let socket = bind_one(self.local[a], reuse_port, self.backlog)?;
        self.sockets[a][k] = socket;
        if reuse_port {
            let order = &mut self.order[a];
            if let Some(i) = order.iter().position(|&s| s == k) {
                order.swap_remove(i);
            }
            order.push(k);
            // Steering names sockets by their place in the group, which
            // the replacement changed: steer again at the next change.
            self.steered.clear();
        }
        Ok(())
    }

    /// Reuseport: binds one more slot's socket to every address; it joins
    /// the end of each group. A no-op in the other modes.
    ///
    /// # Errors
    ///
    /// [`Error::Listen`] naming the address; nothing is added then.
    pub(crate) fn add_slot(&mut self) -> Result<()> {
        if !self.per_slot() {
            return Ok(());
        }
        let slot = self.sockets.first().map_or(0, Vec::len);
        let mut added = Vec::with_capacity(self.local.len());
        for &addr in &self.local {
            added.push(bind_one(addr, true, self.backlog)?);
        }
        for ((group, order), socket) in self.sockets.iter_mut().zip(&mut self.order).zip(added) {
            group.push(socket);
            order.push(slot);
        }
        Ok(())
    }

    /// Reuseport: closes the last slot's sockets, after passing on what is
    /// queued on them (returned, with where each connection goes). The
    /// kernel moves the last socket of each group into the closed one's
    /// place, which the steering model follows. A no-op in the other modes.
    pub(crate) fn remove_last_slot(&mut self) -> Vec<(std::net::TcpStream, SocketAddr)> {
        if !self.per_slot() {
            return Vec::new();
        }
        let Some(slot) = self
            .sockets
            .first()
            .map(Vec::len)
            .and_then(|n| n.checked_sub(1))
        else {
            return Vec::new();
        };
        let queued = self.drain_slot(slot);
        for (group, order) in self.sockets.iter_mut().zip(&mut self.order) {
            group.pop();
            if let Some(i) = order.iter().position(|&s| s == slot) {
                order.swap_remove(i);
            }
        }
        self.steered.clear();
        queued
    }

    /// Duplicates of every socket, for watching them.
    pub(crate) fn duplicates(&self) -> Vec<std::os::fd::OwnedFd> {
        self.sockets
            .iter()
            .flatten()
            .filter_map(|s| s.try_clone().ok().map(std::os::fd::OwnedFd::from))
            .collect()
    }

    /// Accepts whatever is queued on `slot`'s own sockets, with the
    /// address each connection should be forwarded to.
    pub(crate) fn drain_slot(&self, slot: usize) -> Vec<(std::net::TcpStream, SocketAddr)> {
        if !self.per_slot() {
            return Vec::new();
        }
        let mut out = Vec::new();
        for (group, &local) in self.sockets.iter().zip(&self.local) {
            if let Some(socket) = group.get(slot) {
                let target = rescue::target(local);
                out.extend(
                    rescue::drain_queue(socket)
                        .into_iter()
                        .map(|c| (std::net::TcpStream::from(c), target)),
                );
            }
        }
        out
    }
}

/// Binds `slots` SO_REUSEPORT sockets to one address.
///
/// SO_REUSEPORT lets any process of the same user join the group silently,
/// which would split traffic with, say, a second herd started by mistake.
/// So the address is first probed with a plain socket, which fails with
/// EADDRINUSE if anyone listens there, reuseport or not.
fn bind_reuseport_group(addr: SocketAddr, slots: usize, backlog: u32) -> Result<Vec<Socket>> {
    let mut addr = addr;
    if addr.port() != 0 {
        drop(bind_one(addr, false, backlog)?);
    }
    let mut group = Vec::with_capacity(slots);
    for _ in 0..slots {
        let socket = bind_one(addr, true, backlog)?;
        if addr.port() == 0 {
            // The first socket chose the port; the rest of the group joins it.
            if let Some(bound) = socket.local_addr().ok().and_then(|a| a.as_socket()) {
                addr.set_port(bound.port());
            }
        }
        group.push(socket);
    }
    Ok(group)
}

fn bind_one(addr: SocketAddr, reuse_port: bool, backlog: u32) -> Result<Socket> {
    let listen_err = |source: io::Error| {
        if source.kind() == io::ErrorKind::AddrInUse {
            Error::AddressInUse { addr, source }
        } else {
            Error::Listen { addr, source }
        }
    };
    // socket2 creates sockets with SOCK_CLOEXEC: only the fd shuffle after
    // fork hands them to a worker.
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(listen_err)?;
    // SO_REUSEADDR lets a restarted master rebind while old connections
    // linger in TIME_WAIT; it does not allow two listeners.
    socket.set_reuse_address(true).map_err(listen_err)?;
    if reuse_port {
        socket.set_reuse_port(true).map_err(listen_err)?;
    }
    if addr.is_ipv6() {
        // `[::]:3000` means IPv6 only, so that `0.0.0.0:3000` can be listed too.
        socket.set_only_v6(true).map_err(listen_err)?;
    }
    socket.bind(&addr.into()).map_err(listen_err)?;
    let backlog = i32::try_from(backlog).unwrap_or(i32::MAX);
    socket.listen(backlog).map_err(listen_err)?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steering_is_remembered_and_forgotten_when_a_socket_is_replaced() {
        let mut l = Listeners::bind(
            vec![Bound::Addr("127.0.0.1:0".parse().unwrap())],
            Balance::ReusePort,
            3,
            16,
        )
        .unwrap();
        assert!(!l.steered_away(1), "nothing steered yet");
        l.steer_to(&[0, 2]).unwrap();
        assert!(l.steered_away(1));
        assert!(!l.steered_away(0) && !l.steered_away(2));
        // A replaced socket changes the group's order: steering starts over.
        l.replace(0, 1).unwrap();
        assert!(!l.steered_away(1));
        l.steer_to(&[0, 2]).unwrap();
        assert!(l.steered_away(1));
    }

    #[test]
    fn listen_addresses_parse_from_cli_text() {
        let one = |t: &str| parse_listen_addr(t).unwrap()[0].to_string();
        assert_eq!(one("3000"), "0.0.0.0:3000");
        assert_eq!(one(":8080"), "0.0.0.0:8080");
        assert_eq!(one("127.0.0.1:0"), "127.0.0.1:0");
        assert_eq!(one("[::1]:3000"), "[::1]:3000");
        assert!(parse_listen_addr("localhost:3000")
            .unwrap()
            .iter()
            .all(|a| a.ip().is_loopback()));
        for bad in ["", "99999", "not-an-address", "1.2.3.4:port", "[::1"] {
            let e = parse_listen_addr(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("`{bad}`")), "{e}");
        }
    }

    #[test]
    fn reuseport_group_shares_one_kernel_chosen_port() {
        let l = Listeners::bind(
            vec![Bound::Addr("127.0.0.1:0".parse().unwrap())],
            Balance::ReusePort,
            3,
            16,
        )
        .unwrap();
        let port = l.local_addrs()[0].port();
        assert_ne!(port, 0);
        let fds: Vec<_> = (0..3).map(|s| l.fds_for_slot(s)[0]).collect();
        assert!(fds[0] != fds[1] && fds[1] != fds[2], "one socket per slot");
        for group in &l.sockets {
            for s in group {
                assert_eq!(s.local_addr().unwrap().as_socket().unwrap().port(), port);
            }
        }
    }

    #[test]
    fn busy_address_is_named() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        for balance in [Balance::ReusePort, Balance::Shared] {
            let err = Listeners::bind(vec![Bound::Addr(addr)], balance, 2, 16).unwrap_err();
            assert!(matches!(err, Error::AddressInUse { .. }), "{err:?}");
            assert!(err.to_string().contains(&addr.to_string()), "{err}");
        }
    }

    #[test]
    fn a_second_reuseport_group_on_the_same_port_is_refused() {
        let first = Listeners::bind(
            vec![Bound::Addr("127.0.0.1:0".parse().unwrap())],
            Balance::ReusePort,
            2,
            16,
        )
        .unwrap();
        let addr = first.local_addrs()[0];
        let err = Listeners::bind(vec![Bound::Addr(addr)], Balance::ReusePort, 2, 16).unwrap_err();
        assert!(matches!(err, Error::AddressInUse { .. }), "{err:?}");
    }
}
