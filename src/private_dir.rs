//! Directories that only the master's user can write: the runtime
//! directory (`/tmp/herd-UID`, `$XDG_RUNTIME_DIR/herd`) and the control
//! directory below it.
//!
//! `/tmp` is shared: another local user could create `/tmp/herd-0/`
//! first, mode 0777, and swap the control socket under a root master. So
//! each directory herd makes is created with an exclusive `mkdir`, and
//! every one it uses is opened with `O_NOFOLLOW` and checked with `fstat`
//! on that open directory (not on the path, which could be swapped in
//! between): it must be a directory, owned by the master's effective uid,
//! and writable by nobody else. Anything else is refused with an error
//! that names the path and what is wrong.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{open, OFlag};
use nix::sys::stat::{fstat, Mode};

use crate::types::{Error, Result};

/// Creates `dir` (and each missing parent, with the same `mode`) unless it
/// exists, then checks every directory it created and `dir` itself.
///
/// # Errors
///
/// [`Error::Io`] naming the directory that could not be made or that
/// another user could write to.
pub(crate) fn ensure(dir: &Path, mode: u32) -> Result<PathBuf> {
    let mut missing = Vec::new();
    let mut at = dir;
    while !at.as_os_str().is_empty() && std::fs::symlink_metadata(at).is_err() {
        missing.push(at);
        match at.parent() {
            Some(parent) => at = parent,
            None => break,
        }
    }
    for d in missing.iter().rev() {
        match std::fs::DirBuilder::new().mode(mode).create(d) {
            Ok(()) => {}
            // Made meanwhile: checked below like any other.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::io(format!("creating {}", d.display()), e)),
        }
        check(d)?;
    }
    if missing.is_empty() {
        check(dir)?;
    }
    Ok(dir.to_path_buf())
}

/// A directory the operator chose (not herd's own): refused only when
/// users other than its owner could write to it, unless it is sticky like
/// `/tmp` (where nobody can rename or remove what another user put there).
///
/// # Errors
///
/// [`Error::Io`] naming the path and its mode.
#[cfg(feature = "control")]
pub(crate) fn check_chosen(dir: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta =
        std::fs::metadata(dir).map_err(|e| Error::io(format!("checking {}", dir.display()), e))?;
    let mode = meta.mode();
    if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        return Err(Error::io(
            format!(
                "{} can be written by other users (mode {:o}), who could swap the control \
                 socket: chmod go-w it or choose another directory",
                dir.display(),
                mode & 0o7777
            ),
            std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        ));
    }
    Ok(())
}

/// Checks that `dir` is a directory (not a symlink) owned by this user
/// that nobody else can write.
///
/// # Errors
///
/// [`Error::Io`] naming the path and what is wrong with it.
pub(crate) fn check(dir: &Path) -> Result<()> {
    let refused = |what: String| {
        Error::io(
            what,
            std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        )
    };
    let fd = match open(
        dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::ELOOP | Errno::ENOTDIR) => {
            return Err(refused(format!(
                "{} is a symlink or not a directory: herd keeps its sockets only in a \
                 directory of its own; remove it",
                dir.display()
            )))
        }
        Err(e) => {
            return Err(Error::io(
                format!("opening {}", dir.display()),
                std::io::Error::from(e),
            ))
        }
    };
    let st = fstat(&fd).map_err(|e| {
        Error::io(
            format!("checking {}", dir.display()),
            std::io::Error::from(e),
        )
    })?;
    let me = nix::unistd::geteuid().as_raw();
    if st.st_uid != me {
        return Err(refused(format!(
            "{} belongs to uid {}, not to this user (uid {me}): another user may have \
             created it first; remove it or choose another path",
            dir.display(),
            st.st_uid
        )));
    }
    if st.st_mode & 0o022 != 0 {
        return Err(refused(format!(
            "{} can be written by other users (mode {:o}): chmod go-w it or remove it",
            dir.display(),
            st.st_mode & 0o7777
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("herd-pdir-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn a_new_directory_and_its_missing_parents_are_made_private() {
        let base = scratch("new");
        let dir = base.join("a").join("control");
        ensure(&dir, 0o700).unwrap();
        for d in [&base, &base.join("a"), &dir] {
            let mode = std::fs::metadata(d).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "{} is {mode:o}", d.display());
        }
        // Again: it exists and is still fine.
        ensure(&dir, 0o700).unwrap();
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn a_directory_others_can_write_or_a_symlink_is_refused_by_name() {
        let base = scratch("open");
        std::fs::create_dir(&base).unwrap();
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = ensure(&base, 0o700).unwrap_err().to_string();
        assert!(e.contains(&base.display().to_string()), "{e}");
        let link = scratch("link");
        std::os::unix::fs::symlink(&base, &link).unwrap();
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o700)).unwrap();
        let e = ensure(&link, 0o700).unwrap_err().to_string();
        assert!(e.contains("symlink"), "{e}");
        std::fs::remove_file(&link).unwrap();
        std::fs::remove_dir_all(&base).unwrap();
    }
}
