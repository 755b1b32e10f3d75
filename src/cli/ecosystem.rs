//! PM2's ecosystem file, read as it is: `ecosystem.config.js` (evaluated
//! by `node` itself, as PM2 does), `.json` or `.yaml`. Each app becomes the
//! herd.toml app that means the same; a field without a herd equivalent is
//! named in one warning. The mapping table is docs/migrating-from-pm2.md.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use super::config::{
    dir_name, resolve, AppDef, AppOptions, CommandLine, EnvEntry, FileError, Loaded, OneOrMany,
    Scalar, WatchSetting, Workers,
};

/// PM2's default `listen_timeout` (ms): how long it waits for a worker to
/// listen (or, with `wait_ready`, to say ready) before it takes it as
/// online anyway.
pub(crate) const PM2_LISTEN_TIMEOUT: Duration = Duration::from_millis(3000);

/// Fields herd reads without a setting of its own: they describe PM2
/// itself, or what herd does anyway.
const SILENT: &[&str] = &[
    "name",
    "exec_mode",
    "merge_logs",
    "combine_logs",
    "vizion",
    "autorestart",
    "instance_var",
    "pmx",
    "automation",
    "treekill",
    "force",
    "namespace",
    "version",
];

/// Reads an ecosystem file into apps.
pub(crate) fn load(path: &Path, env: Option<&str>) -> Result<Loaded, FileError> {
    let value = read(path)?;
    from_value(path, &value, env)
}

/// The file's value: JSON or YAML parsed, JavaScript evaluated by node.
fn read(path: &Path) -> Result<Value, FileError> {
    let name = path.display();
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let text =
        || std::fs::read_to_string(path).map_err(|e| FileError(format!("cannot read {name}: {e}")));
    match ext.as_str() {
        "json" => serde_json::from_str(&text()?).map_err(|e| FileError(format!("{name}: {e}"))),
        "yaml" | "yml" => {
            serde_yaml_ng::from_str(&text()?).map_err(|e| FileError(format!("{name}: {e}")))
        }
        _ => evaluate(path),
    }
}

/// Runs the JavaScript file in node, as PM2 does (`require`, or `import`
/// for an ES module), and takes what it exports as JSON.
fn evaluate(path: &Path) -> Result<Value, FileError> {
    let name = path.display();
    let abs =
        std::fs::canonicalize(path).map_err(|e| FileError(format!("cannot read {name}: {e}")))?;
    // The file's path goes in as an argument, never into the script's text.
    const SCRIPT: &str = r#"
const file = process.argv[1];
const url = require('url');
const print = (m) => {
  const c = (m && m.default !== undefined) ? m.default : m;
  process.stdout.write(JSON.stringify(c === undefined ? null : c));
};
let m;
try { m = require(file); } catch (e) {
  if (e && (e.code === 'ERR_REQUIRE_ESM' || e.code === 'ERR_REQUIRE_ASYNC_MODULE')) {
    import(url.pathToFileURL(file).href).then(print, (err) => { console.error(String(err && err.stack || err)); process.exit(3); });
    return;
  }
  console.error(String(e && e.stack || e)); process.exit(3);
}
print(m);
"#;
    let out = std::process::Command::new("node")
        .arg("-e")
        .arg(format!("(function(){{{SCRIPT}}})()"))
        .arg(&abs)
        .current_dir(abs.parent().unwrap_or(Path::new("/")))
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| {
            FileError(format!(
                "{name} is JavaScript, which herd reads by running node, and node cannot start: {e}"
            ))
        })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let first = err
            .lines()
            .find(|l| l.contains("Error"))
            .or_else(|| err.lines().next())
            .unwrap_or("")
            .trim();
        return Err(FileError(format!(
            "node could not evaluate {name}: {first}"
        )));
    }
    serde_json::from_slice(&out.stdout)
        .map_err(|e| FileError(format!("{name} exported what JSON cannot hold: {e}")))
}

/// The apps of an ecosystem value (`{apps: [...]}`, or one app object).
pub(crate) fn from_value(
    path: &Path,
    value: &Value,
    env: Option<&str>,
) -> Result<Loaded, FileError> {
    let file = path.display();
    let apps = match value {
        Value::Object(o) if o.contains_key("apps") => match &o["apps"] {
            Value::Array(a) => a.clone(),
            one @ Value::Object(_) => vec![one.clone()],
            _ => return Err(FileError(format!("{file}: `apps` is not a list of apps"))),
        },
        Value::Array(a) => a.clone(),
        one @ Value::Object(_) if one.get("script").is_some() => vec![one.clone()],
        _ => {
            return Err(FileError(format!(
                "{file}: exports no `apps` (module.exports = {{ apps: [...] }})"
            )))
        }
    };
    let mut warnings = Vec::new();
    let mut out = Vec::new();
    let mut env_found = env.is_none();
    for (i, app) in apps.iter().enumerate() {
        let Value::Object(fields) = app else {
            return Err(FileError(format!("{file}: apps[{i}] is not an object")));
        };
        let script = fields.get("script").and_then(Value::as_str).unwrap_or("");
        let name = fields
            .get("name")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| {
                Path::new(script)
                    .file_stem()
                    .map_or_else(|| format!("app{i}"), |s| s.to_string_lossy().into_owned())
            });
        let at = |what: String| FileError(format!("{file}: app `{name}`: {what}"));
        let (opts, ignored) = map_app(fields, &name).map_err(at)?;
        for field in ignored {
            warnings.push(format!(
                "{file}: app `{name}`: `{field}` has no herd equivalent and is ignored"
            ));
        }
        let cli = resolve(&name, &opts, env, &mut env_found).map_err(at)?;
        if out.iter().any(|a: &AppDef| a.name == name) {
            return Err(at("two apps have this name".into()));
        }
        out.push(AppDef { name, cli });
    }
    if !env_found {
        let env = env.unwrap_or_default();
        return Err(FileError(format!(
            "--env {env}: no app in {file} has `env_{env}`"
        )));
    }
    let name = value
        .get("name")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| dir_name(path));
    Ok(Loaded {
        name,
        control: None,
        apps: out,
        warnings,
    })
}

/// PM2's durations: milliseconds as a number, or a string with a unit
/// (`"1s"`, `"500ms"`); a bare number in a string is milliseconds too.
fn pm2_duration(v: &Value, field: &str) -> Result<String, String> {
    match v {
        Value::Number(n) => n
            .as_f64()
            .filter(|n| *n >= 0.0)
            .map(|ms| format!("{}ms", ms.round() as u64))
            .ok_or_else(|| format!("`{field}`: {n} is not a number of milliseconds")),
        Value::String(s)
            if s.trim().chars().all(|c| c.is_ascii_digit()) && !s.trim().is_empty() =>
        {
            Ok(format!("{}ms", s.trim()))
        }
        Value::String(s) => Ok(s.trim().to_owned()),
        other => Err(format!("`{field}`: {other} is not a duration")),
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn scalar(v: &Value) -> Scalar {
    match v {
        Value::Bool(b) => Scalar::Bool(*b),
        Value::Number(n) => n
            .as_i64()
            .map_or_else(|| Scalar::Text(n.to_string()), Scalar::Int),
        other => Scalar::Text(text(other)),
    }
}

/// Words of a PM2 `args`/`node_args`: a list, or one string split at spaces.
fn words(v: &Value) -> Vec<String> {
    match v {
        Value::Array(a) => a.iter().map(text).collect(),
        Value::String(s) => s.split_whitespace().map(str::to_owned).collect(),
        Value::Null => Vec::new(),
        other => vec![text(other)],
    }
}

fn env_block(v: &Value, field: &str) -> Result<BTreeMap<String, Scalar>, String> {
    match v {
        Value::Object(o) => Ok(o.iter().map(|(k, v)| (k.clone(), scalar(v))).collect()),
        Value::Null => Ok(BTreeMap::new()),
        _ => Err(format!("`{field}` is not an object of variables")),
    }
}

/// One PM2 app as herd options, and the fields it ignored.
fn map_app(
    f: &serde_json::Map<String, Value>,
    name: &str,
) -> Result<(AppOptions, Vec<String>), String> {
    let mut o = AppOptions::default();
    let mut ignored = Vec::new();
    let script = f
        .get("script")
        .and_then(Value::as_str)
        .ok_or("`script` is missing (the file or program PM2 runs)")?;
    // The program: PM2 runs .js/.mjs/.cjs/.ts with node (or the
    // interpreter given), anything else as it is.
    let interpreter = f
        .get("interpreter")
        .or_else(|| f.get("exec_interpreter"))
        .and_then(Value::as_str);
    let lower = script.to_ascii_lowercase();
    let is_js = [".js", ".mjs", ".cjs"].iter().any(|e| lower.ends_with(e));
    let mut command = Vec::new();
    match interpreter {
        Some("none") => command.push(script.to_owned()),
        Some(i) => {
            command.push(i.to_owned());
            command.extend(words(f.get("interpreter_args").unwrap_or(&Value::Null)));
            if i == "node" || i.ends_with("/node") {
                command.extend(words(f.get("node_args").unwrap_or(&Value::Null)));
            }
            command.push(script.to_owned());
        }
        None if is_js => {
            command.push("node".into());
            command.extend(words(
                f.get("node_args")
                    .or_else(|| f.get("interpreter_args"))
                    .unwrap_or(&Value::Null),
            ));
            command.push(script.to_owned());
        }
        None => command.push(script.to_owned()),
    }
    command.extend(words(f.get("args").unwrap_or(&Value::Null)));
    o.command = Some(CommandLine::Words(command));
    let mut env: BTreeMap<String, EnvEntry> = BTreeMap::new();
    for (key, v) in f {
        let d = |v: &Value| pm2_duration(v, key);
        match key.as_str() {
            "script" | "args" | "interpreter" | "exec_interpreter" | "interpreter_args"
            | "node_args" => {}
            "cwd" => o.cwd = v.as_str().map(Into::into),
            "instances" => {
                o.workers = Some(match v {
                    Value::String(s) if s == "max" => Workers::Max,
                    Value::Number(n) => match n.as_i64() {
                        Some(0) => Workers::Max,
                        // -1: all the CPUs but one (PM2's meaning).
                        Some(k) if k < 0 => Workers::Count(
                            (std::thread::available_parallelism().map_or(1, |p| p.get()) as i64 + k)
                                .max(1) as usize,
                        ),
                        Some(k) => Workers::Count(k as usize),
                        None => return Err(format!("`instances`: {n} is not a count")),
                    },
                    Value::String(s) => {
                        Workers::Count(s.parse().map_err(|_| {
                            format!("`instances`: \"{s}\" is not a count or \"max\"")
                        })?)
                    }
                    other => return Err(format!("`instances`: {other} is not a count")),
                })
            }
            "port" => o.listen = Some(OneOrMany::One(scalar(v))),
            "env" => {
                for (k, val) in env_block(v, key)? {
                    env.insert(k, EnvEntry::Var(val));
                }
            }
            k if k.starts_with("env_") => {
                env.insert(
                    k["env_".len()..].to_owned(),
                    EnvEntry::Block(env_block(v, k)?),
                );
            }
            "wait_ready" => o.wait_ready = v.as_bool(),
            "listen_timeout" => o.start_timeout = Some(d(v)?),
            "kill_timeout" => o.drain_timeout = Some(d(v)?),
            "max_memory_restart" => o.max_memory = Some(scalar(v)),
            "min_uptime" => o.min_uptime = Some(d(v)?),
            "max_restarts" => {
                o.crash_limit = Some(
                    v.as_u64()
                        .ok_or_else(|| format!("`max_restarts`: {v} is not a count"))?
                        as u32,
                )
            }
            "restart_delay" => {
                // A fixed delay: the same at the start and at the cap.
                let delay = d(v)?;
                o.restart_delay = Some(delay.clone());
                o.restart_delay_max = Some(delay);
            }
            "exp_backoff_restart_delay" => o.restart_delay = Some(d(v)?),
            "autorestart" if v == &Value::Bool(false) => o.restart = Some("never".into()),
            "out_file" | "output" | "log_file" | "log" => {
                if let Some(p) = v.as_str() {
                    if o.log_file.is_none() || key == "out_file" || key == "output" {
                        o.log_file = Some(p.into());
                    }
                }
            }
            "error_file" | "error" => {
                // herd writes a worker's stdout and stderr to one file: the
                // error file is ignored when an output file is given.
                if f.get("out_file").or_else(|| f.get("output")).is_none() {
                    o.log_file = v.as_str().map(Into::into);
                } else if f.get("out_file").or_else(|| f.get("output")) != Some(v) {
                    ignored.push(format!("{key} (herd writes stdout and stderr to out_file)"));
                }
            }
            "kill_signal" => o.stop_signal = v.as_str().map(Into::into),
            "user" | "uid" => o.user = Some(text(v)),
            "gid" => o.group = Some(text(v)),
            "max_requests" => o.max_requests = v.as_u64(),
            "watch" => {
                o.watch = Some(match v {
                    Value::Bool(b) => WatchSetting::On(*b),
                    other => WatchSetting::Paths(OneOrMany::Many(
                        words(other).into_iter().map(Scalar::Text).collect(),
                    )),
                })
            }
            "ignore_watch" => {
                o.ignore_watch = Some(OneOrMany::Many(
                    words(v).into_iter().map(Scalar::Text).collect(),
                ))
            }
            "watch_delay" => o.watch_delay = Some(d(v)?),
            "cron_restart" => o.cron_reload = Some(text(v)),
            "time" => o.time = Some(scalar(v)),
            k if SILENT.contains(&k) => {}
            other => ignored.push(other.to_owned()),
        }
    }
    if f.get("wait_ready") == Some(&Value::Bool(true)) {
        // PM2's meaning: a worker that never says ready serves once
        // listen_timeout (3 s by default) has passed.
        o.on_start_timeout = Some("serve".into());
        if o.start_timeout.is_none() {
            o.start_timeout = Some(format!("{}ms", PM2_LISTEN_TIMEOUT.as_millis()));
        }
    }
    if !env.is_empty() {
        o.env = env;
    }
    // PM2 runs one instance of an app that does not say how many.
    if o.workers.is_none() {
        o.workers = Some(Workers::Count(1));
    }
    let _ = name;
    Ok((o, ignored))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn apps(v: Value, env: Option<&str>) -> Result<Loaded, FileError> {
        from_value(Path::new("/srv/shop/ecosystem.config.js"), &v, env)
    }

    #[test]
    fn pm2_fields_map_to_herds_and_the_rest_are_named() {
        let loaded = apps(
            json!({ "apps": [
                { "name": "api", "script": "server.js", "instances": "max", "exec_mode": "cluster",
                  "node_args": "--max-old-space-size=200", "args": ["--verbose"],
                  "env": { "NODE_ENV": "development", "PORT": 3000 },
                  "env_production": { "NODE_ENV": "production" },
                  "wait_ready": true, "listen_timeout": 8000, "kill_timeout": 1600,
                  "max_memory_restart": "300M", "min_uptime": "2s", "max_restarts": 10,
                  "exp_backoff_restart_delay": 100, "out_file": "/tmp/api.log",
                  "cron_restart": "0 3 * * *", "source_map_support": true,
                  "increment_var": "PORT" },
                { "name": "worker", "script": "./bin/worker", "instances": 2 }
            ]}),
            Some("production"),
        )
        .unwrap();
        let api = &loaded.apps[0].cli;
        assert_eq!(
            api.command,
            ["node", "--max-old-space-size=200", "server.js", "--verbose"]
        );
        assert_eq!(api.workers, None);
        assert!(api.wait_ready);
        assert_eq!(api.start_timeout, Duration::from_secs(8));
        assert_eq!(api.drain_timeout, Duration::from_millis(1600));
        assert_eq!(api.max_memory, Some(300 * 1024 * 1024));
        assert_eq!(api.min_uptime, Duration::from_secs(2));
        assert_eq!(api.crash_limit, 10);
        assert_eq!(api.restart_delay, Duration::from_millis(100));
        assert_eq!(api.log_file.as_deref(), Some(Path::new("/tmp/api.log")));
        // The app's PORT is its address.
        assert_eq!(api.listen[0][0].port(), 3000);
        let vars: Vec<_> = api.env_vars().collect();
        assert!(vars.ends_with(&[("NODE_ENV", "production")]), "{vars:?}");
        let worker = &loaded.apps[1].cli;
        assert_eq!(worker.command, ["./bin/worker"]);
        assert_eq!(worker.workers, Some(2));
        // One warning per ignored field, naming it.
        let w = loaded.warnings.join("\n");
        assert!(
            w.contains("`increment_var`") && w.contains("`source_map_support`"),
            "{w}"
        );
        assert_eq!(api.cron_reload.as_deref(), Some("0 3 * * *"));
        assert_eq!(loaded.warnings.len(), 2, "{w}");
        assert_eq!(loaded.name, "herd");
    }

    #[test]
    fn interpreters_and_negative_instances_follow_pm2() {
        let loaded = apps(
            json!([{ "name": "py", "script": "app.py", "interpreter": "python3",
                     "interpreter_args": "-u", "instances": -1 },
                   { "script": "bin/go-server", "interpreter": "none" }]),
            None,
        )
        .unwrap();
        assert_eq!(loaded.apps[0].cli.command, ["python3", "-u", "app.py"]);
        let cpus = std::thread::available_parallelism().map_or(1, |p| p.get());
        assert_eq!(
            loaded.apps[0].cli.workers,
            Some(cpus.saturating_sub(1).max(1))
        );
        // No name: the script's, as PM2 names it.
        assert_eq!(loaded.apps[1].name, "go-server");
    }

    #[test]
    fn yaml_and_json_files_are_read_as_pm2_reads_them() {
        let dir = std::env::temp_dir().join(format!("herd-eco-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let yaml = dir.join("ecosystem.yaml");
        std::fs::write(
            &yaml,
            "apps:\n  - name: api\n    script: ./api\n    instances: 3\n    env:\n      PORT: 4000\n",
        )
        .unwrap();
        let loaded = load(&yaml, None).unwrap();
        assert_eq!(loaded.apps[0].cli.command, ["./api"]);
        assert_eq!(loaded.apps[0].cli.workers, Some(3));
        assert_eq!(loaded.apps[0].cli.listen[0][0].port(), 4000);
        let json = dir.join("ecosystem.json");
        std::fs::write(&json, r#"{"apps": [{"name": "w", "script": "w.js"}]}"#).unwrap();
        let loaded = load(&json, None).unwrap();
        assert_eq!(loaded.apps[0].cli.command, ["node", "w.js"]);
        assert_eq!(
            loaded.apps[0].cli.workers,
            Some(1),
            "PM2 runs one without instances"
        );
        let broken = dir.join("broken.yaml");
        std::fs::write(&broken, "apps: [\n").unwrap();
        let e = load(&broken, None).unwrap_err().0;
        assert!(e.contains("broken.yaml"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        let e = apps(json!({ "apps": [{ "name": "x" }] }), None)
            .unwrap_err()
            .0;
        assert!(
            e.contains("`script` is missing") && e.contains("app `x`"),
            "{e}"
        );
        let e = apps(
            json!({ "apps": [{ "name": "x", "script": "a.js" }] }),
            Some("prod"),
        )
        .unwrap_err()
        .0;
        assert!(e.contains("env_prod"), "{e}");
        let e = apps(json!({ "deploy": {} }), None).unwrap_err().0;
        assert!(e.contains("apps"), "{e}");
    }
}
