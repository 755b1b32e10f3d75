//! `herdctl top`: every app and worker, refreshed every second (PM2's
//! `monit`): state, pid, uptime, restarts by reason, CPU, memory, and in
//! the proxy modes the connections (or requests) in flight and requests a
//! second. On a terminal it is a live view that `q` quits; elsewhere it
//! prints the tables again each time.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use super::ctl::{duration, size, Failure};
use crate::control::Client;

/// One app's row source: its status, and the herd it is in.
struct Shown {
    herd: String,
    status: Value,
}

/// Every app of `masters` (only `app`, when given).
async fn fetch(masters: &[PathBuf], app: Option<&str>) -> Vec<Shown> {
    let mut out = Vec::new();
    for path in masters {
        let herd = path
            .file_stem()
            .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
        let Ok((_, answer)) = Client::new(path).request("GET", "/v1/apps", None).await else {
            continue;
        };
        for status in answer["apps"].as_array().into_iter().flatten() {
            let name = status["name"]
                .as_str()
                .filter(|n| !n.is_empty())
                .unwrap_or(&herd);
            if app.is_none_or(|a| a == name || a == herd) {
                out.push(Shown {
                    herd: herd.clone(),
                    status: status.clone(),
                });
            }
        }
    }
    out
}

/// Requests sent to each worker so far (the proxy modes), by pid.
fn requests(shown: &[Shown]) -> HashMap<u64, u64> {
    shown
        .iter()
        .flat_map(|s| s.status["proxied"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| Some((p["pid"].as_u64()?, p["requests"].as_u64()?)))
        .collect()
}

/// The rows of one refresh: a header line per app, then a line per slot.
fn rows(shown: &[Shown], rates: &HashMap<u64, f64>) -> Vec<(bool, Vec<String>)> {
    let dash = || "-".to_owned();
    let mut out = Vec::new();
    for s in shown {
        let st = &s.status;
        let name = st["name"]
            .as_str()
            .filter(|n| !n.is_empty())
            .unwrap_or(&s.herd);
        let addrs: Vec<&str> = st["addrs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        out.push((
            true,
            vec![format!(
                "{name}  master {}  {} on {}  {}",
                st["pid"],
                st["balance"].as_str().unwrap_or("?"),
                addrs.join(" "),
                st["phase"].as_str().unwrap_or("?")
            )],
        ));
        let open: HashMap<u64, u64> = st["proxied"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| Some((p["pid"].as_u64()?, p["open"].as_u64()?)))
            .collect();
        for w in st["workers"].as_array().into_iter().flatten() {
            let pid = w["pid"].as_u64();
            let by: Vec<String> = w["restarts_by"]
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(_, n)| n.as_u64().is_some_and(|n| n > 0))
                .map(|(k, n)| format!("{k}:{n}"))
                .collect();
            let total: u64 = w["restarts_by"]
                .as_object()
                .map_or(0, |b| b.values().filter_map(Value::as_u64).sum());
            out.push((
                false,
                vec![
                    w["slot"].to_string(),
                    pid.map_or_else(dash, |p| p.to_string()),
                    w["state"].as_str().unwrap_or("?").to_owned(),
                    w["uptime_ms"].as_u64().map_or_else(dash, duration),
                    if by.is_empty() {
                        total.to_string()
                    } else {
                        format!("{total} ({})", by.join(" "))
                    },
                    w["cpu_percent"]
                        .as_u64()
                        .map_or_else(dash, |p| format!("{p}%")),
                    w["memory_bytes"].as_u64().map_or_else(dash, size),
                    pid.and_then(|p| open.get(&p))
                        .map_or_else(dash, ToString::to_string),
                    pid.and_then(|p| rates.get(&p))
                        .map_or_else(dash, |r| format!("{r:.0}")),
                ],
            ));
        }
    }
    out
}

const HEADER: [&str; 9] = [
    "SLOT", "PID", "STATE", "UPTIME", "RESTARTS", "CPU", "MEMORY", "OPEN", "REQ/S",
];

/// `herdctl top`: refreshes every `every` until `q` (on a terminal) or
/// `count` refreshes.
pub(crate) async fn top(
    masters: Vec<PathBuf>,
    app: Option<String>,
    every: Duration,
    count: Option<u64>,
) -> Result<u8, Failure> {
    // A terminal with no size (a bare pseudo-terminal) shows nothing.
    let sized = crossterm::terminal::size().is_ok_and(|(w, h)| w > 0 && h > 0);
    let terminal = std::io::stdout().is_terminal() && std::io::stdin().is_terminal() && sized;
    if !terminal {
        return plain(&masters, app.as_deref(), every, count).await;
    }
    live(&masters, app.as_deref(), every, count).await
}

/// The rates since the last refresh, and the new counts.
fn rates(last: &HashMap<u64, u64>, now: &HashMap<u64, u64>, every: Duration) -> HashMap<u64, f64> {
    now.iter()
        .filter_map(|(pid, n)| {
            let before = last.get(pid)?;
            Some((*pid, n.saturating_sub(*before) as f64 / every.as_secs_f64()))
        })
        .collect()
}

/// Not on a terminal: the tables, printed again at each refresh.
async fn plain(
    masters: &[PathBuf],
    app: Option<&str>,
    every: Duration,
    count: Option<u64>,
) -> Result<u8, Failure> {
    let mut last = HashMap::new();
    let mut done = 0;
    loop {
        let shown = fetch(masters, app).await;
        if shown.is_empty() {
            return Err(Failure(3, "no herd app answers".into()));
        }
        let now = requests(&shown);
        let r = rates(&last, &now, every);
        last = now;
        println!(
            "--- {}",
            crate::logfile::timestamp(std::time::SystemTime::now())
        );
        for (header, cells) in rows(&shown, &r) {
            if header {
                println!("{}", cells[0]);
                println!(
                    "  {:<5} {:<8} {:<9} {:>8} {:<18} {:>5} {:>8} {:>5} {:>6}",
                    HEADER[0],
                    HEADER[1],
                    HEADER[2],
                    HEADER[3],
                    HEADER[4],
                    HEADER[5],
                    HEADER[6],
                    HEADER[7],
                    HEADER[8]
                );
            } else {
                println!(
                    "  {:<5} {:<8} {:<9} {:>8} {:<18} {:>5} {:>8} {:>5} {:>6}",
                    cells[0],
                    cells[1],
                    cells[2],
                    cells[3],
                    cells[4],
                    cells[5],
                    cells[6],
                    cells[7],
                    cells[8]
                );
            }
        }
        done += 1;
        if count.is_some_and(|c| done >= c) {
            return Ok(0);
        }
        tokio::time::sleep(every).await;
    }
}

/// Puts the terminal back as it was, whatever happens.
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = crossterm::terminal::disable_raw_mode();
        let _ = crossterm::execute!(std::io::stdout(), crossterm::terminal::LeaveAlternateScreen);
    }
}

/// On a terminal: a live view, `q` (or Esc, Ctrl-C) quits.
async fn live(
    masters: &[PathBuf],
    app: Option<&str>,
    every: Duration,
    count: Option<u64>,
) -> Result<u8, Failure> {
    use crossterm::event::{Event, KeyCode, KeyModifiers};
    use ratatui::layout::Constraint;
    use ratatui::style::{Modifier, Style};
    use ratatui::widgets::{Block, Row, Table};

    let io = |e: std::io::Error| Failure(1, format!("the terminal: {e}"));
    crossterm::terminal::enable_raw_mode().map_err(io)?;
    let _restore = Restore;
    crossterm::execute!(std::io::stdout(), crossterm::terminal::EnterAlternateScreen)
        .map_err(io)?;
    let mut term =
        ratatui::Terminal::new(ratatui::backend::CrosstermBackend::new(std::io::stdout()))
            .map_err(io)?;
    // Keys come from a thread of their own: crossterm reads block.
    let (keys_tx, mut keys) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        while let Ok(event) = crossterm::event::read() {
            if keys_tx.send(event).is_err() {
                return;
            }
        }
    });
    let mut last = HashMap::new();
    let mut done = 0;
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let shown = fetch(masters, app).await;
                let now = requests(&shown);
                let r = rates(&last, &now, every);
                last = now;
                let table_rows: Vec<Row> = rows(&shown, &r)
                    .into_iter()
                    .map(|(header, cells)| {
                        if header {
                            Row::new(vec![cells[0].clone()]).style(Style::default().add_modifier(Modifier::BOLD))
                        } else {
                            Row::new(cells)
                        }
                    })
                    .collect();
                let widths = [
                    Constraint::Length(5),
                    Constraint::Length(8),
                    Constraint::Length(9),
                    Constraint::Length(8),
                    Constraint::Min(18),
                    Constraint::Length(5),
                    Constraint::Length(8),
                    Constraint::Length(5),
                    Constraint::Length(6),
                ];
                let title = format!(
                    " herd top: {} app(s), every {}; q quits ",
                    shown.len(),
                    duration(every.as_millis() as u64)
                );
                let table = Table::new(table_rows, widths)
                    .header(Row::new(HEADER.to_vec()).style(Style::default().add_modifier(Modifier::REVERSED)))
                    .block(Block::bordered().title(title));
                term.draw(|f| f.render_widget(table, f.area())).map_err(io)?;
                done += 1;
                if count.is_some_and(|c| done >= c) {
                    return Ok(0);
                }
            }
            Some(event) = keys.recv() => {
                if let Event::Key(k) = event {
                    let quit = matches!(k.code, KeyCode::Char('q') | KeyCode::Esc)
                        || (k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL));
                    if quit {
                        return Ok(0);
                    }
                }
            }
        }
    }
}
