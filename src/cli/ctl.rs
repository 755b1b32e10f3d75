//! `herdctl`: operate a running herd master through its control API.
//!
//! ```text
//! herdctl ls                  # every app of every herd, with its workers
//! herdctl reload              # the only app; a config file's herd re-reads it
//! herdctl reload api          # one app (rolling); `all`: every app
//! herdctl restart 2           # one slot; `restart api 2`, `restart api`
//! herdctl signal USR2 api 1
//! herdctl scale api +2        # or 4, or -1
//! herdctl logs api 0 -n 20
//! herdctl stop api            # one app; `all`; nothing: the whole herd
//! herdctl upgrade             # the master re-executes its binary
//! ```
//!
//! An app is found by name in whichever herd runs it (a herd that runs
//! one program answers to its own name too). A command without an app
//! goes to the one master that runs (or `--control PATH`, `--name NAME`).
//! `--json` prints what the API answered.
//!
//! Exit status: 0 done; 1 the operation failed (an aborted reload); 2 bad
//! usage; 3 no master answers; 4 permission refused; 5 the master refused
//! the request (an unknown slot, a scale during a reload).

use std::path::PathBuf;
use std::process::ExitCode;

use crate::control::{Client, ClientError, JournalEntry};
use clap::{Parser, Subcommand};
use serde_json::{json, Value};

#[derive(Parser)]
#[command(name = "herdctl", about = "Operate a running herd master")]
struct Cli {
    /// The master's control socket.
    #[arg(long, value_name = "PATH", global = true)]
    control: Option<PathBuf>,
    /// The master's name (its --name, or its program's file name).
    #[arg(long, value_name = "NAME", global = true, conflicts_with = "control")]
    name: Option<String>,
    /// Print the API's JSON answer instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Print only the outcome: no line per slot while a reload or a scale
    /// runs (for scripts).
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Every app of every herd this user runs (or of the one named), with
    /// its workers.
    #[command(alias = "status")]
    Ls {
        /// Only this app.
        app: Option<String>,
    },
    /// A rolling reload, waited for. APP: that app; `all`: every app of
    /// every herd; nothing: the only app, or, for a herd that runs a
    /// config file, the file re-read and its changes applied (apps added,
    /// removed or changed; the others are not touched).
    Reload { app: Option<String> },
    /// A soft restart, successor first: one slot (`restart 2`, `restart
    /// api 2`), or every slot of an app or of `all` as a rolling reload.
    Restart {
        /// An app, `all`, or a slot of the only app.
        target: String,
        /// A slot of that app.
        slot: Option<usize>,
    },
    /// Sends a signal to every worker, or to one slot's: `signal USR2
    /// [APP] [SLOT]`.
    Signal {
        signal: String,
        /// [APP] [SLOT].
        #[arg(num_args = 0..=2)]
        target: Vec<String>,
    },
    /// Scales to N workers, or by +N / -N: `scale [APP] N`.
    #[command(allow_negative_numbers = true)]
    Scale {
        /// [APP] N.
        #[arg(num_args = 1..=2, required = true)]
        args: Vec<String>,
    },
    /// The app's journal: herd's events and the workers' lines (out, err)
    /// in order, each with its time: `logs [APP] [SLOT]`.
    Logs {
        /// [APP] [SLOT].
        #[arg(num_args = 0..=2)]
        target: Vec<String>,
        #[arg(short = 'n', long, default_value_t = 50)]
        lines: usize,
        /// Keep printing new lines until the cluster stops.
        #[arg(short = 'f', long)]
        follow: bool,
    },
    /// How an app runs: its command, directory, options in effect, sockets,
    /// log paths and next scheduled reload; each slot's worker, restarts by
    /// reason and last lines; the last exits: `describe [APP] [SLOT]`.
    Describe {
        /// [APP] [SLOT].
        #[arg(num_args = 0..=2)]
        target: Vec<String>,
    },
    /// Every app and worker, refreshed every second (PM2's monit): a live
    /// view on a terminal (`q` quits), the tables printed again elsewhere.
    Top {
        /// Only this app.
        app: Option<String>,
        /// How often it refreshes.
        #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = super::args::parse_duration)]
        every: std::time::Duration,
        /// Stop after this many refreshes.
        #[arg(short = 'n', long, value_name = "N")]
        count: Option<u64>,
    },
    /// Stops gracefully: an app, `all`, or (nothing) the whole herd.
    Stop { app: Option<String> },
    /// Upgrades the master in place (as SIGUSR2): its binary, as the file
    /// is now, passes a pre-flight check, then replaces the master in the
    /// same process; the workers keep serving. Waits for the new master.
    Upgrade,
}

/// How long `scale` waits for the new slots' workers to be ready.
const SCALE_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

/// How long `upgrade` waits for the new master to answer.
const UPGRADE_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// An error with the exit status it means.
pub(crate) struct Failure(pub(crate) u8, pub(crate) String);

/// The `herdctl` command: parses `std::env::args`, talks to a running
/// master and returns the exit status.
pub fn herdctl() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(Failure(code, message)) => {
            eprintln!("herdctl: {message}");
            ExitCode::from(code)
        }
    }
}

/// The sockets of every herd this user runs (the default directory), or
/// the one given or named.
fn masters(cli: &Cli) -> Result<Vec<PathBuf>, Failure> {
    if let Some(path) = &cli.control {
        return Ok(vec![path.clone()]);
    }
    if let Some(name) = &cli.name {
        return Ok(vec![crate::control::default_path(name)]);
    }
    let dir = crate::control::default_dir();
    // Only sockets a master answers on: a killed one leaves its file.
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "sock"))
                .filter(|p| std::os::unix::net::UnixStream::connect(p).is_ok())
                .collect()
        })
        .unwrap_or_default();
    paths.sort();
    if paths.is_empty() {
        return Err(Failure(
            3,
            format!("no herd master runs here (nothing in {})", dir.display()),
        ));
    }
    Ok(paths)
}

/// The one master a command without an app goes to.
fn socket(cli: &Cli) -> Result<PathBuf, Failure> {
    let mut all = masters(cli)?;
    if all.len() == 1 {
        return Ok(all.remove(0));
    }
    let names: Vec<String> = all.iter().map(|p| herd_name(p)).collect();
    Err(Failure(
        2,
        format!(
            "several herd masters run ({}): name an app, `all`, or pass --name",
            names.join(", ")
        ),
    ))
}

/// A herd's name: its socket's file name.
fn herd_name(path: &std::path::Path) -> String {
    path.file_stem()
        .map_or_else(String::new, |s| s.to_string_lossy().into_owned())
}

/// One app a command acts on.
struct Target {
    client: Client,
    /// The app's name, for the lines printed about several.
    label: String,
}

/// The apps `app` names: `all` (every app of every herd), an app by name
/// (in whichever herd runs it), or a herd by name when it runs one app.
async fn targets(cli: &Cli, app: Option<&str>) -> Result<Vec<Target>, Failure> {
    let Some(want) = app else {
        let path = socket(cli)?;
        return Ok(vec![Target {
            label: herd_name(&path),
            client: Client::new(path),
        }]);
    };
    let mut found = Vec::new();
    let mut seen = Vec::new();
    for path in masters(cli)? {
        let client = Client::new(&path);
        let apps = match client.apps().await {
            Ok(apps) => apps,
            // A master gone since the listing, or another user's: not ours.
            Err(_) if cli.control.is_none() && cli.name.is_none() => continue,
            Err(e) => return Err(failure(e)),
        };
        let herd = herd_name(&path);
        for status in &apps {
            let name = status.name.clone().unwrap_or_default();
            seen.push(if name.is_empty() {
                herd.clone()
            } else {
                name.clone()
            });
            let scoped = if name.is_empty() || apps.len() == 1 {
                client.clone()
            } else {
                client.app(&name)
            };
            let label = if name.is_empty() {
                herd.clone()
            } else {
                name.clone()
            };
            if want == "all" || name == want || (apps.len() == 1 && herd == want) {
                found.push(Target {
                    client: scoped,
                    label,
                });
            }
        }
    }
    if found.is_empty() {
        return Err(Failure(
            5,
            if want == "all" {
                "no herd runs any app".to_owned()
            } else {
                format!("no app `{want}` runs (apps: {})", seen.join(", "))
            },
        ));
    }
    Ok(found)
}

/// `[APP] [SLOT]`: an app and a slot, an app, or a slot.
fn app_and_slot(words: &[String]) -> Result<(Option<String>, Option<usize>), Failure> {
    let slot = |w: &str| {
        w.parse::<usize>()
            .map_err(|_| Failure(2, format!("`{w}` is not a slot number")))
    };
    match words {
        [] => Ok((None, None)),
        [one] => match one.parse::<usize>() {
            Ok(n) => Ok((None, Some(n))),
            Err(_) => Ok((Some(one.clone()), None)),
        },
        [app, s] => Ok((Some(app.clone()), Some(slot(s)?))),
        _ => Err(Failure(2, "give at most an app and a slot".into())),
    }
}

/// What a client error means for the exit status.
fn failure(e: ClientError) -> Failure {
    let code = match &e {
        ClientError::Forbidden(_) => 4,
        ClientError::Refused { .. } => 5,
        _ => 3,
    };
    Failure(code, e.to_string())
}

/// One request through herd's own client; a refusal is exit status 5.
async fn request(
    client: &Client,
    method: &str,
    uri: &str,
    body: Option<Value>,
) -> Result<Value, Failure> {
    client
        .request(method, uri, body)
        .await
        .map(|(_, value)| value)
        .map_err(failure)
}

/// `logs`: the app's journal (herd's events and its workers' lines, in
/// order, each with its time), then with `-f` every new entry.
async fn logs(
    client: &Client,
    slot: Option<usize>,
    lines: usize,
    follow: bool,
    json: bool,
) -> Result<u8, Failure> {
    use tokio_stream::StreamExt;
    let print = |e: &JournalEntry| {
        if json {
            println!("{}", serde_json::to_string(e).unwrap_or_default());
        } else {
            println!("{}", journal_line(e));
        }
    };
    if !follow {
        for e in client.journal(slot, lines).await.map_err(failure)? {
            print(&e);
        }
        return Ok(0);
    }
    let mut stream = client.follow_journal(slot, lines).await.map_err(failure)?;
    while let Some(entry) = stream.next().await {
        print(&entry.map_err(failure)?);
    }
    Ok(0)
}

/// One journal entry as text: its time, whose it is, and the line.
fn journal_line(e: &JournalEntry) -> String {
    let at = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(e.time_ms);
    let time = crate::logfile::timestamp(at);
    let who = match (e.stream.as_str(), e.slot, e.pid) {
        ("herd", _, _) => format!("herd {}", e.level.as_deref().unwrap_or("info")),
        (stream, Some(slot), Some(pid)) => format!("slot {slot} pid {pid} {stream}"),
        (stream, _, _) => stream.to_owned(),
    };
    format!("{time} [{who}] {}", e.line)
}

/// While `request` runs, prints each slot a reload replaces: the
/// successor, how long it took to be ready, and the predecessor that now
/// drains.
async fn with_progress(
    client: &Client,
    label: &str,
    request: impl std::future::Future<Output = Result<Value, Failure>>,
) -> Result<Value, Failure> {
    use tokio_stream::StreamExt;
    let Ok(mut stream) = client.follow_journal(None, 0).await else {
        return request.await;
    };
    let prefix = if label.is_empty() {
        String::new()
    } else {
        format!("{label}: ")
    };
    let printer = tokio::spawn(async move {
        let mut spawned: std::collections::HashMap<u64, u64> = Default::default();
        while let Some(Ok(e)) = stream.next().await {
            let Some(ev) = &e.event else { continue };
            match ev["event"].as_str() {
                Some("spawned") => {
                    if let Some(pid) = ev["pid"].as_u64() {
                        spawned.insert(pid, e.time_ms);
                    }
                }
                Some("replaced") => {
                    let new = ev["new_pid"].as_u64().unwrap_or(0);
                    let took = spawned.get(&new).map_or_else(String::new, |t| {
                        format!(" ready in {}", duration(e.time_ms.saturating_sub(*t)))
                    });
                    println!(
                        "{prefix}slot {}: pid {new}{took}, pid {} draining",
                        ev["slot"], ev["old_pid"]
                    );
                }
                Some("reload_finished") => return,
                _ => {}
            }
        }
    });
    let answer = request.await;
    // The last slot's line comes just before the answer.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), printer).await;
    answer
}

/// `scale`: once the new slots are made, waits until each has a ready
/// worker, printing each; 1 when one failed to start or time ran out.
async fn scaled(
    client: &Client,
    label: &str,
    answer: &Value,
    mut stream: impl tokio_stream::Stream<Item = Result<JournalEntry, ClientError>> + Unpin,
    quiet: bool,
) -> u8 {
    use tokio_stream::StreamExt;
    let (from, to) = (
        answer["from"].as_u64().unwrap_or(0),
        answer["to"].as_u64().unwrap_or(0),
    );
    let prefix = if label.is_empty() {
        String::new()
    } else {
        format!("{label}: ")
    };
    let mut waiting: std::collections::BTreeSet<u64> = (from..to).collect();
    let mut failed = Vec::new();
    let deadline = tokio::time::Instant::now() + SCALE_WAIT;
    while !waiting.is_empty() {
        let next = tokio::time::timeout_at(deadline, stream.next()).await;
        let Ok(Some(Ok(e))) = next else { break };
        let Some(ev) = &e.event else { continue };
        let Some(slot) = ev["slot"].as_u64().filter(|s| waiting.contains(s)) else {
            continue;
        };
        match ev["event"].as_str() {
            Some("ready") => {
                waiting.remove(&slot);
                if !quiet {
                    println!("{prefix}slot {slot}: pid {} ready", ev["pid"]);
                }
            }
            Some("slot_failed" | "spawn_failed") => {
                waiting.remove(&slot);
                failed.push(format!("slot {slot}: {}", e.line));
            }
            _ => {}
        }
    }
    let _ = client;
    for slot in &waiting {
        failed.push(format!(
            "slot {slot}: no worker ready within {}s",
            SCALE_WAIT.as_secs()
        ));
    }
    for f in &failed {
        eprintln!("herdctl: {prefix}{f}");
    }
    u8::from(!failed.is_empty())
}

async fn run(cli: Cli) -> Result<u8, Failure> {
    match &cli.command {
        Command::Ls { app } => return list(&cli, app.as_deref()).await,
        Command::Logs {
            target,
            lines,
            follow,
        } => {
            let (app, slot) = app_and_slot(target)?;
            let t = one(targets(&cli, app.as_deref()).await?)?;
            return logs(&t.client, slot, *lines, *follow, cli.json).await;
        }
        Command::Top { app, every, count } => {
            return super::top::top(masters(&cli)?, app.clone(), *every, *count).await;
        }
        Command::Describe { target } => {
            let (app, slot) = app_and_slot(target)?;
            let t = one(targets(&cli, app.as_deref()).await?)?;
            let mut answer = request(&t.client, "GET", "/v1/describe", None).await?;
            // The next time of a schedule, in this machine's local time.
            if let Some(schedule) = answer["info"]["cron_reload"].as_str() {
                let next = super::cron::parse(schedule)
                    .ok()
                    .and_then(|c| super::cron::next(&c));
                answer["info"]["next_reload"] = next.into();
            }
            if cli.json {
                println!("{answer}");
            } else {
                print_describe(&t.label, &answer, slot);
            }
            return Ok(0);
        }
        Command::Reload { app: None } => {
            let client = Client::new(socket(&cli)?);
            // A herd of a config file re-reads it; one cluster reloads.
            let ask = request(&client, "POST", "/v1/reload", None);
            let answer = if cli.json || cli.quiet {
                ask.await?
            } else {
                with_progress(&client, "", ask).await?
            };
            return Ok(reported(&cli, "", &answer));
        }
        _ => {}
    }
    let (app, method, uri, body) = match &cli.command {
        Command::Ls { .. }
        | Command::Reload { app: None }
        | Command::Logs { .. }
        | Command::Describe { .. }
        | Command::Top { .. } => {
            unreachable!("answered above")
        }
        Command::Reload { app } => (app.clone(), "POST", "/v1/reload".to_owned(), None),
        Command::Restart { target, slot } => match (target.parse::<usize>(), slot) {
            (Ok(s), None) => (None, "POST", format!("/v1/restart/{s}"), None),
            (_, Some(s)) => (
                Some(target.clone()),
                "POST",
                format!("/v1/restart/{s}"),
                None,
            ),
            // Every slot of an app: PM2's `restart app`, done losslessly.
            (Err(_), None) => (Some(target.clone()), "POST", "/v1/reload".to_owned(), None),
        },
        Command::Signal { signal, target } => {
            let (app, slot) = app_and_slot(target)?;
            (
                app,
                "POST",
                "/v1/signal".to_owned(),
                Some(json!({ "signal": signal, "slot": slot })),
            )
        }
        Command::Scale { args } => {
            let (app, workers) = match args.as_slice() {
                [n] => (None, n),
                [app, n] => (Some(app.clone()), n),
                _ => return Err(Failure(2, "scale [APP] N".into())),
            };
            let body = if let Some(rest) = workers.strip_prefix(['+', '-']) {
                let by: i64 = rest
                    .parse()
                    .map_err(|_| Failure(2, format!("`{workers}` is not +N, -N or N")))?;
                json!({ "by": if workers.starts_with('-') { -by } else { by } })
            } else {
                let n: u64 = workers
                    .parse()
                    .map_err(|_| Failure(2, format!("`{workers}` is not +N, -N or N")))?;
                json!({ "workers": n })
            };
            (app, "POST", "/v1/scale".to_owned(), Some(body))
        }
        Command::Stop { app } => (app.clone(), "POST", "/v1/stop".to_owned(), None),
        Command::Upgrade => (None, "POST", "/v1/upgrade".to_owned(), None),
    };
    let all = targets(&cli, app.as_deref()).await?;
    let several = all.len() > 1;
    let mut code = 0;
    for t in &all {
        let label = if several { t.label.as_str() } else { "" };
        let progress = !cli.json
            && !cli.quiet
            && matches!(
                cli.command,
                Command::Reload { .. } | Command::Restart { .. }
            );
        // Subscribed before the scale, so that no new worker's ready is
        // missed.
        let scale_watch = match cli.command {
            Command::Scale { .. } => t.client.follow_journal(None, 0).await.ok(),
            _ => None,
        };
        let ask = request(&t.client, method, &uri, body.clone());
        let asked = if progress {
            with_progress(&t.client, label, ask).await
        } else {
            ask.await
        };
        let answer = match asked {
            Ok(answer) => answer,
            Err(f) if several => {
                eprintln!("herdctl: {}: {}", t.label, f.1);
                code = code.max(f.0);
                continue;
            }
            Err(f) => return Err(f),
        };
        if let Command::Upgrade = cli.command {
            return upgraded(&t.client, &answer, cli.json).await;
        }
        code = code.max(reported(&cli, label, &answer));
        if let Some(stream) = scale_watch {
            code = code.max(scaled(&t.client, label, &answer, stream, cli.quiet || cli.json).await);
        }
    }
    Ok(code)
}

/// The one target of a command that cannot act on several.
fn one(mut all: Vec<Target>) -> Result<Target, Failure> {
    if all.len() == 1 {
        return Ok(all.remove(0));
    }
    let names: Vec<&str> = all.iter().map(|t| t.label.as_str()).collect();
    Err(Failure(
        2,
        format!(
            "that names {} apps ({}): name one",
            all.len(),
            names.join(", ")
        ),
    ))
}

/// Prints what the API answered to a command (`label`: the app, when the
/// command went to several); the exit status it means.
fn reported(cli: &Cli, label: &str, answer: &Value) -> u8 {
    let prefix = if label.is_empty() {
        String::new()
    } else {
        format!("{label}: ")
    };
    if cli.json {
        println!("{answer}");
    }
    match &cli.command {
        // The config file re-read: what changed, app by app.
        Command::Reload { .. } if answer.get("unchanged").is_some() && !cli.json => {
            let mut parts = Vec::new();
            for what in [
                "started",
                "stopped",
                "reloaded",
                "updated",
                "restarted",
                "unchanged",
            ] {
                let names: Vec<&str> = answer[what]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                if !names.is_empty() {
                    parts.push(format!("{what} {}", names.join(", ")));
                }
            }
            println!("{}", parts.join("; "));
        }
        Command::Reload { .. } | Command::Restart { .. } => {
            let failure = &answer["failure"];
            if !failure.is_null() {
                eprintln!(
                    "herdctl: {prefix}aborted at slot {}: {}",
                    failure["slot"],
                    failure["reason"].as_str().unwrap_or("")
                );
                for line in failure["last_output"].as_array().into_iter().flatten() {
                    eprintln!("  | {}", line.as_str().unwrap_or(""));
                }
                return 1;
            }
            if !cli.json {
                let replaced = answer["replaced"].as_array().map_or(0, Vec::len);
                println!(
                    "{prefix}replaced {replaced} worker(s) in {}",
                    duration(answer["duration_ms"].as_u64().unwrap_or(0))
                );
            }
        }
        Command::Signal { signal, .. } if !cli.json => {
            let pids: Vec<String> = answer["pids"]
                .as_array()
                .into_iter()
                .flatten()
                .map(Value::to_string)
                .collect();
            println!("{prefix}sent {signal} to pid(s) {}", pids.join(", "));
        }
        Command::Scale { .. } if !cli.json => {
            println!(
                "{prefix}scaling from {} to {} worker(s)",
                answer["from"], answer["to"]
            );
        }
        Command::Stop { .. } if !cli.json => println!("{prefix}stopping"),
        _ => {}
    }
    0
}

/// `ls`: every app of every herd (or of the one named), each with a line
/// that says where it runs, then its workers.
async fn list(cli: &Cli, app: Option<&str>) -> Result<u8, Failure> {
    let mut shown: Vec<(String, Value)> = Vec::new();
    let explicit = cli.control.is_some() || cli.name.is_some();
    for path in masters(cli)? {
        let client = Client::new(&path);
        let answer = match request(&client, "GET", "/v1/apps", None).await {
            Ok(a) => a,
            Err(_) if !explicit => continue,
            Err(f) => return Err(f),
        };
        for status in answer["apps"].as_array().into_iter().flatten() {
            let name = status["name"].as_str().filter(|n| !n.is_empty());
            let label = name.map_or_else(|| herd_name(&path), str::to_owned);
            if app.is_none_or(|a| a == label || a == herd_name(&path)) {
                shown.push((label, status.clone()));
            }
        }
    }
    if let (Some(want), true) = (app, shown.is_empty()) {
        return Err(Failure(5, format!("no app `{want}` runs")));
    }
    if cli.json {
        // One app: its table as `GET /v1/workers` answers; several: a list.
        if shown.len() == 1 {
            println!("{}", shown[0].1);
        } else {
            let apps: Vec<&Value> = shown.iter().map(|(_, v)| v).collect();
            println!("{}", json!({ "apps": apps }));
        }
        return Ok(0);
    }
    for (i, (label, status)) in shown.iter().enumerate() {
        if i > 0 {
            println!();
        }
        let addrs: Vec<&str> = status["addrs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        println!(
            "{label}: master pid {}, {} on {}, {}",
            status["pid"],
            status["balance"].as_str().unwrap_or("?"),
            if addrs.is_empty() {
                "no address".to_owned()
            } else {
                addrs.join(" ")
            },
            status["phase"].as_str().unwrap_or("?"),
        );
        print_table(status);
    }
    Ok(0)
}

/// `upgrade`: waits until the new master answers with one upgrade more.
async fn upgraded(client: &Client, answer: &Value, json: bool) -> Result<u8, Failure> {
    let before = answer["upgrades"].as_u64().unwrap_or(0);
    let deadline = tokio::time::Instant::now() + UPGRADE_WAIT;
    loop {
        // The old master's connections end with its exec; the socket
        // itself stays, and the new master answers on it.
        if let Ok((200, now)) = client.request("GET", "/v1/workers", None).await {
            let upgrades = now["upgrades"].as_u64().unwrap_or(0);
            if upgrades > before {
                if json {
                    println!("{now}");
                } else {
                    println!(
                        "upgraded in place: pid {}, upgrade {upgrades}, {} worker(s) kept",
                        now["pid"],
                        now["workers"].as_array().map_or(0, Vec::len)
                    );
                }
                return Ok(0);
            }
        }
        if tokio::time::Instant::now() > deadline {
            return Err(Failure(
                1,
                format!(
                    "the master accepted the upgrade but did not answer as upgraded within {}s \
                     (see its log: the exec may have failed)",
                    UPGRADE_WAIT.as_secs()
                ),
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

pub(crate) fn duration(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms}ms"),
        1000..=59_999 => format!("{:.1}s", ms as f64 / 1000.0),
        60_000..=3_599_999 => format!("{}m{}s", ms / 60_000, ms % 60_000 / 1000),
        _ => format!("{}h{}m", ms / 3_600_000, ms % 3_600_000 / 60_000),
    }
}

pub(crate) fn size(bytes: u64) -> String {
    match bytes {
        0..=1023 => format!("{bytes}B"),
        1024..=1_048_575 => format!("{}K", bytes >> 10),
        1_048_576..=1_073_741_823 => format!("{:.1}M", bytes as f64 / 1_048_576.0),
        _ => format!("{:.2}G", bytes as f64 / 1_073_741_824.0),
    }
}

/// `describe` as text.
fn print_describe(label: &str, a: &Value, slot: Option<usize>) {
    let info = &a["info"];
    let name = a["name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .unwrap_or(label);
    println!(
        "{name}: master pid {}, {}",
        a["pid"],
        a["phase"].as_str().unwrap_or("?")
    );
    let words = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .map(|w| w.as_str().map_or_else(|| w.to_string(), str::to_owned))
            .collect()
    };
    let row = |k: &str, v: String| {
        if !v.is_empty() {
            println!("  {k:<16}{v}");
        }
    };
    row("command", words(&info["command"]).join(" "));
    row("directory", info["cwd"].as_str().unwrap_or("").to_owned());
    row(
        "config file",
        info["config_file"].as_str().unwrap_or("").to_owned(),
    );
    row(
        "listens",
        format!(
            "{} ({})",
            words(&a["addrs"]).join(" "),
            a["balance"].as_str().unwrap_or("?")
        ),
    );
    let logs = match (info["log_file"].as_str(), info["log_dir"].as_str()) {
        (Some(f), _) => f.to_owned(),
        (None, Some(d)) => format!("{d}/ (slot-N.log, master.log)"),
        _ => "the master's terminal (herdctl logs)".to_owned(),
    };
    row("logs", logs);
    row("env", words(&info["env"]).join(" "));
    if let Some(schedule) = info["cron_reload"].as_str() {
        row(
            "next reload",
            format!(
                "{} (cron \"{schedule}\")",
                info["next_reload"].as_str().unwrap_or("never")
            ),
        );
    }
    row("watching", words(&info["watch"]).join(" "));
    if let Some(options) = info["options"].as_object() {
        let set: Vec<String> = options
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| {
                format!(
                    "{k}={}",
                    v.as_str().map_or_else(|| v.to_string(), str::to_owned)
                )
            })
            .collect();
        row("options", set.join(" "));
    }
    for w in a["workers"].as_array().into_iter().flatten() {
        let s = w["slot"].as_u64().unwrap_or(0) as usize;
        if slot.is_some_and(|want| want != s) {
            continue;
        }
        let by: Vec<String> = w["restarts_by"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(_, n)| n.as_u64().is_some_and(|n| n > 0))
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        println!(
            "slot {s}: pid {}, {}, up {}, restarts {}{}",
            w["pid"]
                .as_u64()
                .map_or_else(|| "-".to_owned(), |p| p.to_string()),
            w["state"].as_str().unwrap_or("?"),
            w["uptime_ms"]
                .as_u64()
                .map_or_else(|| "-".to_owned(), duration),
            by.len(),
            if by.is_empty() {
                String::new()
            } else {
                format!(" ({})", by.join(", "))
            }
        );
        for l in a["tail"][s.to_string()].as_array().into_iter().flatten() {
            println!(
                "  {} | {}",
                l["stream"].as_str().unwrap_or(""),
                l["line"].as_str().unwrap_or("")
            );
        }
    }
    let exits: Vec<&Value> = a["exits"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| slot.is_none_or(|s| e["slot"] == s))
        .collect();
    if !exits.is_empty() {
        println!("last exits:");
        for e in exits {
            let at = std::time::SystemTime::UNIX_EPOCH
                + std::time::Duration::from_millis(e["time_ms"].as_u64().unwrap_or(0));
            let how = match (e["exit"]["code"].as_i64(), e["exit"]["signal"].as_str()) {
                (Some(c), _) => format!("exited with code {c}"),
                (None, Some(sig)) => format!("killed by {sig}"),
                _ => "ended".to_owned(),
            };
            println!(
                "  {} slot {} pid {} {how} after {}{}",
                crate::logfile::timestamp(at),
                e["slot"],
                e["pid"],
                duration(e["uptime_ms"].as_u64().unwrap_or(0)),
                if e["expected"] == true {
                    ""
                } else {
                    " (unexpected)"
                }
            );
        }
    }
}

fn print_table(answer: &Value) {
    let dash = || "-".to_owned();
    println!(
        "{:<5} {:<8} {:<9} {:>4} {:>8} {:>8} {:>5} {:>8}  DRAINING",
        "SLOT", "PID", "STATE", "GEN", "UPTIME", "RESTARTS", "CPU", "MEMORY"
    );
    for w in answer["workers"].as_array().into_iter().flatten() {
        let draining: Vec<String> = w["draining"]
            .as_array()
            .into_iter()
            .flatten()
            .map(Value::to_string)
            .collect();
        println!(
            "{:<5} {:<8} {:<9} {:>4} {:>8} {:>8} {:>5} {:>8}  {}",
            w["slot"].to_string(),
            w["pid"].as_u64().map_or_else(dash, |p| p.to_string()),
            w["state"].as_str().unwrap_or("?"),
            w["generation"].to_string(),
            w["uptime_ms"].as_u64().map_or_else(dash, duration),
            // Every replacement, whatever its reason (`describe` has them
            // by reason); a master before that counted exits only.
            w["restarts_by"].as_object().map_or_else(
                || w["restarts"].to_string(),
                |by| by
                    .values()
                    .filter_map(Value::as_u64)
                    .sum::<u64>()
                    .to_string()
            ),
            w["cpu_percent"]
                .as_u64()
                .map_or_else(dash, |p| format!("{p}%")),
            w["memory_bytes"].as_u64().map_or_else(dash, size),
            if draining.is_empty() {
                dash()
            } else {
                draining.join(",")
            }
        );
    }
}
