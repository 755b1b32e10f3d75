//! Several clusters behind one control socket: a herd that runs every app
//! of its config file. Each request names its app with `?app=NAME`; a
//! request without one goes to the only app, and is refused (kind
//! `app_required`) when there are several.

use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

use super::journal::Journal;
use super::{AbortOnDrop, Logs};
use crate::Handle;

/// The apps one control socket serves; cheap to clone, and changed while
/// it serves (an app added or removed by a reload of the config file).
#[derive(Clone, Default)]
pub struct Apps {
    inner: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for Apps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Apps")
            .field("names", &self.names())
            .finish()
    }
}

#[derive(Default)]
struct Inner {
    entries: Vec<Entry>,
    reconfigure: Option<mpsc::Sender<Reconfigure>>,
    /// What `GET /v1/describe` tells of each app besides its state.
    info: std::collections::HashMap<String, serde_json::Value>,
}

/// One app as the API sees it.
#[derive(Clone)]
pub(super) struct Entry {
    pub(super) name: String,
    pub(super) handle: Handle,
    pub(super) logs: Logs,
    pub(super) journal: Journal,
    _collect: Arc<(AbortOnDrop, AbortOnDrop)>,
}

/// `POST /v1/reload` without an app, on a herd that runs a config file:
/// the program re-reads its file, applies the difference and answers.
#[derive(Debug)]
pub struct Reconfigure {
    /// Where the answer goes: what changed, or why nothing could.
    pub reply: oneshot::Sender<std::result::Result<Changes, String>>,
}

/// What a reload of the config file did, app by app.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct Changes {
    /// Apps added to the file, now started.
    pub started: Vec<String>,
    /// Apps removed from the file, now stopped.
    pub stopped: Vec<String>,
    /// Apps whose program, environment or worker count changed: reloaded
    /// (rolling, successor first) with the new settings.
    pub reloaded: Vec<String>,
    /// Apps whose other settings changed (drain timeout, restart policy,
    /// limits): taken from now on, no worker replaced.
    #[serde(default)]
    pub updated: Vec<String>,
    /// Apps whose sockets or balance mode changed: stopped, then started
    /// anew.
    pub restarted: Vec<String>,
    /// Apps left alone.
    pub unchanged: Vec<String>,
}

impl Apps {
    /// No apps yet.
    pub fn new() -> Apps {
        Apps::default()
    }

    /// Serves `handle` as app `name` (replacing an app of that name).
    /// Call it within a tokio runtime: it starts the task that keeps the
    /// app's last output lines.
    pub fn insert(&self, name: &str, handle: Handle) {
        let (logs, collect) = Logs::collect(&handle);
        let (journal, write) = Journal::collect(&handle);
        let entry = Entry {
            name: name.to_owned(),
            handle,
            logs,
            journal,
            _collect: Arc::new((AbortOnDrop(collect), AbortOnDrop(write))),
        };
        let mut inner = self.lock();
        inner.entries.retain(|e| e.name != name);
        inner.entries.push(entry);
    }

    /// What `GET /v1/describe` says of app `name` besides its state: the
    /// program's own account of how it runs it (the command, directory,
    /// options in effect, log paths), as JSON.
    pub fn set_info(&self, name: &str, info: serde_json::Value) {
        self.lock().info.insert(name.to_owned(), info);
    }

    pub(super) fn info(&self, name: &str) -> serde_json::Value {
        self.lock()
            .info
            .get(name)
            .cloned()
            .unwrap_or(serde_json::Value::Null)
    }

    /// Stops serving app `name`: its handle, if it was there.
    pub fn remove(&self, name: &str) -> Option<Handle> {
        let mut inner = self.lock();
        inner.info.remove(name);
        let at = inner.entries.iter().position(|e| e.name == name)?;
        Some(inner.entries.remove(at).handle)
    }

    /// The apps' names, in the order they were added.
    pub fn names(&self) -> Vec<String> {
        self.lock().entries.iter().map(|e| e.name.clone()).collect()
    }

    /// The handle of app `name`.
    pub fn get(&self, name: &str) -> Option<Handle> {
        self.entry(name).map(|e| e.handle)
    }

    /// Where `POST /v1/reload` without an app goes: the program re-reads
    /// its config file and answers with the [`Changes`]. Without it, such
    /// a reload goes to the only app, as with [`super::serve`].
    pub fn on_reconfigure(&self, tx: mpsc::Sender<Reconfigure>) {
        self.lock().reconfigure = Some(tx);
    }

    pub(super) fn reconfigurer(&self) -> Option<mpsc::Sender<Reconfigure>> {
        self.lock().reconfigure.clone()
    }

    pub(super) fn entry(&self, name: &str) -> Option<Entry> {
        self.lock().entries.iter().find(|e| e.name == name).cloned()
    }

    pub(super) fn entries(&self) -> Vec<Entry> {
        self.lock().entries.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}
