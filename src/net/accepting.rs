//! Who accepts: the accept queue of each listening socket, and the
//! listening sockets a process holds, read from `/proc`.
//!
//! A worker that binds a port of its own (a Go or Java server given no
//! `PORT`, a program that ignores `LISTEN_FDS`) leaves herd's socket
//! unserved: connections wait in its queue and clients hang. The queue's
//! length is the `rx_queue` of its row in `/proc/net/tcp` (for a listener,
//! the connections waiting to be accepted); the worker's own listeners are
//! the listening rows whose inodes are among its fds.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::RawFd;

/// A listening TCP socket: where it listens and how many connections
/// wait in its accept queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Listener {
    pub(crate) addr: SocketAddr,
    pub(crate) queued: u32,
}

/// Every listening TCP socket of this network namespace, by inode.
pub(crate) fn listeners() -> HashMap<u64, Listener> {
    let mut out = HashMap::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(file) {
            out.extend(parse(&text));
        }
    }
    out
}

/// The listening rows of one `/proc/net/tcp{,6}` text.
pub(crate) fn parse(text: &str) -> Vec<(u64, Listener)> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
            if f.len() < 10 || f[3] != "0A" {
                return None;
            }
            let addr = hex_addr(f[1])?;
            let queued = u32::from_str_radix(f[4].split(':').nth(1)?, 16).ok()?;
            let inode = f[9].parse().ok()?;
            Some((inode, Listener { addr, queued }))
        })
        .collect()
}

/// `0100007F:0BB8` (IPv4) or 32 hex digits and a port (IPv6), as the
/// kernel writes them: each 32-bit word in the host's byte order.
fn hex_addr(text: &str) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let w = u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16).ok()?;
        Some(w.to_ne_bytes())
    };
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// How many connections wait in the accept queue of the listening socket
/// at `fd`: TCP_INFO's `tcpi_unacked` (for a listener, the kernel's
/// `sk_ack_backlog`). One system call, where `/proc/net/tcp` would list
/// every socket of the machine.
pub(crate) fn queued(fd: RawFd) -> Option<u32> {
    use nix::libc;
    let mut info = std::mem::MaybeUninit::<libc::tcp_info>::zeroed();
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `fd` is one of the master's own listening sockets; the kernel
    // writes at most `len` bytes into `info`, which is that large and
    // zeroed, so every field is initialised whatever it writes.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    // SAFETY: zeroed above, and written (in part) by the kernel.
    (rc == 0).then(|| unsafe { info.assume_init() }.tcpi_unacked)
}

/// The inode of the socket at `fd`.
pub(crate) fn inode(fd: RawFd) -> Option<u64> {
    // SAFETY: `fd` is one of the master's own listening sockets, open for
    // as long as the listeners it belongs to.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    nix::sys::stat::fstat(fd).ok().map(|s| s.st_ino)
}

/// The inodes of the sockets process `pid` holds.
pub(crate) fn socket_inodes(pid: u32) -> Vec<u64> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|target| {
            let t = target.to_str()?;
            t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_rows_give_their_address_queue_and_inode() {
        // As the kernel writes them on a little-endian machine.
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
           0: 0100007F:1F90 00000000:0000 0A 00000000:00000003 00:00000000 00000000     0        0 4242 1 0 100 0 0 10 0\n\
           1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 4343 1 0 20 4 30 10 -1\n";
        let rows = parse(text);
        if cfg!(target_endian = "little") {
            assert_eq!(
                rows,
                [(
                    4242,
                    Listener {
                        addr: "127.0.0.1:8080".parse().unwrap(),
                        queued: 3
                    }
                )]
            );
        }
        let v6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
           0: 00000000000000000000000001000000:0BB8 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 77 1 0 100 0 0 10 0\n";
        if cfg!(target_endian = "little") {
            assert_eq!(parse(v6)[0].1.addr, "[::1]:3000".parse().unwrap());
        }
    }

    #[test]
    fn this_processs_own_listener_is_found_with_its_queue() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&l);
        assert_eq!(queued(fd), Some(0));
        let _waiting = std::net::TcpStream::connect(addr).unwrap();
        assert_eq!(queued(fd), Some(1));
        let ino = inode(std::os::fd::AsRawFd::as_raw_fd(&l)).unwrap();
        assert!(socket_inodes(std::process::id()).contains(&ino));
        let found = listeners()[&ino];
        assert_eq!(found.addr, addr);
        assert_eq!(found.queued, 1, "the connection waits to be accepted");
    }
}
