//! herd as a unit of a service manager: the master's own sd_notify
//! messages, recorded on a fake NOTIFY_SOCKET (systemd is not PID 1 here).

mod common;

use std::os::unix::net::UnixDatagram;
use std::sync::mpsc;
use std::time::Instant;

use common::*;
use nix::sys::signal::Signal;

/// A datagram socket standing in for systemd's, and the messages it got.
struct FakeSystemd {
    path: std::path::PathBuf,
    messages: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl FakeSystemd {
    fn new() -> FakeSystemd {
        let path = std::env::temp_dir().join(format!(
            "herd-notify-{}-{}",
            std::process::id(),
            free_port()
        ));
        let socket = UnixDatagram::bind(&path).unwrap();
        let (tx, messages) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = socket.recv(&mut buf) {
                if tx
                    .send(String::from_utf8_lossy(&buf[..n]).into_owned())
                    .is_err()
                {
                    return;
                }
            }
        });
        FakeSystemd {
            path,
            messages,
            seen: Vec::new(),
        }
    }

    /// Waits for a message that `pred` accepts; returns it.
    fn wait(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.messages.recv_timeout(left) {
                Ok(m) => {
                    self.seen.push(m.clone());
                    if pred(&m) {
                        return m;
                    }
                }
                Err(_) => panic!("no {what}; got {:?}", self.seen),
            }
        }
    }
}

impl Drop for FakeSystemd {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn fields(message: &str) -> Vec<(&str, &str)> {
    message.lines().filter_map(|l| l.split_once('=')).collect()
}

#[test]
fn the_master_tells_its_service_manager_ready_reloading_upgrading_and_stopping() {
    let mut systemd = FakeSystemd::new();
    let socket = systemd.path.clone();
    let mut m = Master::start_with(
        &cmd(&["-w", "2", "--ready", "notify"], &hello_server()),
        |c| {
            c.env("NOTIFY_SOCKET", &socket)
                .env("WATCHDOG_USEC", "200000");
        },
    );

    let ready = systemd.wait("READY=1", |m| m.contains("READY=1"));
    assert!(
        fields(&ready).contains(&("STATUS", "2/2 workers ready")),
        "{ready}"
    );
    m.wait_kind("ready", 2);
    systemd.wait("a watchdog ping", |m| m == "WATCHDOG=1");

    m.signal(Signal::SIGHUP);
    let reloading = systemd.wait("RELOADING=1", |m| m.contains("RELOADING=1"));
    let usec: u64 = fields(&reloading)
        .iter()
        .find(|(k, _)| *k == "MONOTONIC_USEC")
        .expect("MONOTONIC_USEC")
        .1
        .parse()
        .unwrap();
    assert!(usec > 0);
    systemd.wait("READY=1 after the reload", |m| {
        m.lines().any(|l| l == "READY=1")
    });
    m.wait_events("the reload", |e| complete_reloads(e) == 1);

    // An upgrade in place is a reload to systemd: RELOADING=1 from the
    // old master, READY=1 from the new one, in the same process.
    m.signal(Signal::SIGUSR2);
    systemd.wait("RELOADING=1 for the upgrade", |m| m.contains("RELOADING=1"));
    let ready = systemd.wait("READY=1 from the new master", |m| {
        m.lines().any(|l| l == "READY=1")
    });
    assert!(
        fields(&ready).contains(&("STATUS", "2/2 workers ready")),
        "{ready}"
    );
    m.wait_kind("upgraded", 1);
    systemd.wait("the new master's watchdog ping", |m| m == "WATCHDOG=1");

    m.signal(Signal::SIGTERM);
    systemd.wait("STOPPING=1", |m| m.contains("STOPPING=1"));
    assert!(m.wait_exit().success());
    // Only the master spoke: the workers report to herd's own socket.
    let readies = systemd
        .seen
        .iter()
        .filter(|m| m.lines().any(|l| l == "READY=1"))
        .count();
    assert_eq!(readies, 3, "{:?}", systemd.seen);
}

/// `systemd-socket-activate -l ADDR cluster ...`: the master serves the
/// socket it was given (shared, as it lacks SO_REUSEPORT), and the
/// connection that woke it, queued on that socket, is answered.
#[test]
fn the_master_serves_sockets_passed_by_socket_activation() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::process::CommandExt;
    let Some(activate) = on_path("systemd-socket-activate") else {
        eprintln!("systemd-socket-activate is not installed: nothing to test");
        return;
    };
    let port = free_port();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut child = std::process::Command::new(activate)
        .args(["-l", &addr.to_string(), "-E", "PATH"])
        .arg(example("cluster"))
        .args(control_args(&[]))
        .args(["--log-format", "json", "-w", "2", "--ready", "notify"])
        .args(hello_server())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("systemd-socket-activate");
    let _guard = GroupGuard(nix::unistd::Pid::from_raw(child.id() as i32));
    let stderr = child.stderr.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    // systemd-socket-activate starts the master at the first connection.
    let waiting = {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            if std::net::TcpStream::connect(addr).is_ok() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "nothing listens on {addr}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        std::thread::spawn(move || get(addr, "/"))
    };
    let body = waiting
        .join()
        .unwrap()
        .expect("the queued connection is served");
    assert!(body.contains("pid="), "{body}");
    let mut listening = None;
    let deadline = std::time::Instant::now() + WAIT;
    while listening.is_none() {
        let line = lines
            .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
            .expect("the master's listening event");
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if v["event"] == "listening" {
            listening = Some(v);
        }
    }
    let listening = listening.unwrap();
    assert_eq!(listening["addr"], addr.to_string());
    assert_eq!(listening["balance"], "shared");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        Signal::SIGTERM,
    )
    .unwrap();
    assert!(wait_child(&mut child, "the activated master").success());
}

/// `--print-systemd-unit`: a unit that runs the same command, with a stop
/// timeout above herd's own drain.
#[test]
fn the_printed_unit_runs_the_same_command_under_systemd() {
    let out = std::process::Command::new(example("cluster"))
        .args([
            "--print-systemd-unit",
            "--socket-unit",
            "--name",
            "api",
            "-w",
            "4",
            "-l",
            "127.0.0.1:8080",
            "--drain-timeout",
            "30s",
            "--pre-stop-delay",
            "5s",
            "node",
            "my server.js",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let value = |key: &str| -> Vec<String> {
        text.lines()
            .filter_map(|l| l.strip_prefix(&format!("{key}=")))
            .map(str::to_owned)
            .collect()
    };
    // notify-reload where systemd has it (253), else notify with the
    // signal as the reload.
    let systemd: Option<u32> = std::process::Command::new("systemctl")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse().ok())
        });
    if systemd.is_none_or(|v| v >= 253) {
        assert_eq!(value("Type"), ["notify-reload"]);
    } else {
        assert_eq!(value("Type"), ["notify"]);
        assert_eq!(value("ExecReload"), ["/bin/kill -HUP $MAINPID"]);
    }
    assert_eq!(value("KillMode"), ["mixed"]);
    assert_eq!(value("TimeoutStopSec"), ["40"], "30s drain + 5s delay + 5s");
    assert_eq!(value("ListenStream"), ["127.0.0.1:8080"]);
    assert_eq!(value("ReusePort"), ["yes"]);
    let exec = &value("ExecStart")[0];
    // This binary, or the installed herd when this one is a cargo build.
    let binary = exec.split(' ').next().unwrap();
    assert!(
        std::path::Path::new(binary).is_absolute() && std::path::Path::new(binary).is_file(),
        "{exec}"
    );
    assert!(
        exec.ends_with(r#"--name api -w 4 -l 127.0.0.1:8080 --drain-timeout 30s --pre-stop-delay 5s node "my server.js""#),
        "{exec}"
    );
    assert!(!exec.contains("--print-systemd-unit"));
    // systemd's own checker, where it is installed: nothing but its age
    // (notify-reload needs systemd 253) may be reported.
    if on_path("systemd-analyze").is_some() {
        let dir = std::env::temp_dir().join(format!("herd-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let service = text.split("# api.service\n").nth(1).unwrap();
        std::fs::write(dir.join("api.service"), service).unwrap();
        let check = std::process::Command::new("systemd-analyze")
            .arg("verify")
            .arg(dir.join("api.service"))
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&check.stderr).into_owned();
        for line in report.lines().filter(|l| !l.trim().is_empty()) {
            assert!(
                line.contains("notify-reload")
                    || line.contains("ReloadSignal")
                    || line.contains("api.socket"),
                "{report}"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// The uid and an environment variable of a running process.
fn uid_and_env(pid: u32, key: &str) -> (u32, Option<String>) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    let value = environ
        .split(|&b| b == 0)
        .find_map(|kv| kv.strip_prefix(format!("{key}=").as_bytes()))
        .map(|v| String::from_utf8_lossy(v).into_owned());
    (uid, value)
}

#[test]
fn workers_run_as_the_given_user_while_the_master_keeps_its_sockets() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("not root: running workers as another user cannot be tested here");
        return;
    }
    for (ready, program) in [("notify", hello_server()), ("auto", node_server())] {
        let mut m = Master::start(&cmd(
            &["-w", "2", "--user", "nobody", "--ready", ready],
            &program,
        ));
        m.wait_kind("ready", 2);
        for pid in m.live_pids() {
            let (uid, home) = uid_and_env(pid, "USER");
            assert_eq!(uid, 65534, "worker {pid} runs as nobody");
            assert_eq!(home.as_deref(), Some("nobody"));
        }
        let body = m.get("/").unwrap_or_else(|e| panic!("{e}\n{}", m.log()));
        assert!(m.live_pids().contains(&pid_of(&body)));
        m.signal(Signal::SIGTERM);
        assert!(m.wait_exit().success(), "{}", m.log());
    }
}

#[test]
fn another_user_is_refused_to_a_master_that_is_not_root_and_unknown_ones_are_named() {
    use std::os::unix::process::CommandExt;
    let mut m = Master::spawn(&cmd(&["--user", "no-such-user-herd"], &hello_server()));
    assert_eq!(m.wait_exit().code(), Some(2));
    assert!(m.log().contains("no-such-user-herd"), "{}", m.log());
    if nix::unistd::Uid::effective().is_root() {
        let out = std::process::Command::new(example("cluster"))
            .args(["--no-control", "--user", "root", "-l", "127.0.0.1:0"])
            .args(hello_server())
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(2),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stderr).contains("root"));
    }
}
