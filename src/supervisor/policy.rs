//! When to restart a worker, and when to give up on a slot.
//!
//! Pure code: it takes the time and a random sample as arguments and never
//! reads a clock, so tests drive it with a fake clock.

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use crate::types::{Error, Exit, Result};

/// Default first restart delay.
pub const DEFAULT_BACKOFF_INITIAL: Duration = Duration::from_millis(100);
/// Default growth of the delay after each quick exit.
pub const DEFAULT_BACKOFF_FACTOR: u32 = 2;
/// Default cap on the restart delay.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Default jitter: each delay is shortened by up to this fraction at random,
/// so slots that crash together do not restart in lock-step.
pub const DEFAULT_BACKOFF_JITTER: f64 = 0.1;
/// Default crash-loop limit: this many exits within [`DEFAULT_CRASH_WINDOW`]
/// mark a slot failed.
pub const DEFAULT_CRASH_LIMIT: u32 = 5;
/// Default crash-loop window.
pub const DEFAULT_CRASH_WINDOW: Duration = Duration::from_secs(60);
/// Default uptime after which a worker counts as healthy and the backoff
/// starts again from its initial delay.
pub const DEFAULT_MIN_UPTIME: Duration = Duration::from_secs(5);

/// Which exits of a worker lead to a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum RestartPolicy {
    /// Restart after every exit, clean or not (PM2's and forever's way).
    #[default]
    Always,
    /// Restart unless the worker exited with code 0 (systemd's `on-failure`).
    OnFailure,
    /// Never restart; the slot stays empty once its worker exits.
    Never,
}

impl RestartPolicy {
    /// The names [`FromStr`] accepts.
    pub const NAMES: &'static [&'static str] = &["always", "on-failure", "never"];

    /// Whether a worker that ended with `exit` should be restarted.
    pub fn restarts(self, exit: Exit) -> bool {
        match self {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => !exit.success(),
            RestartPolicy::Never => false,
        }
    }
}

impl fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RestartPolicy::Always => "always",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::Never => "never",
        })
    }
}

impl FromStr for RestartPolicy {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "always" => Ok(RestartPolicy::Always),
            "on-failure" | "on_failure" | "onfailure" => Ok(RestartPolicy::OnFailure),
            "never" | "no" => Ok(RestartPolicy::Never),
            _ => Err(Error::Parse {
                what: "restart policy",
                input: s.to_owned(),
                reason: format!("expected one of: {}", RestartPolicy::NAMES.join(", ")),
            }),
        }
    }
}

/// Exponential backoff between restarts of a slot.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Delay before the first restart.
    pub initial: Duration,
    /// Each quick exit multiplies the delay by this.
    pub factor: u32,
    /// The delay never exceeds this.
    pub max: Duration,
    /// Fraction (0.0 to 1.0) by which a delay is shortened at random.
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: DEFAULT_BACKOFF_INITIAL,
            factor: DEFAULT_BACKOFF_FACTOR,
            max: DEFAULT_BACKOFF_MAX,
            jitter: DEFAULT_BACKOFF_JITTER,
        }
    }
}

impl Backoff {
    /// The delay after `attempt` quick exits in a row (0 for the first),
    /// before jitter. Saturates at `max`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let mut d = self.initial;
        for _ in 0..attempt {
            d = d.saturating_mul(self.factor);
            if d >= self.max {
                return self.max;
            }
        }
        d.min(self.max)
    }

    /// `delay(attempt)` shortened by `jitter * sample`, with `sample` in
    /// `[0, 1)`.
    pub fn jittered(&self, attempt: u32, sample: f64) -> Duration {
        let d = self.delay(attempt);
        let cut = (self.jitter * sample).clamp(0.0, 1.0);
        d.mul_f64(1.0 - cut)
    }
}

/// How many exits within which window mark a slot as failed. Only exits
/// of workers that ran shorter than the minimum uptime count: a worker that
/// ran that long was healthy, whatever ended it (an OOM kill, an operator's
/// `kill`), and restarting it is what supervision is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrashLoop {
    /// The number of exits that trips the limit; 0 turns the limit off.
    pub limit: u32,
    /// The sliding window the exits are counted in.
    pub window: Duration,
}

impl Default for CrashLoop {
    fn default() -> Self {
        CrashLoop {
            limit: DEFAULT_CRASH_LIMIT,
            window: DEFAULT_CRASH_WINDOW,
        }
    }
}

/// The whole restart policy of a cluster.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Supervision {
    /// Which exits are restarted.
    pub restart: RestartPolicy,
    /// Delay between restarts.
    pub backoff: Backoff,
    /// When to give up on a slot.
    pub crash_loop: CrashLoop,
    /// Uptime after which the backoff starts over.
    pub min_uptime: Duration,
}

impl Default for Supervision {
    /// The same as [`Supervision::new`].
    fn default() -> Self {
        Supervision::new()
    }
}

impl Supervision {
    /// The defaults, with `min_uptime` at [`DEFAULT_MIN_UPTIME`].
    pub fn new() -> Self {
        Supervision {
            restart: RestartPolicy::default(),
            backoff: Backoff::default(),
            crash_loop: CrashLoop::default(),
            min_uptime: DEFAULT_MIN_UPTIME,
        }
    }

    /// Checks the ranges that the types do not.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidSetting`] naming the setting that is out of range.
    pub fn validate(&self) -> Result<()> {
        let bad = |setting, reason: &str| {
            Err(Error::InvalidSetting {
                setting,
                reason: reason.to_owned(),
            })
        };
        if self.backoff.factor == 0 {
            return bad("backoff factor", "must be at least 1");
        }
        if !(0.0..=1.0).contains(&self.backoff.jitter) {
            return bad("backoff jitter", "must be between 0.0 and 1.0");
        }
        if self.backoff.max < self.backoff.initial {
            return bad(
                "restart-delay-max",
                "must not be smaller than the initial restart delay",
            );
        }
        if self.crash_loop.limit > 0 && self.crash_loop.window.is_zero() {
            return bad("crash-window", "must be longer than zero");
        }
        Ok(())
    }
}

/// What to do after a worker exited on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Start a new worker in the slot after this delay.
    Restart(Duration),
    /// The restart policy does not restart this exit; the slot stays empty.
    Done,
    /// The crash-loop limit tripped: `exits` exits within `window`.
    Failed {
        /// Exits counted within the window.
        exits: u32,
        /// The window.
        window: Duration,
    },
}

/// Per-slot memory of recent exits.
#[derive(Debug, Clone, Default)]
pub(crate) struct RestartTracker {
    /// Quick exits in a row, the backoff exponent.
    consecutive: u32,
    /// When recent exits happened, oldest first, within the crash window.
    exits: VecDeque<Instant>,
}

impl RestartTracker {
    /// Decides what follows an exit at `now` of a worker that ran for
    /// `uptime`. `sample` in `[0, 1)` drives the jitter.
    pub(crate) fn on_exit(
        &mut self,
        policy: &Supervision,
        now: Instant,
        uptime: Duration,
        exit: Exit,
        sample: f64,
    ) -> Decision {
        if !policy.restart.restarts(exit) {
            return Decision::Done;
        }
        let CrashLoop { limit, window } = policy.crash_loop;
        if limit > 0 && uptime < policy.min_uptime {
            self.exits.push_back(now);
            while let Some(&oldest) = self.exits.front() {
                if now.saturating_duration_since(oldest) > window {
                    self.exits.pop_front();
                } else {
                    break;
                }
            }
            let exits = u32::try_from(self.exits.len()).unwrap_or(u32::MAX);
            if exits >= limit {
                return Decision::Failed { exits, window };
            }
        }
        if uptime >= policy.min_uptime {
            self.consecutive = 0;
        }
        let delay = policy.backoff.jittered(self.consecutive, sample);
        self.consecutive = self.consecutive.saturating_add(1);
        Decision::Restart(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn no_jitter() -> Supervision {
        let mut s = Supervision::new();
        s.backoff.jitter = 0.0;
        s
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let b = Backoff {
            initial: ms(100),
            factor: 2,
            max: ms(1000),
            jitter: 0.0,
        };
        let delays: Vec<_> = (0..7).map(|a| b.delay(a)).collect();
        assert_eq!(
            delays,
            [
                ms(100),
                ms(200),
                ms(400),
                ms(800),
                ms(1000),
                ms(1000),
                ms(1000)
            ]
        );
        assert_eq!(b.delay(u32::MAX), ms(1000), "no overflow");
    }

    #[test]
    fn jitter_only_shortens_within_its_fraction() {
        let b = Backoff {
            jitter: 0.5,
            ..Backoff::default()
        };
        assert_eq!(b.jittered(0, 0.0), b.initial);
        assert_eq!(b.jittered(0, 0.5), b.initial.mul_f64(0.75));
        assert!(b.jittered(3, 0.999) > b.delay(3) / 2);
    }

    #[test]
    fn quick_exits_grow_the_delay_and_a_healthy_run_resets_it() {
        let policy = no_jitter();
        let mut t = RestartTracker::default();
        let mut now = Instant::now();
        let mut delays = Vec::new();
        for _ in 0..3 {
            now += Duration::from_secs(20); // outside the crash window's count
            match t.on_exit(&policy, now, ms(10), Exit::Code(1), 0.0) {
                Decision::Restart(d) => delays.push(d),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(delays, [ms(100), ms(200), ms(400)]);
        now += Duration::from_secs(20);
        let after_healthy = t.on_exit(&policy, now, Duration::from_secs(6), Exit::Code(1), 0.0);
        assert_eq!(after_healthy, Decision::Restart(ms(100)));
    }

    #[test]
    fn the_crash_loop_limit_trips_on_the_nth_exit_within_the_window() {
        let policy = no_jitter();
        let mut t = RestartTracker::default();
        let start = Instant::now();
        for i in 0..4 {
            let d = t.on_exit(&policy, start + ms(i * 100), ms(5), Exit::Code(1), 0.0);
            assert!(matches!(d, Decision::Restart(_)), "exit {i}: {d:?}");
        }
        let d = t.on_exit(&policy, start + ms(500), ms(5), Exit::Code(1), 0.0);
        assert_eq!(
            d,
            Decision::Failed {
                exits: 5,
                window: DEFAULT_CRASH_WINDOW
            }
        );
    }

    #[test]
    fn exits_after_the_minimum_uptime_never_trip_the_crash_loop_limit() {
        // A worker killed every 0.5 s after it ran 6 s (min uptime 5 s):
        // healthy each time, so the slot is never given up on.
        let policy = no_jitter();
        let mut t = RestartTracker::default();
        let start = Instant::now();
        for i in 0..50 {
            let now = start + ms(500 * i);
            let d = t.on_exit(
                &policy,
                now,
                Duration::from_secs(6),
                Exit::Signal(crate::Signal::KILL),
                0.0,
            );
            assert_eq!(d, Decision::Restart(policy.backoff.initial), "exit {i}");
        }
        // Quick exits still count.
        for i in 0..4 {
            let d = t.on_exit(&policy, start + ms(30_000 + i), ms(5), Exit::Code(1), 0.0);
            assert!(matches!(d, Decision::Restart(_)), "{d:?}");
        }
        let d = t.on_exit(&policy, start + ms(30_010), ms(5), Exit::Code(1), 0.0);
        assert!(matches!(d, Decision::Failed { exits: 5, .. }), "{d:?}");
    }

    #[test]
    fn exits_older_than_the_window_are_forgotten() {
        let policy = no_jitter();
        let mut t = RestartTracker::default();
        let start = Instant::now();
        // Four exits a minute apart never make five within 60 s.
        for i in 0..20 {
            let now = start + Duration::from_secs(61 * i);
            let d = t.on_exit(&policy, now, ms(5), Exit::Signal(crate::Signal::KILL), 0.0);
            assert!(matches!(d, Decision::Restart(_)), "exit {i}: {d:?}");
        }
    }

    #[test]
    fn a_zero_limit_never_fails() {
        let mut policy = no_jitter();
        policy.crash_loop.limit = 0;
        let mut t = RestartTracker::default();
        let now = Instant::now();
        for _ in 0..1000 {
            let d = t.on_exit(&policy, now, Duration::ZERO, Exit::Code(1), 0.0);
            assert!(matches!(d, Decision::Restart(_)));
        }
    }

    #[test]
    fn policies_choose_which_exits_restart() {
        let ok = Exit::Code(0);
        let bad = Exit::Code(3);
        let killed = Exit::Signal(crate::Signal::SEGV);
        assert!(RestartPolicy::Always.restarts(ok));
        assert!(!RestartPolicy::OnFailure.restarts(ok));
        assert!(RestartPolicy::OnFailure.restarts(bad));
        assert!(RestartPolicy::OnFailure.restarts(killed));
        assert!(!RestartPolicy::Never.restarts(killed));
        let mut policy = no_jitter();
        policy.restart = RestartPolicy::OnFailure;
        let mut t = RestartTracker::default();
        assert_eq!(
            t.on_exit(&policy, Instant::now(), ms(1), ok, 0.0),
            Decision::Done
        );
    }

    #[test]
    fn restart_policy_round_trips_through_text() {
        for p in [
            RestartPolicy::Always,
            RestartPolicy::OnFailure,
            RestartPolicy::Never,
        ] {
            assert_eq!(p.to_string().parse::<RestartPolicy>().unwrap(), p);
        }
        let err = "sometimes"
            .parse::<RestartPolicy>()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("sometimes") && err.contains("on-failure"),
            "{err}"
        );
    }

    #[test]
    fn out_of_range_settings_are_named() {
        let mut s = Supervision::new();
        s.backoff.jitter = 2.0;
        assert!(s.validate().unwrap_err().to_string().contains("jitter"));
        let mut s = Supervision::new();
        s.backoff.max = ms(1);
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("restart-delay-max"));
        assert!(Supervision::new().validate().is_ok());
    }
}
