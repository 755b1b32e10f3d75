//! Beyond one host: two "hosts" in network namespaces of this test's own,
//! each running a herd, behind HAProxy in the root namespace that
//! health-checks `/readyz`. Under load: a rolling reload of host A, an
//! upgrade in place of host B's master, then a stop of host A, which
//! HAProxy drains first thanks to the pre-stop delay: no request may fail.
//!
//! Needs root, `ip` (iproute2) and `haproxy`; `.ci/run` installs them.
//! Elsewhere it says why it cannot run and passes.

mod common;

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

fn run(args: &[&str]) {
    let status = Command::new(args[0])
        .args(&args[1..])
        .status()
        .expect(args[0]);
    assert!(status.success(), "{args:?}");
}

/// Two network namespaces joined to the root one by veth pairs; removed on
/// drop, pass or fail.
struct Hosts {
    names: Vec<String>,
    links: Vec<String>,
    /// The address of each host, as the root namespace reaches it.
    ips: Vec<String>,
}

impl Hosts {
    fn new(n: usize) -> Hosts {
        let tag = std::process::id() % 10_000;
        let subnet = 200 + (std::process::id() % 50) as u8;
        let mut hosts = Hosts {
            names: Vec::new(),
            links: Vec::new(),
            ips: Vec::new(),
        };
        for i in 0..n {
            let ns = format!("herd{tag}h{i}");
            let outer = format!("hv{tag}o{i}");
            let inner = format!("hv{tag}i{i}");
            let net = format!("10.{subnet}.{i}");
            run(&["ip", "netns", "add", &ns]);
            hosts.names.push(ns.clone());
            run(&[
                "ip", "link", "add", &outer, "type", "veth", "peer", "name", &inner,
            ]);
            hosts.links.push(outer.clone());
            run(&["ip", "link", "set", &inner, "netns", &ns]);
            run(&["ip", "addr", "add", &format!("{net}.1/24"), "dev", &outer]);
            run(&["ip", "link", "set", &outer, "up"]);
            let address = format!("{net}.2/24");
            for args in [
                ["addr", "add", address.as_str(), "dev", inner.as_str()].as_slice(),
                ["link", "set", inner.as_str(), "up"].as_slice(),
                ["link", "set", "lo", "up"].as_slice(),
            ] {
                let mut all = vec!["ip", "netns", "exec", ns.as_str(), "ip"];
                all.extend_from_slice(args);
                run(&all);
            }
            hosts.ips.push(format!("{net}.2"));
        }
        hosts
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for l in &self.links {
            let _ = Command::new("ip").args(["link", "del", l]).status();
        }
        for ns in &self.names {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// A herd master in host `ns`, logging JSON events to a file.
struct Herd {
    child: Child,
    log: std::path::PathBuf,
}

impl Herd {
    fn start(ns: &str, log: std::path::PathBuf) -> Herd {
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(example("cluster"))
            .args(control_args(&[]))
            .args([
                "--log-format",
                "json",
                "-w",
                "2",
                "--ready",
                "notify",
                "-l",
                "0.0.0.0:8080",
                "--metrics",
                "0.0.0.0:9090",
                "--pre-stop-delay",
                "1500ms",
            ])
            .args(hello_server())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .process_group(0)
            .spawn()
            .expect("ip netns exec cluster");
        Herd { child, log }
    }

    fn events(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn wait(&self, what: &str, pred: impl Fn(&[serde_json::Value]) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !pred(&self.events()) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn signal(&self, sig: Signal) {
        // `ip netns exec` execs the master: the child's pid is the master's.
        kill(Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }
}

impl Drop for Herd {
    fn drop(&mut self) {
        let _ = nix::sys::signal::killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn two_hosts_behind_haproxy_reload_upgrade_and_stop_without_a_failed_request() {
    let root = nix::unistd::Uid::effective().is_root();
    if !(root && on_path("ip").is_some() && on_path("haproxy").is_some()) {
        eprintln!("needs root, ip and haproxy: the multi-host test cannot run here");
        return;
    }
    // A container without CAP_NET_ADMIN cannot make namespaces.
    let probe = format!("herdprobe{}", std::process::id());
    let made = Command::new("ip")
        .args(["netns", "add", &probe])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !made {
        eprintln!("cannot create a network namespace here: the multi-host test cannot run");
        return;
    }
    run(&["ip", "netns", "del", &probe]);
    let hosts = Hosts::new(2);
    let dir = std::env::temp_dir().join(format!("herd-multihost-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let a = Herd::start(&hosts.names[0], dir.join("a.log"));
    let b = Herd::start(&hosts.names[1], dir.join("b.log"));
    a.wait("host A ready", |e| of_kind(e, "ready").count() >= 2);
    b.wait("host B ready", |e| of_kind(e, "ready").count() >= 2);

    let port = free_port();
    let config = format!(
        "global\n  maxconn 1000\n\
         defaults\n  mode http\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n  \
         option http-keep-alive\n\
         frontend web\n  bind 127.0.0.1:{port}\n  default_backend hosts\n\
         backend hosts\n  balance roundrobin\n  option httpchk GET /readyz\n  \
         default-server inter 200ms fall 1 rise 2 port 9090\n  \
         server a {}:8080 check\n  server b {}:8080 check\n",
        hosts.ips[0], hosts.ips[1]
    );
    std::fs::write(dir.join("haproxy.cfg"), config).unwrap();
    let mut haproxy = Command::new("haproxy")
        .args(["-db", "-f"])
        .arg(dir.join("haproxy.cfg"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("haproxy");
    let _haproxy_guard = GroupGuard(Pid::from_raw(haproxy.id() as i32));
    let front = SocketAddr::from(([127, 0, 0, 1], port));
    // Both hosts in rotation: answers from both.
    let a_pids = |h: &Herd| -> Vec<u32> {
        of_kind(&h.events(), "spawned")
            .map(|e| pid_field(e, "pid"))
            .collect()
    };
    let deadline = Instant::now() + WAIT;
    let mut seen = std::collections::HashSet::new();
    loop {
        if let Ok(body) = get(front, "/") {
            seen.insert(pid_of(&body));
        }
        let from_a = a_pids(&a).iter().any(|p| seen.contains(p));
        let from_b = a_pids(&b).iter().any(|p| seen.contains(p));
        if from_a && from_b {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "HAProxy never reached both hosts"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let keep_alive = Load::start(front, 4, true);
    let fresh = Load::start(front, 2, false);
    let started = Instant::now();
    keep_alive.wait_answered(200);

    // A rolling reload of host A.
    a.signal(Signal::SIGHUP);
    a.wait("host A's reload", |e| complete_reloads(e) == 1);
    let after_reload = keep_alive.answered() + fresh.answered();
    // Both hosts serve the load again before A leaves.
    keep_alive.wait_answered(keep_alive.answered() + 200);

    // Host A leaves: /readyz fails at once, HAProxy takes it out within a
    // check or two, and only then do its workers stop.
    // Host B's master upgrades in place: same workers, still in HAProxy's
    // rotation (its health listener is handed on with the rest).
    let b_workers = a_pids(&b);
    b.signal(Signal::SIGUSR2);
    b.wait("host B's upgrade", |e| of_kind(e, "upgraded").count() == 1);
    let upgraded = of_kind(&b.events(), "upgraded").next().unwrap().clone();
    assert_eq!(pids_in(&upgraded, "workers"), b_workers, "{upgraded}");
    keep_alive.wait_answered(keep_alive.answered() + 200);

    a.signal(Signal::SIGTERM);
    let mut a_child = a;
    let status = wait_child(&mut a_child.child, "host A's master");
    assert!(status.success(), "host A's master: {status}");
    // Host B alone carries the load on.
    keep_alive.wait_answered(keep_alive.answered() + 200);
    let ka = keep_alive.finish();
    let fr = fresh.finish();
    let took = started.elapsed();
    let _ = haproxy.kill();
    let _ = haproxy.wait();
    eprintln!(
        "multi-host: {} keep-alive and {} fresh requests in {:.1}s, {} / {} failed; {} answered before host A left",
        ka.ok,
        fr.ok,
        took.as_secs_f64(),
        ka.errors.len(),
        fr.errors.len(),
        after_reload
    );
    assert!(ka.errors.is_empty(), "keep-alive: {:?}", ka.errors);
    assert!(fr.errors.is_empty(), "fresh: {:?}", fr.errors);
    drop(b);
    drop(a_child);
    drop(hosts);
    let _ = std::fs::remove_dir_all(&dir);
}
