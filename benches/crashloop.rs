//! How long a client waits while one slot crash-loops, in reuseport mode.
//!
//! ```text
//! cargo bench --bench crashloop
//! ```
//!
//! Two workers of `tests/fixtures/slot1_flaps.js`: slot 0 serves, slot 1
//! serves for 150 ms after every start, then dies, and is restarted with the default
//! backoff (never given up on). Clients open a fresh connection per request
//! for a while; a connection the kernel hashed to slot 1 waits until the
//! master passes it on. Prints the latency distribution of every request
//! and how many failed. Read it against the same run's p50, not against
//! other machines.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{example, fixture, get, Master};

const CLIENTS: usize = 32;
const RUN: Duration = Duration::from_secs(10);

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let _ = example("cluster");
    let m = Master::start_json(
        &common::s(&[
            "-l",
            "127.0.0.1:0",
            "-w",
            "2",
            "--crash-limit",
            "0",
            "node",
            &fixture("tests/fixtures/slot1_flaps.js"),
        ]),
        None,
    );
    m.wait_events("slot 0 ready", |e| common::of_kind(e, "ready").count() >= 1);
    let addr = m.addr;
    let times = Arc::new(Mutex::new(Vec::new()));
    let failed = Arc::new(Mutex::new(0usize));
    let until = Instant::now() + RUN;
    let threads: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let times = times.clone();
            let failed = failed.clone();
            std::thread::spawn(move || {
                while Instant::now() < until {
                    let t = Instant::now();
                    match get(addr, "/") {
                        Ok(_) => times.lock().unwrap().push(t.elapsed()),
                        Err(_) => *failed.lock().unwrap() += 1,
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let mut v = times.lock().unwrap().clone();
    v.sort();
    let q = |p: f64| v[((v.len() as f64 * p) as usize).min(v.len() - 1)];
    let restarts = common::of_kind(&m.events(), "restart_scheduled").count();
    println!(
        "one slot of 2 crash-looping ({restarts} restarts in {RUN:?}), {CLIENTS} clients, a connection per request"
    );
    println!("| requests | failed | p50 | p99 | p99.9 | max |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| {} | {} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms |",
        v.len(),
        failed.lock().unwrap(),
        q(0.5).as_secs_f64() * 1e3,
        q(0.99).as_secs_f64() * 1e3,
        q(0.999).as_secs_f64() * 1e3,
        v.last().unwrap().as_secs_f64() * 1e3
    );
}
