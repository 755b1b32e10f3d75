//! `--watch`: a file changed under the watched directories is a graceful
//! rolling reload (PM2's `--watch` restarts instead). A burst of changes
//! is one reload, once nothing has changed for `--watch-delay`; a change
//! during a reload queues one more after it (the library's rule for any
//! reload asked for during one). `node_modules`, `.git`, log files and
//! what `--ignore-watch` names are not watched for.

use std::path::{Path, PathBuf};

use globset::{Glob, GlobSet, GlobSetBuilder};
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::args::Cli;
use crate::Handle;

/// What is never a reason to reload.
pub(crate) const DEFAULT_IGNORED: &[&str] = &["node_modules", ".git", "*.log", "*.swp", "*~"];

/// A running watch: the watcher (dropped with it) and the task that
/// reloads.
pub(crate) struct Watch {
    _watcher: notify::RecommendedWatcher,
    task: JoinHandle<()>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts watching what `cli.watch` names, reloading `handle`'s cluster.
pub(crate) fn start(
    cli: &Cli,
    handle: Handle,
    announce: impl Fn(&[String]) + Send + 'static,
) -> Result<Option<Watch>, Box<dyn std::error::Error>> {
    if cli.watch.is_empty() {
        return Ok(None);
    }
    let base = match &cli.cwd {
        Some(d) => d.clone(),
        None => std::env::current_dir()?,
    };
    let roots: Vec<PathBuf> = cli
        .watch
        .iter()
        .map(|p| base.join(p))
        .map(|p| std::fs::canonicalize(&p).unwrap_or(p))
        .collect();
    let mut ignored: Vec<String> = DEFAULT_IGNORED.iter().map(|s| (*s).to_owned()).collect();
    ignored.extend(cli.ignore_watch.iter().cloned());
    // What herd itself writes to on every line: its log files, and the
    // files its own stdout and stderr go to (`herd --watch ... > out`),
    // which would otherwise reload it for each line it writes.
    let own_output = [1, 2]
        .iter()
        .filter_map(|fd| std::fs::read_link(format!("/proc/self/fd/{fd}")).ok())
        .filter(|p| p.is_file());
    for f in cli
        .log_file
        .iter()
        .chain(cli.log_dir.iter())
        .map(|f| base.join(f))
        .chain(own_output)
    {
        ignored.push(globset::escape(&f.display().to_string()));
    }
    let filter = Filter::new(&roots, &ignored)?;
    let (tx, mut rx) = mpsc::unbounded_channel::<PathBuf>();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let Ok(event) = res else { return };
        if !matters(&event.kind) {
            return;
        }
        for path in event.paths {
            let _ = tx.send(path);
        }
    })?;
    for root in &roots {
        watcher
            .watch(root, RecursiveMode::Recursive)
            .map_err(|e| format!("--watch {}: {e}", root.display()))?;
    }
    let delay = cli.watch_delay;
    let task = tokio::spawn(async move {
        loop {
            let Some(first) = rx.recv().await else { return };
            let mut changed = Vec::new();
            filter.keep(&first, &mut changed);
            // The burst ends once nothing changed for `delay`.
            loop {
                match tokio::time::timeout(delay, rx.recv()).await {
                    Ok(Some(p)) => filter.keep(&p, &mut changed),
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            if changed.is_empty() {
                continue;
            }
            announce(&changed);
            let handle = handle.clone();
            // A reload runs on its own: changes during it queue one more.
            tokio::spawn(async move {
                let _ = handle.reload().await;
            });
        }
    });
    Ok(Some(Watch {
        _watcher: watcher,
        task,
    }))
}

/// Writes, creations, removals and renames; not reads or opens.
fn matters(kind: &EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode};
    matches!(
        kind,
        EventKind::Create(_)
            | EventKind::Modify(_)
            | EventKind::Remove(_)
            | EventKind::Access(AccessKind::Close(AccessMode::Write))
    )
}

/// Which changed paths count: under a root, and not ignored.
struct Filter {
    roots: Vec<PathBuf>,
    ignored: GlobSet,
}

impl Filter {
    /// A pattern without `/` matches any file or directory of that name
    /// (`node_modules`, `*.log`) at any depth; one with `/` matches the
    /// path under a watched directory (`public/uploads`), or an absolute
    /// path; either matches what is under what it names.
    fn new(roots: &[PathBuf], patterns: &[String]) -> Result<Filter, String> {
        let mut set = GlobSetBuilder::new();
        for p in patterns {
            let p = p.trim_end_matches('/');
            let forms = if p.contains('/') {
                vec![p.to_owned(), format!("{p}/**")]
            } else {
                vec![format!("**/{p}"), format!("**/{p}/**")]
            };
            for f in forms {
                set.add(Glob::new(&f).map_err(|e| format!("--ignore-watch {p}: {e}"))?);
            }
        }
        Ok(Filter {
            roots: roots.to_vec(),
            ignored: set.build().map_err(|e| e.to_string())?,
        })
    }

    /// The path as shown (relative to its root), if it counts.
    fn counts(&self, path: &Path) -> Option<String> {
        let root = self.roots.iter().find(|r| path.starts_with(r))?;
        let rel = path.strip_prefix(root).unwrap_or(path);
        if self.ignored.is_match(path) || self.ignored.is_match(rel) {
            return None;
        }
        Some(rel.display().to_string())
    }

    fn keep(&self, path: &Path, changed: &mut Vec<String>) {
        if let Some(shown) = self.counts(path) {
            if !changed.contains(&shown) {
                changed.push(shown);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ignored_patterns_match_names_at_any_depth_and_paths_under_a_root() {
        let root = PathBuf::from("/srv/app");
        let mut patterns: Vec<String> = DEFAULT_IGNORED.iter().map(|s| (*s).to_owned()).collect();
        patterns.push("public/uploads".into());
        patterns.push("*.tmp".into());
        let f = Filter::new(std::slice::from_ref(&root), &patterns).unwrap();
        let counts = |p: &str| f.counts(Path::new(p));
        assert_eq!(counts("/srv/app/src/app.js").as_deref(), Some("src/app.js"));
        assert_eq!(counts("/srv/app/node_modules/x/index.js"), None);
        assert_eq!(counts("/srv/app/lib/node_modules/y.js"), None);
        assert_eq!(counts("/srv/app/.git/HEAD"), None);
        assert_eq!(counts("/srv/app/logs/out.log"), None);
        assert_eq!(counts("/srv/app/public/uploads/a.png"), None);
        assert_eq!(
            counts("/srv/app/public/index.html").as_deref(),
            Some("public/index.html")
        );
        assert_eq!(counts("/srv/app/x.tmp"), None);
        // Outside every watched directory.
        assert_eq!(counts("/etc/passwd"), None);
    }
}
