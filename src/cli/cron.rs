//! `--cron-reload "0 3 * * *"`: a graceful rolling reload on a schedule,
//! in local time (PM2's `cron_restart`, done without dropping a request).
//! Five fields, or six with seconds first.

use chrono::Local;
use croner::parser::{CronParser, Seconds};
use croner::Cron;
use tokio::task::JoinHandle;

use crate::Handle;

/// Parses a schedule as `--cron-reload` takes it.
pub(crate) fn parse(text: &str) -> Result<Cron, String> {
    CronParser::builder()
        .seconds(Seconds::Optional)
        .build()
        .parse(text)
        .map_err(|e| {
            format!("`{text}` is not a cron schedule (\"0 3 * * *\": 03:00 every day): {e}")
        })
}

/// The next time `cron` comes, as text.
pub(crate) fn next(cron: &Cron) -> Option<String> {
    cron.find_next_occurrence(&Local::now(), false)
        .ok()
        .map(|t| t.format("%Y-%m-%d %H:%M:%S %:z").to_string())
}

/// Reloads `handle`'s cluster each time `cron` comes; `announce` is told
/// of each reload and the next time.
pub(crate) fn start(
    cron: Cron,
    handle: Handle,
    announce: impl Fn(Option<String>) + Send + 'static,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let now = Local::now();
            let Ok(at) = cron.find_next_occurrence(&now, false) else {
                return;
            };
            let wait = (at - now).to_std().unwrap_or_default();
            tokio::time::sleep(wait).await;
            // A reload asked for during one runs after it.
            let h = handle.clone();
            tokio::spawn(async move {
                let _ = h.reload().await;
            });
            announce(next(&cron));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_read_with_or_without_seconds_and_bad_ones_are_named() {
        assert!(parse("0 3 * * *").is_ok());
        assert!(parse("*/10 * * * * *").is_ok());
        let e = parse("every day").unwrap_err();
        assert!(e.contains("every day"), "{e}");
        assert!(next(&parse("0 3 * * *").unwrap()).is_some_and(|t| t.contains(" 03:00:00 ")));
    }
}
