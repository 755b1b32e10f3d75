//! Building the cluster from the command line and running it: sockets
//! from systemd, the control socket, the metrics endpoint, log files.

use std::net::SocketAddr;

use std::time::Duration;

use crate::{Backoff, Balance, Cluster, CrashLoop, Readiness};

use super::args::{cluster_name, default_listen, Cli};
use super::detect::{self, Kind};
use super::metrics::serve_metrics;
use super::Usage;

/// Sockets the master was started with (systemd socket activation,
/// `systemd-socket-activate`), with their addresses.
pub(crate) fn activated_sockets(
) -> Result<Vec<(std::os::fd::OwnedFd, SocketAddr)>, Box<dyn std::error::Error>> {
    if std::env::var_os("LISTEN_FDS").is_none() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for fd in crate::worker::listen_fds()? {
        let addr = socket2::SockRef::from(&fd)
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .ok_or_else(|| Usage("a socket from LISTEN_FDS is not a TCP socket".into()))?;
        out.push((fd, addr));
    }
    Ok(out)
}

/// Runs the one app of the command line: the process is this cluster (it
/// takes the master's signals and may upgrade in place).
pub(crate) async fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    let cluster = build(&cli, true)?;
    if crate::upgrade_preflight() {
        // A new binary's pre-flight: run() confirms that it would take
        // over and starts nothing; the running master keeps its control
        // socket, metrics endpoint and log files.
        return Ok(cluster.run().await?);
    }
    let extras = Extras::start(&cli, &cluster).await?;
    let control_name = cluster_name(&cli).unwrap_or_else(|| "herd".into());
    let control = if cli.no_control {
        None
    } else {
        let path = cli
            .control
            .clone()
            .unwrap_or_else(|| crate::control::default_path(&control_name));
        match crate::control::serve(cluster.handle(), &path).await {
            Ok(server) => Some(server),
            // Another master owns that name: a usage error, before anything
            // starts.
            Err(e @ crate::Error::ControlInUse { .. }) => return Err(Usage(e.to_string()).into()),
            Err(e) => return Err(e.into()),
        }
    };
    if let Some(server) = &control {
        let name = cluster.handle().name().unwrap_or_default().to_owned();
        server.apps().set_info(&name, describe_info(&cli, None));
    }
    let result = serve(&cli, cluster, extras).await;
    if let Some(control) = &control {
        control.finish().await;
    }
    result
}

/// What `herdctl describe` says of how this app runs: the command, its
/// directory and the options in effect (the names of its variables, not
/// their values, which may be secrets).
pub(crate) fn describe_info(cli: &Cli, file: Option<&std::path::Path>) -> serde_json::Value {
    let d = |d: Duration| crate::types::Millis(d).to_string();
    let mut env: Vec<&str> = cli.env_vars().map(|(k, _)| k).collect();
    env.sort_unstable();
    env.dedup();
    serde_json::json!({
        "command": cli.command,
        "cwd": cli.cwd.clone().or_else(|| std::env::current_dir().ok()),
        "config_file": file,
        "env": env,
        "options": {
            "workers": cli.workers,
            "readiness": cli.ready.to_string(),
            "wait_ready": cli.wait_ready,
            "start_timeout": d(cli.start_timeout),
            "on_start_timeout": cli.on_start_timeout,
            "drain_timeout": d(cli.drain_timeout),
            "stop_signal": cli.stop_signal.to_string(),
            "kill_mode": cli.kill_mode.to_string(),
            "restart": cli.restart.to_string(),
            "restart_delay": d(cli.restart_delay),
            "restart_delay_max": d(cli.restart_delay_max),
            "crash_limit": cli.crash_limit,
            "crash_window": d(cli.crash_window),
            "min_uptime": d(cli.min_uptime),
            "max_memory": cli.max_memory,
            "max_requests": cli.max_requests,
            "reload_parallel": cli.reload_parallel,
            "user": cli.user,
            "group": cli.group,
        },
        "log_file": cli.log_file,
        "log_dir": cli.log_dir,
        "metrics": cli.metrics.map(|a| a.to_string()),
        "watch": cli.watch,
        "ignore_watch": cli.ignore_watch,
        "cron_reload": cli.cron_reload,
    })
}

/// What runs beside a cluster: its log files and metrics endpoint.
pub(crate) struct Extras {
    log_files: Option<std::sync::Arc<crate::logfile::LogFiles>>,
    _watch: Option<super::watch::Watch>,
    _tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Extras {
    fn drop(&mut self) {
        for t in &self._tasks {
            t.abort();
        }
    }
}

impl Extras {
    /// Opens the log files (reopened on SIGUSR1) and serves the metrics.
    pub(crate) async fn start(
        cli: &Cli,
        cluster: &Cluster,
    ) -> Result<Extras, Box<dyn std::error::Error>> {
        let mut tasks = Vec::new();
        let log_files = if cli.log_file.is_some() || cli.log_dir.is_some() {
            let files = crate::logfile::LogFiles::start(
                &cluster.handle(),
                crate::logfile::Targets {
                    file: cli.log_file.clone(),
                    dir: cli.log_dir.clone(),
                    max_size: cli.log_max_size,
                    keep: cli.log_keep,
                },
            )?;
            let files = std::sync::Arc::new(files);
            let reopen = files.clone();
            let mut usr1 =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())?;
            tasks.push(tokio::spawn(async move {
                while usr1.recv().await.is_some() {
                    reopen.reopen();
                }
            }));
            Some(files)
        } else {
            None
        };
        if let Some(addr) = cli.metrics {
            tasks.push(serve_metrics(addr, cluster.handle(), cli.sample_interval).await?);
        }
        let json = cli.log_format == "json";
        let name = cli.name.clone();
        let watch = super::watch::start(cli, cluster.handle(), move |changed: &[String]| {
            let line = serde_json::json!({ "event": "watch_changed", "changed": changed });
            super::event_line(name.as_deref(), json, line, |tag| {
                let shown: Vec<&str> = changed.iter().take(3).map(String::as_str).collect();
                let more = match changed.len().saturating_sub(3) {
                    0 => String::new(),
                    n => format!(" and {n} more"),
                };
                format!("{tag}: changed: {}{more}; reloading", shown.join(", "))
            });
        })?;
        if let Some(schedule) = &cli.cron_reload {
            let cron = super::cron::parse(schedule)?;
            let json = cli.log_format == "json";
            let name = cli.name.clone();
            let say = move |reloading: bool, next: Option<String>| {
                let next = next.unwrap_or_else(|| "never".into());
                let line = serde_json::json!({
                    "event": if reloading { "cron_reload" } else { "cron_scheduled" },
                    "next": next,
                });
                super::event_line(name.as_deref(), json, line, |tag| {
                    let what = if reloading { "scheduled reload; " } else { "" };
                    format!("{tag}: {what}next scheduled reload at {next}")
                });
            };
            say(false, super::cron::next(&cron));
            tasks.push(super::cron::start(cron, cluster.handle(), move |next| {
                say(true, next)
            }));
        }
        Ok(Extras {
            log_files,
            _watch: watch,
            _tasks: tasks,
        })
    }
}

/// Builds one app's cluster from its options. `whole`: the process is this
/// one cluster (systemd's sockets, the master's signals, upgrades in
/// place); an app of a file is not.
pub(crate) fn build(cli: &Cli, whole: bool) -> Result<Cluster, Box<dyn std::error::Error>> {
    let explicit: Vec<SocketAddr> = cli.listen.iter().flatten().copied().collect();
    let mut activated = if whole {
        activated_sockets()?
    } else {
        Vec::new()
    };
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
            super::say!("herd: {why}");
        }
        Balance::Shared
    } else {
        balance
    };
    // No mode given: chosen by what the program is (detect.rs).
    let mut port_contract = cli.proxy_port;
    let balance = if !balance_given && cli.proxy_port {
        // --proxy-port alone: the mode it is made for.
        Balance::Http {
            strategy: cli.strategy.unwrap_or_default(),
        }
    } else if !balance_given && !cli.proxy_port && activated.is_empty() {
        let (chosen, why) = choose_balance(cli, listen.len());
        port_contract = matches!(chosen, Balance::Http { .. });
        announce(cli, chosen, port_contract, &why);
        chosen
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
    // The CLI of one app is the whole program: it takes the master's
    // signals and may replace itself in place (a library user opts in to
    // both).
    let mut builder = Cluster::builder()
        .handle_signals(whole)
        .upgrade_in_place(whole)
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
        .serve_on_start_timeout(cli.on_start_timeout == "serve")
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
    if let Some(zone) = &cli.time {
        let utc = zone == "utc";
        builder = builder.line_stamp(move || super::now_stamp(utc));
    }
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
    if port_contract {
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
    for (k, v) in cli.env_vars() {
        builder = builder.env(k, v);
    }
    for (fd, _) in activated {
        builder = builder.listener(fd);
    }
    for addr in &listen {
        builder = builder.listen(*addr);
    }
    Ok(builder.build()?)
}

/// Once every slot has a ready worker (or one slot failed first), one
/// line that says how many are ready and where the cluster serves
/// (`serving` with `--log-format json`, whose lines start with `open`).
async fn ready_line(
    mut events: tokio::sync::broadcast::Receiver<crate::Event>,
    workers: usize,
    addrs: Vec<SocketAddr>,
    balance: Balance,
    json: Option<String>,
    tag: String,
) {
    use crate::Event;
    let mut ready = std::collections::BTreeSet::new();
    let failed = loop {
        match events.recv().await {
            Ok(Event::Ready { slot, .. }) => {
                ready.insert(slot);
                if ready.len() >= workers {
                    break None;
                }
            }
            Ok(Event::SlotFailed { slot, .. }) => break Some(slot),
            Ok(Event::Stopping { .. } | Event::Stopped) => return,
            Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(_) => return,
        }
    };
    // What a browser or curl would open: loopback for a wildcard address.
    let urls: Vec<String> = addrs
        .iter()
        .map(|a| {
            let scheme = if matches!(balance, Balance::Proxy { .. }) {
                "tcp"
            } else {
                "http"
            };
            let host = match a.ip() {
                ip if ip.is_unspecified() => "localhost".to_owned(),
                std::net::IpAddr::V6(ip) => format!("[{ip}]"),
                ip => ip.to_string(),
            };
            format!("{scheme}://{host}:{}", a.port())
        })
        .collect();
    match json {
        Some(open) => {
            let line = serde_json::json!({
                "event": "serving",
                "ready": ready.len(),
                "workers": workers,
                "urls": urls,
                "failed_slot": failed,
            });
            eprintln!("{open}{}", &line.to_string()[1..]);
        }
        None => {
            let failed = failed.map_or_else(String::new, |s| format!(" (slot {s} failed)"));
            super::say!(
                "{tag}: {}/{workers} workers ready{failed}, serving {}",
                ready.len(),
                urls.join(" ")
            );
        }
    }
}

/// The mode for a program when none is given, and why (the table in
/// detect.rs).
fn choose_balance(cli: &Cli, addresses: usize) -> (Balance, String) {
    let program = cli.command.first().map_or("", String::as_str);
    let mut command = crate::WorkerCommand::new(program);
    if let Some(dir) = &cli.cwd {
        command = command.current_dir(dir);
    }
    let runs_node = !cli.no_node_preload && command.runs_node().unwrap_or(false);
    match detect::classify(cli, runs_node) {
        Kind::Port(why) if addresses == 1 => (
            Balance::Http {
                strategy: crate::Strategy::default(),
            },
            format!(
                "{why}: each worker binds a private PORT and the master forwards every request \
                 to one (--balance http --proxy-port), so reloads lose nothing"
            ),
        ),
        Kind::Port(why) => (
            Balance::ReusePort,
            format!(
                "{why}, but a worker binds one PORT and {addresses} addresses are given: \
                 pass --balance proxy or http with --proxy-port and one --listen"
            ),
        ),
        Kind::Node => (
            Balance::ReusePort,
            "a Node app: the preload hands app.listen() herd's sockets".to_owned(),
        ),
        Kind::ListenFds(why) => (
            Balance::ReusePort,
            format!("{why}: it takes herd's sockets"),
        ),
        Kind::Unknown => (
            Balance::ReusePort,
            format!(
                "{program} gets herd's sockets as LISTEN_FDS (fd 3 on); if it binds $PORT \
                 itself instead, pass --balance http --proxy-port"
            ),
        ),
    }
}

/// Says which mode was chosen, and why.
fn announce(cli: &Cli, balance: Balance, port_contract: bool, why: &str) {
    let line = serde_json::json!({
        "event": "balance_chosen",
        "balance": balance.to_string(),
        "proxy_port": port_contract,
        "why": why,
    });
    super::event_line(cli.name.as_deref(), cli.log_format == "json", line, |tag| {
        format!("{tag}: {balance} mode: {why}")
    });
}

/// Runs a built cluster until it stops: says where it listens, prints its
/// events as JSON lines with `--log-format json`, and closes its log files.
pub(crate) async fn serve(
    cli: &Cli,
    cluster: Cluster,
    extras: Extras,
) -> Result<(), Box<dyn std::error::Error>> {
    let json = cli.log_format == "json";
    let balance = cluster.balance();
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
            super::say!(
                "{tag}: listening on {addr} ({}, {} worker{})",
                balance,
                cluster.worker_count(),
                if cluster.worker_count() == 1 { "" } else { "s" }
            );
        }
    }
    let ready_line = tokio::spawn(ready_line(
        cluster.handle().events(),
        cluster.worker_count(),
        cluster.local_addrs().to_vec(),
        balance,
        json.then(|| open.clone()),
        tag.clone(),
    ));
    let printer = json.then(|| {
        // Every event as a JSON line, in order, the last ones included.
        let mut events = cluster.handle().events();
        tokio::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                match events.recv().await {
                    Ok(e) => {
                        eprintln!("{open}{}", &e.to_json()[1..]);
                        if matches!(e, crate::Event::Stopped) {
                            return;
                        }
                    }
                    Err(RecvError::Lagged(n)) => {
                        eprintln!("{open}\"event\":\"lagged\",\"missed\":{n}}}")
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        })
    });
    let result = cluster.run().await;
    ready_line.abort();
    if let Some(printer) = printer {
        let _ = tokio::time::timeout(Duration::from_secs(2), printer).await;
    }
    if let Some(files) = &extras.log_files {
        files.finish().await;
    }
    result?;
    Ok(())
}
