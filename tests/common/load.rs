//! Load inside the test: threads sending GETs and counting every failure,
//! and the reload-under-load run many tests share.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::*;

/// What a load run saw.
#[derive(Debug, Default)]
pub struct LoadStats {
    pub ok: u64,
    pub errors: Vec<String>,
    /// When each error happened (the soak matches them to its faults).
    pub error_times: Vec<Instant>,
    pub pids: std::collections::HashSet<u32>,
}

/// A load client inside the test: `concurrency` threads sending `GET /`
/// until stopped, each error, reset and non-200 counted.
pub struct Load {
    stop: Arc<std::sync::atomic::AtomicBool>,
    answered: Arc<std::sync::atomic::AtomicU64>,
    threads: Vec<std::thread::JoinHandle<LoadStats>>,
}

/// The most requests one load thread sends, so that a test that forgets to
/// stop it still ends.
const LOAD_MAX_REQUESTS: u64 = 2_000_000;

impl Load {
    pub fn start(addr: SocketAddr, concurrency: usize, keep_alive: bool) -> Load {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let answered = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let threads = (0..concurrency)
            .map(|_| {
                let stop = stop.clone();
                let answered = answered.clone();
                std::thread::spawn(move || {
                    let mut stats = LoadStats::default();
                    let mut conn: Option<KeepAlive> = None;
                    let mut n = 0;
                    while !stop.load(std::sync::atomic::Ordering::SeqCst) && n < LOAD_MAX_REQUESTS {
                        n += 1;
                        let result = if keep_alive {
                            keep_alive_get(addr, &mut conn)
                        } else {
                            get(addr, "/")
                        };
                        match result {
                            Ok(body) => {
                                stats.ok += 1;
                                answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                stats.pids.insert(pid_of(&body));
                            }
                            Err(e) => {
                                stats.errors.push(e);
                                stats.error_times.push(Instant::now());
                            }
                        }
                    }
                    stats
                })
            })
            .collect();
        Load {
            stop,
            answered,
            threads,
        }
    }

    /// Waits until `n` requests have been answered so far.
    /// Requests answered so far.
    pub fn answered(&self) -> u64 {
        self.answered.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn wait_answered(&self, n: u64) {
        let deadline = Instant::now() + WAIT;
        while self.answered.load(std::sync::atomic::Ordering::Relaxed) < n {
            assert!(Instant::now() < deadline, "the load got no {n} answers");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the load and asserts that no request failed.
    pub fn finish_without_failures(self) -> LoadStats {
        let stats = self.finish();
        assert!(
            stats.errors.is_empty(),
            "failed requests: {:?}",
            stats.errors
        );
        stats
    }

    pub fn finish(self) -> LoadStats {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut all = LoadStats::default();
        for t in self.threads {
            let s = t.join().expect("load thread");
            all.ok += s.ok;
            all.errors.extend(s.errors);
            all.error_times.extend(s.error_times);
            all.pids.extend(s.pids);
        }
        all
    }
}

/// How many errors, and the first few.
pub fn summary(errors: &[String]) -> String {
    format!(
        "{} errors, first: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    )
}

/// What a run of reloads under load saw.
#[derive(Debug)]
pub struct UnderLoad {
    /// The kept-alive clients.
    pub keep_alive: LoadStats,
    /// The clients that open a connection per request.
    pub fresh: LoadStats,
}

impl UnderLoad {
    /// The pids that answered, either kind of client.
    pub fn served_by(&self) -> std::collections::HashSet<u32> {
        self.keep_alive
            .pids
            .union(&self.fresh.pids)
            .copied()
            .collect()
    }
}

/// `reloads` rolling reloads (SIGHUP) of `m`, one after another, under
/// `keep_alive` kept-alive and `fresh` connection-per-request client
/// threads: each reload finishes without a failure before the next, and
/// requests are answered in between, so every generation serves. `settle`
/// runs before the load stops (to let the last predecessors drain under
/// load). Panics naming the failed requests and what the master logged if
/// any request failed.
pub fn reload_under_load(
    m: &Master,
    keep_alive: usize,
    fresh: usize,
    reloads: usize,
    settle: impl FnOnce(&Master),
) -> UnderLoad {
    let ka = Load::start(m.addr, keep_alive, true);
    let fr = Load::start(m.addr, fresh, false);
    ka.wait_answered(20);
    fr.wait_answered(5);
    for i in 1..=reloads {
        m.signal(Signal::SIGHUP);
        m.wait_events(&format!("reload {i} to finish"), |e| {
            complete_reloads(e) >= i
        });
        let answered = ka.answered();
        ka.wait_answered(answered + 20);
    }
    settle(m);
    let run = UnderLoad {
        keep_alive: ka.finish(),
        fresh: fr.finish(),
    };
    let log = m.log();
    assert!(
        run.keep_alive.errors.is_empty(),
        "kept-alive requests failed: {}\n{log}",
        summary(&run.keep_alive.errors)
    );
    assert!(
        run.fresh.errors.is_empty(),
        "connection-per-request requests failed: {}\n{log}",
        summary(&run.fresh.errors)
    );
    assert!(run.keep_alive.ok > 0 && run.fresh.ok > 0, "{log}");
    run
}
