//! herd's own signal type.
//!
//! The public API names signals through this type rather than re-exporting
//! `nix`'s, so that a new major version of `nix` is not a breaking change of
//! herd's.

use std::fmt;
use std::str::FromStr;

use nix::sys::signal::Signal as Nix;

use crate::types::{Error, Result};

/// A Unix signal: a stop signal to configure, one to send to a worker, or
/// the one that killed it.
///
/// Parses from `TERM`, `SIGTERM`, `sigterm` or `15`; prints as `SIGTERM`.
///
/// ```
/// let usr2: herd::Signal = "usr2".parse()?;
/// assert_eq!(usr2, herd::Signal::USR2);
/// assert_eq!(usr2.to_string(), "SIGUSR2");
/// assert_eq!(herd::Signal::from_raw(15), Some(herd::Signal::TERM));
/// # Ok::<(), herd::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signal(Nix);

impl Signal {
    /// SIGHUP: herd's reload signal.
    pub const HUP: Signal = Signal(Nix::SIGHUP);
    /// SIGINT: Ctrl-C.
    pub const INT: Signal = Signal(Nix::SIGINT);
    /// SIGQUIT.
    pub const QUIT: Signal = Signal(Nix::SIGQUIT);
    /// SIGABRT.
    pub const ABRT: Signal = Signal(Nix::SIGABRT);
    /// SIGKILL: cannot be caught.
    pub const KILL: Signal = Signal(Nix::SIGKILL);
    /// SIGUSR1.
    pub const USR1: Signal = Signal(Nix::SIGUSR1);
    /// SIGSEGV.
    pub const SEGV: Signal = Signal(Nix::SIGSEGV);
    /// SIGUSR2.
    pub const USR2: Signal = Signal(Nix::SIGUSR2);
    /// SIGPIPE.
    pub const PIPE: Signal = Signal(Nix::SIGPIPE);
    /// SIGALRM.
    pub const ALRM: Signal = Signal(Nix::SIGALRM);
    /// SIGTERM: the default stop signal.
    pub const TERM: Signal = Signal(Nix::SIGTERM);
    /// SIGCONT.
    pub const CONT: Signal = Signal(Nix::SIGCONT);
    /// SIGSTOP: cannot be caught.
    pub const STOP: Signal = Signal(Nix::SIGSTOP);
    /// SIGTSTP.
    pub const TSTP: Signal = Signal(Nix::SIGTSTP);
    /// SIGTTIN.
    pub const TTIN: Signal = Signal(Nix::SIGTTIN);
    /// SIGTTOU.
    pub const TTOU: Signal = Signal(Nix::SIGTTOU);
    /// SIGWINCH: nginx and Apache stop their workers gracefully on it.
    pub const WINCH: Signal = Signal(Nix::SIGWINCH);

    /// The signal with this number, if Linux has one.
    pub fn from_raw(number: i32) -> Option<Signal> {
        Nix::try_from(number).ok().map(Signal)
    }

    /// The signal's number.
    pub fn as_raw(self) -> i32 {
        self.0 as i32
    }

    /// The signal's name, such as `SIGTERM`.
    pub fn name(self) -> &'static str {
        self.0.as_str()
    }

    pub(crate) fn from_nix(signal: Nix) -> Signal {
        Signal(signal)
    }

    pub(crate) fn to_nix(self) -> Nix {
        self.0
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Signal {
    type Err = Error;

    fn from_str(s: &str) -> Result<Signal> {
        let bad = |reason: &str| Error::Parse {
            what: "signal",
            input: s.to_owned(),
            reason: reason.to_owned(),
        };
        let upper = s.trim().to_ascii_uppercase();
        if let Ok(n) = upper.parse::<i32>() {
            return Signal::from_raw(n).ok_or_else(|| bad("no signal has this number"));
        }
        let name = if upper.starts_with("SIG") {
            upper
        } else {
            format!("SIG{upper}")
        };
        name.parse::<Nix>()
            .map(Signal)
            .map_err(|_| bad("expected a signal name such as TERM, SIGUSR2, or a number"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_with_or_without_sig_and_numbers() {
        for text in ["TERM", "SIGTERM", "sigterm", "term", "15", " 15 "] {
            assert_eq!(text.parse::<Signal>().unwrap(), Signal::TERM, "{text}");
        }
        assert_eq!("winch".parse::<Signal>().unwrap(), Signal::WINCH);
    }

    #[test]
    fn refuses_unknown_names_and_numbers_naming_the_input() {
        for text in ["SIGNOPE", "", "0", "999", "-1"] {
            let e = text.parse::<Signal>().unwrap_err();
            assert!(
                matches!(&e, Error::Parse { what: "signal", input, .. } if input == text),
                "{e}"
            );
        }
    }

    #[test]
    fn raw_numbers_round_trip() {
        for n in 1..32 {
            if let Some(s) = Signal::from_raw(n) {
                assert_eq!(s.as_raw(), n);
                assert_eq!(s.name().parse::<Signal>().unwrap(), s);
            }
        }
        assert_eq!(Signal::KILL.as_raw(), 9);
    }
}
