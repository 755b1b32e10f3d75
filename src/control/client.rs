//! A typed client of a master's control API: what `herdctl` uses, and what
//! a Rust program uses to drive a running herd without reading JSON.

use std::io;
use std::path::{Path, PathBuf};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::UnixStream;

use crate::observe::OutputLine;
use crate::types::{Phase, ReloadReport, Signal, WorkerInfo};

/// Why a control request did not get its answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// No master answers on the socket.
    #[error("no herd master answers on {}: {source}", path.display())]
    NoMaster {
        /// The control socket.
        path: PathBuf,
        /// What connecting said.
        #[source]
        source: io::Error,
    },
    /// The socket is not this user's to use: permission refused, or it is
    /// served by another user (nothing is sent to such a socket: whoever
    /// swapped it could answer "done" while the real master runs on).
    #[error("{0}")]
    Forbidden(String),
    /// The master refused the request (an unknown slot, a scale during a
    /// reload, an upgrade that did not take).
    #[error("{message}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The API's error kind (`no_such_slot`, `busy`, `invalid`, ...).
        kind: String,
        /// The master's sentence.
        message: String,
    },
    /// The connection broke, or the answer was not what the API sends.
    #[error("the master's answer could not be read: {0}")]
    Protocol(String),
}

/// What `GET /v1/workers` says: the master and every slot.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[non_exhaustive]
pub struct Status {
    /// The cluster's name, if it has one.
    pub name: Option<String>,
    /// Where the cluster is in its life.
    pub phase: Phase,
    /// The master's pid.
    pub pid: u32,
    /// Master upgrades in place the cluster has been through.
    pub upgrades: u32,
    /// How its workers share the addresses (`reuseport`, `http`, ...).
    #[serde(default)]
    pub balance: Option<String>,
    /// Where it listens.
    #[serde(default)]
    pub addrs: Vec<String>,
    /// Every slot.
    pub workers: Vec<WorkerInfo>,
}

/// One entry of an app's journal ([`Client::journal`]): a worker's line or
/// one of herd's events.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[non_exhaustive]
pub struct JournalEntry {
    /// When the master saw it, in milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// The slot it is about, if one.
    pub slot: Option<usize>,
    /// The worker it is about, if one.
    pub pid: Option<u32>,
    /// `out` or `err` for a worker's line, `herd` for herd's own.
    pub stream: String,
    /// The line, or the event as herd's log writes it.
    pub line: String,
    /// For herd's lines: `info`, `warn` or `error`.
    #[serde(default)]
    pub level: Option<String>,
    /// For herd's lines: the event, typed as `--log-format json` writes it.
    #[serde(default)]
    pub event: Option<Value>,
}

/// A client of the control API on one socket. Each request opens its own
/// connection, so a client is cheap to keep and to clone.
#[derive(Debug, Clone)]
pub struct Client {
    path: PathBuf,
    /// The app every request names (`?app=`), on a herd of several.
    app: Option<String>,
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

impl Client {
    /// A client of the master whose control socket is `path`
    /// ([`super::default_path`] names the default one).
    pub fn new(path: impl Into<PathBuf>) -> Client {
        Client {
            path: path.into(),
            app: None,
        }
    }

    /// The same master, with every request for app `name` (a herd that
    /// runs a config file serves several apps on one socket).
    pub fn app(&self, name: &str) -> Client {
        Client {
            path: self.path.clone(),
            app: Some(name.to_owned()),
        }
    }

    /// Every app the master runs, each as [`Client::status`] shows it.
    ///
    /// # Errors
    ///
    /// [`ClientError`], as for every request.
    pub async fn apps(&self) -> Result<Vec<Status>, ClientError> {
        #[derive(serde::Deserialize)]
        struct Apps {
            apps: Vec<Status>,
        }
        let apps: Apps = self.typed("GET", "/v1/apps", None).await?;
        Ok(apps.apps)
    }

    /// On a herd that runs a config file: re-reads the file and applies
    /// the difference (apps added, removed or changed); the others are
    /// left alone.
    ///
    /// # Errors
    ///
    /// [`ClientError::Refused`] with kind `bad_config` when the file
    /// cannot be used (nothing changed then).
    pub async fn reconfigure(&self) -> Result<super::Changes, ClientError> {
        Client::new(self.path.clone())
            .typed("POST", "/v1/reload", None)
            .await
    }

    /// The control socket.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The master and every slot.
    ///
    /// # Errors
    ///
    /// [`ClientError`], as for every request.
    pub async fn status(&self) -> Result<Status, ClientError> {
        self.typed("GET", "/v1/workers", None).await
    }

    /// A rolling reload, waited for: its report (an aborted reload is
    /// `Ok` with [`ReloadReport::failure`] set).
    ///
    /// # Errors
    ///
    /// [`ClientError::Refused`] when the cluster is not running.
    pub async fn reload(&self) -> Result<ReloadReport, ClientError> {
        self.typed("POST", "/v1/reload", None).await
    }

    /// A soft restart of one slot, successor first.
    ///
    /// # Errors
    ///
    /// [`ClientError::Refused`] for a slot out of range.
    pub async fn restart(&self, slot: usize) -> Result<ReloadReport, ClientError> {
        self.typed("POST", &format!("/v1/restart/{slot}"), None)
            .await
    }

    /// Sends `signal` to one slot's worker, or to every worker: the pids
    /// it reached.
    ///
    /// # Errors
    ///
    /// [`ClientError::Refused`] for a slot out of range or without a
    /// worker.
    pub async fn signal(
        &self,
        signal: Signal,
        slot: Option<usize>,
    ) -> Result<Vec<u32>, ClientError> {
        #[derive(serde::Deserialize)]
        struct Pids {
            pids: Vec<u32>,
        }
        let body = json!({ "signal": signal.name(), "slot": slot });
        let pids: Pids = self.typed("POST", "/v1/signal", Some(body)).await?;
        Ok(pids.pids)
    }

    /// Scales to `workers` slots: the number before and after.
    ///
    /// # Errors
    ///
    /// [`ClientError::Refused`] with kind `busy` during a reload or while
    /// removed slots drain.
    pub async fn scale(&self, workers: usize) -> Result<(usize, usize), ClientError> {
        self.scaled(json!({ "workers": workers })).await
    }

    /// Scales by a difference (`+2`, `-1`; never below one slot).
    ///
    /// # Errors
    ///
    /// As [`Client::scale`].
    pub async fn scale_by(&self, delta: isize) -> Result<(usize, usize), ClientError> {
        self.scaled(json!({ "by": delta })).await
    }

    async fn scaled(&self, body: Value) -> Result<(usize, usize), ClientError> {
        #[derive(serde::Deserialize)]
        struct Scaled {
            from: usize,
            to: usize,
        }
        let s: Scaled = self.typed("POST", "/v1/scale", Some(body)).await?;
        Ok((s.from, s.to))
    }

    /// The last `lines` lines of one slot's workers, or of every slot's.
    ///
    /// # Errors
    ///
    /// [`ClientError`], as for every request.
    pub async fn logs(
        &self,
        slot: Option<usize>,
        lines: usize,
    ) -> Result<Vec<OutputLine>, ClientError> {
        #[derive(serde::Deserialize)]
        struct Lines {
            lines: Vec<OutputLine>,
        }
        let l: Lines = self
            .typed("GET", &logs_uri(slot, lines, false), None)
            .await?;
        Ok(l.lines)
    }

    /// The last `lines` lines, then every new one as the workers write it,
    /// as a stream that ends when the master closes it (it stopped). Drop
    /// the stream to stop following.
    ///
    /// # Errors
    ///
    /// [`ClientError`] when the request cannot be made; a broken stream
    /// later is an `Err` item, then the end.
    pub async fn follow_logs(
        &self,
        slot: Option<usize>,
        lines: usize,
    ) -> Result<
        impl tokio_stream::Stream<Item = Result<OutputLine, ClientError>> + Send + Unpin + 'static,
        ClientError,
    > {
        self.follow(&logs_uri(slot, lines, true)).await
    }

    /// The last `lines` entries of the app's journal (of one slot, and
    /// herd's events about the whole cluster): herd's events and the
    /// workers' lines in the order the master saw them, each with its time.
    ///
    /// # Errors
    ///
    /// [`ClientError`], as for every request.
    pub async fn journal(
        &self,
        slot: Option<usize>,
        lines: usize,
    ) -> Result<Vec<JournalEntry>, ClientError> {
        #[derive(serde::Deserialize)]
        struct Entries {
            entries: Vec<JournalEntry>,
        }
        let e: Entries = self
            .typed("GET", &journal_uri(slot, lines, false), None)
            .await?;
        Ok(e.entries)
    }

    /// [`Client::journal`], then every new entry as it comes, as a stream
    /// that ends when the cluster stops. Drop it to stop following.
    ///
    /// # Errors
    ///
    /// As [`Client::follow_logs`].
    pub async fn follow_journal(
        &self,
        slot: Option<usize>,
        lines: usize,
    ) -> Result<
        impl tokio_stream::Stream<Item = Result<JournalEntry, ClientError>> + Send + Unpin + 'static,
        ClientError,
    > {
        self.follow(&journal_uri(slot, lines, true)).await
    }

    /// A streamed answer: one JSON value per line.
    async fn follow<T: serde::de::DeserializeOwned + Send + 'static>(
        &self,
        uri: &str,
    ) -> Result<
        impl tokio_stream::Stream<Item = Result<T, ClientError>> + Send + Unpin + 'static,
        ClientError,
    > {
        let mut sender = self.connect().await?;
        let req = request("GET", &self.scoped(uri), None)?;
        let response = sender.send_request(req).await.map_err(lost)?;
        let mut body = response.into_body();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            let mut pending = Vec::new();
            while let Some(frame) = body.frame().await {
                let data = match frame.map_err(lost) {
                    Ok(frame) => match frame.into_data() {
                        Ok(data) => data,
                        Err(_) => continue,
                    },
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                pending.extend_from_slice(&data);
                while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=end).collect();
                    let item = serde_json::from_slice(&line)
                        .map_err(|e| ClientError::Protocol(format!("a streamed line: {e}")));
                    // The reader went away: stop following.
                    if tx.send(item).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(tokio_stream::wrappers::ReceiverStream::new(rx))
    }

    /// Asks for a graceful stop (answered at once; the master then stops).
    ///
    /// # Errors
    ///
    /// [`ClientError`], as for every request.
    pub async fn stop(&self) -> Result<(), ClientError> {
        self.request("POST", "/v1/stop", None).await.map(|_| ())
    }

    /// One request as the API answers it: the status and the JSON (for a
    /// program that wants the raw answer, as `herdctl --json` prints it).
    /// A refusal (4xx, 5xx) is [`ClientError::Refused`].
    ///
    /// # Errors
    ///
    /// [`ClientError`]: no master, a socket of another user, a refusal, a
    /// broken connection.
    pub async fn request(
        &self,
        method: &str,
        uri: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), ClientError> {
        let mut sender = self.connect().await?;
        let uri = self.scoped(uri);
        let response = sender
            .send_request(request(method, &uri, body)?)
            .await
            .map_err(lost)?;
        let status = response.status().as_u16();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(lost)?
            .to_bytes();
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if (200..300).contains(&status) {
            return Ok((status, value));
        }
        let message = value["error"]
            .as_str()
            .map_or_else(|| format!("the master answered {status}"), str::to_owned);
        if status == 403 {
            return Err(ClientError::Forbidden(message));
        }
        Err(ClientError::Refused {
            status,
            kind: value["kind"].as_str().unwrap_or("failed").to_owned(),
            message,
        })
    }

    async fn typed<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        uri: &str,
        body: Option<Value>,
    ) -> Result<T, ClientError> {
        let (_, value) = self.request(method, uri, body).await?;
        serde_json::from_value(value).map_err(|e| ClientError::Protocol(format!("{uri}: {e}")))
    }

    /// `uri` with this client's app, if it has one.
    fn scoped(&self, uri: &str) -> String {
        match &self.app {
            Some(app) if !uri.contains("app=") => {
                let sep = if uri.contains('?') { '&' } else { '?' };
                format!("{uri}{sep}app={app}")
            }
            _ => uri.to_owned(),
        }
    }

    /// An HTTP/1 connection to the socket, once its server is known to be
    /// this user (or root).
    async fn connect(&self) -> Result<Sender, ClientError> {
        let path = &self.path;
        let stream = UnixStream::connect(path)
            .await
            .map_err(|e| match e.kind() {
                io::ErrorKind::PermissionDenied => ClientError::Forbidden(format!(
                    "permission refused on {}: run as the master's user",
                    path.display()
                )),
                _ => ClientError::NoMaster {
                    path: path.clone(),
                    source: e,
                },
            })?;
        let me = nix::unistd::geteuid().as_raw();
        match stream.peer_cred() {
            Ok(cred) if cred.uid() == me || cred.uid() == 0 => {}
            Ok(cred) => {
                return Err(ClientError::Forbidden(format!(
                    "{} is served by uid {}, neither this user (uid {me}) nor root: not a \
                     master of yours; refusing to talk to it",
                    path.display(),
                    cred.uid()
                )))
            }
            Err(e) => {
                return Err(ClientError::Forbidden(format!(
                    "cannot tell who serves {}: {e}",
                    path.display()
                )))
            }
        }
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(lost)?;
        tokio::spawn(conn);
        Ok(sender)
    }
}

fn journal_uri(slot: Option<usize>, lines: usize, follow: bool) -> String {
    logs_uri(slot, lines, follow).replacen("/v1/logs", "/v1/journal", 1)
}

fn logs_uri(slot: Option<usize>, lines: usize, follow: bool) -> String {
    let follow = if follow { "follow=1&" } else { "" };
    match slot {
        Some(s) => format!("/v1/logs?{follow}slot={s}&lines={lines}"),
        None => format!("/v1/logs?{follow}lines={lines}"),
    }
}

fn request(
    method: &str,
    uri: &str,
    body: Option<Value>,
) -> Result<hyper::Request<Full<Bytes>>, ClientError> {
    let body = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
    hyper::Request::builder()
        .method(method)
        .uri(uri)
        .header(hyper::header::HOST, "herd")
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))
        .map_err(|e| ClientError::Protocol(e.to_string()))
}

fn lost(e: hyper::Error) -> ClientError {
    ClientError::Protocol(format!("the master closed the connection: {e}"))
}
