//! How workers share an address, how proxy mode picks one, which clients
//! are trusted: the balance vocabulary the CLI, config and engine share.

use std::fmt;
use std::str::FromStr;

use super::error::{Error, Result};

/// How proxy mode picks a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Strategy {
    /// Each worker in turn.
    #[default]
    RoundRobin,
    /// The worker with the fewest open connections (ties in turn).
    LeastConnections,
    /// Two workers at random, the less loaded of them: nearly as good as
    /// least-connections, without a scan.
    PowerOfTwo,
    /// The client's IP address decides (rendezvous hashing over slots,
    /// looked up in a table built when the set of workers changes, so a
    /// pick costs the same for 2 workers or 256): a client keeps its
    /// worker, and when a worker leaves or joins only the clients of that
    /// worker move.
    IpHash,
}

impl Strategy {
    /// The names [`FromStr`] accepts.
    pub const NAMES: &'static [&'static str] = &["round-robin", "least-conn", "p2c", "ip-hash"];
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Strategy::RoundRobin => "round-robin",
            Strategy::LeastConnections => "least-conn",
            Strategy::PowerOfTwo => "p2c",
            Strategy::IpHash => "ip-hash",
        })
    }
}

impl FromStr for Strategy {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "round-robin" | "roundrobin" | "rr" => Ok(Strategy::RoundRobin),
            "least-conn" | "least-connections" | "leastconn" => Ok(Strategy::LeastConnections),
            "p2c" | "power-of-two" | "power-of-two-choices" => Ok(Strategy::PowerOfTwo),
            "ip-hash" | "iphash" | "source" => Ok(Strategy::IpHash),
            _ => Err(Error::Parse {
                what: "proxy strategy",
                input: s.to_owned(),
                reason: format!("expected one of: {}", Strategy::NAMES.join(", ")),
            }),
        }
    }
}

/// How workers share a listening address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Balance {
    /// One `SO_REUSEPORT` socket per worker *slot*; the kernel hashes each new
    /// connection to one of them. Slot *i*'s socket is handed to every
    /// generation of worker *i*, so a restart keeps both the hash mapping and
    /// the queue.
    #[default]
    ReusePort,
    /// One socket inherited by every worker; the kernel wakes one acceptor.
    Shared,
    /// The master accepts every connection and forwards it to a worker's
    /// private loopback listener, chosen by `strategy`. The master knows
    /// every connection: it can drain a worker without the worker's help,
    /// keep a client on one worker, or avoid a busy one.
    Proxy {
        /// How a worker is chosen.
        strategy: Strategy,
    },
    /// Like `Proxy`, but the master speaks HTTP/1.1 (feature `http`): it
    /// keeps every client's connection and balances each *request*, over
    /// pooled connections to the workers' private listeners. A reload is
    /// invisible whatever the app does when told to stop.
    Http {
        /// How a worker is chosen for each request.
        strategy: Strategy,
    },
}

impl Balance {
    /// The names [`FromStr`] accepts, for error messages and `--help`.
    pub const NAMES: &'static [&'static str] = &["reuseport", "shared", "proxy", "http"];

    /// Whether the master forwards connections (or requests) itself.
    pub fn is_proxy(self) -> bool {
        matches!(self, Balance::Proxy { .. } | Balance::Http { .. })
    }

    /// Whether the master speaks HTTP and balances requests.
    pub fn is_http(self) -> bool {
        matches!(self, Balance::Http { .. })
    }

    /// The strategy, in the modes where the master picks.
    pub fn strategy(self) -> Option<Strategy> {
        match self {
            Balance::Proxy { strategy } | Balance::Http { strategy } => Some(strategy),
            _ => None,
        }
    }
}

impl fmt::Display for Balance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Balance::ReusePort => f.write_str("reuseport"),
            Balance::Shared => f.write_str("shared"),
            Balance::Proxy {
                strategy: Strategy::RoundRobin,
            } => f.write_str("proxy"),
            Balance::Proxy { strategy } => write!(f, "proxy:{strategy}"),
            Balance::Http {
                strategy: Strategy::RoundRobin,
            } => f.write_str("http"),
            Balance::Http { strategy } => write!(f, "http:{strategy}"),
        }
    }
}

impl FromStr for Balance {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "reuseport" | "reuse-port" => Ok(Balance::ReusePort),
            "shared" => Ok(Balance::Shared),
            "proxy" => Ok(Balance::Proxy {
                strategy: Strategy::default(),
            }),
            other if other.starts_with("proxy:") => Ok(Balance::Proxy {
                strategy: other["proxy:".len()..].parse()?,
            }),
            "http" => Ok(Balance::Http {
                strategy: Strategy::default(),
            }),
            other if other.starts_with("http:") => Ok(Balance::Http {
                strategy: other["http:".len()..].parse()?,
            }),
            _ => Err(Error::Parse {
                what: "balance mode",
                input: s.to_owned(),
                reason: format!("expected one of: {}", Balance::NAMES.join(", ")),
            }),
        }
    }
}

/// An IP address range: `10.0.0.0/8`, `fd00::/8`, or one address
/// (`127.0.0.1` is `127.0.0.1/32`). [`crate::Builder::trust_proxy`] takes
/// them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: std::net::IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` is in the range (an IPv4-mapped IPv6 address counts as
    /// its IPv4 address).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = |reason: &str| Error::Parse {
            what: "address range",
            input: s.to_owned(),
            reason: reason.to_owned(),
        };
        let (addr, prefix) = s.split_once('/').unwrap_or((s, ""));
        let addr: std::net::IpAddr = addr
            .parse()
            .map_err(|_| bad("expected an IP address, optionally with /PREFIX"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = if prefix.is_empty() {
            max
        } else {
            prefix
                .parse::<u8>()
                .ok()
                .filter(|&p| p <= max)
                .ok_or_else(|| bad(&format!("the prefix must be 0 to {max}")))?
        };
        Ok(Cidr { addr, prefix })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_ranges_parse_and_contain_what_they_should() {
        let r: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(r.contains("10.1.200.3".parse().unwrap()));
        assert!(!r.contains("10.2.0.1".parse().unwrap()));
        assert!(r.contains("::ffff:10.1.0.9".parse().unwrap()));
        let one: Cidr = "127.0.0.1".parse().unwrap();
        assert_eq!(one.to_string(), "127.0.0.1/32");
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        assert!("10.0.0.0/33"
            .parse::<Cidr>()
            .unwrap_err()
            .to_string()
            .contains("10.0.0.0/33"));
        assert!("nonsense".parse::<Cidr>().is_err());
    }

    #[test]
    fn balance_round_trips_through_text() {
        for b in [
            Balance::ReusePort,
            Balance::Shared,
            Balance::Proxy {
                strategy: Strategy::RoundRobin,
            },
            Balance::Proxy {
                strategy: Strategy::IpHash,
            },
        ] {
            assert_eq!(b.to_string().parse::<Balance>().unwrap(), b);
        }
        let err = "roundrobin".parse::<Balance>().unwrap_err().to_string();
        assert!(
            err.contains("roundrobin") && err.contains("reuseport"),
            "{err}"
        );
    }
}
