//! Events as JSON lines: the stable, machine-readable form (`--log-format
//! json`, the control API's event stream), written by hand so that the
//! library needs no serializer for it.

use std::fmt;

use super::event::Event;
use crate::types::Exit;

impl Event {
    /// The event as one line of JSON: `event` names the variant in
    /// snake_case, the other keys are its fields (durations in
    /// milliseconds as `*_ms`, an exit as `{"code": N}` or
    /// `{"signal": "SIGKILL"}`). Unlike the `Display` text, whose wording
    /// may improve, this form is for programs and stays stable.
    pub fn to_json(&self) -> String {
        let j = Json::new(self.name());
        match self {
            Event::Spawned {
                slot,
                generation,
                pid,
            } => j
                .num("slot", *slot)
                .num("generation", *generation)
                .num("pid", *pid),
            Event::SpawnFailed { slot, error } => j.num("slot", *slot).str("error", error),
            Event::Ready { slot, pid } | Event::WatchdogTimeout { slot, pid } => {
                j.num("slot", *slot).num("pid", *pid)
            }
            Event::Idle { slot, pid } | Event::DrainTimeout { slot, pid } => {
                j.num("slot", *slot).num("pid", *pid)
            }
            Event::StartTimeout {
                slot,
                pid,
                timeout,
                readiness,
            } => j
                .num("slot", *slot)
                .num("pid", *pid)
                .num("timeout_ms", timeout.as_millis())
                .str("readiness", &readiness.to_string()),
            Event::PortConflict { slot, pid, port } => {
                j.num("slot", *slot).num("pid", *pid).num("port", *port)
            }
            Event::Replaced {
                slot,
                old_pid,
                new_pid,
            } => j
                .num("slot", *slot)
                .num("old_pid", *old_pid)
                .num("new_pid", *new_pid),
            Event::ReloadStarted { slots } => {
                j.raw("slots", &json_list(slots.iter().map(|s| s.to_string())))
            }
            Event::ReloadFinished { report } => {
                let replaced = report.replaced.iter().map(|r| {
                    Json::object()
                        .num("slot", r.slot)
                        .raw(
                            "old_pid",
                            &r.old_pid.map_or("null".into(), |p| p.to_string()),
                        )
                        .num("new_pid", r.new_pid)
                        .num("generation", r.generation)
                        .finish()
                });
                let failure = match &report.failure {
                    None => "null".to_string(),
                    Some(f) => Json::object()
                        .num("slot", f.slot)
                        .str("reason", &f.reason)
                        .raw(
                            "last_output",
                            &json_list(f.last_output.iter().map(|l| json_string(l))),
                        )
                        .finish(),
                };
                j.raw("replaced", &json_list(replaced))
                    .raw("failure", &failure)
                    .num("duration_ms", report.duration.as_millis())
            }
            Event::Exited {
                slot,
                generation,
                pid,
                exit,
                uptime,
                expected,
            } => j
                .num("slot", *slot)
                .num("generation", *generation)
                .num("pid", *pid)
                .raw("exit", &exit_json(*exit))
                .num("uptime_ms", uptime.as_millis())
                .raw("expected", if *expected { "true" } else { "false" }),
            Event::RestartScheduled { slot, delay } => {
                j.num("slot", *slot).num("delay_ms", delay.as_millis())
            }
            Event::SlotDone { slot } => j.num("slot", *slot),
            Event::SlotFailed {
                slot,
                exits,
                window,
                last_output,
            } => j
                .num("slot", *slot)
                .num("exits", *exits)
                .num("window_ms", window.as_millis())
                .raw(
                    "last_output",
                    &json_list(last_output.iter().map(|l| json_string(l))),
                ),
            Event::Stopping { graceful } => {
                j.raw("graceful", if *graceful { "true" } else { "false" })
            }
            Event::DrainSignal { slot, pid, open } => {
                j.num("slot", *slot).num("pid", *pid).num("open", *open)
            }
            Event::ListenerReplaced { addr, slot } => j
                .str("addr", &addr.to_string())
                .raw("slot", &slot.map_or("null".into(), |s| s.to_string())),
            Event::Notice {
                slot,
                notice,
                message,
            } => j
                .raw("slot", &slot.map_or("null".into(), |s| s.to_string()))
                .str("notice", notice.name())
                .str("message", message),
            Event::Scaled { from, to } => j.num("from", *from).num("to", *to),
            Event::Upgrading { binary } => j.str("binary", binary),
            Event::UpgradeFailed { reason } => j.str("reason", reason),
            Event::Upgraded { upgrades, workers } => j
                .num("upgrades", *upgrades)
                .raw("workers", &json_list(workers.iter().map(|p| p.to_string()))),
            Event::MemoryLimit {
                slot,
                pid,
                memory,
                limit,
            } => j
                .num("slot", *slot)
                .num("pid", *pid)
                .num("memory", *memory)
                .num("limit", *limit),
            Event::RequestLimit {
                slot,
                pid,
                requests,
                limit,
            } => j
                .num("slot", *slot)
                .num("pid", *pid)
                .num("requests", *requests)
                .num("limit", *limit),
            Event::Stopped => j,
        }
        .finish()
    }
}

/// A JSON object written field by field.
struct Json(String);

impl Json {
    fn object() -> Self {
        Json(String::from("{"))
    }

    fn new(event: &str) -> Self {
        Json::object().str("event", event)
    }

    fn raw(mut self, key: &str, value: &str) -> Self {
        if self.0.len() > 1 {
            self.0.push(',');
        }
        self.0.push_str(&json_string(key));
        self.0.push(':');
        self.0.push_str(value);
        self
    }

    fn str(self, key: &str, value: &str) -> Self {
        self.raw(key, &json_string(value))
    }

    fn num(self, key: &str, value: impl fmt::Display) -> Self {
        self.raw(key, &value.to_string())
    }

    fn finish(mut self) -> String {
        self.0.push('}');
        self.0
    }
}

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_list(items: impl Iterator<Item = String>) -> String {
    format!("[{}]", items.collect::<Vec<_>>().join(","))
}

fn exit_json(exit: Exit) -> String {
    match exit {
        Exit::Code(c) => format!("{{\"code\":{c}}}"),
        Exit::Signal(s) => format!("{{\"signal\":\"{}\"}}", s.name()),
    }
}
