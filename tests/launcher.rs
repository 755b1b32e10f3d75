//! `examples/launcher.rs`: the same-binary pattern and the admin endpoint,
//! as a launcher author would run them.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use common::{example, get, pid_of, wait_child, GroupGuard, IO_TIMEOUT, WAIT};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

/// One request to the admin endpoint: (status, JSON body).
fn admin(addr: SocketAddr, method: &str, path: &str) -> (u16, Value) {
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text[9..12].parse().unwrap();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    (status, serde_json::from_str(body).unwrap())
}

fn worker_pids(table: &Value) -> Vec<u64> {
    let mut pids: Vec<u64> = table["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|w| w["pid"].as_u64())
        .collect();
    pids.sort_unstable();
    pids
}

#[test]
fn one_binary_runs_its_own_workers_and_an_admin_endpoint_reloads_them() {
    let mut child = Command::new(example("launcher"))
        .env("PORT", "0")
        .env("ADMIN_PORT", "0")
        .env("WORKERS", "2")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("spawn the launcher example");
    let _guard = GroupGuard(Pid::from_raw(child.id() as i32));
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let addrs: Value = serde_json::from_str(&first).unwrap();
    let app: SocketAddr = addrs["app"].as_str().unwrap().parse().unwrap();
    let app = SocketAddr::from(([127, 0, 0, 1], app.port()));
    let admin_addr: SocketAddr = addrs["admin"].as_str().unwrap().parse().unwrap();

    // The table fills in as the workers (the launcher's own binary) start.
    let deadline = std::time::Instant::now() + WAIT;
    let table = loop {
        let (status, table) = admin(admin_addr, "GET", "/workers");
        assert_eq!(status, 200);
        let ready = table["workers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|w| w["state"] == "ready")
            .count();
        if ready == 2 {
            break table;
        }
        assert!(std::time::Instant::now() < deadline, "{table}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(table["phase"], "running");
    let before = worker_pids(&table);
    assert!(table["workers"][0]["uptime_ms"].is_u64(), "{table}");
    let served = pid_of(&get(app, "/").unwrap()) as u64;
    assert!(before.contains(&served), "{served} not in {before:?}");

    let (status, report) = admin(admin_addr, "POST", "/reload");
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["replaced"].as_array().unwrap().len(), 2, "{report}");
    assert!(report["failure"].is_null());
    let (_, table) = admin(admin_addr, "GET", "/workers");
    let after = worker_pids(&table);
    assert_eq!(after.len(), 2);
    assert!(
        after.iter().all(|p| !before.contains(p)),
        "{before:?} -> {after:?}"
    );

    assert_eq!(admin(admin_addr, "GET", "/nope").0, 404);

    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let status = wait_child(&mut child, "the launcher");
    assert!(status.success(), "{status}");
}
