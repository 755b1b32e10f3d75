//! Upgrading the master in place (SIGUSR2, `herdctl upgrade`): same pid,
//! the workers keep serving and keep their pids, and the new master still
//! supervises them; a broken new binary changes nothing.

mod common;

use std::path::Path;

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The ready workers' pids by slot, from the master's own table.
fn table(path: &Path) -> serde_json::Value {
    let (code, out, err) = herdctl(path, &["ls", "--json"]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap()
}

fn pids(table: &serde_json::Value) -> Vec<u32> {
    table["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| pid_field(w, "pid"))
        .collect()
}

fn upgrades_under_load(balance: &str, extra: &[&str], program: &[String]) {
    let mut opts = vec!["-w", "2", "--balance", balance];
    opts.extend(extra);
    let (mut m, control) = controlled(&opts, program);
    m.wait_kind("ready", 2);
    let before = table(&control);
    let workers = pids(&before);
    let load = Load::start(m.addr, 2, false);
    load.wait_answered(50);

    // SIGUSR2: the same process runs the new binary and takes over.
    m.signal(Signal::SIGUSR2);
    let events = m.wait_kind("upgraded", 1);
    let upgraded = of_kind(&events, "upgraded").next().unwrap();
    assert_eq!(pids_in(upgraded, "workers"), workers, "{upgraded}");
    let after = table(&control);
    assert_eq!(after["pid"], m.child.id(), "the master kept its pid");
    assert_eq!(after["upgrades"], 1);
    assert_eq!(pids(&after), workers, "the workers kept their pids");
    let n = load.answered();
    load.wait_answered(n + 200);
    load.finish_without_failures();

    // Still supervised (without load: a worker killed by SIGKILL takes the
    // requests it had accepted with it): a killed worker is reaped and
    // replaced...
    kill(Pid::from_raw(workers[1] as i32), Signal::SIGKILL).unwrap();
    let exited = m.wait_pid_event("exited", workers[1]);
    assert_eq!(exited["expected"], false, "{exited}");
    m.wait_kind("ready", 3);
    // ... a reload replaces every worker ...
    m.signal(Signal::SIGHUP);
    m.wait_events("a complete reload", |e| complete_reloads(e) == 1);
    let reloaded = pids(&table(&control));
    assert!(
        reloaded.iter().all(|p| !workers.contains(p)),
        "{reloaded:?}"
    );

    // ... and herdctl upgrades again, keeping the reloaded workers (which
    // this master started, unlike those it took over).
    let load = Load::start(m.addr, 2, false);
    load.wait_answered(50);
    let (code, out, err) = herdctl(&control, &["upgrade"]);
    assert_eq!(code, 0, "{out}{err}\n{}", m.log());
    let again = table(&control);
    assert_eq!(again["upgrades"], 2);
    assert_eq!(pids(&again), reloaded);
    let n = load.answered();
    load.wait_answered(n + 200);

    load.finish_without_failures();
    m.signal(Signal::SIGTERM);
    assert!(m.wait_exit().success(), "{}", m.log());
    wait_dead(&reloaded, "the workers after the stop");
}

#[test]
fn an_upgrade_in_place_under_load_keeps_every_worker_reuseport() {
    upgrades_under_load("reuseport", &["--ready", "notify"], &hello_server());
}

#[test]
fn an_upgrade_in_place_under_load_keeps_every_worker_node_shared() {
    upgrades_under_load("shared", &[], &node_server());
}

/// Replaces `path` with an executable file holding `text` (by rename: the
/// running binary's file cannot be written).
fn install(path: &Path, text: &[u8]) {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn a_broken_new_binary_aborts_the_upgrade_and_the_master_goes_on() {
    let dir = std::env::temp_dir().join(format!(
        "herd-up-bin-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let binary = dir.join("cluster");
    let real = std::fs::read(example("cluster")).unwrap();
    install(&binary, &real);
    let control = control_path();
    let control_text = control.display().to_string();
    let mut m = Master::start_binary(
        &binary,
        &cmd(
            &["-w", "2", "--ready", "notify", "--control", &control_text],
            &hello_server(),
        ),
    );
    m.wait_kind("ready", 2);
    let workers = pids(&table(&control));
    let load = Load::start(m.addr, 2, true);
    load.wait_answered(50);

    // A new version that rejects its configuration; one that is not herd
    // at all (exits 0 without confirming); one that cannot be executed.
    let broken: [&[u8]; 3] = [
        b"#!/bin/sh\necho 'config: unknown option --frobnicate' >&2\nexit 2\n",
        b"#!/bin/sh\nexit 0\n",
        b"\x7fELF garbage",
    ];
    for (i, text) in broken.iter().enumerate() {
        install(&binary, text);
        let (code, _, err) = herdctl(&control, &["upgrade"]);
        assert_eq!(code, 5, "refused: {err}");
        let events = m.wait_kind("upgrade_failed", i + 1);
        let failed = of_kind(&events, "upgrade_failed").last().unwrap().clone();
        let reason = failed["reason"].as_str().unwrap();
        assert!(reason.contains(&binary.display().to_string()), "{reason}");
        if i == 0 {
            // The new binary's own words reach the operator.
            assert!(reason.contains("--frobnicate"), "{reason}");
        }
        let now = table(&control);
        assert_eq!(now["upgrades"], 0);
        assert_eq!(pids(&now), workers);
    }
    // SIGUSR2 with a broken binary: the same, without anyone asking.
    m.signal(Signal::SIGUSR2);
    m.wait_kind("upgrade_failed", 4);
    assert_eq!(of_kind(&m.events(), "upgrading").count(), 0);

    // The old master still supervises: a reload works.
    m.signal(Signal::SIGHUP);
    m.wait_events("a complete reload", |e| complete_reloads(e) == 1);

    // Once the binary is fixed, the upgrade goes through.
    install(&binary, &real);
    m.signal(Signal::SIGUSR2);
    m.wait_kind("upgraded", 1);
    let n = load.answered();
    load.wait_answered(n + 200);
    load.finish_without_failures();
    m.signal(Signal::SIGTERM);
    assert!(m.wait_exit().success(), "{}", m.log());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn proxy_mode_refuses_an_upgrade_and_goes_on() {
    let (mut m, control) = controlled(&["-w", "2", "--balance", "proxy"], &node_server());
    m.wait_kind("ready", 2);
    let (code, _, err) = herdctl(&control, &["upgrade"]);
    assert_eq!(code, 5, "{err}");
    let events = m.wait_kind("upgrade_failed", 1);
    assert_eq!(of_kind(&events, "upgrading").count(), 0);
    assert!(get(m.addr, "/").is_ok());
    m.signal(Signal::SIGTERM);
    assert!(m.wait_exit().success(), "{}", m.log());
}

#[test]
fn an_upgrade_in_place_keeps_node_workers_on_their_ipc_channel() {
    // Without the preload, readiness is process.send('ready') on Node's
    // IPC channel, whose master end is handed on too.
    upgrades_under_load(
        "reuseport",
        &["--no-node-preload", "--wait-ready"],
        &node_server(),
    );
}

/// Found by the soak: the connections the master relays (those it took
/// off the queue of a slot whose worker died, and passed on to a live
/// slot) were closed by an upgrade in place, kept-alive clients and all.
/// The relays are now paused and carried to the next master, which goes
/// on with them: each client's next request on the same connection is
/// answered.
#[test]
fn an_upgrade_in_place_keeps_the_connections_the_master_relays() {
    use std::io::Write;
    let (mut m, _control) = controlled(
        &["-w", "2", "--ready", "notify", "--restart-delay", "1s"],
        &hello_server(),
    );
    m.wait_kind("ready", 2);
    let victim = pid_field(
        of_kind(&m.events(), "spawned")
            .find(|e| e["slot"] == 0)
            .unwrap(),
        "pid",
    );
    // Stopped, its slot's socket queues what reaches it.
    kill(Pid::from_raw(victim as i32), Signal::SIGSTOP).unwrap();
    let mut clients: Vec<std::net::TcpStream> = (0..16)
        .map(|_| {
            let mut c = std::net::TcpStream::connect(m.addr).unwrap();
            c.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
            c.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
            c
        })
        .collect();
    // Its death passes its queue on: those clients are relayed.
    kill(Pid::from_raw(victim as i32), Signal::SIGKILL).unwrap();
    let events = m.wait_events("the queue passed on", |e| {
        e.iter().any(|e| e["notice"] == "connections_passed_on")
    });
    assert!(
        events
            .iter()
            .any(|e| e["notice"] == "connections_passed_on"),
        "{}",
        m.log()
    );
    for c in &mut clients {
        assert_eq!(status_of(&read_answer(c)), 200);
    }
    m.wait_kind("ready", 3);
    m.signal(Signal::SIGUSR2);
    m.wait_kind("upgraded", 1);
    for (i, c) in clients.iter_mut().enumerate() {
        c.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        let answer = read_answer(c);
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "client {i} after the upgrade: {answer:?}\n{}",
            m.log()
        );
    }
    m.signal(Signal::SIGTERM);
    assert!(m.wait_exit().success(), "{}", m.log());
}
