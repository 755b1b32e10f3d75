//! Taking a slot out of the kernel's `SO_REUSEPORT` hash.
//!
//! By default the kernel hashes every new connection to one socket of the
//! reuseport group, whether or not a worker accepts on it. A slot whose
//! worker is in a long backoff or has failed for good would collect
//! connections that nobody serves. A classic BPF program attached to the
//! group (`SO_ATTACH_REUSEPORT_CBPF`) chooses the socket instead: it maps the
//! connection's hash onto the slots that have a live worker only. The master
//! rewrites it whenever that set changes.
//!
//! The program sees the SYN. It reads the flow hash the kernel computed for
//! the packet and takes it modulo the number of live slots, then a chain of
//! comparisons turns that position into a socket index (the group keeps
//! sockets in the order they started listening, which is slot order, since
//! the master never closes one).

use std::io;
use std::os::fd::AsRawFd;

use nix::libc;
use socket2::Socket;

/// The kernel's limit on a classic BPF program's length.
const BPF_MAXINSNS: usize = 4096;
/// The most slots a steering program can name: two instructions each, plus
/// three (load the hash, take it modulo, the fallback return).
pub(crate) const MAX_STEERED_SLOTS: usize = (BPF_MAXINSNS - 3) / 2;

fn stmt(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u32, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

/// The program that sends every connection to one of `live` (socket
/// indices within the group). `live` must not be empty.
pub(crate) fn program(live: &[u32]) -> Vec<libc::sock_filter> {
    let mut p = Vec::with_capacity(3 + 2 * live.len());
    // A = the packet's flow hash, the same one RSS and RPS use.
    p.push(stmt(
        libc::BPF_LD | libc::BPF_W | libc::BPF_ABS,
        (libc::SKF_AD_OFF + libc::SKF_AD_RXHASH) as u32,
    ));
    // A %= number of live slots.
    p.push(stmt(
        libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K,
        live.len() as u32,
    ));
    // if A == i return live[i]
    for (i, &socket) in live.iter().enumerate() {
        p.push(jump(
            libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
            i as u32,
            0,
            1,
        ));
        p.push(stmt(libc::BPF_RET | libc::BPF_K, socket));
    }
    p.push(stmt(libc::BPF_RET | libc::BPF_K, live[0]));
    p
}

/// Steers new connections of `socket`'s reuseport group to the sockets at
/// the `live` indices. Any socket of the group may be used.
pub(crate) fn steer(socket: &Socket, live: &[u32]) -> io::Result<()> {
    if live.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "no live slot to steer connections to",
        ));
    }
    let prog = program(live);
    if prog.len() > BPF_MAXINSNS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many slots for a steering program",
        ));
    }
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr().cast_mut(),
    };
    // SAFETY: setsockopt reads `size_of::<sock_fprog>()` bytes from a valid
    // sock_fprog whose `filter` points to `len` initialized instructions
    // that outlive the call; the kernel copies the program.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            (&fprog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::{Balance, Bound, Listeners};
    use std::net::TcpStream;

    fn pending(socket: &Socket) -> usize {
        socket.set_nonblocking(true).unwrap();
        let mut n = 0;
        while socket.accept().is_ok() {
            n += 1;
        }
        n
    }

    #[test]
    fn the_largest_program_fits_the_kernels_limit() {
        let all: Vec<u32> = (0..MAX_STEERED_SLOTS as u32).collect();
        assert!(program(&all).len() <= BPF_MAXINSNS);
        let one_more: Vec<u32> = (0..=MAX_STEERED_SLOTS as u32).collect();
        assert!(program(&one_more).len() > BPF_MAXINSNS);
    }

    #[test]
    fn after_a_slot_socket_is_replaced_steering_still_names_the_right_slots() {
        let mut l = Listeners::bind(
            vec![Bound::Addr("127.0.0.1:0".parse().unwrap())],
            Balance::ReusePort,
            4,
            256,
        )
        .unwrap();
        let addr = l.local_addrs()[0];
        // A worker shuts slot 1's socket down (the kernel moves the last
        // socket into its place in the group); the master replaces it
        // (the new one joins at the end).
        l.sockets[0][1]
            .try_clone()
            .unwrap()
            .shutdown(std::net::Shutdown::Both)
            .unwrap();
        assert_eq!(l.dead(), vec![(0, 1)]);
        l.replace(0, 1).unwrap();
        assert!(l.dead().is_empty());
        l.steer(&[1, 3]).unwrap();
        let clients: Vec<_> = (0..60).map(|_| TcpStream::connect(addr).unwrap()).collect();
        let counts: Vec<usize> = l.sockets[0].iter().map(pending).collect();
        drop(clients);
        assert_eq!(counts.iter().sum::<usize>(), 60, "{counts:?}");
        assert_eq!((counts[0], counts[2]), (0, 0), "steered out: {counts:?}");
        assert!(
            counts[1] > 0 && counts[3] > 0,
            "both live slots get some: {counts:?}"
        );
    }

    #[test]
    fn program_maps_every_position_to_a_live_socket() {
        let p = program(&[0, 2, 5]);
        assert_eq!(p.len(), 2 + 2 * 3 + 1);
        let returns: Vec<u32> = p
            .iter()
            .filter(|i| u32::from(i.code) == libc::BPF_RET | libc::BPF_K)
            .map(|i| i.k)
            .collect();
        assert_eq!(returns, [0, 2, 5, 0]);
    }

    #[test]
    fn connections_reach_only_the_live_slots() {
        let l = Listeners::bind(
            vec![Bound::Addr("127.0.0.1:0".parse().unwrap())],
            Balance::ReusePort,
            3,
            256,
        )
        .unwrap();
        let addr = l.local_addrs()[0];
        steer(&l.sockets[0][0], &[0, 2]).unwrap();
        let clients: Vec<_> = (0..60).map(|_| TcpStream::connect(addr).unwrap()).collect();
        let counts: Vec<usize> = l.sockets[0].iter().map(pending).collect();
        drop(clients);
        assert_eq!(
            counts[1], 0,
            "the steered-out slot gets nothing: {counts:?}"
        );
        assert_eq!(counts.iter().sum::<usize>(), 60);
        assert!(
            counts[0] > 0 && counts[2] > 0,
            "both live slots get some: {counts:?}"
        );
    }
}
