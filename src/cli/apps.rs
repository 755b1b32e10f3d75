//! Every app of a config file under one herd process: each app a cluster
//! of its own on its own sockets, one control socket for all of them.
//!
//! SIGTERM and SIGINT stop every app. SIGHUP and `herdctl reload` (without
//! an app) re-read the file and apply the difference: an app added is
//! started, one removed is stopped, one whose program, environment or
//! worker count changed is reloaded (rolling, successor first), one whose
//! sockets or mode changed is stopped and started anew; the others are
//! not touched. `herdctl reload all` rolls every app.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::ArgMatches;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::args::Cli;
use super::config::{self, AppDef, Loaded};
use super::run::{build, serve, Extras};
use super::{chain, Usage};
use crate::control::{Apps, Changes, Reconfigure};
use crate::{Handle, WorkerCommand};

/// An app that runs.
struct Running {
    def: AppDef,
    handle: Handle,
    task: JoinHandle<()>,
    /// Which start of the app this is: an end reported by an earlier one
    /// (stopped for a restart) is not this one's.
    generation: u64,
}

/// How an app's run ended: its name, its generation, and the error.
type Ended = (String, u64, Option<String>);

struct Herd {
    path: PathBuf,
    flags: Cli,
    matches: ArgMatches,
    apps: Apps,
    running: BTreeMap<String, Running>,
    /// The file's order, for listings and stops.
    order: Vec<String>,
    generation: u64,
    ended: mpsc::UnboundedSender<Ended>,
    /// Apps that failed on their own (every slot failed): their errors.
    failures: Vec<String>,
}

/// Runs the apps of the file `path`, with the flags given beside it.
pub(crate) async fn run(
    path: PathBuf,
    flags: Cli,
    matches: ArgMatches,
) -> Result<(), Box<dyn std::error::Error>> {
    let loaded = config::load(&path, &flags, &matches).map_err(|e| Usage(e.0))?;
    let json = flags.log_format == "json" || loaded.apps.iter().any(|a| a.cli.log_format == "json");
    warn(&loaded.warnings, json);
    let (ended_tx, mut ended_rx) = mpsc::unbounded_channel();
    let mut herd = Herd {
        path,
        flags,
        matches,
        apps: Apps::new(),
        running: BTreeMap::new(),
        order: Vec::new(),
        generation: 0,
        ended: ended_tx,
        failures: Vec::new(),
    };
    // Every socket is bound before anything starts: a file with one bad
    // app starts none.
    let mut built = Vec::new();
    for def in &loaded.apps {
        let cluster = build(&def.cli, false)
            .map_err(|e| Usage(format!("app `{}`: {}", def.name, chain(e.as_ref()))))?;
        built.push((def.clone(), cluster));
    }
    let (reconf_tx, mut reconf_rx) = mpsc::channel::<Reconfigure>(4);
    herd.apps.on_reconfigure(reconf_tx);
    let control = if herd.flags.no_control {
        None
    } else {
        let path = loaded
            .control
            .clone()
            .unwrap_or_else(|| crate::control::default_path(&loaded.name));
        match crate::control::serve_apps(herd.apps.clone(), &path).await {
            Ok(server) => Some(server),
            Err(e @ crate::Error::ControlInUse { .. }) => return Err(Usage(e.to_string()).into()),
            Err(e) => return Err(e.into()),
        }
    };
    for (def, cluster) in built {
        herd.launch(def, cluster).await?;
    }
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                match herd.reconfigure().await {
                    Ok(changes) => say(&format!("reloaded {}: {}", herd.path.display(), summary(&changes)), json),
                    Err(e) => say(&format!("reload of {} refused, nothing changed: {e}", herd.path.display()), json),
                }
            }
            Some(req) = reconf_rx.recv() => {
                let result = herd.reconfigure().await;
                let _ = req.reply.send(result);
            }
            Some((name, generation, error)) = ended_rx.recv() => {
                herd.ended(&name, generation, error);
                if herd.running.is_empty() {
                    break;
                }
            }
        }
    }
    herd.stop_all(&mut ended_rx).await;
    if let Some(control) = &control {
        control.finish().await;
    }
    if herd.failures.is_empty() {
        Ok(())
    } else {
        Err(herd.failures.join("; ").into())
    }
}

impl Herd {
    /// Starts a built app.
    async fn launch(
        &mut self,
        def: AppDef,
        cluster: crate::Cluster,
    ) -> Result<(), Box<dyn std::error::Error>> {
        let extras = Extras::start(&def.cli, &cluster).await?;
        let handle = cluster.handle();
        self.generation += 1;
        let generation = self.generation;
        let cli = def.cli.clone();
        let name = def.name.clone();
        let ended = self.ended.clone();
        let task = tokio::spawn(async move {
            let error = serve(&cli, cluster, extras)
                .await
                .err()
                .map(|e| chain(e.as_ref()));
            let _ = ended.send((name, generation, error));
        });
        self.apps.insert(&def.name, handle.clone());
        self.apps.set_info(
            &def.name,
            super::run::describe_info(&def.cli, Some(&self.path)),
        );
        if !self.order.contains(&def.name) {
            self.order.push(def.name.clone());
        }
        self.running.insert(
            def.name.clone(),
            Running {
                def,
                handle,
                task,
                generation,
            },
        );
        Ok(())
    }

    /// An app's run ended on its own (stopped through the API, or every
    /// slot failed).
    fn ended(&mut self, name: &str, generation: u64, error: Option<String>) {
        if self
            .running
            .get(name)
            .is_some_and(|r| r.generation == generation)
        {
            self.running.remove(name);
            self.apps.remove(name);
            if let Some(e) = error {
                self.failures.push(format!("app `{name}`: {e}"));
            }
        }
    }

    /// Stops one app and waits for it.
    async fn stop(&mut self, name: &str) {
        if let Some(r) = self.running.remove(name) {
            self.apps.remove(name);
            let _ = r.handle.shutdown().await;
            let _ = r.task.await;
        }
    }

    /// Stops every app (all at once) and waits for them.
    async fn stop_all(&mut self, ended: &mut mpsc::UnboundedReceiver<Ended>) {
        for r in self.running.values() {
            let handle = r.handle.clone();
            tokio::spawn(async move {
                let _ = handle.shutdown().await;
            });
        }
        let running = std::mem::take(&mut self.running);
        for (name, r) in running {
            let _ = r.task.await;
            self.apps.remove(&name);
        }
        while let Ok((name, _, Some(e))) = ended.try_recv() {
            self.failures.push(format!("app `{name}`: {e}"));
        }
    }

    /// Re-reads the file and applies the difference.
    async fn reconfigure(&mut self) -> Result<Changes, String> {
        let loaded: Loaded =
            config::load(&self.path, &self.flags, &self.matches).map_err(|e| e.0)?;
        warn(&loaded.warnings, self.flags.log_format == "json");
        let mut changes = Changes::default();
        let wanted: Vec<&str> = loaded.apps.iter().map(|a| a.name.as_str()).collect();
        let gone: Vec<String> = self
            .running
            .keys()
            .filter(|n| !wanted.contains(&n.as_str()))
            .cloned()
            .collect();
        for name in gone {
            self.stop(&name).await;
            self.order.retain(|n| n != &name);
            changes.stopped.push(name);
        }
        let mut errors = Vec::new();
        for def in loaded.apps {
            let name = def.name.clone();
            let outcome = match self.running.get(&name) {
                None => self.start(def).await.map(|()| &mut changes.started),
                Some(r) if r.def == def => Ok(&mut changes.unchanged),
                Some(r) if soft_change(&r.def.cli, &def.cli) => {
                    let handle = r.handle.clone();
                    match apply_soft(&handle, &r.def.cli, &def.cli).await {
                        Ok(replaced) => {
                            self.apps.set_info(
                                &name,
                                super::run::describe_info(&def.cli, Some(&self.path)),
                            );
                            if let Some(r) = self.running.get_mut(&name) {
                                r.def = def;
                            }
                            Ok(if replaced {
                                &mut changes.reloaded
                            } else {
                                &mut changes.updated
                            })
                        }
                        Err(e) => Err(e),
                    }
                }
                Some(_) => {
                    self.stop(&name).await;
                    self.start(def).await.map(|()| &mut changes.restarted)
                }
            };
            match outcome {
                Ok(list) => list.push(name),
                Err(e) => errors.push(format!("app `{name}`: {e}")),
            }
        }
        if errors.is_empty() {
            Ok(changes)
        } else {
            Err(format!(
                "{} (done: {})",
                errors.join("; "),
                summary(&changes)
            ))
        }
    }

    async fn start(&mut self, def: AppDef) -> Result<(), String> {
        let cluster = build(&def.cli, false).map_err(|e| chain(e.as_ref()))?;
        self.launch(def, cluster)
            .await
            .map_err(|e| chain(e.as_ref()))
    }
}

/// Whether only what a running cluster can take changed: the program,
/// its arguments, directory and environment (a reload), the worker count
/// (a scale), and the settings of [`crate::Update`].
fn soft_change(old: &Cli, new: &Cli) -> bool {
    let mut a = old.clone();
    a.command.clone_from(&new.command);
    a.cwd.clone_from(&new.cwd);
    a.env.clone_from(&new.env);
    a.unset_env.clone_from(&new.unset_env);
    a.workers = new.workers;
    a.drain_timeout = new.drain_timeout;
    a.stop_signal = new.stop_signal;
    a.kill_mode = new.kill_mode;
    a.restart = new.restart;
    a.restart_delay = new.restart_delay;
    a.restart_delay_max = new.restart_delay_max;
    a.crash_limit = new.crash_limit;
    a.crash_window = new.crash_window;
    a.min_uptime = new.min_uptime;
    a.start_timeout = new.start_timeout;
    a.on_start_timeout.clone_from(&new.on_start_timeout);
    a.max_memory = new.max_memory;
    a.max_requests = new.max_requests;
    a.reload_parallel = new.reload_parallel;
    a.pre_stop_delay = new.pre_stop_delay;
    a.settle = new.settle;
    a == *new
}

/// The settings of `cli` a running cluster takes ([`crate::Update`]).
fn settings(cli: &Cli) -> crate::Update {
    crate::Update::new()
        .drain_timeout(cli.drain_timeout)
        .stop_signal(cli.stop_signal)
        .kill_mode(cli.kill_mode)
        .supervision(crate::Supervision {
            restart: cli.restart,
            backoff: crate::Backoff {
                initial: cli.restart_delay,
                max: cli.restart_delay_max,
                ..crate::Backoff::default()
            },
            crash_loop: crate::CrashLoop {
                limit: cli.crash_limit,
                window: cli.crash_window,
            },
            min_uptime: cli.min_uptime,
        })
        .start_timeout(cli.start_timeout)
        .serve_on_start_timeout(cli.on_start_timeout == "serve")
        .max_memory(cli.max_memory)
        .max_requests(cli.max_requests)
        .reload_parallel(cli.reload_parallel)
        .pre_stop_delay(cli.pre_stop_delay)
        .settle(cli.settle)
}

/// Applies a soft change: the new settings, the new command for every
/// worker from now on and a rolling reload, then the new worker count.
/// Whether a worker was replaced.
async fn apply_soft(handle: &Handle, old: &Cli, new: &Cli) -> Result<bool, String> {
    if settings(old) != settings(new) {
        handle.update(settings(new)).await.map_err(|e| e.chain())?;
    }
    let command_changed = old.command != new.command
        || old.cwd != new.cwd
        || old.env != new.env
        || old.unset_env != new.unset_env;
    if command_changed {
        let (program, args) = new.command.split_first().ok_or("`command` is empty")?;
        let mut command = WorkerCommand::new(program).args(args);
        if let Some(dir) = &new.cwd {
            command = command.current_dir(dir);
        }
        for k in &new.unset_env {
            command = command.env_remove(k);
        }
        for (k, v) in new.env_vars() {
            command = command.env(k, v);
        }
        handle.set_command(command).await.map_err(|e| e.chain())?;
        let report = handle.reload().await.map_err(|e| e.chain())?;
        if let Some(f) = report.failure {
            return Err(format!("its reload was aborted: {}", f.reason));
        }
    }
    if old.workers != new.workers {
        let n = new
            .workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |p| p.get()));
        handle.scale(n).await.map_err(|e| e.chain())?;
    }
    Ok(command_changed || old.workers != new.workers)
}

fn summary(c: &Changes) -> String {
    let parts: Vec<String> = [
        ("started", &c.started),
        ("stopped", &c.stopped),
        ("reloaded", &c.reloaded),
        ("updated", &c.updated),
        ("restarted", &c.restarted),
        ("unchanged", &c.unchanged),
    ]
    .iter()
    .filter(|(_, v)| !v.is_empty())
    .map(|(what, v)| format!("{what} {}", v.join(", ")))
    .collect();
    if parts.is_empty() {
        "no apps".into()
    } else {
        parts.join("; ")
    }
}

/// A herd-wide notice: `kind` and `level` in JSON, the text otherwise.
fn notice(kind: &str, level: &str, text: &str, json: bool) {
    let line = serde_json::json!({
        "event": "notice",
        "slot": null,
        "notice": kind,
        "level": level,
        "message": text,
    });
    let prefix = if level == "warn" { "warning: " } else { "" };
    super::event_line(None, json, line, |tag| format!("{tag}: {prefix}{text}"));
}

fn warn(warnings: &[String], json: bool) {
    for w in warnings {
        notice("config_ignored", "warn", w, json);
    }
}

fn say(text: &str, json: bool) {
    notice("config_reloaded", "info", text, json);
}
