//! What a worker runs: the public [`WorkerCommand`], checked and prepared
//! for exec (the program found as `execvp` would, before anything is
//! spawned, so a typo is an error at build time and not a crash loop).

use std::ffi::{CString, OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::unistd::AccessFlags;

use crate::types::{Error, Result};

/// What a worker runs: a program, its arguments, changes to the master's
/// environment and a working directory, for [`Handle::set_command`](crate::Handle::set_command). The
/// same rules as the [`Builder`](crate::Builder)'s `command`, `arg`, `env`, `env_remove`
/// and `current_dir` apply.
#[derive(Debug, Clone)]
pub struct WorkerCommand {
    pub(crate) program: OsString,
    pub(crate) args: Vec<OsString>,
    pub(crate) env: Vec<(OsString, Option<OsString>)>,
    pub(crate) cwd: Option<PathBuf>,
}

impl WorkerCommand {
    /// A command that runs `program` (a path, or a name looked up on
    /// `PATH`), with the master's environment and directory.
    pub fn new(program: impl AsRef<OsStr>) -> WorkerCommand {
        WorkerCommand {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            env: Vec::new(),
            cwd: None,
        }
    }

    /// Whether herd sees this program as Node: `node` itself, or a script
    /// whose `#!` line runs node (npm, npx, tsx, an executable app). Such
    /// workers get the preload unless [`Builder::node_preload`](crate::Builder::node_preload) turns it off.
    ///
    /// # Errors
    ///
    /// As [`Builder::build`](crate::Builder::build): the program not found, a bad directory.
    pub fn runs_node(&self) -> crate::Result<bool> {
        Ok(prepare_command(self, None)?.runs_node)
    }

    /// Appends one argument.
    #[must_use = "a builder method returns the changed command"]
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Appends arguments.
    #[must_use = "a builder method returns the changed command"]
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets an environment variable for the workers.
    #[must_use = "a builder method returns the changed command"]
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((key.as_ref().to_owned(), Some(value.as_ref().to_owned())));
        self
    }

    /// Removes a variable of the master's environment from the workers'.
    #[must_use = "a builder method returns the changed command"]
    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> Self {
        self.env.push((key.as_ref().to_owned(), None));
        self
    }

    /// The workers' working directory.
    #[must_use = "a builder method returns the changed command"]
    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.cwd = Some(dir.as_ref().to_owned());
        self
    }
}

/// A worker command, validated and prepared for exec.
#[derive(Debug, Clone)]
pub(crate) struct Command {
    /// The program as the user wrote it, for messages.
    pub(crate) program: String,
    pub(crate) path: CString,
    pub(crate) argv: Vec<CString>,
    pub(crate) env: Vec<(OsString, OsString)>,
    pub(crate) cwd: Option<CString>,
    /// Whether it runs Node (directly, through a launcher or a `#!`).
    pub(crate) runs_node: bool,
    /// The installed Node preload, when the program is Node and the preload
    /// is on.
    pub(crate) preload: Option<PathBuf>,
}

/// Checks a program, its arguments, environment changes and directory,
/// and prepares them for exec.
///
/// # Errors
///
/// The program not found or not executable, a bad directory, a reserved
/// or malformed environment name, a NUL byte.
/// `preload`: None without the Node preload, else whether it must be
/// readable by another user.
pub(crate) fn prepare_command(command: &WorkerCommand, preload: Option<bool>) -> Result<Command> {
    let program = command.program.as_os_str();
    let args = &command.args;
    let env_changes = &command.env;
    let cwd = command.cwd.as_deref();
    crate::process::contract::check_changes(env_changes)?;
    if let Some(dir) = cwd {
        if !dir.is_dir() {
            return Err(Error::BadWorkingDirectory {
                path: dir.to_path_buf(),
            });
        }
    }
    let env = crate::process::contract::base(env_changes);
    let path = resolve_program(program, cwd, &env)?;
    let runs_node = crate::node::is_node(Path::new(program)) || crate::node::runs_node(&path);
    let preload = match preload {
        Some(shared) if runs_node => Some(crate::node::install_preload(shared)?),
        _ => None,
    };
    let cstring = |s: &OsStr, what: &'static str| {
        CString::new(s.as_bytes()).map_err(|_| Error::InvalidSetting {
            setting: what,
            reason: format!("`{}` contains a NUL byte", s.to_string_lossy()),
        })
    };
    let mut argv = vec![cstring(program, "command")?];
    for a in args {
        argv.push(cstring(a, "args")?);
    }
    Ok(Command {
        program: program.to_string_lossy().into_owned(),
        path: cstring(path.as_os_str(), "command")?,
        argv,
        env,
        cwd: match cwd {
            Some(d) => Some(cstring(d.as_os_str(), "current_dir")?),
            None => None,
        },
        runs_node,
        preload,
    })
}

/// Finds the program the way `execvp` would, but before anything is
/// spawned, so that a typo is an error at build time and not a crash loop.
fn resolve_program(
    program: &OsStr,
    cwd: Option<&Path>,
    env: &[(OsString, OsString)],
) -> Result<PathBuf> {
    let name = program.to_string_lossy().into_owned();
    if program.is_empty() {
        return Err(Error::ProgramNotFound { program: name });
    }
    let check = |p: PathBuf| -> Result<PathBuf> {
        if p.is_dir() {
            return Err(Error::ProgramIsDirectory { path: p });
        }
        if !p.is_file() {
            return Err(Error::ProgramNotFound {
                program: name.clone(),
            });
        }
        // access(2) alone is not enough for root, and some sandboxes answer
        // it loosely: execve needs at least one execute bit.
        let has_x_bit = std::fs::metadata(&p)
            .map(|m| m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false);
        if !has_x_bit || nix::unistd::access(&p, AccessFlags::X_OK).is_err() {
            return Err(Error::ProgramNotExecutable { path: p });
        }
        Ok(p)
    };
    if program.as_bytes().contains(&b'/') {
        let p = PathBuf::from(program);
        let p = match cwd {
            Some(dir) if p.is_relative() => dir.join(p),
            _ => p,
        };
        return check(p);
    }
    let path_var = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| OsString::from("/usr/local/bin:/usr/bin:/bin"));
    let mut not_executable = None;
    for dir in std::env::split_paths(&path_var) {
        let candidate = dir.join(program);
        if candidate.is_file() {
            match check(candidate) {
                Ok(p) => return Ok(p),
                Err(e) => not_executable = not_executable.or(Some(e)),
            }
        }
    }
    Err(not_executable.unwrap_or(Error::ProgramNotFound { program: name }))
}
