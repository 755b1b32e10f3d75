//! Reading the master's JSON events.

use super::*;

/// The value of `key=value` in a log line; panics naming the line.
pub fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

/// The worker's pid and its child's pid from the stubborn fixture's line.
pub fn stubborn_pids(m: &Master) -> (u32, u32) {
    let log = m.wait_log("the stubborn worker", |l| l.contains("child="));
    let line = log.lines().find(|l| l.contains("child=")).unwrap();
    let pid = |k: &str| field(line, k).parse().unwrap();
    (pid("pid"), pid("child"))
}

/// The events of one kind.
pub fn of_kind<'a>(
    events: &'a [serde_json::Value],
    kind: &'a str,
) -> impl Iterator<Item = &'a serde_json::Value> + 'a {
    events.iter().filter(move |e| e["event"] == kind)
}

/// A pid field of an event; panics naming the event.
pub fn pid_field(event: &serde_json::Value, key: &str) -> u32 {
    event[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no {key} in {event}")) as u32
}

/// Reloads that finished without a failure.
pub fn complete_reloads(events: &[serde_json::Value]) -> usize {
    of_kind(events, "reload_finished")
        .filter(|e| e["failure"].is_null())
        .count()
}

/// Workers that exited with code 0.
pub fn clean_exits(events: &[serde_json::Value]) -> usize {
    of_kind(events, "exited")
        .filter(|e| e["exit"]["code"] == 0)
        .count()
}

/// Reloads that were aborted.
pub fn aborted_reloads(events: &[serde_json::Value]) -> Vec<&serde_json::Value> {
    of_kind(events, "reload_finished")
        .filter(|e| !e["failure"].is_null())
        .collect()
}

/// A list of pids in a JSON event (`upgraded`'s `workers`).
pub fn pids_in(event: &serde_json::Value, key: &str) -> Vec<u32> {
    event[key]
        .as_array()
        .unwrap_or_else(|| panic!("no {key} list in {event}"))
        .iter()
        .map(|p| p.as_u64().expect("a pid") as u32)
        .collect()
}

/// Pids of workers that `events` say run (spawned, not reported exited).
pub fn live_pids_in(events: &[serde_json::Value]) -> Vec<u32> {
    let exited: std::collections::HashSet<u32> = of_kind(events, "exited")
        .map(|e| pid_field(e, "pid"))
        .collect();
    of_kind(events, "spawned")
        .map(|e| pid_field(e, "pid"))
        .filter(|p| !exited.contains(p))
        .collect()
}
