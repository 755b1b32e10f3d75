//! herd.toml: one or more apps, each with every option the command line
//! has, under the flag's own name (`drain-timeout = "30s"` is
//! `--drain-timeout 30s`). The commented example is `examples/herd.toml`.
//!
//! Every app becomes a [`Cli`] as if its options had been typed: the
//! defaults, then the file, then the flags given on the command line. So a
//! file and the flags are the same program, and a flag overrides the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches};
use serde::de::{Deserializer, Error as _};
use serde::Deserialize;

use super::args::{self, Cli, EnvArg};

/// What a config file (herd.toml or an ecosystem file) describes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Loaded {
    /// The herd's name: its control socket's. The file's `name`, else the
    /// name of the directory the file is in.
    pub(crate) name: String,
    /// The control socket, when the file names one.
    pub(crate) control: Option<PathBuf>,
    /// Every app, in the file's order, as its command line.
    pub(crate) apps: Vec<AppDef>,
    /// Fields read but without a herd equivalent, one sentence each.
    pub(crate) warnings: Vec<String>,
}

/// One app: its name and its options, resolved.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AppDef {
    pub(crate) name: String,
    pub(crate) cli: Cli,
}

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct File {
    /// The herd's name (its control socket).
    name: Option<String>,
    /// The control socket's path.
    control: Option<PathBuf>,
    /// The master's own lines: text or json.
    log_format: Option<String>,
    #[serde(default)]
    apps: BTreeMap<String, Spanned<AppOptions>>,
}

type Spanned<T> = toml::Spanned<T>;

/// One app's table: every key is the flag of the same name.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct AppOptions {
    pub(crate) command: Option<CommandLine>,
    pub(crate) cwd: Option<PathBuf>,
    pub(crate) workers: Option<Workers>,
    pub(crate) listen: Option<OneOrMany>,
    pub(crate) balance: Option<String>,
    pub(crate) strategy: Option<String>,
    pub(crate) proxy_port: Option<bool>,
    pub(crate) proxy_splice: Option<bool>,
    pub(crate) proxy_protocol: Option<String>,
    pub(crate) sticky: Option<String>,
    pub(crate) header_timeout: Option<String>,
    pub(crate) response_timeout: Option<String>,
    pub(crate) trust_proxy: Option<OneOrMany>,
    pub(crate) max_connections: Option<usize>,
    pub(crate) proxy_idle_timeout: Option<String>,
    pub(crate) backlog: Option<u32>,
    pub(crate) drain_timeout: Option<String>,
    pub(crate) stop_signal: Option<String>,
    pub(crate) restart: Option<String>,
    pub(crate) restart_delay: Option<String>,
    pub(crate) restart_delay_max: Option<String>,
    pub(crate) crash_limit: Option<u32>,
    pub(crate) crash_window: Option<String>,
    pub(crate) min_uptime: Option<String>,
    pub(crate) ready: Option<String>,
    pub(crate) wait_ready: Option<bool>,
    pub(crate) kill_mode: Option<String>,
    pub(crate) settle: Option<String>,
    pub(crate) metrics: Option<String>,
    pub(crate) log_file: Option<PathBuf>,
    pub(crate) log_dir: Option<PathBuf>,
    pub(crate) start_timeout: Option<String>,
    pub(crate) on_start_timeout: Option<String>,
    pub(crate) watchdog: Option<String>,
    pub(crate) user: Option<String>,
    pub(crate) group: Option<String>,
    pub(crate) pre_stop_delay: Option<String>,
    pub(crate) sample_interval: Option<String>,
    pub(crate) max_memory: Option<Scalar>,
    pub(crate) max_requests: Option<u64>,
    pub(crate) reload_parallel: Option<usize>,
    pub(crate) node_preload: Option<bool>,
    pub(crate) watch: Option<WatchSetting>,
    pub(crate) ignore_watch: Option<OneOrMany>,
    pub(crate) watch_delay: Option<String>,
    pub(crate) cron_reload: Option<String>,
    pub(crate) log_max_size: Option<Scalar>,
    pub(crate) log_keep: Option<usize>,
    pub(crate) time: Option<Scalar>,
    #[serde(default)]
    pub(crate) env: BTreeMap<String, EnvEntry>,
    #[serde(default)]
    pub(crate) unset_env: Vec<String>,
}

/// `command = "node app.js"` (split at spaces) or `["node", "my app.js"]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub(crate) enum CommandLine {
    Words(Vec<String>),
    Line(String),
}

impl CommandLine {
    pub(crate) fn words(&self) -> Vec<String> {
        match self {
            CommandLine::Words(w) => w.clone(),
            CommandLine::Line(l) => l.split_whitespace().map(str::to_owned).collect(),
        }
    }
}

/// `watch = true` (the app's directory), or the paths to watch.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub(crate) enum WatchSetting {
    On(bool),
    Paths(OneOrMany),
}

/// `workers = 4`, or `"max"` (one per CPU).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Workers {
    Count(usize),
    Max,
}

impl<'de> Deserialize<'de> for Workers {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Scalar::deserialize(d)? {
            Scalar::Int(n) if n > 0 => Ok(Workers::Count(n as usize)),
            Scalar::Text(t) if t == "max" => Ok(Workers::Max),
            other => Err(D::Error::custom(format!(
                "`{other}` is not a number of workers (a count above 0, or \"max\")"
            ))),
        }
    }
}

/// A string, or a list of them (`listen = 3000` too).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub(crate) enum OneOrMany {
    Many(Vec<Scalar>),
    One(Scalar),
}

impl OneOrMany {
    fn items(&self) -> Vec<String> {
        match self {
            OneOrMany::Many(v) => v.iter().map(ToString::to_string).collect(),
            OneOrMany::One(s) => vec![s.to_string()],
        }
    }
}

/// A value as the command line would have it: text or a number.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub(crate) enum Scalar {
    Int(i64),
    Float(f64),
    Bool(bool),
    Text(String),
}

impl std::fmt::Display for Scalar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scalar::Int(n) => write!(f, "{n}"),
            Scalar::Float(n) => write!(f, "{n}"),
            Scalar::Bool(b) => write!(f, "{b}"),
            Scalar::Text(t) => f.write_str(t),
        }
    }
}

/// `[apps.X.env]`: a variable, or a block of them for `--env NAME`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub(crate) enum EnvEntry {
    Var(Scalar),
    Block(BTreeMap<String, Scalar>),
}

/// A file that cannot be used, with what to fix.
#[derive(Debug)]
pub(crate) struct FileError(pub(crate) String);

impl std::fmt::Display for FileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FileError {}

/// Reads the file `path` names (herd.toml or an ecosystem file), and
/// resolves every app against the flags given on the command line.
pub(crate) fn load(path: &Path, flags: &Cli, matches: &ArgMatches) -> Result<Loaded, FileError> {
    let ext = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let mut loaded = if ext.ends_with(".toml") {
        let text = std::fs::read_to_string(path)
            .map_err(|e| FileError(format!("cannot read {}: {e}", path.display())))?;
        from_toml(path, &text, flags.env_name())?
    } else if [".js", ".cjs", ".mjs", ".json", ".yaml", ".yml"]
        .iter()
        .any(|e| ext.ends_with(e))
    {
        super::ecosystem::load(path, flags.env_name())?
    } else {
        return Err(FileError(format!(
            "{}: herd reads herd.toml (.toml) and PM2 ecosystem files (.js, .cjs, .mjs, .json, .yaml)",
            path.display()
        )));
    };
    if !flags.command.is_empty() {
        return Err(FileError(format!(
            "give a program or a file, not both: {} names its apps' programs",
            path.display()
        )));
    }
    if !flags.only.is_empty() {
        for want in &flags.only {
            if !loaded.apps.iter().any(|a| &a.name == want) {
                return Err(FileError(format!(
                    "--only {want}: {} has no app of that name (it has {})",
                    path.display(),
                    names(&loaded.apps)
                )));
            }
        }
        loaded.apps.retain(|a| flags.only.contains(&a.name));
    }
    if loaded.apps.is_empty() {
        return Err(FileError(format!("{} describes no app", path.display())));
    }
    for app in &mut loaded.apps {
        overlay_flags(&mut app.cli, flags, matches);
        app.cli.config = None;
        app.cli.only.clear();
    }
    if let Some(c) = &flags.control {
        loaded.control = Some(c.clone());
    }
    Ok(loaded)
}

fn names(apps: &[AppDef]) -> String {
    apps.iter()
        .map(|a| a.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The defaults, as a command line with nothing on it.
pub(crate) fn defaults() -> Cli {
    let matches = Cli::command()
        .try_get_matches_from(["herd"])
        .expect("the defaults parse");
    Cli::from_arg_matches(&matches).expect("the defaults parse")
}

/// One app's options on top of the defaults, checked.
pub(crate) fn resolve(
    name: &str,
    opts: &AppOptions,
    env: Option<&str>,
    env_found: &mut bool,
) -> Result<Cli, String> {
    if !valid_name(name) {
        return Err("an app's name is letters, digits, `-`, `_` and `.` (and not `all`)".into());
    }
    let mut cli = defaults();
    apply(&mut cli, opts, env, env_found)?;
    if cli.command.is_empty() {
        return Err("`command` is missing (the program and its arguments)".into());
    }
    cli.name = Some(name.to_owned());
    Ok(cli)
}

/// Parses herd.toml's text.
pub(crate) fn from_toml(path: &Path, text: &str, env: Option<&str>) -> Result<Loaded, FileError> {
    let file: File = toml::from_str(text).map_err(|e| {
        // toml's message names the line, the column and the key.
        FileError(format!("{}: {}", path.display(), e.to_string().trim_end()))
    })?;
    let mut apps = Vec::new();
    let mut env_found = env.is_none();
    // The file's order, not the map's: apps start as they are written.
    let mut tables: Vec<_> = file.apps.into_iter().collect();
    tables.sort_by_key(|(_, t)| t.span().start);
    for (name, table) in tables {
        let line = text[..table.span().start].lines().count();
        let at =
            |what: String| FileError(format!("{}:{line}: app `{name}`: {what}", path.display()));
        let opts = table.into_inner();
        let mut cli = resolve(&name, &opts, env, &mut env_found).map_err(at)?;
        if let Some(f) = &file.log_format {
            cli.log_format = f.clone();
        }
        apps.push(AppDef { name, cli });
    }
    if !env_found {
        return Err(FileError(format!(
            "--env {}: no app in {} has an environment of that name ([apps.NAME.env.{}])",
            env.unwrap_or_default(),
            path.display(),
            env.unwrap_or_default()
        )));
    }
    if let Some(f) = &file.log_format {
        if f != "text" && f != "json" {
            return Err(FileError(format!(
                "{}: log-format = \"{f}\": text or json",
                path.display()
            )));
        }
    }
    Ok(Loaded {
        name: file.name.unwrap_or_else(|| dir_name(path)),
        control: file.control,
        apps,
        warnings: Vec::new(),
    })
}

/// An app name goes into log lines, JSON and the control API's queries.
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name != "all"
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// The name of the directory `path` is in (`/srv/shop/herd.toml`: `shop`).
pub(crate) fn dir_name(path: &Path) -> String {
    std::fs::canonicalize(path)
        .ok()
        .and_then(|p| {
            p.parent()
                .and_then(Path::file_name)
                .map(|n| n.to_string_lossy().into_owned())
        })
        .filter(|n| valid_name(n))
        .unwrap_or_else(|| "herd".into())
}

/// Sets what the app's table says on `cli`.
fn apply(
    cli: &mut Cli,
    o: &AppOptions,
    env: Option<&str>,
    env_found: &mut bool,
) -> Result<(), String> {
    fn parse<T>(
        key: &str,
        v: &Option<String>,
        f: fn(&str) -> Result<T, String>,
    ) -> Result<Option<T>, String> {
        v.as_deref()
            .map(|s| f(s).map_err(|e| format!("{key} = \"{s}\": {e}")))
            .transpose()
    }
    macro_rules! set {
        ($field:ident, $key:literal, $parser:path) => {
            if let Some(v) = parse($key, &o.$field, $parser)? {
                cli.$field = v;
            }
        };
        (opt $field:ident, $key:literal, $parser:path) => {
            if let Some(v) = parse($key, &o.$field, $parser)? {
                cli.$field = Some(v);
            }
        };
    }
    if let Some(c) = &o.command {
        cli.command = c.words();
    }
    if let Some(d) = &o.cwd {
        cli.cwd = Some(d.clone());
    }
    match &o.workers {
        Some(Workers::Count(n)) => cli.workers = Some(*n),
        Some(Workers::Max) => cli.workers = None,
        None => {}
    }
    if let Some(l) = &o.listen {
        cli.listen = l
            .items()
            .iter()
            .map(|a| args::parse_listen(a).map_err(|e| format!("listen = \"{a}\": {e}")))
            .collect::<Result<_, _>>()?;
    }
    set!(opt balance, "balance", args::parse_balance);
    set!(opt strategy, "strategy", args::parse_strategy);
    if let Some(b) = o.proxy_port {
        cli.proxy_port = b;
    }
    if let Some(b) = o.proxy_splice {
        cli.proxy_splice = b;
    }
    set!(opt proxy_protocol, "proxy-protocol", args::parse_proxy_protocol);
    if let Some(s) = &o.sticky {
        if s != "cookie" {
            return Err(format!("sticky = \"{s}\": the one kind is \"cookie\""));
        }
        cli.sticky = Some(s.clone());
    }
    set!(opt header_timeout, "header-timeout", args::parse_duration);
    set!(opt response_timeout, "response-timeout", args::parse_duration);
    if let Some(t) = &o.trust_proxy {
        cli.trust_proxy = t
            .items()
            .iter()
            .map(|a| args::parse_cidr(a).map_err(|e| format!("trust-proxy = \"{a}\": {e}")))
            .collect::<Result<_, _>>()?;
    }
    if let Some(n) = o.max_connections {
        cli.max_connections = Some(n);
    }
    set!(
        proxy_idle_timeout,
        "proxy-idle-timeout",
        args::parse_duration
    );
    if let Some(n) = o.backlog {
        cli.backlog = Some(n);
    }
    set!(drain_timeout, "drain-timeout", args::parse_duration);
    set!(stop_signal, "stop-signal", args::parse_signal);
    set!(restart, "restart", args::parse_restart);
    set!(restart_delay, "restart-delay", args::parse_duration);
    set!(restart_delay_max, "restart-delay-max", args::parse_duration);
    if let Some(n) = o.crash_limit {
        cli.crash_limit = n;
    }
    set!(crash_window, "crash-window", args::parse_duration);
    set!(min_uptime, "min-uptime", args::parse_duration);
    set!(ready, "ready", args::parse_ready);
    if let Some(b) = o.wait_ready {
        cli.wait_ready = b;
    }
    set!(kill_mode, "kill-mode", args::parse_kill_mode);
    set!(settle, "settle", args::parse_duration);
    if let Some(m) = &o.metrics {
        cli.metrics = Some(
            args::parse_listen(m)
                .ok()
                .and_then(|a| a.first().copied())
                .ok_or_else(|| format!("metrics = \"{m}\": not an address"))?,
        );
    }
    if let Some(f) = &o.log_file {
        cli.log_file = Some(f.clone());
    }
    if let Some(d) = &o.log_dir {
        cli.log_dir = Some(d.clone());
    }
    set!(start_timeout, "start-timeout", args::parse_duration);
    if let Some(a) = &o.on_start_timeout {
        if a != "kill" && a != "serve" {
            return Err(format!("on-start-timeout = \"{a}\": kill or serve"));
        }
        cli.on_start_timeout = a.clone();
    }
    set!(opt watchdog, "watchdog", args::parse_duration);
    if let Some(u) = &o.user {
        cli.user = Some(u.clone());
    }
    if let Some(g) = &o.group {
        cli.group = Some(g.clone());
    }
    set!(pre_stop_delay, "pre-stop-delay", args::parse_duration);
    set!(sample_interval, "sample-interval", args::parse_duration);
    if let Some(m) = &o.max_memory {
        let text = m.to_string();
        cli.max_memory =
            Some(args::parse_size(&text).map_err(|e| format!("max-memory = \"{text}\": {e}"))?);
    }
    if let Some(n) = o.max_requests {
        cli.max_requests = Some(n);
    }
    if let Some(n) = o.reload_parallel {
        cli.reload_parallel = n;
    }
    if let Some(b) = o.node_preload {
        cli.no_node_preload = !b;
    }
    match &o.watch {
        Some(WatchSetting::On(true)) => cli.watch = vec![".".into()],
        Some(WatchSetting::On(false)) => cli.watch.clear(),
        Some(WatchSetting::Paths(p)) => cli.watch = p.items().into_iter().map(Into::into).collect(),
        None => {}
    }
    if let Some(i) = &o.ignore_watch {
        cli.ignore_watch = i.items();
    }
    set!(watch_delay, "watch-delay", args::parse_duration);
    set!(opt cron_reload, "cron-reload", args::parse_cron);
    if let Some(m) = &o.log_max_size {
        let text = m.to_string();
        cli.log_max_size =
            Some(args::parse_size(&text).map_err(|e| format!("log-max-size = \"{text}\": {e}"))?);
    }
    if let Some(n) = o.log_keep {
        cli.log_keep = Some(n);
    }
    match &o.time {
        Some(Scalar::Bool(true)) => cli.time = Some("local".into()),
        Some(Scalar::Bool(false)) => cli.time = None,
        Some(Scalar::Text(z)) if z == "local" || z == "utc" => cli.time = Some(z.clone()),
        Some(other) => return Err(format!("time = {other}: true, \"local\" or \"utc\"")),
        None => {}
    }
    cli.unset_env = o.unset_env.clone();
    let mut vars = Vec::new();
    for (k, v) in &o.env {
        if let EnvEntry::Var(v) = v {
            vars.push(EnvArg::Var(k.clone(), v.to_string()));
        }
    }
    if let Some(name) = env {
        if let Some(EnvEntry::Block(block)) = o.env.get(name) {
            *env_found = true;
            vars.extend(
                block
                    .iter()
                    .map(|(k, v)| EnvArg::Var(k.clone(), v.to_string())),
            );
        }
    }
    // No address given: the app's own PORT, as the app itself would read
    // it (two apps of a file cannot both take the master's default).
    if o.listen.is_none() {
        let port = vars.iter().rev().find_map(|v| match v {
            EnvArg::Var(k, p) if k == "PORT" => Some(p.clone()),
            _ => None,
        });
        if let Some(port) = port {
            cli.listen = vec![args::parse_listen(&port)
                .map_err(|e| format!("env PORT = \"{port}\" (the default address): {e}"))?];
        }
    }
    cli.env = vars;
    Ok(())
}

/// Copies every flag given on the command line onto an app's options.
/// `--env KEY=VALUE` adds to the file's variables; the rest replace.
pub(crate) fn overlay_flags(app: &mut Cli, flags: &Cli, m: &ArgMatches) {
    let given = |id: &str| m.value_source(id) == Some(ValueSource::CommandLine);
    macro_rules! take {
        ($($field:ident),* $(,)?) => {
            $( if given(stringify!($field)) { app.$field = flags.$field.clone(); } )*
        };
    }
    take!(
        workers,
        listen,
        balance,
        strategy,
        proxy_port,
        proxy_splice,
        proxy_protocol,
        sticky,
        header_timeout,
        response_timeout,
        trust_proxy,
        max_connections,
        proxy_idle_timeout,
        backlog,
        drain_timeout,
        stop_signal,
        restart,
        restart_delay,
        restart_delay_max,
        crash_limit,
        crash_window,
        min_uptime,
        ready,
        wait_ready,
        kill_mode,
        settle,
        metrics,
        log_file,
        log_dir,
        no_control,
        log_format,
        start_timeout,
        on_start_timeout,
        watchdog,
        user,
        group,
        pre_stop_delay,
        sample_interval,
        max_memory,
        max_requests,
        reload_parallel,
        no_node_preload,
        watch,
        ignore_watch,
        watch_delay,
        cron_reload,
        log_max_size,
        log_keep,
        time,
        cwd,
        unset_env,
    );
    app.env.extend(
        flags
            .env_vars()
            .map(|(k, v)| EnvArg::Var(k.to_owned(), v.to_owned())),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str, env: Option<&str>) -> Result<Loaded, FileError> {
        from_toml(Path::new("herd.toml"), text, env)
    }

    #[test]
    fn every_app_gets_its_options_in_the_files_order() {
        let loaded = load_text(
            r#"
name = "shop"
[apps.web]
command = "node web.js"
workers = 2
listen = [3000, "127.0.0.1:3001"]
balance = "http"
drain-timeout = "5s"
max-memory = "300M"
[apps.web.env]
NODE_ENV = "development"
PORT_HINT = 1
[apps.web.env.production]
NODE_ENV = "production"

[apps.api]
command = ["python3", "my app.py"]
workers = "max"
"#,
            Some("production"),
        )
        .unwrap();
        assert_eq!(loaded.name, "shop");
        let names: Vec<_> = loaded.apps.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["web", "api"]);
        let web = &loaded.apps[0].cli;
        assert_eq!(web.command, ["node", "web.js"]);
        assert_eq!(web.workers, Some(2));
        assert_eq!(web.listen.len(), 2);
        assert_eq!(web.drain_timeout, std::time::Duration::from_secs(5));
        assert_eq!(web.max_memory, Some(300 * 1024 * 1024));
        assert!(web.balance.is_some_and(|(b, _)| b.is_proxy()));
        let vars: Vec<_> = web.env_vars().collect();
        // The block named by --env comes after the base, so it wins.
        assert_eq!(
            vars,
            [
                ("NODE_ENV", "development"),
                ("PORT_HINT", "1"),
                ("NODE_ENV", "production")
            ]
        );
        let api = &loaded.apps[1].cli;
        assert_eq!(api.command, ["python3", "my app.py"]);
        assert_eq!(api.workers, None);
        assert_eq!(api.name.as_deref(), Some("api"));
    }

    #[test]
    fn the_example_file_is_valid_and_says_what_it_shows() {
        let text = include_str!("../../examples/herd.toml");
        let loaded = load_text(text, Some("production")).unwrap();
        assert_eq!(loaded.name, "shop");
        let names: Vec<_> = loaded.apps.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["web", "api"]);
        let web = &loaded.apps[0].cli;
        assert_eq!(web.env_vars().last(), Some(("NODE_ENV", "production")));
        assert_eq!(web.max_memory, Some(300 * 1024 * 1024));
        assert_eq!(loaded.apps[1].cli.listen[0][0].port(), 8080);
    }

    #[test]
    fn an_unknown_key_is_refused_with_its_line_and_name() {
        let e = load_text(
            "[apps.web]\ncommand = \"node web.js\"\ndrain_timout = \"5s\"\n",
            None,
        )
        .unwrap_err()
        .0;
        assert!(e.contains("line 3"), "{e}");
        assert!(e.contains("drain_timout"), "{e}");
        assert!(e.contains("herd.toml"), "{e}");
    }

    #[test]
    fn a_bad_value_names_the_app_and_the_key() {
        let e = load_text(
            "[apps.web]\ncommand = \"node web.js\"\ndrain-timeout = \"soon\"\n",
            None,
        )
        .unwrap_err()
        .0;
        assert!(
            e.contains("app `web`") && e.contains("drain-timeout"),
            "{e}"
        );
        let e = load_text("[apps.web]\nworkers = 0\ncommand = \"x\"\n", None)
            .unwrap_err()
            .0;
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn an_app_needs_a_command_and_an_environment_must_exist() {
        let e = load_text("[apps.web]\nworkers = 2\n", None).unwrap_err().0;
        assert!(e.contains("`command` is missing"), "{e}");
        let e = load_text("[apps.web]\ncommand = \"x\"\n", Some("staging"))
            .unwrap_err()
            .0;
        assert!(e.contains("staging"), "{e}");
    }

    #[test]
    fn flags_given_on_the_command_line_override_the_file() {
        let loaded = load_text(
            "[apps.web]\ncommand = \"node web.js\"\nworkers = 2\ndrain-timeout = \"5s\"\n[apps.web.env]\nA = \"1\"\n",
            None,
        )
        .unwrap();
        let argv = ["herd", "--config", "herd.toml", "-w", "3", "--env", "B=2"];
        let m = Cli::command().try_get_matches_from(argv).unwrap();
        let flags = Cli::from_arg_matches(&m).unwrap();
        let mut app = loaded.apps[0].cli.clone();
        overlay_flags(&mut app, &flags, &m);
        assert_eq!(app.workers, Some(3));
        // Not given: the file's value stays, not the flag's default.
        assert_eq!(app.drain_timeout, std::time::Duration::from_secs(5));
        let vars: Vec<_> = app.env_vars().collect();
        assert_eq!(vars, [("A", "1"), ("B", "2")]);
    }
}
