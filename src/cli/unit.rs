//! `herd startup` (PM2's `startup`) and `--print-systemd-unit`: the systemd
//! units that run this command line at boot, written where systemd reads
//! them or printed.
//!
//! The service runs the installed `herd` with absolute paths (the binary,
//! the config file, a program given by path), in this directory, with the
//! `PATH` that found the workers' interpreter (an nvm `node` included), as
//! the user who asked (`SUDO_USER` under sudo). `Type=notify-reload` where
//! systemd has it (253 and later), else `Type=notify` with `ExecReload=`
//! sending SIGHUP.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::args::{cluster_name, Cli};

/// The units for this command line: `(file name, text)` each, the socket
/// unit first.
pub(crate) fn systemd_units(
    cli: &Cli,
    file: Option<&Path>,
) -> Result<Vec<(String, String)>, String> {
    let exe = installed_exe()?;
    let cwd = std::env::current_dir().map_err(|e| format!("cannot read the directory: {e}"))?;
    let name = match file {
        Some(f) => super::config::dir_name(f),
        None => cluster_name(cli).ok_or("no program given")?,
    };
    let mut args = vec![quote(&exe.display().to_string())];
    args.extend(exec_args(file, &cwd).iter().map(|a| quote(a)));
    // A config file's herd reloads by SIGHUP too, but its apps report to
    // systemd on their own: plain notify, with the signal as the reload.
    let notify_reload = file.is_none() && systemd_version().is_none_or(|v| v >= 253);
    let kind = if notify_reload {
        "Type=notify-reload\nReloadSignal=SIGHUP\n"
    } else {
        "Type=notify\nExecReload=/bin/kill -HUP $MAINPID\n"
    };
    // systemd SIGKILLs what is left after TimeoutStopSec: herd's own drain,
    // the pre-stop delay and a margin come first.
    let stop = cli.drain_timeout + cli.pre_stop_delay + Duration::from_secs(5);
    let mut units = Vec::new();
    if cli.socket_unit {
        let addrs: Vec<SocketAddr> = cli.listen.iter().flatten().copied().collect();
        if addrs.is_empty() {
            return Err("--socket-unit needs the addresses: give --listen".into());
        }
        let mut out = format!("[Unit]\nDescription=herd cluster {name}: sockets\n\n[Socket]\n");
        for a in &addrs {
            out.push_str(&format!("ListenStream={a}\n"));
        }
        out.push_str("ReusePort=yes\nBacklog=4096\n\n[Install]\nWantedBy=sockets.target\n");
        units.push((format!("{name}.socket"), out));
    }
    let mut out = format!("[Unit]\nDescription=herd cluster {name}\nAfter=network.target\n");
    if cli.socket_unit {
        out.push_str(&format!("Requires={name}.socket\nAfter={name}.socket\n"));
    }
    let mut env = String::new();
    // The PATH that found node (nvm, asdf, a version manager's shims).
    if let Some(path) = std::env::var_os("PATH") {
        env.push_str(&format!(
            "Environment={}\n",
            quote(&format!("PATH={}", path.to_string_lossy()))
        ));
    }
    // As the user who asked: the one sudo was run by, when root asks
    // through sudo; root itself stays root.
    if let Some(user) = std::env::var("SUDO_USER")
        .ok()
        .filter(|u| !u.is_empty() && u != "root")
    {
        env.push_str(&format!("User={user}\n"));
    }
    out.push_str(&format!(
        "\n[Service]\n\
         # READY=1, RELOADING=1 and STOPPING=1 come from herd itself.\n\
         {kind}\
         NotifyAccess=main\n\
         ExecStart={}\n\
         WorkingDirectory={}\n\
         {env}\
         # herd drains its workers; systemd only signals the master.\n\
         KillMode=mixed\n\
         TimeoutStopSec={}\n\
         Restart=on-failure\n\
         \n[Install]\nWantedBy=multi-user.target\n",
        args.join(" "),
        cwd.display(),
        stop.as_secs().max(1)
    ));
    units.push((format!("{name}.service"), out));
    Ok(units)
}

/// `--print-systemd-unit`: every unit, each under a `# NAME` line.
pub(crate) fn print(units: &[(String, String)]) -> String {
    units
        .iter()
        .map(|(name, text)| format!("# {name}\n{text}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `herd startup`: writes the units into `dir` (default: where systemd
/// reads the administrator's units) and says how to enable them.
pub(crate) fn install(units: &[(String, String)], dir: Option<&Path>) -> Result<String, String> {
    let dir = dir.map_or_else(|| PathBuf::from("/etc/systemd/system"), Path::to_path_buf);
    for (name, text) in units {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| {
            format!(
                "cannot write {}: {e} (run `sudo herd startup ...`, or --unit-dir DIR, or --print-systemd-unit to see the unit)",
                path.display()
            )
        })?;
    }
    let enable: Vec<&str> = units.iter().map(|(n, _)| n.as_str()).collect();
    Ok(format!(
        "wrote {}\nto start it now and at every boot:\n  sudo systemctl daemon-reload\n  sudo systemctl enable --now {}\n",
        units
            .iter()
            .map(|(n, _)| dir.join(n).display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        enable.last().copied().unwrap_or_default()
    ))
}

/// The command line the unit runs: this one, with `startup` and the unit
/// flags left out and paths made absolute.
fn exec_args(file: Option<&Path>, cwd: &Path) -> Vec<String> {
    let given: Vec<String> = super::args::args()
        .into_iter()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let mut out = Vec::new();
    let mut words = given.into_iter().peekable();
    let mut program_seen = false;
    while let Some(a) = words.next() {
        match a.as_str() {
            "--print-systemd-unit" | "--print" | "--socket-unit" | "--startup" => continue,
            "--unit-dir" => {
                words.next();
                continue;
            }
            "--config" | "-c" => {
                out.push(a);
                if let (Some(_), Some(f)) = (words.next(), file) {
                    out.push(absolute(f, cwd));
                }
                continue;
            }
            _ => {}
        }
        if a.starts_with("--unit-dir=") {
            continue;
        }
        // The program, when given by path: absolute, as systemd wants.
        if !program_seen && !a.starts_with('-') && a.contains('/') && Path::new(&a).exists() {
            program_seen = true;
            out.push(absolute(Path::new(&a), cwd));
            continue;
        }
        out.push(a);
    }
    out
}

fn absolute(p: &Path, cwd: &Path) -> String {
    std::fs::canonicalize(cwd.join(p))
        .unwrap_or_else(|_| cwd.join(p))
        .display()
        .to_string()
}

/// The binary a unit should run: this one, unless it is a build in a
/// cargo target directory (`cargo run`) and `herd` is installed on PATH.
fn installed_exe() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    let in_target = exe.components().any(|c| c.as_os_str() == "target");
    if in_target {
        if let Some(installed) = std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("herd"))
                .find(|p| p.is_file())
        }) {
            return Ok(installed);
        }
    }
    Ok(exe)
}

/// systemd's version, if systemctl answers.
fn systemd_version() -> Option<u32> {
    let out = std::process::Command::new("systemctl")
        .arg("--version")
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn quote(a: &str) -> String {
    if a.is_empty() || a.contains(|c: char| c.is_whitespace() || "\"'\\$%;".contains(c)) {
        format!(
            "\"{}\"",
            a.replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('%', "%%")
                .replace('$', "$$")
        )
    } else {
        a.to_owned()
    }
}
