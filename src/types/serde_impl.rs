//! Helpers for the optional `serde` feature: durations as whole
//! milliseconds (`*_ms` keys, as [`crate::Event::to_json`] writes them),
//! instants as milliseconds elapsed, and values as their `Display` text.

use std::fmt::Display;
use std::str::FromStr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serializer};

pub(crate) fn millis<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Milliseconds, or null.
pub(crate) fn opt_millis<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => millis(d, s),
        None => s.serialize_none(),
    }
}

/// How long ago, in milliseconds, or null.
pub(crate) fn elapsed_ms<S: Serializer>(at: &Option<Instant>, s: S) -> Result<S::Ok, S::Error> {
    match at {
        Some(at) => millis(&at.elapsed(), s),
        None => s.serialize_none(),
    }
}

pub(crate) fn display<T: Display, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(value)
}

impl serde::Serialize for crate::Signal {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

// Reading back what the serializers above write: a control API client
// gets typed values, not JSON to pick apart.

impl<'de> Deserialize<'de> for crate::Signal {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de_display(d)
    }
}

pub(crate) fn de_millis<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    u64::deserialize(d).map(Duration::from_millis)
}

pub(crate) fn de_opt_millis<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
}

/// `ms` ago, as an instant of this process (as close as the clocks allow).
pub(crate) fn de_elapsed_ms<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Instant>, D::Error> {
    let now = Instant::now();
    Ok(Option::<u64>::deserialize(d)?
        .map(|ms| now.checked_sub(Duration::from_millis(ms)).unwrap_or(now)))
}

pub(crate) fn de_display<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: Display,
{
    let text = String::deserialize(d)?;
    text.parse().map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use serde_json::{json, Value};

    use crate::observe::event::{Event, Notice};
    use crate::types::Exit;
    use crate::types::Readiness;
    use crate::types::WorkerInfo;

    /// The serde form of an event is the stable JSON form `to_json`
    /// writes, key for key.
    #[test]
    fn events_serialize_as_their_json_form() {
        let events = [
            Event::Exited {
                slot: 1,
                generation: 2,
                pid: 42,
                exit: Exit::Signal(crate::Signal::KILL),
                uptime: Duration::from_millis(20),
                expected: true,
            },
            Event::StartTimeout {
                slot: 0,
                pid: 7,
                timeout: Duration::from_secs(30),
                readiness: Readiness::Delay(Duration::from_millis(1500)),
            },
            Event::RestartScheduled {
                slot: 3,
                delay: Duration::from_millis(200),
            },
            Event::Notice {
                slot: None,
                notice: Notice::ReloadQueued,
                message: "later".into(),
            },
            Event::Upgraded {
                upgrades: 2,
                workers: vec![10, 11],
            },
            Event::UpgradeFailed {
                reason: "no \"binary\"".into(),
            },
            Event::Stopped,
        ];
        for e in events {
            let by_hand: Value = serde_json::from_str(&e.to_json()).unwrap();
            assert_eq!(serde_json::to_value(&e).unwrap(), by_hand, "{e:?}");
            // What a client reads back is the event that was sent.
            let back: Event = serde_json::from_str(&e.to_json()).unwrap();
            assert_eq!(back, e);
        }
    }

    #[test]
    fn reports_lines_and_stats_read_back_as_they_were() {
        let report = crate::types::ReloadReport {
            replaced: vec![crate::types::Replacement {
                slot: 0,
                old_pid: Some(4),
                new_pid: 5,
                generation: 1,
            }],
            failure: Some(crate::types::ReloadFailure {
                slot: 1,
                reason: "exited with code 1 before it was ready".into(),
                last_output: vec!["Error: config missing".into()],
            }),
            duration: Duration::from_millis(1234),
        };
        let text = serde_json::to_string(&report).unwrap();
        let back: crate::types::ReloadReport = serde_json::from_str(&text).unwrap();
        assert_eq!(back, report);
        let line = crate::observe::OutputLine {
            slot: 2,
            pid: 9,
            stream: crate::observe::OutputStream::Stderr,
            line: "boom".into(),
        };
        let back: crate::observe::OutputLine =
            serde_json::from_str(&serde_json::to_string(&line).unwrap()).unwrap();
        assert_eq!(back, line);
        let bad = serde_json::from_str::<crate::Signal>("\"SIGNOPE\"").unwrap_err();
        assert!(bad.to_string().contains("SIGNOPE"), "{bad}");
    }

    #[test]
    fn a_worker_snapshot_serializes_with_uptime_in_milliseconds() {
        let info = WorkerInfo {
            slot: 0,
            generation: 1,
            pid: Some(9),
            state: crate::WorkerState::Ready,
            restarts: 0,
            restarts_by: crate::RestartCounts::default(),
            last_exit: Some(Exit::Code(3)),
            draining: vec![8],
            started: Some(Instant::now() - Duration::from_secs(2)),
            cpu_time: Some(Duration::from_millis(1500)),
            cpu_percent: Some(12),
            memory: Some(50 << 20),
            ready_since: None,
            successor: None,
        };
        let v = serde_json::to_value(&info).unwrap();
        assert_eq!(v["state"], json!("ready"));
        assert_eq!(v["last_exit"], json!({"code": 3}));
        assert_eq!(v["ready_for_ms"], Value::Null);
        assert_eq!(v["cpu_ms"], json!(1500));
        assert_eq!(v["memory_bytes"], json!(50 << 20));
        let uptime = v["uptime_ms"].as_u64().unwrap();
        assert!((2000..60_000).contains(&uptime), "{uptime}");
        // Read back: the same worker, started about as long ago.
        let back: WorkerInfo = serde_json::from_value(v).unwrap();
        assert_eq!(
            (back.slot, back.pid, back.state),
            (0, Some(9), crate::WorkerState::Ready)
        );
        assert_eq!(back.last_exit, Some(Exit::Code(3)));
        assert_eq!(back.cpu_time, Some(Duration::from_millis(1500)));
        let age = back.started.expect("a start").elapsed();
        assert!(
            age >= Duration::from_secs(2) && age < Duration::from_secs(60),
            "{age:?}"
        );
    }
}
