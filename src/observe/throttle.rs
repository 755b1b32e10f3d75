//! One log line per window for things that can come in floods.

use std::time::{Duration, Instant};

/// Lets through one log line per window and counts the rest: a flood of
/// foreign notify messages (any local user can send them) must not become
/// a flood of log lines.
#[derive(Debug, Clone, Default)]
pub(crate) struct LogThrottle {
    window_start: Option<Instant>,
    suppressed: u64,
}

impl LogThrottle {
    /// How often a throttled line gets through.
    pub(crate) const WINDOW: Duration = Duration::from_secs(1);

    /// Whether a line may be logged at `now`; when it may, how many were
    /// held back since the last one that was.
    pub(crate) fn admit(&mut self, now: Instant) -> Option<u64> {
        match self.window_start {
            Some(start) if now.saturating_duration_since(start) < Self::WINDOW => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.window_start = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }

    /// The line to log at `now`, if one may be, with how many were held
    /// back since the last one appended.
    pub(crate) fn line(&mut self, now: Instant, text: impl FnOnce() -> String) -> Option<String> {
        let held_back = self.admit(now)?;
        let mut line = text();
        if held_back > 0 {
            line.push_str(&format!(" ({held_back} more since the last such line)"));
        }
        Some(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_throttle_lets_one_line_a_second_through_and_counts_the_rest() {
        let mut t = LogThrottle::default();
        let t0 = Instant::now();
        assert_eq!(t.admit(t0), Some(0));
        // 200,000 messages within the same second: none logged.
        for i in 0..200_000u64 {
            assert_eq!(t.admit(t0 + Duration::from_nanos(i * 4000)), None);
        }
        assert_eq!(t.admit(t0 + ms(1000)), Some(200_000));
        assert_eq!(t.admit(t0 + ms(1001)), None);
        assert_eq!(t.admit(t0 + ms(3000)), Some(1));
        assert_eq!(t.line(t0 + ms(3001), || "x".into()), None);
        assert_eq!(
            t.line(t0 + ms(5000), || "x".into()).as_deref(),
            Some("x (1 more since the last such line)")
        );
    }
}
