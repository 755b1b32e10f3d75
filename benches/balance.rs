//! The proxy's hot path: choosing a worker, and counting connections.
//! Run with `cargo bench --bench balance`.

use std::hint::black_box;
use std::net::IpAddr;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use herd::balance::{hash_ip, ActiveCount, Picker, Slot, Strategy};

const SIZES: [usize; 4] = [2, 8, 64, 256];

fn workers(n: usize) -> Vec<Slot> {
    (0..n)
        .map(|i| Slot {
            key: i as u64,
            // Uneven loads, so least-connections has something to compare.
            active: ((i * 7919) % 13) as u32,
        })
        .collect()
}

fn pick(c: &mut Criterion) {
    let client = hash_ip(IpAddr::from([203, 0, 113, 7]));
    for strategy in [
        Strategy::RoundRobin,
        Strategy::PowerOfTwo,
        Strategy::LeastConnections,
        Strategy::IpHash,
    ] {
        let mut group = c.benchmark_group(format!("pick/{strategy}"));
        for n in SIZES {
            let w = workers(n);
            let mut picker = Picker::new(strategy, 12345);
            group.bench_with_input(BenchmarkId::from_parameter(n), &w, |b, w| {
                b.iter(|| picker.pick(black_box(w.as_slice()), black_box(client)))
            });
        }
        group.finish();
    }
}

/// What `ip-hash` pays once when the set of workers changes: its table
/// is rebuilt (three sets in turn, so that no table is cached).
fn ip_hash_rebuild(c: &mut Criterion) {
    let client = hash_ip(IpAddr::from([203, 0, 113, 7]));
    let mut group = c.benchmark_group("ip-hash rebuild");
    group.sample_size(10);
    for n in [8, 256] {
        let sets: Vec<Vec<Slot>> = (0..3).map(|_| workers(n)).collect();
        let mut picker = Picker::new(Strategy::IpHash, 12345);
        let mut turn = 0;
        group.bench_with_input(BenchmarkId::from_parameter(n), &sets, |b, sets| {
            b.iter(|| {
                turn = (turn + 1) % 3;
                picker.pick(black_box(sets[turn].as_slice()), black_box(client))
            })
        });
    }
    group.finish();
}

fn accounting(c: &mut Criterion) {
    let count = ActiveCount::default();
    c.bench_function("accounting/open+close", |b| {
        b.iter(|| {
            // What the proxy does per connection: count it open, then closed.
            black_box(&count).open();
            black_box(black_box(&count).close());
        })
    });
    c.bench_function("accounting/hash_ip v4", |b| {
        b.iter(|| hash_ip(black_box(IpAddr::from([198, 51, 100, 23]))))
    });
}

criterion_group!(benches, pick, ip_hash_rebuild, accounting);
criterion_main!(benches);
