//! `--print-systemd-unit`: the units that run this command line under
//! systemd.

use std::net::SocketAddr;
use std::time::Duration;

use super::args::{cluster_name, Cli};

/// `--print-systemd-unit`: the service (and with `--socket-unit` the
/// socket) unit that runs the command line this was called with.
pub(crate) fn systemd_units(cli: &Cli, file: Option<&std::path::Path>) -> Result<String, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    let cwd = std::env::current_dir().map_err(|e| format!("cannot read the directory: {e}"))?;
    let quote = |a: &str| {
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
    };
    let mut args = vec![quote(&exe.display().to_string())];
    args.extend(
        std::env::args()
            .skip(1)
            .filter(|a| a != "--print-systemd-unit" && a != "--socket-unit")
            .map(|a| quote(&a)),
    );
    let name = match file {
        Some(f) => super::config::dir_name(f),
        None => cluster_name(cli).ok_or("no program given")?,
    };
    // A config file's herd reloads by SIGHUP too, but its apps report to
    // systemd on their own: plain notify, with the signal as the reload.
    let kind = if file.is_some() {
        "Type=notify\nExecReload=/bin/kill -HUP $MAINPID\n"
    } else {
        "Type=notify-reload\nReloadSignal=SIGHUP\n"
    };
    // systemd SIGKILLs what is left after TimeoutStopSec: herd's own drain,
    // the pre-stop delay and a margin come first.
    let stop = cli.drain_timeout + cli.pre_stop_delay + Duration::from_secs(5);
    let mut out = String::new();
    if cli.socket_unit {
        let addrs: Vec<SocketAddr> = cli.listen.iter().flatten().copied().collect();
        if addrs.is_empty() {
            return Err("--socket-unit needs the addresses: give --listen".into());
        }
        out.push_str(&format!(
            "# {name}.socket\n[Unit]\nDescription=herd cluster {name}: sockets\n\n[Socket]\n"
        ));
        for a in &addrs {
            out.push_str(&format!("ListenStream={a}\n"));
        }
        out.push_str("ReusePort=yes\nBacklog=4096\n\n[Install]\nWantedBy=sockets.target\n\n");
    }
    out.push_str(&format!(
        "# {name}.service\n[Unit]\nDescription=herd cluster {name}\nAfter=network.target\n"
    ));
    if cli.socket_unit {
        out.push_str(&format!("Requires={name}.socket\nAfter={name}.socket\n"));
    }
    out.push_str(&format!(
        "\n[Service]\n\
         # READY=1, RELOADING=1 and STOPPING=1 come from herd itself; systemd\n\
         # older than 253 (no notify-reload): Type=notify and\n\
         # ExecReload=/bin/kill -HUP $MAINPID\n\
         {kind}\
         NotifyAccess=main\n\
         ExecStart={}\n\
         WorkingDirectory={}\n\
         # herd drains its workers; systemd only signals the master.\n\
         KillMode=mixed\n\
         TimeoutStopSec={}\n\
         Restart=on-failure\n\
         \n[Install]\nWantedBy=multi-user.target\n",
        args.join(" "),
        cwd.display(),
        stop.as_secs().max(1)
    ));
    Ok(out)
}
