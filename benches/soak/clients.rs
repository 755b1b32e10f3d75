//! The soak's clients, each a thread until told to stop: kept-alive and
//! fresh GETs whose answers must be their own (`/echo/<id>`), long
//! requests, uploads, Server-Sent Events streams and WebSockets.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::common::{connect, keep_alive_request, KeepAlive};

/// What went wrong, when, and whether it may be sent again safely.
#[derive(Debug, Clone)]
pub struct Failure {
    pub what: String,
    pub at: Instant,
    /// A GET: HTTP mode must never fail it.
    pub idempotent: bool,
    /// The worker that held it, when known (a stream's, a kept-alive
    /// connection's in the modes that keep it on one worker).
    pub pid: Option<u32>,
}

/// What one kind of client saw.
#[derive(Debug, Default)]
pub struct Tally {
    pub ok: u64,
    pub failures: Vec<Failure>,
    /// Answers that were not to the request sent (another client's, a
    /// stray): must be none, whatever the faults.
    pub crossed: Vec<String>,
    /// Streams (SSE, WebSocket) opened.
    pub streams: u64,
    /// Streams the server ended properly (a close frame, the last chunk):
    /// the client reconnects, nothing is lost.
    pub ended_by_server: u64,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.ok += other.ok;
        self.failures.extend(other.failures);
        self.crossed.extend(other.crossed);
        self.streams += other.streams;
        self.ended_by_server += other.ended_by_server;
    }

    fn fail(&mut self, what: String, idempotent: bool) {
        self.fail_on(None, what, idempotent);
    }

    fn fail_on(&mut self, pid: Option<u32>, what: String, idempotent: bool) {
        self.failures.push(Failure {
            what,
            at: Instant::now(),
            idempotent,
            pid,
        });
    }
}

/// The kinds of client, each with its own tally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    KeepAlive,
    Fresh,
    Slow,
    Upload,
    Sse,
    WebSocket,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::KeepAlive,
        Kind::Fresh,
        Kind::Slow,
        Kind::Upload,
        Kind::Sse,
        Kind::WebSocket,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::KeepAlive => "keep-alive GET",
            Kind::Fresh => "fresh GET",
            Kind::Slow => "long GET",
            Kind::Upload => "upload POST",
            Kind::Sse => "SSE stream",
            Kind::WebSocket => "WebSocket",
        }
    }

    /// Threads of this kind.
    fn threads(self) -> usize {
        match self {
            Kind::KeepAlive => 3,
            Kind::Fresh => 2,
            _ => 1,
        }
    }
}

/// Every client, running.
pub struct Clients {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    threads: Vec<(Kind, JoinHandle<Tally>)>,
}

impl Clients {
    pub fn start(addr: SocketAddr, seed: u64) -> Clients {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let mut threads = Vec::new();
        let mut n = 0u64;
        for kind in Kind::ALL {
            for _ in 0..kind.threads() {
                n += 1;
                let (stop, answered) = (stop.clone(), answered.clone());
                let rng = crate::Rng(seed.wrapping_add(n).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
                let id = n;
                threads.push((
                    kind,
                    std::thread::spawn(move || run(kind, id, addr, rng, &stop, &answered)),
                ));
            }
        }
        Clients {
            stop,
            answered,
            threads,
        }
    }

    /// Waits until `n` answers came (the load runs), or panics.
    pub fn wait_answered(&self, n: u64) {
        let deadline = Instant::now() + crate::common::WAIT;
        while self.answered.load(Ordering::Relaxed) < n {
            assert!(Instant::now() < deadline, "the clients got no {n} answers");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops every client and returns each kind's tally.
    pub fn finish(self) -> Vec<(Kind, Tally)> {
        self.stop.store(true, Ordering::SeqCst);
        let mut out: Vec<(Kind, Tally)> =
            Kind::ALL.iter().map(|&k| (k, Tally::default())).collect();
        for (kind, t) in self.threads {
            let tally = t.join().expect("a soak client panicked");
            if let Some((_, all)) = out.iter_mut().find(|(k, _)| *k == kind) {
                all.add(tally);
            }
        }
        out
    }
}

fn run(
    kind: Kind,
    id: u64,
    addr: SocketAddr,
    mut rng: crate::Rng,
    stop: &AtomicBool,
    answered: &AtomicU64,
) -> Tally {
    let mut t = Tally::default();
    let mut conn: Option<KeepAlive> = None;
    // The worker that answered last on `conn`.
    let mut last_pid: Option<u32> = None;
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let before = t.ok;
        match kind {
            Kind::KeepAlive => {
                let tag = format!("k{id}-{n}");
                let request = format!("GET /echo/{tag} HTTP/1.1\r\nHost: soak\r\n\r\n");
                let pid = if conn.is_some() { last_pid } else { None };
                let result = keep_alive_request(addr, &mut conn, request.as_bytes());
                last_pid = result.as_ref().ok().and_then(|b| pid_in(b));
                check_echo(&mut t, &tag, result, pid);
            }
            Kind::Fresh => {
                let tag = format!("f{id}-{n}");
                let result = fresh(addr, &format!("GET /echo/{tag}"), &[]);
                check_echo(&mut t, &tag, result, None);
            }
            Kind::Slow => {
                let ms = 200 + rng.below(1300);
                match fresh(addr, &format!("GET /slow/{ms}"), &[]) {
                    Ok(body) if body.starts_with("slow ") => t.ok += 1,
                    Ok(body) => t.crossed.push(format!("/slow/{ms} answered {body:?}")),
                    Err(e) => t.fail(e, true),
                }
            }
            Kind::Upload => {
                let len = 1 + rng.below(512 * 1024) as usize;
                let body = vec![b'x'; len];
                match fresh(addr, "POST /upload", &body) {
                    Ok(answer) if answer.starts_with(&format!("len={len} ")) => t.ok += 1,
                    Ok(answer) => t
                        .crossed
                        .push(format!("upload of {len} answered {answer:?}")),
                    Err(e) => t.fail(e, false),
                }
            }
            Kind::Sse => sse(addr, &mut rng, &mut t),
            Kind::WebSocket => websocket(addr, &mut rng, &mut t, stop),
        }
        answered.fetch_add(t.ok - before, Ordering::Relaxed);
    }
    t
}

fn check_echo(t: &mut Tally, tag: &str, result: Result<String, String>, pid: Option<u32>) {
    match result {
        Ok(body) if body.starts_with(&format!("{tag} ")) => t.ok += 1,
        Ok(body) => t.crossed.push(format!("/echo/{tag} answered {body:?}")),
        Err(e) => t.fail_on(pid, e, true),
    }
}

/// The worker an answer names (`pid=<n>`).
pub fn pid_in(text: &str) -> Option<u32> {
    let at = text.find("pid=")? + 4;
    let digits: String = text[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// One request on a new connection (`Connection: close`); Ok(body) for a
/// 200.
fn fresh(addr: SocketAddr, line: &str, body: &[u8]) -> Result<String, String> {
    let mut s = connect(addr)?;
    let head = format!(
        "{line} HTTP/1.1\r\nHost: soak\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())
        .and_then(|()| s.write_all(body))
        .map_err(|e| format!("{line}: write: {e}"))?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)
        .map_err(|e| format!("{line}: read: {e}"))?;
    let text = String::from_utf8_lossy(&buf);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Err(format!("{line}: incomplete response: {text:?}"));
    };
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("{line}: {}", head.lines().next().unwrap_or("")));
    }
    Ok(body.to_owned())
}

/// Reads until the head of a response is in; returns it and what came
/// after it.
fn read_head(s: &mut TcpStream) -> Result<(String, Vec<u8>), String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i]).into_owned();
            return Ok((head, buf[i + 4..].to_vec()));
        }
        match s.read(&mut chunk) {
            Ok(0) => return Err(format!("closed before a head ({} bytes)", buf.len())),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("head read: {e}")),
        }
    }
}

/// Opens a stream: sends `request` on a new connection and reads the
/// head, which must start with `status`; returns the connection and what
/// came after the head.
fn open(addr: SocketAddr, request: &str, status: &str) -> Result<(TcpStream, Vec<u8>), String> {
    let mut s = connect(addr)?;
    s.write_all(request.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let (head, rest) = read_head(&mut s)?;
    if !head.starts_with(status) {
        return Err(head.lines().next().unwrap_or("").to_owned());
    }
    Ok((s, rest))
}

/// One SSE stream held for 1 to 4 s, counting its events; it ends
/// properly when the client leaves or when the server sends the last
/// chunk (a retiring worker ends its streams).
fn sse(addr: SocketAddr, rng: &mut crate::Rng, t: &mut Tally) {
    let hold = Duration::from_millis(1000 + rng.below(3000));
    let request = "GET /events HTTP/1.1\r\nHost: soak\r\nAccept: text/event-stream\r\n\r\n";
    let (mut s, mut seen) = match open(addr, request, "HTTP/1.1 200") {
        Ok(opened) => opened,
        Err(e) => return t.fail(format!("sse: {e}"), true),
    };
    t.streams += 1;
    let until = Instant::now() + hold;
    let mut chunk = [0u8; 4096];
    let mut events = 0usize;
    let mut pid = pid_in(&String::from_utf8_lossy(&seen));
    while Instant::now() < until {
        if seen.ends_with(b"\r\n0\r\n\r\n") || seen.starts_with(b"0\r\n\r\n") {
            t.ended_by_server += 1;
            t.ok += 1;
            return;
        }
        match s.read(&mut chunk) {
            Ok(0) => {
                return t.fail_on(
                    pid,
                    format!("sse: closed without its last chunk after {events} events"),
                    false,
                )
            }
            Ok(n) => {
                seen.extend_from_slice(&chunk[..n]);
                if pid.is_none() {
                    pid = pid_in(&String::from_utf8_lossy(&seen));
                }
                events += chunk[..n].windows(6).filter(|w| w == b"data: ").count();
                // Only the tail matters for the end.
                if seen.len() > 64 {
                    seen.drain(..seen.len() - 64);
                }
            }
            Err(e) => {
                return t.fail_on(pid, format!("sse: read after {events} events: {e}"), false)
            }
        }
    }
    if events == 0 {
        return t.fail_on(pid, "sse: no event in the stream".into(), false);
    }
    t.ok += 1;
}

/// A masked client frame (RFC 6455).
fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    let mut f = vec![0x80 | opcode];
    assert!(payload.len() < 126, "the soak sends short frames only");
    f.push(0x80 | payload.len() as u8);
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Reads one server frame: (opcode, payload).
fn read_frame(s: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(u8, Vec<u8>), String> {
    let mut chunk = [0u8; 4096];
    loop {
        if buf.len() >= 2 {
            let (opcode, short) = (buf[0] & 0x0f, (buf[1] & 0x7f) as usize);
            let (len, at) = match short {
                126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
                127 if buf.len() >= 10 => {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&buf[2..10]);
                    (u64::from_be_bytes(b) as usize, 10)
                }
                126 | 127 => (usize::MAX, 0),
                n => (n, 2),
            };
            if len != usize::MAX && buf.len() >= at + len {
                let payload = buf[at..at + len].to_vec();
                buf.drain(..at + len);
                return Ok((opcode, payload));
            }
        }
        match s.read(&mut chunk) {
            Ok(0) => return Err("closed without a close frame".into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}

/// One WebSocket held for 1 to 4 s, a message echoed every 50 ms; it
/// ends properly by a close handshake, started by either side.
fn websocket(addr: SocketAddr, rng: &mut crate::Rng, t: &mut Tally, stop: &AtomicBool) {
    let hold = Duration::from_millis(1000 + rng.below(3000));
    let upgrade = "GET / HTTP/1.1\r\nHost: soak\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                   Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    let (mut s, mut buf) = match open(addr, upgrade, "HTTP/1.1 101") {
        Ok(opened) => opened,
        Err(e) => return t.fail(format!("ws: {e}"), true),
    };
    t.streams += 1;
    let pid = match read_frame(&mut s, &mut buf) {
        Ok((0x1, hello)) => pid_in(&String::from_utf8_lossy(&hello)),
        Ok((op, _)) => return t.crossed.push(format!("ws: opened with opcode {op}")),
        Err(e) => return t.fail(format!("ws: first frame: {e}"), false),
    };
    let until = Instant::now() + hold;
    let mut n = 0u64;
    while Instant::now() < until && !stop.load(Ordering::SeqCst) {
        n += 1;
        let message = format!("m{n}");
        if let Err(e) = s.write_all(&frame(0x1, message.as_bytes())) {
            return t.fail_on(pid, format!("ws: write of message {n}: {e}"), false);
        }
        match read_frame(&mut s, &mut buf) {
            Ok((0x1, echo)) if echo == message.as_bytes() => {}
            Ok((0x8, _)) => {
                // The server closes (a retiring worker: 1001): answer,
                // and the stream ended properly.
                let _ = s.write_all(&frame(0x8, &[0x03, 0xe8]));
                t.ended_by_server += 1;
                t.ok += 1;
                return;
            }
            Ok((op, p)) => {
                t.crossed.push(format!(
                    "ws: sent {message:?}, got opcode {op} {:?}",
                    String::from_utf8_lossy(&p)
                ));
                return;
            }
            Err(e) => return t.fail_on(pid, format!("ws: message {n}: {e}"), false),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // The client leaves: a close frame, and the server's in answer.
    if let Err(e) = s.write_all(&frame(0x8, &[0x03, 0xe8])) {
        return t.fail_on(pid, format!("ws: close: {e}"), false);
    }
    loop {
        match read_frame(&mut s, &mut buf) {
            Ok((0x8, _)) => break,
            Ok(_) => {}
            Err(e) => {
                return t.fail_on(pid, format!("ws: waiting for the close frame: {e}"), false)
            }
        }
    }
    t.ok += 1;
}
