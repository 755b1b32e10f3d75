//! The `herd` and `herdctl` command lines (feature `cli`, on by default):
//! what `cargo install herd-cluster` installs, and what the `cluster` and
//! `herdctl` examples run. A launcher that wants the exact command line
//! calls [`herd()`] from its `main`.
//!
//! ```text
//! herd -w 4 -l 0.0.0.0:3000 node examples/node/server.js
//! cargo run --release --example cluster -- -w 4 node examples/node/server.js
//! ```
//!
//! Everything from the first non-option on is the program and its arguments.
//! SIGHUP reloads (rolling, successor first); SIGTERM/SIGINT stop.
//! Exit status: 0 after a clean stop, 1 when the cluster cannot start or every
//! slot failed, 2 for bad usage.

//!
//! The parts: `args.rs` (flags and their parsers), `run.rs` (the cluster
//! built from them and run), `unit.rs` (`--print-systemd-unit`),
//! `metrics.rs` (`--metrics`), `ctl.rs` (`herdctl`).

mod apps;
mod args;
mod config;
mod cron;
mod ctl;
mod detect;
mod ecosystem;
mod metrics;
mod run;
mod top;
mod unit;
mod watch;

pub use ctl::herdctl;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

use args::Cli;
use run::run;
use unit::systemd_units;

/// The zone of `--time`, once chosen: every text line herd writes starts
/// with the time in it.
static TIME: std::sync::OnceLock<Option<bool>> = std::sync::OnceLock::new();

/// The time as `--time` shows it: local (with its offset) or UTC.
fn now_stamp(utc: bool) -> String {
    if utc {
        chrono::Utc::now()
            .format("%Y-%m-%dT%H:%M:%S%.3fZ")
            .to_string()
    } else {
        chrono::Local::now()
            .format("%Y-%m-%d %H:%M:%S%.3f%:z")
            .to_string()
    }
}

/// Writes one of the CLI's own text lines to stderr, stamped with
/// `--time`.
pub(crate) fn say_line(text: &str) {
    match TIME.get().copied().flatten() {
        Some(utc) => eprintln!("{} {text}", now_stamp(utc)),
        None => eprintln!("{text}"),
    }
}

/// One of the CLI's own events: with `--log-format json` the object
/// `line` (with the cluster's name, when it has one), else the text
/// `text` makes from the `herd[NAME]` tag.
pub(crate) fn event_line(
    name: Option<&str>,
    json: bool,
    mut line: serde_json::Value,
    text: impl FnOnce(&str) -> String,
) {
    if json {
        if let Some(n) = name {
            line["cluster"] = n.into();
        }
        eprintln!("{line}");
    } else {
        let tag = name.map_or_else(|| "herd".to_owned(), |n| format!("herd[{n}]"));
        say_line(&text(&tag));
    }
}

/// `eprintln!` for the CLI's own text lines, stamped with `--time`.
macro_rules! say {
    ($($t:tt)*) => { $crate::cli::say_line(&format!($($t)*)) };
}
pub(crate) use say;

/// The `herd` command: parses `std::env::args` and runs until the cluster
/// stops. Returns the exit status (0 stopped cleanly, 1 the cluster failed,
/// 2 bad usage).
pub fn herd() -> ExitCode {
    let matches = Cli::command().get_matches_from(args::args());
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let _ = TIME.set(cli.time.as_deref().map(|z| z == "utc"));
    // A config file: given, or ./herd.toml when no program is.
    let file = cli.config.clone().or_else(|| {
        let here = std::path::PathBuf::from("herd.toml");
        (cli.command.is_empty() && here.is_file()).then_some(here)
    });
    if cli.command.is_empty() && file.is_none() {
        let _ = Cli::command().print_help();
        eprintln!("\nherd: error: give a program to run (herd node server.js) or a config file (herd start herd.toml)");
        return ExitCode::from(2);
    }
    if cli.print_systemd_unit || cli.startup {
        let done = systemd_units(&cli, file.as_deref()).and_then(|units| {
            if cli.startup && !cli.print_systemd_unit {
                unit::install(&units, cli.unit_dir.as_deref())
            } else {
                Ok(unit::print(&units))
            }
        });
        return match done {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("herd: error: {e}");
                ExitCode::from(2)
            }
        };
    }
    // One thread is plenty for a master that only forks, reaps and forwards
    // output, and keeps its footprint small. In proxy mode the master is in
    // the data path: a thread per CPU.
    // A file's apps may be in a proxy mode too.
    let runtime = if file.is_some() || cli.balance.is_some_and(|(b, _)| b.is_proxy()) {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("herd: error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = match file {
        Some(path) => runtime.block_on(apps::run(path, cli, matches)),
        None => runtime.block_on(run(cli)),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herd: error: {}", chain(e.as_ref()));
            if is_usage(e.as_ref()) {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// A bad combination of options, found after parsing: exit status 2, like
/// the errors clap finds.
#[derive(Debug)]
pub(crate) struct Usage(String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// Whether an error is about the command line (exit 2) rather than the
/// cluster (exit 1).
fn is_usage(e: &(dyn std::error::Error + 'static)) -> bool {
    if e.is::<Usage>() {
        return true;
    }
    matches!(
        e.downcast_ref::<crate::Error>(),
        Some(
            crate::Error::InvalidSetting { .. }
                | crate::Error::Parse { .. }
                | crate::Error::ZeroWorkers
                | crate::Error::NoProgram
        )
    )
}

fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}
