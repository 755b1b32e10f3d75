//! Operating a running cluster: scaling with SIGTTIN and SIGTTOU under
//! load, in every balance mode.

mod common;

use std::collections::HashSet;

use common::*;
use nix::sys::signal::Signal;

/// Exits of workers of `slot` that the master expected (it stopped them).
fn expected_exits(events: &[serde_json::Value], slot: u64) -> usize {
    of_kind(events, "exited")
        .filter(|e| e["slot"] == slot && e["expected"] == true)
        .count()
}

fn scales_under_load_without_a_failed_request(balance: &str) {
    let mut m = Master::start(&cmd(
        &["-w", "2", "--balance", balance, "--ready", "notify"],
        &hello_server(),
    ));
    m.wait_kind("ready", 2);
    let load = Load::start(m.addr, 2, false);
    load.wait_answered(20);

    // Up by two, one signal at a time.
    for (i, to) in [(1, 3), (2, 4)] {
        m.signal(Signal::SIGTTIN);
        let events = m.wait_kind("scaled", i);
        let scaled = of_kind(&events, "scaled").last().unwrap();
        assert_eq!(scaled["to"], to, "{scaled}");
        m.wait_kind("ready", to);
    }
    let before = load.answered();
    load.wait_answered(before + 200);

    // Down to one: each removed slot drains before the next signal.
    for slot in [3, 2, 1] {
        m.signal(Signal::SIGTTOU);
        m.wait_events(&format!("slot {slot} to be removed"), |e| {
            expected_exits(e, slot) == 1
        });
    }
    let before = load.answered();
    load.wait_answered(before + 100);
    let stats = load.finish();
    let events = m.events();
    assert!(stats.errors.is_empty(), "{:?}\n{}", stats.errors, m.log());
    assert_eq!(
        of_kind(&events, "notice")
            .filter(|n| n["notice"] == "scale_refused")
            .count(),
        0,
        "{}",
        m.log()
    );
    let served: HashSet<u32> = stats.pids;
    assert!(served.len() >= 4, "the new slots served: {served:?}");
    // Only slot 0's worker is left, and it serves.
    let live = m.live_pids();
    assert_eq!(live.len(), 1, "{}", m.log());
    for _ in 0..10 {
        assert_eq!(pid_of(&m.get("/").unwrap()), live[0]);
    }
    m.signal(Signal::SIGTERM);
    assert!(m.wait_exit().success(), "{}", m.log());
}

#[test]
fn reuseport_scales_up_and_down_under_load_without_a_failed_request() {
    scales_under_load_without_a_failed_request("reuseport");
}

#[test]
fn a_shared_socket_scales_up_and_down_under_load_without_a_failed_request() {
    scales_under_load_without_a_failed_request("shared");
}

#[test]
fn proxy_mode_scales_up_and_down_under_load_without_a_failed_request() {
    scales_under_load_without_a_failed_request("proxy");
}
