//! `cluster`: run N copies of a program behind one address.
//!
//! ```text
//! cargo run --release --example cluster -- -w 4 -l 0.0.0.0:3000 node examples/node/server.js
//! ```
//!
//! Everything from the first non-option on is the program and its arguments.
//! SIGHUP reloads (rolling, successor first); SIGTERM/SIGINT stop.
//! Exit status: 0 after a clean stop, 1 when the cluster cannot start or every
//! slot failed, 2 for bad usage.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use herd::{Backoff, Balance, Cluster, CrashLoop, KillMode, Readiness, RestartPolicy, Signal};

/// Run N copies of a program behind one listening address, keep them alive,
/// and stop them gracefully.
#[derive(Debug, Parser)]
#[command(name = "cluster", version, trailing_var_arg = true)]
struct Cli {
    /// Number of worker processes [default: the number of CPUs].
    #[arg(short, long, value_name = "N")]
    workers: Option<usize>,

    /// Address to listen on; repeat for more. PORT, :PORT, HOST:PORT or
    /// [IPV6]:PORT [default: 0.0.0.0:$PORT, else 0.0.0.0:3000].
    #[arg(short, long = "listen", value_name = "ADDR", value_parser = parse_listen)]
    listen: Vec<Vec<SocketAddr>>,

    /// How workers share the address: reuseport (a socket per worker slot),
    /// shared (one socket for all), proxy (the master forwards connections)
    /// or http (the master keeps the clients' connections and forwards each
    /// request: reloads are invisible whatever the app does)
    /// [default: reuseport; shared for sockets systemd passed without
    /// ReusePort=yes].
    #[arg(long, value_name = "MODE", value_parser = parse_balance)]
    balance: Option<(Balance, bool)>,

    /// With --balance proxy or http: round-robin, least-conn, p2c or ip-hash.
    #[arg(long, value_name = "STRATEGY", value_parser = parse_strategy)]
    strategy: Option<herd::balance::Strategy>,

    /// With --balance proxy or http, for programs that can only bind a
    /// port themselves (Go, Java, puma, uvicorn --port $PORT): set PORT to a
    /// free loopback port per worker and probe it for readiness. With http,
    /// such servers reload without a failed request.
    #[arg(long)]
    proxy_port: bool,

    /// With --balance proxy: forward with splice(2) (pays off for large
    /// responses).
    #[arg(long)]
    proxy_splice: bool,

    /// With --balance proxy: send a PROXY protocol header (v1 or v2) to
    /// workers, so that apps see the client's address.
    #[arg(long, value_name = "VERSION", value_parser = parse_proxy_protocol)]
    proxy_protocol: Option<herd::proxy::ProxyProtocol>,

    /// With --balance http: `cookie` pins each client to a worker slot with
    /// a cookie (herd_slot) that the slot's next worker honours after a
    /// reload.
    #[arg(long, value_name = "KIND", value_parser = ["cookie"])]
    sticky: Option<String>,

    /// With --balance http: how long a client may take to send a request
    /// head (slowloris), and an idle keep-alive client is kept [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    header_timeout: Option<Duration>,

    /// With --balance http: how long a worker may take to send a response
    /// head before the client gets 504 [default: 60s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    response_timeout: Option<Duration>,

    /// With --balance http: keep the X-Forwarded-* headers that peers in
    /// this range send (a load balancer in front); repeatable.
    #[arg(long, value_name = "CIDR", value_parser = parse_cidr)]
    trust_proxy: Vec<herd::Cidr>,

    /// With --balance proxy or http: the most client connections at once; more
    /// wait in the listen queue [default: what the fd limit leaves].
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,

    /// With --balance proxy: close a client connection on which nothing
    /// moved either way for this long (0 never). With --balance http: a
    /// request or response body in which nothing moves for this long (and
    /// a WebSocket tunnel).
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    proxy_idle_timeout: Duration,

    /// Listen backlog [default: the kernel's somaxconn].
    #[arg(long, value_name = "N")]
    backlog: Option<u32>,

    /// Time a stopping worker gets to finish its requests before its process
    /// group is killed.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    drain_timeout: Duration,

    /// Signal that asks a worker to stop (SIGTERM, TERM, INT, 15, ...).
    #[arg(long, value_name = "SIGNAL", default_value = "SIGTERM", value_parser = parse_signal)]
    stop_signal: Signal,

    /// Which exits are restarted: always, on-failure or never.
    #[arg(long, value_name = "POLICY", default_value = "always", value_parser = parse_restart)]
    restart: RestartPolicy,

    /// Delay before the first restart; doubles after each quick exit.
    #[arg(long, value_name = "DURATION", default_value = "100ms", value_parser = parse_duration)]
    restart_delay: Duration,

    /// Cap on the restart delay.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    restart_delay_max: Duration,

    /// A slot with this many exits within --crash-window is marked failed
    /// (0: never give up).
    #[arg(long, value_name = "N", default_value_t = herd::DEFAULT_CRASH_LIMIT)]
    crash_limit: u32,

    /// The window --crash-limit counts exits in.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    crash_window: Duration,

    /// Uptime after which a worker counts as healthy and the restart delay
    /// starts over.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    min_uptime: Duration,

    /// How the master learns a new worker serves: auto (listen for Node
    /// with the preload, else none), none, notify (sd_notify READY=1), ipc
    /// (process.send('ready')), listen (the preload: the app listens),
    /// probe (the port answers; with --proxy-port) or delay:<duration>.
    #[arg(long, value_name = "MODE", default_value = "auto", value_parser = parse_ready)]
    ready: Readiness,

    /// PM2's wait_ready: a new Node worker is ready when the app calls
    /// process.send('ready'), not when it listens (--ready ipc).
    #[arg(long)]
    wait_ready: bool,

    /// Which processes of a worker get the stop signal: mixed (its main
    /// process; the rest of its group is killed once that has exited) or
    /// group (the whole process group at once).
    #[arg(long, value_name = "MODE", default_value = "mixed", value_parser = parse_kill_mode)]
    kill_mode: KillMode,

    /// A reload's successor that cannot report readiness (--ready none)
    /// must stay up this long before it replaces its predecessor; one that
    /// exits sooner aborts the reload (0 turns it off).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    settle: Duration,

    /// A name for this cluster, in every line the master writes
    /// (`herd[NAME]: ...`, `[NAME slot 0 pid 12] ...`, `"cluster":"NAME"`).
    #[arg(long, value_name = "NAME")]
    name: Option<String>,

    /// Where the control API (`herdctl`) is served: a Unix socket, 0600 in
    /// a 0700 directory. Default: `$XDG_RUNTIME_DIR/herd/NAME.sock` or
    /// `/tmp/herd-UID/NAME.sock`, NAME being `--name` or the program's
    /// file name.
    #[arg(long, value_name = "PATH")]
    control: Option<std::path::PathBuf>,

    /// Serve Prometheus metrics on ADDR (GET /metrics), with /healthz (the
    /// master runs) and /readyz (every slot that has not failed has a ready
    /// worker; 503 while stopping) for load balancers and Kubernetes.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,

    /// Write the master's lines and every worker line, with timestamps, to
    /// FILE instead of the terminal; reopened on SIGUSR1 (logrotate).
    #[arg(long, value_name = "FILE")]
    log_file: Option<std::path::PathBuf>,

    /// Write one file per slot (slot-N.log) and master.log in DIR instead
    /// of the terminal; reopened on SIGUSR1.
    #[arg(long, value_name = "DIR")]
    log_dir: Option<std::path::PathBuf>,

    /// Print a systemd service unit (Type=notify-reload) that runs this
    /// same command, and exit.
    #[arg(long)]
    print_systemd_unit: bool,

    /// With --print-systemd-unit: also print a .socket unit that opens the
    /// --listen addresses (ReusePort=yes), so the queue outlives restarts.
    #[arg(long, requires = "print_systemd_unit")]
    socket_unit: bool,

    /// Serve no control API.
    #[arg(long, conflicts_with = "control")]
    no_control: bool,

    /// The master's own lines: text, or json (one object per line and
    /// event, for scripts and tests).
    #[arg(long, value_name = "FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,

    /// Time a new worker gets to become ready.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    start_timeout: Duration,

    /// Require WATCHDOG=1 pings on the notify socket this often; a worker
    /// that misses one is killed and restarted.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    watchdog: Option<Duration>,

    /// Run the workers as this user (name or uid), with its groups, HOME and
    /// USER; the master (root) keeps the sockets it bound.
    #[arg(long, value_name = "USER")]
    user: Option<String>,

    /// Run the workers with this primary group (name or gid).
    #[arg(long, value_name = "GROUP")]
    group: Option<String>,

    /// On SIGTERM, stay up this long with /readyz answering 503 before the
    /// workers stop (time for a load balancer or Kubernetes endpoints to
    /// drop this host).
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = parse_duration)]
    pre_stop_delay: Duration,

    /// How often each worker's CPU and memory are read (0 turns it off).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    sample_interval: Duration,

    /// Replace a worker whose memory stays over SIZE (300M, 1G) for three
    /// samples, successor first: no request in flight is cut.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_memory: Option<u64>,

    /// With --balance http: replace a worker once it has been sent N
    /// requests, successor first (gunicorn's --max-requests).
    #[arg(long, value_name = "N")]
    max_requests: Option<u64>,

    /// How many slots a reload (SIGHUP) replaces at the same time.
    #[arg(long, value_name = "N", default_value_t = herd::DEFAULT_RELOAD_PARALLEL)]
    reload_parallel: usize,

    /// Do not inject herd's preload into Node workers.
    #[arg(long)]
    no_node_preload: bool,

    /// Working directory of the workers.
    #[arg(long, value_name = "DIR")]
    cwd: Option<std::path::PathBuf>,

    /// Extra environment variable for the workers; repeat for more.
    #[arg(short, long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    env: Vec<(String, String)>,

    /// Environment variable to remove from the workers' environment; repeat
    /// for more.
    #[arg(short = 'u', long = "unset-env", value_name = "KEY")]
    unset_env: Vec<String>,

    /// The program to run, then its arguments.
    #[arg(required = true, value_name = "PROGRAM [ARGS]...")]
    command: Vec<String>,
}

fn parse_listen(s: &str) -> Result<Vec<SocketAddr>, String> {
    herd::net::parse_listen_addr(s).map_err(|e| e.to_string())
}

/// The mode, and whether the text named a strategy (`proxy:least-conn`).
fn parse_cidr(s: &str) -> Result<herd::Cidr, String> {
    s.parse().map_err(|e: herd::Error| e.to_string())
}

fn parse_balance(s: &str) -> Result<(Balance, bool), String> {
    let balance = s.parse().map_err(|e: herd::Error| e.to_string())?;
    Ok((balance, s.contains(':')))
}

fn parse_ready(s: &str) -> Result<Readiness, String> {
    s.parse().map_err(|e: herd::Error| e.to_string())
}

fn parse_kill_mode(s: &str) -> Result<KillMode, String> {
    s.parse().map_err(|e: herd::Error| e.to_string())
}

fn parse_strategy(s: &str) -> Result<herd::balance::Strategy, String> {
    s.parse().map_err(|e: herd::Error| e.to_string())
}

fn parse_proxy_protocol(s: &str) -> Result<herd::proxy::ProxyProtocol, String> {
    s.parse().map_err(|e: herd::Error| e.to_string())
}

fn parse_restart(s: &str) -> Result<RestartPolicy, String> {
    s.parse().map_err(|e: herd::Error| e.to_string())
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    herd::parse_duration(s).map_err(|e| e.to_string())
}

/// `--metrics`: the facade's values for Prometheus, and the probes.
async fn serve_metrics(
    addr: SocketAddr,
    handle: herd::Handle,
    sample: Duration,
) -> Result<tokio::task::JoinHandle<()>, Box<dyn std::error::Error>> {
    use http_body_util::Full;
    use hyper::body::Bytes;
    use metrics_util::MetricKindMask;
    // A removed slot's gauges are set no more: gone after a few samples.
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .idle_timeout(
            MetricKindMask::GAUGE,
            Some((sample * 5).max(Duration::from_millis(500))),
        )
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full("herd_reload_duration_seconds".into()),
            &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0],
        )?
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full("herd_http_response_seconds".into()),
            &[
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
            ],
        )?
        .install_recorder()?;
    // After an upgrade in place, the listener the previous master served:
    // probes queued on it during the exec are answered, not refused.
    let key = format!("metrics:{addr}");
    let listener = match handle.take_carried(&key) {
        Some(fd) => {
            let listener = std::net::TcpListener::from(fd);
            listener.set_nonblocking(true)?;
            tokio::net::TcpListener::from_std(listener)?
        }
        None => tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| Usage(format!("--metrics {addr}: {e}")))?,
    };
    handle.carry(&key, &listener)?;
    Ok(tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let handle = handle.clone();
            let prometheus = prometheus.clone();
            let service =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (status, body) = match req.uri().path() {
                        "/metrics" => {
                            prometheus.run_upkeep();
                            (200, prometheus.render())
                        }
                        "/healthz" => (200, "ok\n".to_owned()),
                        "/readyz" => {
                            let workers = handle.workers();
                            let ready = handle.phase() == herd::Phase::Running
                                && workers.iter().any(|w| w.state == herd::WorkerState::Ready)
                                && workers.iter().all(|w| {
                                    matches!(
                                        w.state,
                                        herd::WorkerState::Ready | herd::WorkerState::Failed
                                    )
                                });
                            if ready {
                                (200, "ready\n".to_owned())
                            } else {
                                (503, "not ready\n".to_owned())
                            }
                        }
                        _ => (404, "GET /metrics, /healthz or /readyz\n".to_owned()),
                    };
                    let response = hyper::Response::builder()
                        .status(status)
                        .header(hyper::header::CONTENT_TYPE, "text/plain; version=0.0.4")
                        .body(Full::new(Bytes::from(body)));
                    async move { response }
                });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    }))
}

/// The cluster's name: `--name`, else the program's file name (None
/// without a program). It names the control socket and the systemd units.
fn cluster_name(cli: &Cli) -> Option<String> {
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

/// `--print-systemd-unit`: the service (and with `--socket-unit` the
/// socket) unit that runs the command line this was called with.
fn systemd_units(cli: &Cli) -> Result<String, String> {
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
    let name = cluster_name(cli).ok_or("no program given")?;
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
         Type=notify-reload\n\
         NotifyAccess=main\n\
         ReloadSignal=SIGHUP\n\
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

fn parse_size(s: &str) -> Result<u64, String> {
    herd::parse_size(s).map_err(|e| e.to_string())
}

fn parse_signal(s: &str) -> Result<Signal, String> {
    s.parse().map_err(|e: herd::Error| e.to_string())
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("`{s}` is not KEY=VALUE")),
    }
}

fn default_listen() -> Result<Vec<SocketAddr>, String> {
    let port = std::env::var("PORT").unwrap_or_else(|_| "3000".into());
    herd::net::parse_listen_addr(&format!("0.0.0.0:{port}")).map_err(|e| format!("$PORT: {e}"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.print_systemd_unit {
        return match systemd_units(&cli) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("herd: error: {e}");
                ExitCode::from(2)
            }
        };
    }
    // One thread is plenty for a master that only forks, reaps and forwards
    // output, and keeps its footprint small. In proxy mode the master is in
    // the data path: a thread per CPU.
    let runtime = if cli.balance.is_some_and(|(b, _)| b.is_proxy()) {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("herd: error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herd: error: {}", chain(e.as_ref()));
            if is_usage(e.as_ref()) {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// A bad combination of options, found after parsing: exit status 2, like
/// the errors clap finds.
#[derive(Debug)]
struct Usage(String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// Whether an error is about the command line (exit 2) rather than the
/// cluster (exit 1).
fn is_usage(e: &(dyn std::error::Error + 'static)) -> bool {
    if e.is::<Usage>() {
        return true;
    }
    matches!(
        e.downcast_ref::<herd::Error>(),
        Some(
            herd::Error::InvalidSetting { .. }
                | herd::Error::Parse { .. }
                | herd::Error::ZeroWorkers
                | herd::Error::NoProgram
        )
    )
}

fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

/// Sockets the master was started with (systemd socket activation,
/// `systemd-socket-activate`), with their addresses.
fn activated_sockets() -> Result<Vec<(std::os::fd::OwnedFd, SocketAddr)>, Box<dyn std::error::Error>>
{
    if std::env::var_os("LISTEN_FDS").is_none() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for fd in herd::worker::listen_fds()? {
        let addr = socket2::SockRef::from(&fd)
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .ok_or_else(|| Usage("a socket from LISTEN_FDS is not a TCP socket".into()))?;
        out.push((fd, addr));
    }
    Ok(out)
}

async fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    let control_name = cluster_name(&cli).unwrap_or_else(|| "herd".into());
    let explicit: Vec<SocketAddr> = cli.listen.into_iter().flatten().collect();
    let mut activated = activated_sockets()?;
    // With --listen, an activated socket serves the address it is bound to
    // and the other addresses are bound here; without, every activated
    // socket serves and nothing else.
    if !explicit.is_empty() && !activated.is_empty() {
        activated.retain(|(_, addr)| explicit.contains(addr));
    }
    let listen: Vec<SocketAddr> = if !explicit.is_empty() {
        explicit
            .into_iter()
            .filter(|a| !activated.iter().any(|(_, b)| a == b))
            .collect()
    } else if activated.is_empty() {
        default_listen()?
    } else {
        Vec::new()
    };
    let balance_given = cli.balance.is_some();
    let balance = match (
        cli.balance.unwrap_or((Balance::ReusePort, false)),
        cli.strategy,
    ) {
        ((b, true), Some(strategy)) if b.strategy().is_some_and(|named| named != strategy) => {
            return Err(Usage(format!(
                "--balance {b} and --strategy {strategy} name two strategies; give one"
            ))
            .into())
        }
        ((Balance::Proxy { .. }, _), Some(strategy)) => Balance::Proxy { strategy },
        ((Balance::Http { .. }, _), Some(strategy)) => Balance::Http { strategy },
        ((other, _), Some(_)) => {
            return Err(Usage(format!(
                "--strategy needs --balance proxy or http, not --balance {other}"
            ))
            .into())
        }
        ((other, _), None) => other,
    };
    // systemd opens sockets without SO_REUSEPORT unless its unit says
    // ReusePort=yes: a socket per slot cannot join them.
    let lacks_reuseport = activated
        .iter()
        .any(|(fd, _)| !socket2::SockRef::from(fd).reuse_port().unwrap_or(false));
    let balance = if !balance_given && balance == Balance::ReusePort && lacks_reuseport {
        let why = "the sockets passed by LISTEN_FDS lack SO_REUSEPORT (ReusePort=yes): serving them shared";
        if cli.log_format == "json" {
            eprintln!("{{\"event\":\"notice\",\"slot\":null,\"notice\":\"activated_shared\",\"message\":\"{why}\"}}");
        } else {
            eprintln!("herd: {why}");
        }
        Balance::Shared
    } else {
        balance
    };
    let ready = match (cli.wait_ready, cli.ready) {
        (false, r) => r,
        (true, Readiness::Auto | Readiness::Ipc) => Readiness::Ipc,
        (true, other) => {
            return Err(Usage(format!(
                "--wait-ready waits for process.send('ready') and cannot go with --ready {other}"
            ))
            .into())
        }
    };
    let json = cli.log_format == "json";
    let (program, args) = cli
        .command
        .split_first()
        .ok_or_else(|| Usage("no program given".into()))?;
    let mut builder = Cluster::builder()
        .command(program)
        .args(args)
        .balance(balance)
        .drain_timeout(cli.drain_timeout)
        .stop_signal(cli.stop_signal)
        .restart_policy(cli.restart)
        .backoff(Backoff {
            initial: cli.restart_delay,
            max: cli.restart_delay_max,
            ..Backoff::default()
        })
        .crash_loop(CrashLoop {
            limit: cli.crash_limit,
            window: cli.crash_window,
        })
        .min_uptime(cli.min_uptime)
        .readiness(ready)
        .kill_mode(cli.kill_mode)
        .settle(cli.settle)
        .log_events(!json)
        .start_timeout(cli.start_timeout)
        .reload_parallel(cli.reload_parallel)
        .node_preload(!cli.no_node_preload);
    if let Some(name) = &cli.name {
        builder = builder.name(name);
    }
    if let Some(user) = &cli.user {
        builder = builder.user(user);
    }
    if let Some(group) = &cli.group {
        builder = builder.group(group);
    }
    builder = builder
        .sample_interval(cli.sample_interval)
        .pre_stop_delay(cli.pre_stop_delay);
    let to_files = cli.log_file.is_some() || cli.log_dir.is_some();
    if to_files {
        // The files take the place of the terminal, as with PM2.
        builder = builder.forward_output(false).log_events(false);
    }
    if let Some(bytes) = cli.max_memory {
        builder = builder.max_memory(bytes);
    }
    if let Some(n) = cli.max_requests {
        builder = builder.max_requests(n);
    }
    if let Some(w) = cli.watchdog {
        builder = builder.watchdog(w);
    }
    if let Some(v) = cli.proxy_protocol {
        builder = builder.proxy_protocol(v);
    }
    if cli.proxy_port {
        builder = builder.port_contract(true);
    }
    if cli.proxy_splice {
        builder = builder.proxy_splice(true);
    }
    if let Some(n) = cli.workers {
        builder = builder.workers(n);
    }
    if let Some(n) = cli.max_connections {
        builder = builder.max_connections(n);
    }
    if cli.sticky.is_some() {
        builder = builder.sticky_cookie(true);
    }
    if let Some(d) = cli.header_timeout {
        builder = builder.header_timeout(d);
    }
    if let Some(d) = cli.response_timeout {
        builder = builder.response_timeout(d);
    }
    for range in &cli.trust_proxy {
        builder = builder.trust_proxy(*range);
    }
    if balance.is_proxy() {
        builder = builder.proxy_idle_timeout(cli.proxy_idle_timeout);
    }
    if let Some(b) = cli.backlog {
        builder = builder.backlog(b);
    }
    if let Some(dir) = &cli.cwd {
        builder = builder.current_dir(dir);
    }
    for k in &cli.unset_env {
        builder = builder.env_remove(k);
    }
    for (k, v) in &cli.env {
        builder = builder.env(k, v);
    }
    for (fd, _) in activated {
        builder = builder.listener(fd);
    }
    for addr in &listen {
        builder = builder.listen(*addr);
    }
    let cluster = builder.build()?;
    let log_files = if to_files {
        let files = herd::logfile::LogFiles::start(
            &cluster.handle(),
            herd::logfile::Targets {
                file: cli.log_file.clone(),
                dir: cli.log_dir.clone(),
            },
        )?;
        let files = std::sync::Arc::new(files);
        let reopen = files.clone();
        let mut usr1 =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())?;
        tokio::spawn(async move {
            while usr1.recv().await.is_some() {
                reopen.reopen();
            }
        });
        Some(files)
    } else {
        None
    };
    // Serves until the process exits.
    let _metrics_task = match cli.metrics {
        Some(addr) => Some(serve_metrics(addr, cluster.handle(), cli.sample_interval).await?),
        None => None,
    };
    let control = if cli.no_control {
        None
    } else {
        let path = cli
            .control
            .clone()
            .unwrap_or_else(|| herd::control::default_path(&control_name));
        match herd::control::serve(cluster.handle(), &path).await {
            Ok(server) => Some(server),
            // Another master owns that name: a usage error, before anything
            // starts.
            Err(e @ herd::Error::ControlInUse { .. }) => return Err(Usage(e.to_string()).into()),
            Err(e) => return Err(e.into()),
        }
    };
    // Every JSON line names the cluster when it has a name.
    let open = match &cli.name {
        Some(name) => format!("{{\"cluster\":\"{name}\","),
        None => "{".to_owned(),
    };
    let tag = match &cli.name {
        Some(name) => format!("herd[{name}]"),
        None => "herd".to_owned(),
    };
    for addr in cluster.local_addrs() {
        if json {
            eprintln!(
                "{open}\"event\":\"listening\",\"addr\":\"{addr}\",\"balance\":\"{balance}\",\"workers\":{}}}",
                cluster.worker_count()
            );
        } else {
            eprintln!(
                "{tag}: listening on {addr} ({}, {} worker{})",
                balance,
                cluster.worker_count(),
                if cluster.worker_count() == 1 { "" } else { "s" }
            );
        }
    }
    if !json {
        let result = cluster.run().await;
        if let Some(files) = &log_files {
            files.finish().await;
        }
        if let Some(control) = &control {
            control.finish().await;
        }
        result?;
        return Ok(());
    }
    // Every event as a JSON line, in order, the last ones included.
    let mut events = cluster.handle().events();
    let printer = tokio::spawn(async move {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            match events.recv().await {
                Ok(e) => {
                    eprintln!("{open}{}", &e.to_json()[1..]);
                    if matches!(e, herd::Event::Stopped) {
                        return;
                    }
                }
                Err(RecvError::Lagged(n)) => {
                    eprintln!("{open}\"event\":\"lagged\",\"missed\":{n}}}")
                }
                Err(RecvError::Closed) => return,
            }
        }
    });
    let result = cluster.run().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), printer).await;
    if let Some(files) = &log_files {
        files.finish().await;
    }
    if let Some(control) = &control {
        control.finish().await;
    }
    result?;
    Ok(())
}
