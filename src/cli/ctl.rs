//! `herdctl`: operate a running herd master through its control API.
//!
//! ```text
//! herdctl ls            # the worker table
//! herdctl reload        # waits; exit 1 if aborted
//! herdctl restart 2
//! herdctl signal USR2 1
//! herdctl scale +2      # or 4, or -1
//! herdctl logs 0 -n 20
//! herdctl stop
//! herdctl upgrade       # the master re-executes its binary
//! ```
//!
//! It finds the master by `--control PATH`, by `--name NAME` (the master's
//! `--name`, or its program's file name), or, when only one master runs,
//! by itself. `--json` prints what the API answered.
//!
//! Exit status: 0 done; 1 the operation failed (an aborted reload); 2 bad
//! usage; 3 no master answers; 4 permission refused; 5 the master refused
//! the request (an unknown slot, a scale during a reload).

use std::path::PathBuf;
use std::process::ExitCode;

use crate::control::{Client, ClientError};
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
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The worker table.
    #[command(alias = "status")]
    Ls,
    /// A rolling reload; waits for its report.
    Reload,
    /// A soft restart of one slot (successor first).
    Restart { slot: usize },
    /// Sends a signal to every worker, or to one slot's.
    Signal { signal: String, slot: Option<usize> },
    /// Scales to N workers, or by +N / -N.
    Scale {
        #[arg(allow_hyphen_values = true)]
        workers: String,
    },
    /// The workers' last output lines.
    Logs {
        slot: Option<usize>,
        #[arg(short = 'n', long, default_value_t = 50)]
        lines: usize,
        /// Keep printing new lines until the cluster stops.
        #[arg(short = 'f', long)]
        follow: bool,
    },
    /// Stops the cluster gracefully.
    Stop,
    /// Upgrades the master in place (as SIGUSR2): its binary, as the file
    /// is now, passes a pre-flight check, then replaces the master in the
    /// same process; the workers keep serving. Waits for the new master.
    Upgrade,
}

/// How long `upgrade` waits for the new master to answer.
const UPGRADE_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// An error with the exit status it means.
struct Failure(u8, String);

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

/// The socket: given, named, or the only one in the default directory.
fn socket(cli: &Cli) -> Result<PathBuf, Failure> {
    if let Some(path) = &cli.control {
        return Ok(path.clone());
    }
    if let Some(name) = &cli.name {
        return Ok(crate::control::default_path(name));
    }
    let dir = crate::control::default_dir();
    // Only sockets a master answers on: a killed one leaves its file.
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| std::os::unix::net::UnixStream::connect(e.path()).is_ok())
                .filter_map(|e| {
                    e.file_name()
                        .to_str()?
                        .strip_suffix(".sock")
                        .map(str::to_owned)
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    match names.as_slice() {
        [one] => Ok(crate::control::default_path(one)),
        [] => Err(Failure(
            3,
            format!("no herd master runs here (nothing in {})", dir.display()),
        )),
        several => Err(Failure(
            2,
            format!(
                "several herd masters run ({}): pass --name",
                several.join(", ")
            ),
        )),
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

/// `logs -f`: prints each line as the master streams it.
async fn follow(
    client: &Client,
    slot: Option<usize>,
    lines: usize,
    json: bool,
) -> Result<u8, Failure> {
    use tokio_stream::StreamExt;
    let mut stream = client.follow_logs(slot, lines).await.map_err(failure)?;
    while let Some(line) = stream.next().await {
        let l = line.map_err(failure)?;
        if json {
            println!("{}", serde_json::to_string(&l).unwrap_or_default());
        } else {
            println!("[slot {} pid {}] {}", l.slot, l.pid, l.line);
        }
    }
    Ok(0)
}

async fn run(cli: Cli) -> Result<u8, Failure> {
    let client = Client::new(socket(&cli)?);
    if let Command::Logs {
        slot,
        lines,
        follow: true,
    } = &cli.command
    {
        return follow(&client, *slot, *lines, cli.json).await;
    }
    let (method, uri, body) = match &cli.command {
        Command::Ls => ("GET", "/v1/workers".to_owned(), None),
        Command::Reload => ("POST", "/v1/reload".to_owned(), None),
        Command::Restart { slot } => ("POST", format!("/v1/restart/{slot}"), None),
        Command::Signal { signal, slot } => (
            "POST",
            "/v1/signal".to_owned(),
            Some(json!({ "signal": signal, "slot": slot })),
        ),
        Command::Scale { workers } => {
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
            ("POST", "/v1/scale".to_owned(), Some(body))
        }
        Command::Logs { slot, lines, .. } => (
            "GET",
            match slot {
                Some(s) => format!("/v1/logs?slot={s}&lines={lines}"),
                None => format!("/v1/logs?lines={lines}"),
            },
            None,
        ),
        Command::Stop => ("POST", "/v1/stop".to_owned(), None),
        Command::Upgrade => ("POST", "/v1/upgrade".to_owned(), None),
    };
    let answer = request(&client, method, &uri, body).await?;
    if let Command::Upgrade = cli.command {
        return upgraded(&client, &answer, cli.json).await;
    }
    if cli.json {
        println!("{answer}");
    }
    match &cli.command {
        Command::Ls if !cli.json => print_table(&answer),
        Command::Reload | Command::Restart { .. } => {
            let failure = &answer["failure"];
            if !failure.is_null() {
                eprintln!(
                    "herdctl: aborted at slot {}: {}",
                    failure["slot"],
                    failure["reason"].as_str().unwrap_or("")
                );
                for line in failure["last_output"].as_array().into_iter().flatten() {
                    eprintln!("  | {}", line.as_str().unwrap_or(""));
                }
                return Ok(1);
            }
            if !cli.json {
                let replaced = answer["replaced"].as_array().map_or(0, Vec::len);
                println!(
                    "replaced {replaced} worker(s) in {}",
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
            println!("sent {signal} to pid(s) {}", pids.join(", "));
        }
        Command::Scale { .. } if !cli.json => {
            println!(
                "scaling from {} to {} worker(s)",
                answer["from"], answer["to"]
            );
        }
        Command::Logs { .. } if !cli.json => {
            for l in answer["lines"].as_array().into_iter().flatten() {
                println!(
                    "[slot {} pid {}] {}",
                    l["slot"],
                    l["pid"],
                    l["line"].as_str().unwrap_or("")
                );
            }
        }
        Command::Stop if !cli.json => println!("stopping"),
        _ => {}
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

fn duration(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms}ms"),
        1000..=59_999 => format!("{:.1}s", ms as f64 / 1000.0),
        60_000..=3_599_999 => format!("{}m{}s", ms / 60_000, ms % 60_000 / 1000),
        _ => format!("{}h{}m", ms / 3_600_000, ms % 3_600_000 / 60_000),
    }
}

fn size(bytes: u64) -> String {
    match bytes {
        0..=1023 => format!("{bytes}B"),
        1024..=1_048_575 => format!("{}K", bytes >> 10),
        1_048_576..=1_073_741_823 => format!("{:.1}M", bytes as f64 / 1_048_576.0),
        _ => format!("{:.2}G", bytes as f64 / 1_073_741_824.0),
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
            w["restarts"].to_string(),
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
