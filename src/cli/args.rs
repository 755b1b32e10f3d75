//! The command line: every flag, its parser, and the defaults taken from
//! the environment.

use std::net::SocketAddr;
use std::time::Duration;

use crate::{Balance, KillMode, Readiness, RestartPolicy, Signal};
use clap::Parser;

/// Run N copies of a program behind one listening address, keep them alive,
/// and stop them gracefully.
///
/// `herd [OPTIONS] PROGRAM [ARGS]...` runs one program; `herd run ...` is
/// the same. `herd start FILE` (or `--config FILE`) runs every app of a
/// herd.toml or a PM2 ecosystem file (.js, .json, .yaml); flags given with
/// it override the file's settings of every app. Without a program or a
/// file, ./herd.toml is read when it exists.
#[derive(Debug, Clone, PartialEq, Parser)]
#[command(name = "herd", version, trailing_var_arg = true)]
pub(crate) struct Cli {
    /// Run the apps of this file: herd.toml, or PM2's ecosystem.config.js,
    /// .json or .yaml (`herd start FILE` is the same).
    #[arg(short, long, value_name = "FILE")]
    pub(crate) config: Option<std::path::PathBuf>,

    /// With a file: start only these apps (repeatable).
    #[arg(long, value_name = "APP", requires = "config")]
    pub(crate) only: Vec<String>,

    /// Number of worker processes [default: the number of CPUs].
    #[arg(short, long, value_name = "N")]
    pub(crate) workers: Option<usize>,

    /// Address to listen on; repeat for more. PORT, :PORT, HOST:PORT or
    /// [IPV6]:PORT [default: 0.0.0.0:$PORT, else 0.0.0.0:3000].
    #[arg(short, long = "listen", value_name = "ADDR", value_parser = parse_listen)]
    pub(crate) listen: Vec<Vec<SocketAddr>>,

    /// How workers share the address: reuseport (a socket per worker slot),
    /// shared (one socket for all), proxy (the master forwards connections)
    /// or http (the master keeps the clients' connections and forwards each
    /// request: reloads are invisible whatever the app does)
    /// [default: reuseport; shared for sockets systemd passed without
    /// ReusePort=yes].
    #[arg(long, value_name = "MODE", value_parser = parse_balance)]
    pub(crate) balance: Option<(Balance, bool)>,

    /// With --balance proxy or http: round-robin, least-conn, p2c or ip-hash.
    #[arg(long, value_name = "STRATEGY", value_parser = parse_strategy)]
    pub(crate) strategy: Option<crate::balance::Strategy>,

    /// With --balance proxy or http, for programs that can only bind a
    /// port themselves (Go, Java, puma, uvicorn --port $PORT): set PORT to a
    /// free loopback port per worker and probe it for readiness. With http,
    /// such servers reload without a failed request.
    #[arg(long)]
    pub(crate) proxy_port: bool,

    /// With --balance proxy: forward with splice(2) (pays off for large
    /// responses).
    #[arg(long)]
    pub(crate) proxy_splice: bool,

    /// With --balance proxy: send a PROXY protocol header (v1 or v2) to
    /// workers, so that apps see the client's address.
    #[arg(long, value_name = "VERSION", value_parser = parse_proxy_protocol)]
    pub(crate) proxy_protocol: Option<crate::proxy::ProxyProtocol>,

    /// With --balance http: `cookie` pins each client to a worker slot with
    /// a cookie (herd_slot) that the slot's next worker honours after a
    /// reload.
    #[arg(long, value_name = "KIND", value_parser = ["cookie"])]
    pub(crate) sticky: Option<String>,

    /// With --balance http: how long a client may take to send a request
    /// head (slowloris), and an idle keep-alive client is kept [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) header_timeout: Option<Duration>,

    /// With --balance http: how long a worker may take to send a response
    /// head before the client gets 504 [default: 60s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) response_timeout: Option<Duration>,

    /// With --balance http: keep the X-Forwarded-* headers that peers in
    /// this range send (a load balancer in front); repeatable.
    #[arg(long, value_name = "CIDR", value_parser = parse_cidr)]
    pub(crate) trust_proxy: Vec<crate::Cidr>,

    /// With --balance proxy or http: the most client connections at once; more
    /// wait in the listen queue [default: what the fd limit leaves].
    #[arg(long, value_name = "N")]
    pub(crate) max_connections: Option<usize>,

    /// With --balance proxy: close a client connection on which nothing
    /// moved either way for this long (0 never). With --balance http: a
    /// request or response body in which nothing moves for this long (and
    /// a WebSocket tunnel).
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    pub(crate) proxy_idle_timeout: Duration,

    /// Listen backlog [default: the kernel's somaxconn].
    #[arg(long, value_name = "N")]
    pub(crate) backlog: Option<u32>,

    /// Time a stopping worker gets to finish its requests before its process
    /// group is killed.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub(crate) drain_timeout: Duration,

    /// Signal that asks a worker to stop (SIGTERM, TERM, INT, 15, ...).
    #[arg(long, value_name = "SIGNAL", default_value = "SIGTERM", value_parser = parse_signal)]
    pub(crate) stop_signal: Signal,

    /// Which exits are restarted: always, on-failure or never.
    #[arg(long, value_name = "POLICY", default_value = "always", value_parser = parse_restart)]
    pub(crate) restart: RestartPolicy,

    /// Delay before the first restart; doubles after each quick exit.
    #[arg(long, value_name = "DURATION", default_value = "100ms", value_parser = parse_duration)]
    pub(crate) restart_delay: Duration,

    /// Cap on the restart delay.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub(crate) restart_delay_max: Duration,

    /// A slot with this many exits within --crash-window is marked failed
    /// (0: never give up).
    #[arg(long, value_name = "N", default_value_t = crate::DEFAULT_CRASH_LIMIT)]
    pub(crate) crash_limit: u32,

    /// The window --crash-limit counts exits in.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub(crate) crash_window: Duration,

    /// Uptime after which a worker counts as healthy and the restart delay
    /// starts over.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub(crate) min_uptime: Duration,

    /// How the master learns a new worker serves: auto (listen for Node
    /// with the preload, else none), none, notify (sd_notify READY=1), ipc
    /// (process.send('ready')), listen (the preload: the app listens),
    /// probe (the port answers; with --proxy-port) or delay:<duration>.
    #[arg(long, value_name = "MODE", default_value = "auto", value_parser = parse_ready)]
    pub(crate) ready: Readiness,

    /// PM2's wait_ready: a new Node worker is ready when the app calls
    /// process.send('ready'), not when it listens (--ready ipc).
    #[arg(long)]
    pub(crate) wait_ready: bool,

    /// Which processes of a worker get the stop signal: mixed (its main
    /// process; the rest of its group is killed once that has exited) or
    /// group (the whole process group at once).
    #[arg(long, value_name = "MODE", default_value = "mixed", value_parser = parse_kill_mode)]
    pub(crate) kill_mode: KillMode,

    /// A reload's successor that cannot report readiness (--ready none)
    /// must stay up this long before it replaces its predecessor; one that
    /// exits sooner aborts the reload (0 turns it off).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub(crate) settle: Duration,

    /// A name for this cluster, in every line the master writes
    /// (`herd[NAME]: ...`, `[NAME slot 0 pid 12] ...`, `"cluster":"NAME"`).
    #[arg(long, value_name = "NAME")]
    pub(crate) name: Option<String>,

    /// Where the control API (`herdctl`) is served: a Unix socket, 0600 in
    /// a 0700 directory. Default: `$XDG_RUNTIME_DIR/herd/control/NAME.sock`
    /// or `/tmp/herd-UID/control/NAME.sock`, NAME being `--name`, the
    /// program's file name, or a config file's `name` (else its
    /// directory's).
    #[arg(long, value_name = "PATH")]
    pub(crate) control: Option<std::path::PathBuf>,

    /// Serve Prometheus metrics on ADDR (GET /metrics), with /healthz (the
    /// master runs) and /readyz (every slot that has not failed has a ready
    /// worker; 503 while stopping) for load balancers and Kubernetes.
    #[arg(long, value_name = "ADDR")]
    pub(crate) metrics: Option<SocketAddr>,

    /// Write the master's lines and every worker line, with timestamps, to
    /// FILE instead of the terminal; reopened on SIGUSR1 (logrotate).
    #[arg(long, value_name = "FILE")]
    pub(crate) log_file: Option<std::path::PathBuf>,

    /// Write one file per slot (slot-N.log) and master.log in DIR instead
    /// of the terminal; reopened on SIGUSR1.
    #[arg(long, value_name = "DIR")]
    pub(crate) log_dir: Option<std::path::PathBuf>,

    /// Start every line herd writes to the terminal (its own and the
    /// workers') with the time: local (the default) or utc. Log files are
    /// always stamped, in UTC.
    #[arg(long, value_name = "ZONE", num_args = 0..=1, require_equals = true, default_missing_value = "local", value_parser = ["local", "utc"])]
    pub(crate) time: Option<String>,

    /// With --log-file or --log-dir: rotate a file before it grows over
    /// SIZE (10M, 1G): app.log becomes app.log.1, and so on.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub(crate) log_max_size: Option<u64>,

    /// With --log-max-size: rotated files kept per log file [default: 5].
    #[arg(long, value_name = "N")]
    pub(crate) log_keep: Option<usize>,

    /// Print the systemd service unit that runs this same command at boot,
    /// and exit (`herd startup` writes it; `herd startup --print` prints).
    #[arg(long, alias = "print")]
    pub(crate) print_systemd_unit: bool,

    /// Write the systemd unit that runs this same command at boot into
    /// /etc/systemd/system (or --unit-dir), say how to enable it, and exit:
    /// `herd startup [systemd] start herd.toml` (PM2's `startup`).
    #[arg(long)]
    pub(crate) startup: bool,

    /// With --startup: where the units go.
    #[arg(long, value_name = "DIR", requires = "startup")]
    pub(crate) unit_dir: Option<std::path::PathBuf>,

    /// With --print-systemd-unit or --startup: also a .socket unit that
    /// opens the --listen addresses (ReusePort=yes), so the queue outlives
    /// restarts.
    #[arg(long)]
    pub(crate) socket_unit: bool,

    /// Serve no control API.
    #[arg(long, conflicts_with = "control")]
    pub(crate) no_control: bool,

    /// The master's own lines: text, or json (one object per line and
    /// event, for scripts and tests).
    #[arg(long, value_name = "FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub(crate) log_format: String,

    /// Time a new worker gets to become ready.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub(crate) start_timeout: Duration,

    /// When a new worker is not ready within --start-timeout: kill it and
    /// start another (kill), or take it as ready and serve with it (serve:
    /// PM2's listen_timeout, what an ecosystem file's wait_ready gets).
    #[arg(long, value_name = "ACTION", default_value = "kill", value_parser = ["kill", "serve"])]
    pub(crate) on_start_timeout: String,

    /// Require WATCHDOG=1 pings on the notify socket this often; a worker
    /// that misses one is killed and restarted.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) watchdog: Option<Duration>,

    /// Run the workers as this user (name or uid), with its groups, HOME and
    /// USER; the master (root) keeps the sockets it bound.
    #[arg(long, value_name = "USER")]
    pub(crate) user: Option<String>,

    /// Run the workers with this primary group (name or gid).
    #[arg(long, value_name = "GROUP")]
    pub(crate) group: Option<String>,

    /// On SIGTERM, stay up this long with /readyz answering 503 before the
    /// workers stop (time for a load balancer or Kubernetes endpoints to
    /// drop this host).
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = parse_duration)]
    pub(crate) pre_stop_delay: Duration,

    /// How often each worker's CPU and memory are read (0 turns it off).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub(crate) sample_interval: Duration,

    /// Replace a worker whose memory stays over SIZE (300M, 1G) for three
    /// samples, successor first: no request in flight is cut.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub(crate) max_memory: Option<u64>,

    /// With --balance http: replace a worker once it has been sent N
    /// requests, successor first (gunicorn's --max-requests).
    #[arg(long, value_name = "N")]
    pub(crate) max_requests: Option<u64>,

    /// How many slots a reload (SIGHUP) replaces at the same time.
    #[arg(long, value_name = "N", default_value_t = crate::DEFAULT_RELOAD_PARALLEL)]
    pub(crate) reload_parallel: usize,

    /// Do not inject herd's preload into Node workers.
    #[arg(long)]
    pub(crate) no_node_preload: bool,

    /// Reload (rolling, nothing lost) when a file under PATH changes
    /// (default: the workers' directory); repeat as --watch=PATH for more.
    #[arg(long, value_name = "PATH", num_args = 0..=1, require_equals = true, default_missing_value = ".", action = clap::ArgAction::Append)]
    pub(crate) watch: Vec<std::path::PathBuf>,

    /// With --watch: changes to paths that match GLOB are not a reason to
    /// reload (a name at any depth, or a path under the watched
    /// directory); node_modules, .git and *.log never are. Repeatable.
    #[arg(long, value_name = "GLOB")]
    pub(crate) ignore_watch: Vec<String>,

    /// With --watch: a burst of changes is one reload, once nothing has
    /// changed for this long.
    #[arg(long, value_name = "DURATION", default_value = "500ms", value_parser = parse_duration)]
    pub(crate) watch_delay: Duration,

    /// A rolling reload on a schedule, in local time: "0 3 * * *" is 03:00
    /// every day (PM2's cron_restart); six fields put seconds first.
    #[arg(long, value_name = "SCHEDULE", value_parser = parse_cron)]
    pub(crate) cron_reload: Option<String>,

    /// Working directory of the workers.
    #[arg(long, value_name = "DIR")]
    pub(crate) cwd: Option<std::path::PathBuf>,

    /// Extra environment variable for the workers (KEY=VALUE); repeat for
    /// more. A NAME without `=` picks the file's environment block of that
    /// name (`env.NAME` in herd.toml, `env_NAME` in an ecosystem file), as
    /// PM2's `--env production`.
    #[arg(short, long = "env", value_name = "KEY=VALUE|NAME", value_parser = parse_env)]
    pub(crate) env: Vec<EnvArg>,

    /// Environment variable to remove from the workers' environment; repeat
    /// for more.
    #[arg(short = 'u', long = "unset-env", value_name = "KEY")]
    pub(crate) unset_env: Vec<String>,

    /// The program to run, then its arguments.
    #[arg(value_name = "PROGRAM [ARGS]...")]
    pub(crate) command: Vec<String>,
}

/// One `--env`: a variable, or the name of an environment block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EnvArg {
    /// `KEY=VALUE`.
    Var(String, String),
    /// `production`: the file's block of that name.
    Named(String),
}

impl Cli {
    /// The variables given with `--env KEY=VALUE`.
    pub(crate) fn env_vars(&self) -> impl Iterator<Item = (&str, &str)> {
        self.env.iter().filter_map(|e| match e {
            EnvArg::Var(k, v) => Some((k.as_str(), v.as_str())),
            EnvArg::Named(_) => None,
        })
    }

    /// The environment named with `--env NAME`, if any (the last one).
    pub(crate) fn env_name(&self) -> Option<&str> {
        self.env.iter().rev().find_map(|e| match e {
            EnvArg::Named(n) => Some(n.as_str()),
            EnvArg::Var(..) => None,
        })
    }
}

/// The command line, with `herd [OPTIONS] run ...` and `herd [OPTIONS]
/// start FILE ...` read as `herd ...` and `herd --config FILE ...`.
pub(crate) fn args() -> Vec<std::ffi::OsString> {
    rewrite(std::env::args_os().collect())
}

/// `herd startup [OPTIONS] start FILE`: the rest after `--startup`
/// rewritten as a command line of its own.
fn rewrite_rest(args: Vec<std::ffi::OsString>, at: usize) -> Vec<std::ffi::OsString> {
    let (head, tail) = args.split_at(at + 1);
    let mut rest = vec![std::ffi::OsString::from("herd")];
    rest.extend(tail.iter().cloned());
    let mut out = head.to_vec();
    out.extend(rewrite(rest).into_iter().skip(1));
    out
}

/// [`args`] on a given command line.
pub(crate) fn rewrite(mut args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    use clap::CommandFactory;
    let command = Cli::command();
    // Whether option `word` (`--name`, `-w`) takes the next word as its value.
    let takes_value = |word: &str| {
        command.get_arguments().any(|a| {
            let named = match word.strip_prefix("--") {
                Some(long) => a.get_long() == Some(long),
                None => word.len() == 2 && a.get_short() == word.chars().nth(1),
            };
            named && a.get_action().takes_values()
        })
    };
    let mut i = 1;
    while i < args.len() {
        let Some(word) = args[i].to_str().map(str::to_owned) else {
            return args;
        };
        if word == "--" || !word.starts_with('-') {
            // The first word that is not an option.
            match word.as_str() {
                "run" => {
                    args.remove(i);
                }
                "start" => args[i] = "--config".into(),
                "startup" => {
                    args[i] = "--startup".into();
                    if args.get(i + 1).is_some_and(|w| w == "systemd") {
                        args.remove(i + 1);
                    }
                    // What follows is a command line of its own.
                    return rewrite_rest(args, i);
                }
                _ => {}
            }
            return args;
        }
        i += if !word.contains('=') && takes_value(&word) {
            2
        } else {
            1
        };
    }
    args
}

pub(crate) fn parse_listen(s: &str) -> Result<Vec<SocketAddr>, String> {
    crate::net::parse_listen_addr(s).map_err(|e| e.to_string())
}

pub(crate) fn parse_cron(s: &str) -> Result<String, String> {
    super::cron::parse(s).map(|_| s.to_owned())
}

pub(crate) fn parse_cidr(s: &str) -> Result<crate::Cidr, String> {
    s.parse().map_err(|e: crate::Error| e.to_string())
}

/// The mode, and whether the text named a strategy (`proxy:least-conn`).
pub(crate) fn parse_balance(s: &str) -> Result<(Balance, bool), String> {
    let balance = s.parse().map_err(|e: crate::Error| e.to_string())?;
    Ok((balance, s.contains(':')))
}

pub(crate) fn parse_ready(s: &str) -> Result<Readiness, String> {
    s.parse().map_err(|e: crate::Error| e.to_string())
}

pub(crate) fn parse_kill_mode(s: &str) -> Result<KillMode, String> {
    s.parse().map_err(|e: crate::Error| e.to_string())
}

pub(crate) fn parse_strategy(s: &str) -> Result<crate::balance::Strategy, String> {
    s.parse().map_err(|e: crate::Error| e.to_string())
}

pub(crate) fn parse_proxy_protocol(s: &str) -> Result<crate::proxy::ProxyProtocol, String> {
    s.parse().map_err(|e: crate::Error| e.to_string())
}

pub(crate) fn parse_restart(s: &str) -> Result<RestartPolicy, String> {
    s.parse().map_err(|e: crate::Error| e.to_string())
}

pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::parse_duration(s).map_err(|e| e.to_string())
}

pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    crate::parse_size(s).map_err(|e| e.to_string())
}

pub(crate) fn parse_signal(s: &str) -> Result<Signal, String> {
    s.parse().map_err(|e: crate::Error| e.to_string())
}

pub(crate) fn parse_env(s: &str) -> Result<EnvArg, String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok(EnvArg::Var(k.to_owned(), v.to_owned())),
        None if !s.is_empty() && !s.contains(char::is_whitespace) => {
            Ok(EnvArg::Named(s.to_owned()))
        }
        _ => Err(format!(
            "`{s}` is neither KEY=VALUE nor an environment's name"
        )),
    }
}

pub(crate) fn default_listen() -> Result<Vec<SocketAddr>, String> {
    let port = std::env::var("PORT").unwrap_or_else(|_| "3000".into());
    crate::net::parse_listen_addr(&format!("0.0.0.0:{port}")).map_err(|e| format!("$PORT: {e}"))
}

/// The cluster's name: `--name`, else the program's file name (None
/// without a program). It names the control socket and the systemd units.
pub(crate) fn cluster_name(cli: &Cli) -> Option<String> {
    if let Some(name) = &cli.name {
        return Some(name.clone());
    }
    let program = std::path::Path::new(cli.command.first()?);
    Some(
        program
            .file_name()
            .map_or_else(|| "herd".into(), |n| n.to_string_lossy().into_owned()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<String> {
        rewrite(line.split(' ').map(Into::into).collect())
            .into_iter()
            .map(|w| w.into_string().unwrap())
            .collect()
    }

    #[test]
    fn run_and_start_are_found_after_options() {
        assert_eq!(
            words("herd start app.toml"),
            ["herd", "--config", "app.toml"]
        );
        assert_eq!(
            words("herd --log-format json -w 2 start e.js --env production"),
            [
                "herd",
                "--log-format",
                "json",
                "-w",
                "2",
                "--config",
                "e.js",
                "--env",
                "production"
            ]
        );
        assert_eq!(
            words("herd --name=x run node a.js"),
            ["herd", "--name=x", "node", "a.js"]
        );
        // A program's own `start` is left alone.
        assert_eq!(words("herd npm start"), ["herd", "npm", "start"]);
        assert_eq!(
            words("herd --no-control start x"),
            ["herd", "--no-control", "--config", "x"]
        );
        assert_eq!(
            words("herd startup systemd start herd.toml"),
            ["herd", "--startup", "--config", "herd.toml"]
        );
        assert_eq!(
            words("herd startup -w 2 node a.js"),
            ["herd", "--startup", "-w", "2", "node", "a.js"]
        );
    }
}
