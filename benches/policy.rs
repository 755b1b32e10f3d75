//! Cost of the pure supervision decisions: how long the master spends
//! choosing a restart delay. Run with `cargo bench --bench policy`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use herd::{Backoff, Exit, RestartPolicy};

fn backoff(c: &mut Criterion) {
    let b = Backoff::default();
    c.bench_function("backoff delay, attempt 0..32", |bench| {
        bench.iter(|| {
            let mut total = std::time::Duration::ZERO;
            for attempt in 0..32 {
                total += b.jittered(black_box(attempt), black_box(0.37));
            }
            total
        })
    });
    c.bench_function("restart policy, on-failure", |bench| {
        bench.iter(|| RestartPolicy::OnFailure.restarts(black_box(Exit::Code(1))))
    });
}

criterion_group!(benches, backoff);
criterion_main!(benches);
