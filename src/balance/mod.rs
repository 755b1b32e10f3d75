//! Choosing a worker for a new connection in proxy mode.
//!
//! Pure and allocation-free: [`Picker::pick`] reads the candidates' keys
//! and active connection counts and returns an index. This is the hot path
//! of proxy mode; `benches/balance.rs` measures it.
//!
//! Only [`Strategy`] is herd's API. [`Picker`], [`Candidate`], [`Slot`],
//! [`hash_ip`] and [`ActiveCount`] are what the proxy runs, public so that
//! the benches measure the real code; they are hidden from the docs and may
//! change in any release.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};

pub use crate::types::Strategy;

/// What a strategy needs to know of one worker.
#[doc(hidden)]
pub trait Candidate {
    /// A key that stays the same across the worker's restarts (its slot),
    /// for [`Strategy::IpHash`].
    fn key(&self) -> u64;
    /// Connections open to it now.
    fn active(&self) -> u32;
}

/// A worker as plain numbers: for tests and benchmarks.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// Its stable key.
    pub key: u64,
    /// Its open connections.
    pub active: u32,
}

impl Candidate for Slot {
    fn key(&self) -> u64 {
        self.key
    }
    fn active(&self) -> u32 {
        self.active
    }
}

/// The per-listener state of a strategy: a turn counter and a random
/// generator.
#[doc(hidden)]
#[derive(Debug, Clone)]
pub struct Picker {
    strategy: Strategy,
    turn: usize,
    rng: u64,
    /// IpHash: the tables of the last two sets of workers (a set and its
    /// successor while both are in use), and which one goes next.
    tables: [HashTable; 2],
    next_table: usize,
}

impl Picker {
    /// A picker; `seed` feeds power-of-two's random choices.
    pub fn new(strategy: Strategy, seed: u64) -> Self {
        Picker {
            strategy,
            turn: 0,
            // xorshift must not start at 0.
            rng: mix(seed) | 1,
            tables: Default::default(),
            next_table: 0,
        }
    }

    /// The strategy.
    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// Chooses one of `candidates` for a client whose address hashes to
    /// `client` (see [`hash_ip`]); None when there are none.
    #[inline]
    pub fn pick<C: Candidate>(&mut self, candidates: &[C], client: u64) -> Option<usize> {
        let n = candidates.len();
        if n <= 1 {
            return if n == 1 { Some(0) } else { None };
        }
        Some(match self.strategy {
            Strategy::RoundRobin => {
                self.turn = self.turn.wrapping_add(1);
                self.turn % n
            }
            Strategy::LeastConnections => {
                // The least load first, then, in circular order from just
                // after the last choice, the first candidate with it: equal
                // loads are served in turn.
                let min = min_load(candidates);
                let start = if self.turn + 1 >= n { 0 } else { self.turn + 1 };
                let best = candidates[start..]
                    .iter()
                    .position(|c| c.active() == min)
                    .map(|p| start + p)
                    .or_else(|| candidates[..start].iter().position(|c| c.active() == min))
                    .unwrap_or(start);
                self.turn = best;
                best
            }
            Strategy::PowerOfTwo => {
                let r = self.next_random();
                let a = reduce(r as u32, n);
                // A second choice distinct from the first.
                let b = (a + 1 + reduce((r >> 32) as u32, n - 1)) % n;
                if candidates[b].active() < candidates[a].active() {
                    b
                } else {
                    a
                }
            }
            Strategy::IpHash if n <= usize::from(u16::MAX) => {
                if let Some(at) = self
                    .tables
                    .iter()
                    .find_map(|t| t.lookup(candidates, client))
                {
                    return Some(at);
                }
                // A new set of workers: its table, once.
                let table = HashTable::build(candidates);
                let at = table.lookup(candidates, client).unwrap_or(0);
                self.tables[self.next_table] = table;
                self.next_table ^= 1;
                at
            }
            Strategy::IpHash => rendezvous(candidates, client),
        })
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Rendezvous hashing: the highest score wins. Score and position share
/// one key (positions break ties), in four independent lanes.
fn rendezvous<C: Candidate>(candidates: &[C], client: u64) -> usize {
    let n = candidates.len();
    let score = |i: usize, c: &C| -> u128 {
        let s = mix(client ^ c.key().wrapping_mul(0x9e37_79b9_7f4a_7c15));
        (u128::from(s) << 64) | (u64::MAX - i as u64) as u128
    };
    let mut lanes = [0u128; 4];
    let chunks = candidates.chunks_exact(4);
    let base = n - chunks.remainder().len();
    for (i, c) in chunks.remainder().iter().enumerate() {
        lanes[0] = lanes[0].max(score(base + i, c));
    }
    for (k, chunk) in chunks.enumerate() {
        let i = k * 4;
        lanes[0] = lanes[0].max(score(i, &chunk[0]));
        lanes[1] = lanes[1].max(score(i + 1, &chunk[1]));
        lanes[2] = lanes[2].max(score(i + 2, &chunk[2]));
        lanes[3] = lanes[3].max(score(i + 3, &chunk[3]));
    }
    let best = lanes[0].max(lanes[1]).max(lanes[2].max(lanes[3]));
    (u64::MAX - best as u64) as usize
}

/// Buckets of the client hash space that [`Strategy::IpHash`] maps to
/// workers: enough that each of 256 workers gets about 64 (within about
/// a tenth of each other), few enough that rebuilding the table when the
/// set of workers changes takes milliseconds.
const IP_HASH_BUCKETS: usize = 16 * 1024;

/// [`Strategy::IpHash`]'s lookup table: each bucket's rendezvous winner
/// among the workers it was built for. Rendezvous per bucket keeps its
/// property (a worker that leaves moves only its own buckets, one that
/// joins takes about 1/(n+1) of them), and a pick is one lookup instead
/// of a score per worker.
#[derive(Debug, Clone, Default)]
struct HashTable {
    /// The winner's position for each bucket.
    winners: Vec<u16>,
    /// The key at each position when the table was built.
    keys: Vec<u64>,
    /// The candidates' address when it was built: a new rotation is a new
    /// set.
    built_for: usize,
}

impl HashTable {
    /// The position for `client` if the table still describes
    /// `candidates`.
    #[inline]
    fn lookup<C: Candidate>(&self, candidates: &[C], client: u64) -> Option<usize> {
        if self.built_for != candidates.as_ptr() as usize || self.keys.len() != candidates.len() {
            return None;
        }
        let at = usize::from(*self.winners.get(bucket(client))?);
        // A set that changed in place (same address, other workers) shows
        // as another key at the position.
        (candidates.get(at)?.key() == self.keys[at]).then_some(at)
    }

    fn build<C: Candidate>(candidates: &[C]) -> HashTable {
        let keys: Vec<u64> = candidates.iter().map(Candidate::key).collect();
        let winners = (0..IP_HASH_BUCKETS)
            .map(|b| {
                let point = mix(b as u64 ^ 0x6a09_e667_f3bc_c909);
                let mut best = (0u64, 0usize);
                for (i, &k) in keys.iter().enumerate() {
                    let score = mix(point ^ k.wrapping_mul(0x9e37_79b9_7f4a_7c15));
                    if score > best.0 || i == 0 {
                        best = (score, i);
                    }
                }
                best.1 as u16
            })
            .collect();
        HashTable {
            winners,
            keys,
            built_for: candidates.as_ptr() as usize,
        }
    }
}

/// The bucket of a client hash (its high bits, spread over the buckets).
#[inline]
fn bucket(client: u64) -> usize {
    (((client >> 32) * IP_HASH_BUCKETS as u64) >> 32) as usize
}

/// The least load among `candidates`, in four independent lanes so that
/// the loop is not one long dependency chain.
#[inline]
fn min_load<C: Candidate>(candidates: &[C]) -> u32 {
    let mut lanes = [u32::MAX; 4];
    let chunks = candidates.chunks_exact(4);
    for c in chunks.remainder() {
        lanes[0] = lanes[0].min(c.active());
    }
    for chunk in chunks {
        lanes[0] = lanes[0].min(chunk[0].active());
        lanes[1] = lanes[1].min(chunk[1].active());
        lanes[2] = lanes[2].min(chunk[2].active());
        lanes[3] = lanes[3].min(chunk[3].active());
    }
    lanes[0].min(lanes[1]).min(lanes[2].min(lanes[3]))
}

/// Maps a random u32 onto 0..n without division bias worth noting
/// (Lemire's multiply-shift).
#[inline]
fn reduce(x: u32, n: usize) -> usize {
    ((u64::from(x) * n as u64) >> 32) as usize
}

/// splitmix64's finalizer: a fast, well-mixing 64-bit hash step.
#[inline]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A client address as [`Picker::pick`] takes it.
#[doc(hidden)]
pub fn hash_ip(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(v4) => mix(u64::from(u32::from(v4))),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return hash_ip(IpAddr::V4(v4));
            }
            let bits = u128::from(v6);
            mix((bits >> 64) as u64 ^ mix(bits as u64))
        }
    }
}

/// An exact count of a worker's open connections, as the proxy keeps it:
/// one atomic add when a connection opens, one subtraction when it closes.
#[doc(hidden)]
#[derive(Debug, Default)]
pub struct ActiveCount(AtomicU32);

impl ActiveCount {
    /// Connections open now.
    #[inline]
    pub fn get(&self) -> u32 {
        self.0.load(Ordering::Acquire)
    }

    /// Counts one more connection.
    #[inline]
    pub fn open(&self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }

    /// Counts one connection fewer; returns how many are left open.
    #[inline]
    pub fn close(&self) -> u32 {
        self.0.fetch_sub(1, Ordering::AcqRel) - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(loads: &[u32]) -> Vec<Slot> {
        loads
            .iter()
            .enumerate()
            .map(|(i, &active)| Slot {
                key: i as u64,
                active,
            })
            .collect()
    }

    fn histogram(p: &mut Picker, c: &[Slot], picks: usize) -> Vec<usize> {
        let mut h = vec![0; c.len()];
        for i in 0..picks {
            h[p.pick(c, hash_ip(IpAddr::from([10, 0, (i >> 8) as u8, i as u8])))
                .unwrap()] += 1;
        }
        h
    }

    #[test]
    fn no_candidate_no_pick_and_one_candidate_always() {
        for s in [
            Strategy::RoundRobin,
            Strategy::LeastConnections,
            Strategy::PowerOfTwo,
            Strategy::IpHash,
        ] {
            let mut p = Picker::new(s, 7);
            assert_eq!(p.pick::<Slot>(&[], 1), None, "{s}");
            assert_eq!(p.pick(&slots(&[9]), 1), Some(0), "{s}");
        }
    }

    #[test]
    fn round_robin_is_exactly_even() {
        let mut p = Picker::new(Strategy::RoundRobin, 0);
        assert_eq!(
            histogram(&mut p, &slots(&[0, 5, 0]), 300),
            vec![100, 100, 100]
        );
    }

    #[test]
    fn round_robin_follows_workers_leaving_and_joining() {
        let mut p = Picker::new(Strategy::RoundRobin, 0);
        let three = slots(&[0, 0, 0]);
        let two = slots(&[0, 0]);
        for _ in 0..10 {
            assert!(p.pick(&three, 0).unwrap() < 3);
            assert!(p.pick(&two, 0).unwrap() < 2);
        }
    }

    #[test]
    fn least_connections_takes_the_idlest_and_shares_ties() {
        let mut p = Picker::new(Strategy::LeastConnections, 0);
        assert_eq!(p.pick(&slots(&[3, 1, 2]), 0), Some(1));
        assert_eq!(
            histogram(&mut p, &slots(&[2, 2, 9, 2]), 300),
            vec![100, 100, 0, 100]
        );
    }

    #[test]
    fn power_of_two_avoids_the_busiest_and_spreads_the_rest() {
        let mut p = Picker::new(Strategy::PowerOfTwo, 42);
        let h = histogram(&mut p, &slots(&[0, 0, 0, 100]), 4000);
        assert_eq!(h[3], 0, "the busiest loses every duel: {h:?}");
        for &n in &h[..3] {
            assert!((1100..1600).contains(&n), "{h:?}");
        }
        // With two, the less loaded one always wins.
        let mut p = Picker::new(Strategy::PowerOfTwo, 1);
        assert_eq!(histogram(&mut p, &slots(&[5, 1]), 100), vec![0, 100]);
    }

    #[test]
    fn ip_hash_keeps_a_client_on_its_worker() {
        let mut p = Picker::new(Strategy::IpHash, 0);
        let c = slots(&[0, 50, 0, 7]);
        for i in 0..200u8 {
            let client = hash_ip(IpAddr::from([192, 168, 1, i]));
            let first = p.pick(&c, client);
            for _ in 0..5 {
                assert_eq!(p.pick(&c, client), first);
            }
        }
        let h = histogram(&mut p, &c, 4000);
        for n in h {
            assert!((800..1200).contains(&n), "spread: {n}");
        }
    }

    #[test]
    fn ip_hash_moves_only_about_one_in_n_plus_one_clients_when_a_worker_joins() {
        let mut p = Picker::new(Strategy::IpHash, 0);
        for n in [2usize, 4, 8] {
            let before = slots(&vec![0; n]);
            let after = slots(&vec![0; n + 1]);
            let clients = 10_000u32;
            let moved = (0..clients)
                .filter(|&i| {
                    let c = hash_ip(IpAddr::from(i.to_be_bytes()));
                    p.pick(&before, c) != p.pick(&after, c)
                })
                .count();
            let share = moved as f64 / f64::from(clients);
            let ideal = 1.0 / (n as f64 + 1.0);
            assert!(
                (share - ideal).abs() < 0.03,
                "{n} -> {}: {share:.3} moved, ideal {ideal:.3}",
                n + 1
            );
        }
    }

    #[test]
    fn ip_hash_keeps_clients_of_the_remaining_workers_when_one_leaves() {
        let mut p = Picker::new(Strategy::IpHash, 0);
        let all = slots(&[0, 0, 0, 0]);
        let without_2: Vec<Slot> = all.iter().copied().filter(|s| s.key != 2).collect();
        for i in 0..2000u32 {
            let c = hash_ip(IpAddr::from(i.to_be_bytes()));
            let a = all[p.pick(&all, c).unwrap()].key;
            let b = without_2[p.pick(&without_2, c).unwrap()].key;
            if a != 2 {
                assert_eq!(a, b, "a client of a remaining worker moved");
            }
        }
    }

    #[test]
    fn ip_hash_moves_only_the_clients_of_a_worker_that_leaves_about_one_in_n() {
        let mut p = Picker::new(Strategy::IpHash, 0);
        for n in [4u64, 16, 64, 256] {
            let all: Vec<Slot> = (0..n).map(|key| Slot { key, active: 0 }).collect();
            let gone = n / 2;
            let rest: Vec<Slot> = all.iter().copied().filter(|s| s.key != gone).collect();
            let clients = 20_000u32;
            let mut moved = 0;
            for i in 0..clients {
                let c = hash_ip(IpAddr::from(i.to_be_bytes()));
                let a = all[p.pick(&all, c).unwrap()].key;
                let b = rest[p.pick(&rest, c).unwrap()].key;
                if a == gone {
                    moved += 1;
                } else {
                    assert_eq!(a, b, "n={n}: a client of a remaining worker moved");
                }
            }
            let share = f64::from(moved) / f64::from(clients);
            let ideal = 1.0 / n as f64;
            assert!(
                (share - ideal).abs() < ideal * 0.35 + 0.005,
                "n={n}: {share:.4} moved, ideal {ideal:.4}"
            );
        }
    }

    #[test]
    fn ip_hash_follows_a_set_of_workers_changed_in_place() {
        let mut p = Picker::new(Strategy::IpHash, 0);
        let mut set = slots(&[0, 0, 0, 0]);
        let clients: Vec<u64> = (0..400u32)
            .map(|i| hash_ip(IpAddr::from(i.to_be_bytes())))
            .collect();
        let before: Vec<usize> = clients.iter().map(|&c| p.pick(&set, c).unwrap()).collect();
        // The same vector, slot 1 replaced by a new slot 9.
        set[1].key = 9;
        let after: Vec<u64> = clients
            .iter()
            .map(|&c| set[p.pick(&set, c).unwrap()].key)
            .collect();
        assert!(after.contains(&9), "the new slot gets clients");
        assert!(!after.contains(&1), "the slot that left gets none");
        for (i, &b) in before.iter().enumerate() {
            if b != 1 && after[i] != 9 {
                assert_eq!(
                    after[i], set[b].key,
                    "client {i} moved between staying slots"
                );
            }
        }
    }

    #[test]
    fn active_counts_report_what_is_left_on_close() {
        let count = ActiveCount::default();
        count.open();
        count.open();
        assert_eq!(count.get(), 2);
        assert_eq!(count.close(), 1);
        assert_eq!(count.close(), 0);
        assert_eq!(count.get(), 0);
    }

    #[test]
    fn strategies_round_trip_through_text() {
        for s in [
            Strategy::RoundRobin,
            Strategy::LeastConnections,
            Strategy::PowerOfTwo,
            Strategy::IpHash,
        ] {
            assert_eq!(s.to_string().parse::<Strategy>().unwrap(), s);
        }
        let e = "random".parse::<Strategy>().unwrap_err().to_string();
        assert!(e.contains("random") && e.contains("least-conn"), "{e}");
    }
}
