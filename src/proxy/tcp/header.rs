//! The PROXY protocol header (HAProxy's convention), so that an app behind
//! the proxy sees the real client address.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use crate::types::{Error, Result};

/// Which PROXY protocol header the master sends before the client's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProxyProtocol {
    /// The text header: `PROXY TCP4 <src> <dst> <sport> <dport>\r\n`.
    V1,
    /// The binary header.
    V2,
}

impl fmt::Display for ProxyProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProxyProtocol::V1 => "v1",
            ProxyProtocol::V2 => "v2",
        })
    }
}

impl FromStr for ProxyProtocol {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "v1" | "1" => Ok(ProxyProtocol::V1),
            "v2" | "2" => Ok(ProxyProtocol::V2),
            _ => Err(Error::Parse {
                what: "PROXY protocol version",
                input: s.to_owned(),
                reason: "expected v1 or v2".into(),
            }),
        }
    }
}

/// The v2 signature.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// The header for a connection from `src` to `dst`.
pub(crate) fn encode(version: ProxyProtocol, src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    // Both ends in one family: map an IPv4 peer on an IPv6 socket back.
    let (src, dst) = same_family(src, dst);
    match version {
        ProxyProtocol::V1 => {
            let family = if src.is_ipv4() { "TCP4" } else { "TCP6" };
            format!(
                "PROXY {family} {} {} {} {}\r\n",
                src.ip(),
                dst.ip(),
                src.port(),
                dst.port()
            )
            .into_bytes()
        }
        ProxyProtocol::V2 => {
            let mut out = Vec::with_capacity(16 + 36);
            out.extend_from_slice(&V2_SIGNATURE);
            out.push(0x21); // version 2, PROXY command
            match (src, dst) {
                (SocketAddr::V4(s), SocketAddr::V4(d)) => {
                    out.push(0x11); // TCP over IPv4
                    out.extend_from_slice(&12u16.to_be_bytes());
                    out.extend_from_slice(&s.ip().octets());
                    out.extend_from_slice(&d.ip().octets());
                    out.extend_from_slice(&s.port().to_be_bytes());
                    out.extend_from_slice(&d.port().to_be_bytes());
                }
                (s, d) => {
                    let v6 = |a: SocketAddr| match a {
                        SocketAddr::V6(a) => a.ip().octets(),
                        SocketAddr::V4(a) => a.ip().to_ipv6_mapped().octets(),
                    };
                    out.push(0x21); // TCP over IPv6
                    out.extend_from_slice(&36u16.to_be_bytes());
                    out.extend_from_slice(&v6(s));
                    out.extend_from_slice(&v6(d));
                    out.extend_from_slice(&s.port().to_be_bytes());
                    out.extend_from_slice(&d.port().to_be_bytes());
                }
            }
            out
        }
    }
}

fn same_family(src: SocketAddr, dst: SocketAddr) -> (SocketAddr, SocketAddr) {
    let unmap = |a: SocketAddr| match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::from((v4, v6.port())),
            None => a,
        },
        v4 => v4,
    };
    let (s, d) = (unmap(src), unmap(dst));
    if s.is_ipv4() == d.is_ipv4() {
        (s, d)
    } else {
        (src, dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_is_one_text_line() {
        let h = encode(
            ProxyProtocol::V1,
            "203.0.113.7:51000".parse().unwrap(),
            "127.0.0.1:3000".parse().unwrap(),
        );
        assert_eq!(h, b"PROXY TCP4 203.0.113.7 127.0.0.1 51000 3000\r\n");
        let h6 = encode(
            ProxyProtocol::V1,
            "[2001:db8::1]:4000".parse().unwrap(),
            "[::1]:3000".parse().unwrap(),
        );
        assert_eq!(h6, b"PROXY TCP6 2001:db8::1 ::1 4000 3000\r\n");
    }

    #[test]
    fn v2_has_signature_family_and_addresses() {
        let h = encode(
            ProxyProtocol::V2,
            "10.1.2.3:1234".parse().unwrap(),
            "127.0.0.1:80".parse().unwrap(),
        );
        assert_eq!(&h[..12], &V2_SIGNATURE);
        assert_eq!(h[12], 0x21);
        assert_eq!(h[13], 0x11);
        assert_eq!(u16::from_be_bytes([h[14], h[15]]), 12);
        assert_eq!(&h[16..20], &[10, 1, 2, 3]);
        assert_eq!(&h[20..24], &[127, 0, 0, 1]);
        assert_eq!(u16::from_be_bytes([h[24], h[25]]), 1234);
        assert_eq!(u16::from_be_bytes([h[26], h[27]]), 80);
        assert_eq!(h.len(), 28);
    }

    #[test]
    fn versions_parse_and_bad_ones_are_named() {
        assert_eq!("v2".parse::<ProxyProtocol>().unwrap(), ProxyProtocol::V2);
        let e = "v3".parse::<ProxyProtocol>().unwrap_err().to_string();
        assert!(e.contains("v3"), "{e}");
    }
}
