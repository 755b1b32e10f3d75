//! herd against a hostile local user or a broken peer: the runtime and
//! control directories cannot be squatted, herdctl talks only to its own
//! user's master, a worker's stray response
//! never reaches another client, and requests whose framing or routing a
//! worker could read differently are refused (a corpus of smuggling
//! mutations against a worker that logs the raw bytes it gets).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;

use common::*;
use nix::sys::signal::Signal;

/// A worker that reads requests off the raw bytes and logs each to `log`.
fn raw_worker() -> Vec<String> {
    s(&["node", &fixture("tests/fixtures/raw_worker.js")])
}

/// A fresh log file for the raw worker, removed when the test ends.
struct RawLog(PathBuf);

impl RawLog {
    fn new(name: &str) -> RawLog {
        let path = std::env::temp_dir().join(format!("herd-{name}-{}.jsonl", std::process::id()));
        let _ = std::fs::remove_file(&path);
        RawLog(path)
    }

    fn entries(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.0)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for RawLog {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn master(log: &RawLog) -> Master {
    let path = log.0.clone();
    Master::start_with(
        &cmd(&["-w", "1", "--balance", "http"], &raw_worker()),
        move |c| {
            c.env("RAW_LOG", path);
        },
    )
}

/// The `Cookie` header the worker says it got, from its JSON answer.
fn cookie_seen(answer: &str) -> String {
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let entry: serde_json::Value = serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("not the worker's JSON ({e}): {answer:?}"));
    entry["headers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h[0].as_str().unwrap().eq_ignore_ascii_case("cookie"))
        .map(|h| h[1].as_str().unwrap().to_owned())
        .unwrap_or_default()
}

fn protocol_errors(m: &Master) -> Vec<serde_json::Value> {
    m.events()
        .into_iter()
        .filter(|e| e["notice"] == "worker_protocol_error")
        .collect()
}

/// Clients in a row, each with its own session cookie, each get the
/// answer to their own request.
fn each_client_gets_its_own_answer(addr: SocketAddr, round: usize) {
    for i in 0..5 {
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let cookie = format!("session=r{round}c{i}");
        c.write_all(
            format!("GET /whoami HTTP/1.1\r\nHost: a\r\nCookie: {cookie}\r\n\r\n").as_bytes(),
        )
        .unwrap();
        let answer = read_answer(&mut c);
        assert_eq!(status_of(&answer), 200, "{answer}");
        assert!(
            !answer.to_ascii_lowercase().contains("x-stray"),
            "client {i} got the stray: {answer}"
        );
        assert_eq!(
            cookie_seen(&answer),
            cookie,
            "client {i} got another's answer: {answer}"
        );
    }
}

#[test]
fn a_stray_response_is_dropped_reported_and_never_reaches_another_client() {
    let log = RawLog::new("stray");
    let m = master(&log);
    m.wait_kind("spawned", 1);
    // A stray that comes 100 ms after the answer, on the pooled idle
    // connection: dropped as it arrives, before any client can get it.
    let mut c = TcpStream::connect(m.addr).unwrap();
    c.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    c.write_all(b"GET /stray HTTP/1.1\r\nHost: a\r\nCookie: session=first\r\n\r\n")
        .unwrap();
    assert_eq!(cookie_seen(&read_answer(&mut c)), "session=first");
    let events = m.wait_events("a worker protocol error", |_| {
        !protocol_errors(&m).is_empty()
    });
    let notice = events
        .iter()
        .find(|e| e["notice"] == "worker_protocol_error")
        .unwrap();
    assert_eq!(notice["slot"], 0, "the notice names the slot: {notice}");
    // The client that asked keeps its connection and gets its answers.
    c.write_all(b"GET /again HTTP/1.1\r\nHost: a\r\nCookie: session=first\r\n\r\n")
        .unwrap();
    assert_eq!(cookie_seen(&read_answer(&mut c)), "session=first");
    each_client_gets_its_own_answer(m.addr, 0);

    // A stray written right behind the answer. The notice is throttled to
    // one line a second: wait out the window so the second one shows.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let mut c = TcpStream::connect(m.addr).unwrap();
    c.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    c.write_all(b"GET /stray-now HTTP/1.1\r\nHost: a\r\nCookie: session=second\r\n\r\n")
        .unwrap();
    assert_eq!(cookie_seen(&read_answer(&mut c)), "session=second");
    m.wait_events("a second worker protocol error", |_| {
        protocol_errors(&m).len() >= 2
    });
    each_client_gets_its_own_answer(m.addr, 1);
    m.signal(Signal::SIGTERM);
}

/// Once a worker has sent a stray, none of its connections is reused:
/// each request gets a connection of its own (the worker sees a new
/// connection for each), so a later stray reaches no other client.
/// Before, the connection after a stray was pooled again.
#[test]
fn after_a_stray_a_worker_gets_a_new_connection_for_each_request() {
    let log = RawLog::new("stray-distrust");
    let m = master(&log);
    m.wait_kind("ready", 1);
    let mut c = TcpStream::connect(m.addr).unwrap();
    c.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut ask = |path: &str| {
        c.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: a\r\nCookie: session=one\r\n\r\n").as_bytes(),
        )
        .unwrap();
        assert_eq!(cookie_seen(&read_answer(&mut c)), "session=one");
    };
    let conns = |log: &RawLog, from: usize| -> Vec<u64> {
        log.entries()[from..]
            .iter()
            .filter_map(|e| e["conn"].as_u64())
            .collect()
    };
    // Before: one pooled connection carries them all.
    for _ in 0..3 {
        ask("/before");
    }
    let before = conns(&log, 0);
    assert!(before.windows(2).all(|w| w[0] == w[1]), "{before:?}");
    ask("/stray-now");
    m.wait_events("the stray's report", |_| !protocol_errors(&m).is_empty());
    let seen = log.entries().len();
    for _ in 0..3 {
        ask("/after");
    }
    let mut after = conns(&log, seen);
    after.dedup();
    assert_eq!(after.len(), 3, "a new connection each: {after:?}");
    m.signal(Signal::SIGTERM);
}

/// Sends `bytes` on a new connection, ends the client's side, and reads
/// until the master closes: the whole answer.
fn exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    c.write_all(bytes).unwrap();
    let _ = c.shutdown(std::net::Shutdown::Write);
    let mut answer = Vec::new();
    let _ = c.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";

/// Request-smuggling mutations: framing headers spelled every way,
/// lengths and chunk sizes that parse differently in different servers,
/// request lines and header lines that some servers split or join.
fn corpus() -> Vec<(String, Vec<u8>)> {
    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    let mut add = |name: String, bytes: Vec<u8>| cases.push((name, bytes));
    let te_names = [
        "Transfer-Encoding",
        "transfer-encoding",
        "TRANSFER-ENCODING",
        "Transfer-Encoding ",
        " Transfer-Encoding",
        "Transfer_Encoding",
        "Transfer-Encoding\t",
        "\tTransfer-Encoding",
        "Transfer-Encodings",
        "X-Transfer-Encoding",
        "Transfer-Encoding\x0b",
        "Transfer\x00-Encoding",
    ];
    let te_values = [
        "chunked",
        " chunked",
        "chunked ",
        "\tchunked",
        "Chunked",
        "CHUNKED",
        "chunked, chunked",
        "identity, chunked",
        "gzip, chunked",
        "chunked, identity",
        "chunked, gzip",
        "xchunked",
        "chunk",
        "chunked;x",
        "\"chunked\"",
        "",
        ",",
        ", ,",
        "\t",
        " ",
        "chunked,",
        ",chunked",
        "chunked\x0b",
        "chunked\x0c",
        "ch\x00unked",
        "chunked\r",
        "chu nked",
        "cHuNkEd",
        "x, chunked",
        "chunked\u{85}",
    ];
    let chunked_body = "5\r\nhello\r\n0\r\n\r\n";
    for name in te_names {
        for value in te_values {
            for with_cl in [false, true] {
                let cl = if with_cl { "Content-Length: 5\r\n" } else { "" };
                add(
                    format!("TE {name:?}: {value:?}{}", if with_cl { " + CL" } else { "" }),
                    format!("POST /c HTTP/1.1\r\nHost: a\r\n{cl}{name}: {value}\r\n\r\n{chunked_body}{SMUGGLED}")
                        .into_bytes(),
                );
            }
        }
    }
    for cl in [
        "5",
        " 5",
        "5 ",
        "+5",
        "-5",
        "05",
        "5.0",
        "0x5",
        "5, 5",
        "5, 6",
        "5,",
        "",
        "99999999999999999999",
        "5\t",
        "5\x0b",
        "5 5",
        "1e1",
        "\u{661}",
    ] {
        add(
            format!("CL {cl:?}"),
            format!("POST /c HTTP/1.1\r\nHost: a\r\nContent-Length: {cl}\r\n\r\nhello{SMUGGLED}")
                .into_bytes(),
        );
        add(
            format!("CL 5 then {cl:?}"),
            format!("POST /c HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: {cl}\r\n\r\nhello{SMUGGLED}")
                .into_bytes(),
        );
    }
    for body in [
        "5\r\nhello\r\n0\r\n\r\n",
        "5;ext=1\r\nhello\r\n0\r\n\r\n",
        "5 ;ext\r\nhello\r\n0\r\n\r\n",
        "005\r\nhello\r\n0\r\n\r\n",
        "5\r\nhello\r\n0000\r\n\r\n",
        "0x5\r\nhello\r\n0\r\n\r\n",
        "-5\r\nhello\r\n0\r\n\r\n",
        "+5\r\nhello\r\n0\r\n\r\n",
        " 5\r\nhello\r\n0\r\n\r\n",
        "5\nhello\n0\n\n",
        "5\r\nhello\n0\r\n\r\n",
        "5\rhello\r\n0\r\n\r\n",
        "5\r\nhelloXX0\r\n\r\n",
        "5\r\nhel\r\n0\r\n\r\n",
        "ffffffffffffffff1\r\nhello\r\n0\r\n\r\n",
        "5\r\nhello\r\n0\r\nX: y\r\n\r\n",
        "5\r\nhello\r\n0\r\nGET /x HTTP/1.1\r\n\r\n",
        "5\r\nhello\r\n0\r\nX y: z\r\n\r\n",
        "5\r\nhello\r\n0\r\n: z\r\n\r\n",
        "5\r\nhello\r\n0\r\nX: y\n\r\n",
        "5\r\nhello\r\n0\r\n\n",
        "5\r\nhello\r\n0\r\n",
        "5\r\nhello\r\n0;x\r\n\r\n",
        "5;a\x01b\r\nhello\r\n0\r\n\r\n",
        "5;a\nb\r\nhello\r\n0\r\n\r\n",
        "5\r\nhello\r\n\r\n0\r\n\r\n",
        "a\r\nhello\r\n0\r\n\r\n",
        "A\r\nhelloworld\r\n0\r\n\r\n",
        "5\r\n\x00ello\r\n0\r\n\r\n",
        "5\t\r\nhello\r\n0\r\n\r\n",
    ] {
        add(
            format!("chunked body {body:?}"),
            format!(
                "POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n{body}{SMUGGLED}"
            )
            .into_bytes(),
        );
    }
    for line in [
        "GET /c HTTP/1.1",
        "get /c HTTP/1.1",
        "GET /c HTTP/1.2",
        "GET /c HTTP/2.0",
        "GET /c HTTP/1.1 ",
        "GET  /c HTTP/1.1",
        "GET\t/c HTTP/1.1",
        "GET /c\tHTTP/1.1",
        "GET /c",
        "GET c HTTP/1.1",
        "GET /c\\..\\x HTTP/1.1",
        "GET /c#frag HTTP/1.1",
        "GET * HTTP/1.1",
        "OPTIONS * HTTP/1.1",
        "GET http://a/c HTTP/1.1",
        "GET http://b/c HTTP/1.1",
        "GET HTTP://A/c HTTP/1.1",
        "GET ftp://a/c HTTP/1.1",
        "GET http://u@a/c HTTP/1.1",
        "GET //a/c HTTP/1.1",
        "GET /c?x=\x7f HTTP/1.1",
        "GET /c\x00 HTTP/1.1",
        "GET /\u{e9} HTTP/1.1",
        "G\x00ET /c HTTP/1.1",
        "GET /c HTTP/1.10",
        "GET /c http/1.1",
        "GET /c HTTP/1.1\r",
        "CONNECT a:443 HTTP/1.1",
    ] {
        add(
            format!("request line {line:?}"),
            format!("{line}\r\nHost: a\r\n\r\n{SMUGGLED}").into_bytes(),
        );
    }
    for headers in [
        "Host: a\r\nHost: b\r\n",
        "Host: a\r\nhost: a\r\n",
        "Host:\r\n",
        "Host: a b\r\n",
        "Host: u@a\r\n",
        "Host: a:b\r\n",
        "Host: a/b\r\n",
        "Host: [::1\r\n",
        "Host: a\x00\r\n",
        "",
        "Host: a\r\nX: 1\r\n 2\r\n",
        "Host: a\r\nX: 1\r\n\t2\r\n",
        "Host: a\r\n X: 1\r\n",
        "Host: a\r\nX : 1\r\n",
        "Host: a\r\nX\t: 1\r\n",
        "Host: a\r\nX:1\r2\r\n",
        "Host: a\nX: 1\r\n",
        "Host: a\r\nX: \x01\r\n",
        "Host: a\r\n: 1\r\n",
        "Host: a\r\nX\x00: 1\r\n",
        "Host: a\r\nContent-Length: 0\r\n",
        "Host: a\r\nConnection: close, Content-Length\r\nContent-Length: 5\r\n",
        "Host: a\r\nConnection: Transfer-Encoding\r\nTransfer-Encoding: chunked\r\n",
        "Host: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n",
    ] {
        add(
            format!("headers {headers:?}"),
            format!("POST /c HTTP/1.1\r\n{headers}\r\nhello{SMUGGLED}").into_bytes(),
        );
    }
    for version in ["HTTP/1.0", "HTTP/1.1"] {
        for extra in [
            "",
            "Transfer-Encoding: chunked\r\n",
            "Content-Length: 5\r\n",
            "Connection: keep-alive\r\n",
        ] {
            add(
                format!("{version} {extra:?}"),
                format!(
                    "POST /c {version}\r\nHost: a\r\n{extra}\r\n5\r\nhello\r\n0\r\n\r\n{SMUGGLED}"
                )
                .into_bytes(),
            );
        }
    }
    cases
}

/// Every mutation is refused by the master, or reaches the worker as
/// exactly the requests the master answered for: never a request the
/// master did not see (a smuggled one), never bytes the worker cannot
/// read, never a worker left waiting for a body the master thinks ended.
#[test]
fn the_smuggling_corpus_is_refused_or_forwarded_exactly_as_framed() {
    let log = RawLog::new("corpus");
    let path = log.0.clone();
    let m = Master::start_with(
        &cmd(
            &["-w", "1", "--balance", "http", "--response-timeout", "3s"],
            &raw_worker(),
        ),
        move |c| {
            c.env("RAW_LOG", path);
        },
    );
    m.wait_kind("spawned", 1);
    let cases = corpus();
    assert!(cases.len() >= 400, "a corpus of {} cases", cases.len());
    let (mut refused, mut forwarded) = (0, 0);
    let mut failures = Vec::new();
    for (name, bytes) in &cases {
        let before = log.entries().len();
        let answer = exchange(m.addr, bytes);
        // The worker's answers carry its sequence number; the master's own
        // do not.
        let answers = answer.matches("\r\nx-raw-seq: ").count();
        let statuses: Vec<u16> = answer
            .match_indices("HTTP/1.1 ")
            .filter_map(|(i, _)| answer[i + 9..].get(..3)?.parse().ok())
            .collect();
        let logged = log.entries()[before..].to_vec();
        let garbage = logged.iter().any(|e| e.get("garbage").is_some());
        if garbage || logged.len() != answers || statuses.contains(&504) || statuses.is_empty() {
            failures.push(format!(
                "{name}: master answered {statuses:?} ({answers} from the worker), worker logged {logged:?}"
            ));
            continue;
        }
        if answers == 0 {
            refused += 1;
        } else {
            forwarded += 1;
            // Whatever was forwarded was framed as one clean request each.
            for e in &logged {
                let line = e["line"].as_str().unwrap();
                assert!(
                    line.ends_with(" HTTP/1.1") && !line.contains("smuggled") || answers > 1,
                    "{name}: {e}"
                );
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases desynchronised:\n{}\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n"),
        m.log()
    );
    eprintln!(
        "corpus: {} cases, {refused} refused, {forwarded} forwarded",
        cases.len()
    );
    // The master counted every refusal.
    assert!(refused > 200, "{refused} refused");
}

/// A scratch directory removed when the test ends.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let path = std::env::temp_dir().join(format!("herd-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path).unwrap();
        Scratch(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The uid that `nobody` has, when this test runs as root (it needs to
/// act as another local user).
fn another_user() -> Option<u32> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to act as another user");
        return None;
    }
    Some(65534)
}

#[test]
fn a_runtime_directory_another_user_made_first_is_refused() {
    let Some(nobody) = another_user() else { return };
    let tmp = Scratch::new("squat");
    std::fs::set_permissions(&tmp.0, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    // The squatter's `herd-UID`, open to all, where the master's sockets go
    // by default.
    let me = nix::unistd::geteuid().as_raw();
    let squatted = tmp.0.join(format!("herd-{me}"));
    std::fs::create_dir(&squatted).unwrap();
    std::fs::set_permissions(
        &squatted,
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    std::os::unix::fs::chown(&squatted, Some(nobody), Some(nobody)).unwrap();
    let mut child = std::process::Command::new(example("cluster"))
        .args(["-l", "127.0.0.1:0", "-w", "1", "--log-format", "json"])
        // A Rust worker: no Node preload, whose directory is checked too.
        .args(hello_server())
        .env("TMPDIR", &tmp.0)
        .env_remove("XDG_RUNTIME_DIR")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_child(&mut child, "a master with a squatted runtime directory");
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(
        !status.success(),
        "the master ran with a squatted directory: {err}"
    );
    assert!(
        err.contains(&squatted.display().to_string()),
        "the error names the path: {err}"
    );
    // Nothing of the master's was put there.
    assert_eq!(std::fs::read_dir(&squatted).unwrap().count(), 0);
}

#[test]
fn herdctl_sends_nothing_to_a_socket_another_user_serves() {
    let Some(nobody) = another_user() else { return };
    let tmp = Scratch::new("impostor");
    std::os::unix::fs::chown(&tmp.0, Some(nobody), Some(nobody)).unwrap();
    let socket = tmp.0.join("control.sock");
    let heard = tmp.0.join("heard");
    // An impostor that answers every request "ok" and notes what it heard.
    let script = format!(
        "import socket,os\n\
         s=socket.socket(socket.AF_UNIX)\ns.bind({socket:?})\ns.listen(8)\n\
         while True:\n c,_=s.accept()\n c.settimeout(2)\n\
         \x20try: d=c.recv(4096)\n except Exception: d=b''\n\
         \x20open({heard:?},'ab').write(d)\n\
         \x20c.sendall(b'HTTP/1.1 200 OK\\r\\ncontent-type: application/json\\r\\ncontent-length: 2\\r\\n\\r\\n{{}}')\n c.close()\n",
        socket = socket.display().to_string(),
        heard = heard.display().to_string(),
    );
    let impostor = std::process::Command::new("python3")
        .args(["-c", &script])
        .uid_gid(nobody)
        .spawn()
        .unwrap();
    let _guard = ChildGuard(impostor);
    let deadline = std::time::Instant::now() + WAIT;
    while !socket.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the impostor never listened"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let (code, out, err) = herdctl(&socket, &["stop"]);
    assert_eq!(code, 4, "herdctl talked to the impostor: {out} {err}");
    assert!(err.contains(&socket.display().to_string()), "{err}");
    let heard = std::fs::read(&heard).unwrap_or_default();
    assert!(
        heard.is_empty(),
        "the impostor heard {:?}",
        String::from_utf8_lossy(&heard)
    );
}

trait UidGid {
    fn uid_gid(&mut self, id: u32) -> &mut Self;
}

impl UidGid for std::process::Command {
    fn uid_gid(&mut self, id: u32) -> &mut Self {
        use std::os::unix::process::CommandExt;
        self.uid(id).gid(id)
    }
}

/// Kills a helper process when the test ends, pass or fail.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
