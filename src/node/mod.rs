//! Support for Node programs: the preload that lets unmodified apps use the
//! inherited sockets, report readiness and drain.
//!
//! The preload's source is compiled into herd and written, once per
//! content, to a directory only this user can write to, so that
//! `NODE_OPTIONS=--require <file>` cannot be made to load someone else's
//! code.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::types::{Error, Result};

/// The preload's source.
pub(crate) const PRELOAD_JS: &str = include_str!("preload.js");

/// Whether `program` (as given, or resolved) is Node: `node`, `nodejs`,
/// `node20`, ...
pub(crate) fn is_node(program: &Path) -> bool {
    let Some(name) = program.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    let rest = name
        .strip_prefix("nodejs")
        .or_else(|| name.strip_prefix("node"));
    rest.is_some_and(|r| {
        r.chars()
            .all(|c| c.is_ascii_digit() || c == '.' || c == '-')
    })
}

/// Whether the resolved program runs Node: it is `node`, or a script whose
/// `#!` line starts node (`#!/usr/bin/env node`, `#!/usr/bin/node`,
/// `#!/usr/bin/env -S node --flags`). npm, npx, yarn, pnpm and tsx are such
/// scripts, and so is an app made executable with that line.
pub(crate) fn runs_node(path: &Path) -> bool {
    if is_node(path) {
        return true;
    }
    let mut head = [0u8; 256];
    let n = std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read(&mut f, &mut head))
        .unwrap_or(0);
    shebang_runs_node(&head[..n])
}

fn shebang_runs_node(head: &[u8]) -> bool {
    let Some(rest) = head.strip_prefix(b"#!") else {
        return false;
    };
    let line = rest.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_whitespace();
    let Some(interpreter) = words.next() else {
        return false;
    };
    if Path::new(interpreter).file_name().and_then(|n| n.to_str()) != Some("env") {
        return is_node(Path::new(interpreter));
    }
    // env's own options and VAR=value assignments come before the command.
    words
        .find(|w| !w.starts_with('-') && !w.contains('='))
        .is_some_and(|w| is_node(Path::new(w)))
}

/// Writes the preload where Node can `--require` it and returns its path.
///
/// # Errors
///
/// [`Error::Io`] if the private directory cannot be made or is not private.
pub(crate) fn install_preload(shared: bool) -> Result<PathBuf> {
    let dir = if shared {
        shared_dir()?
    } else {
        private_dir()?
    };
    let hash = fnv1a(PRELOAD_JS.as_bytes());
    let path = dir.join(format!("preload-{hash:016x}.js"));
    if std::fs::read_to_string(&path).is_ok_and(|s| s == PRELOAD_JS) {
        return Ok(path);
    }
    let tmp = dir.join(format!("preload-{hash:016x}.{}.tmp", std::process::id()));
    let io = |what: &str, e| Error::io(format!("{what} {}", tmp.display()), e);
    let mut f = std::fs::File::create(&tmp).map_err(|e| io("creating", e))?;
    f.write_all(PRELOAD_JS.as_bytes())
        .map_err(|e| io("writing", e))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))
        .map_err(|e| io("chmod", e))?;
    std::fs::rename(&tmp, &path).map_err(|e| io("renaming", e))?;
    Ok(path)
}

/// `$XDG_RUNTIME_DIR/herd`, else `/tmp/herd-<uid>`: created 0700, and
/// refused if someone else owns it or others can write to it.
pub(crate) fn private_dir() -> Result<PathBuf> {
    let uid = nix::unistd::getuid().as_raw();
    let dir = match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if Path::new(&d).is_dir() => PathBuf::from(d).join("herd"),
        _ => std::env::temp_dir().join(format!("herd-{uid}")),
    };
    own_dir(dir, 0o700)
}

/// `/tmp/herd-<uid>-shared`: created 0755, for what workers running as
/// another user must read (the preload); refused, as the private one, if
/// someone else owns it or others can write to it.
pub(crate) fn shared_dir() -> Result<PathBuf> {
    let uid = nix::unistd::getuid().as_raw();
    own_dir(
        std::env::temp_dir().join(format!("herd-{uid}-shared")),
        0o755,
    )
}

fn own_dir(dir: PathBuf, mode: u32) -> Result<PathBuf> {
    crate::private_dir::ensure(&dir, mode)
}

/// A stable content hash for the file name (not for security).
fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn node_is_recognised_by_name() {
        for yes in ["node", "/usr/bin/node", "nodejs", "node20", "node-20.1"] {
            assert!(is_node(Path::new(yes)), "{yes}");
        }
        for no in ["nodemon", "python3", "/opt/node/bin/npm", "nodes"] {
            assert!(!is_node(Path::new(no)), "{no}");
        }
    }

    #[test]
    fn scripts_that_start_node_are_recognised_by_their_shebang() {
        for yes in [
            &b"#!/usr/bin/env node\nrequire('x')"[..],
            b"#!/usr/bin/node",
            b"#! /usr/bin/env -S node --max-old-space-size=512\n",
            b"#!/usr/bin/env NODE_ENV=production node\n",
        ] {
            assert!(shebang_runs_node(yes), "{}", String::from_utf8_lossy(yes));
        }
        for no in [
            &b"#!/bin/sh\nexec node app.js"[..],
            b"#!/usr/bin/env python3",
            b"\x7fELF",
            b"",
            b"#!/usr/bin/env nodemon",
        ] {
            assert!(!shebang_runs_node(no), "{}", String::from_utf8_lossy(no));
        }
    }

    #[test]
    fn npm_itself_runs_node() {
        // Where npm is installed (it is on the test machines), the file
        // behind the name is a node script.
        if let Some(npm) = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .map(|d| d.join("npm"))
            .find(|p| p.is_file())
        {
            assert!(runs_node(&npm), "{}", npm.display());
        }
        assert!(!runs_node(Path::new("/bin/sh")));
    }

    #[test]
    fn the_preload_is_installed_once_in_a_private_directory() {
        let a = install_preload(false).unwrap();
        let b = install_preload(false).unwrap();
        assert_eq!(a, b);
        assert_eq!(std::fs::read_to_string(&a).unwrap(), PRELOAD_JS);
        let dir = std::fs::metadata(a.parent().unwrap()).unwrap();
        assert_eq!(dir.mode() & 0o077, 0);
        // For workers of another user: readable, still not writable.
        let shared = install_preload(true).unwrap();
        assert_eq!(std::fs::read_to_string(&shared).unwrap(), PRELOAD_JS);
        let dir = std::fs::metadata(shared.parent().unwrap()).unwrap();
        assert_eq!(dir.mode() & 0o777, 0o755);
    }
}
