//! The control socket and herdctl.

use std::path::PathBuf;

use super::*;

/// A control socket of its own for each master a test starts (tests run
/// in parallel, and the default path is per program name), unless the
/// test chose one.
pub fn control_args(args: &[String]) -> Vec<String> {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    if args.iter().any(|a| a == "--control" || a == "--no-control") {
        return Vec::new();
    }
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir()
        .join(format!("herd-test-{}-{n}", std::process::id()))
        .join("control.sock");
    vec!["--control".into(), path.display().to_string()]
}

/// A control socket path of a test's own, in a directory of its own.
pub fn control_path() -> PathBuf {
    std::env::temp_dir()
        .join(format!("herd-ctl-{}-{}", std::process::id(), free_port()))
        .join("control.sock")
}

/// A master started with a control socket of its own, and that socket.
pub fn controlled(extra: &[&str], program: &[String]) -> (Master, std::path::PathBuf) {
    let path = control_path();
    let mut args = s(&["--control", &path.display().to_string()]);
    args.extend(cmd(extra, program));
    (Master::start(&args), path)
}

/// Runs herdctl against `path`: (exit code, stdout, stderr).
pub fn herdctl(path: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    herdctl_as(path, args, None)
}

/// [`herdctl`] as another user.
pub fn herdctl_as(
    path: &std::path::Path,
    args: &[&str],
    uid: Option<u32>,
) -> (i32, String, String) {
    use std::os::unix::process::CommandExt;
    let mut c = std::process::Command::new(example("herdctl"));
    c.arg("--control").arg(path).args(args);
    if let Some(uid) = uid {
        c.uid(uid).gid(uid);
    }
    let mut child = c
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("herdctl");
    let status = wait_child(&mut child, "herdctl");
    let mut out = String::new();
    let mut err = String::new();
    use std::io::Read;
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status.code().unwrap_or(-1), out, err)
}
