//! HTTP/1.1 from the test's side: one GET per connection, kept-alive
//! GETs, raw requests and their answers.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use super::*;

/// A connection to `addr` (127.0.0.1 for an unspecified address) with
/// the I/O timeouts set.
pub fn connect(addr: SocketAddr) -> Result<TcpStream, String> {
    let target = if addr.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    };
    let s = TcpStream::connect_timeout(&target, IO_TIMEOUT).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    Ok(s)
}

/// One HTTP/1.1 GET on a fresh connection; Ok(body) only for a 200.
pub fn get(addr: SocketAddr, path: &str) -> Result<String, String> {
    let mut s = connect(addr)?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Err(format!("incomplete response: {text:?}"));
    };
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("status: {}", head.lines().next().unwrap_or("")));
    }
    Ok(body.to_owned())
}

/// The pid a worker answered with (`pid=<n> slot=<s>`).
pub fn pid_of(body: &str) -> u32 {
    body.split_whitespace()
        .find_map(|w| w.strip_prefix("pid="))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {body:?}"))
}

/// A kept-alive connection and what it has buffered.
pub struct KeepAlive {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// One GET on a kept-alive connection (opened if needed); the connection is
/// dropped when the server says `Connection: close`.
pub fn keep_alive_get(addr: SocketAddr, conn: &mut Option<KeepAlive>) -> Result<String, String> {
    keep_alive_request(addr, conn, b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
}

/// [`keep_alive_get`] with the request given whole (its answer must have
/// a Content-Length).
pub fn keep_alive_request(
    addr: SocketAddr,
    conn: &mut Option<KeepAlive>,
    request: &[u8],
) -> Result<String, String> {
    if conn.is_none() {
        *conn = Some(KeepAlive {
            stream: connect(addr)?,
            buf: Vec::new(),
        });
    }
    let c = conn.as_mut().unwrap();
    let result = exchange(c, request);
    match &result {
        Ok((_, close)) if !close => {}
        _ => *conn = None,
    }
    result.map(|(body, _)| body)
}

fn exchange(c: &mut KeepAlive, request: &[u8]) -> Result<(String, bool), String> {
    c.stream
        .write_all(request)
        .map_err(|e| format!("keep-alive write: {e}"))?;
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = find(&c.buf, b"\r\n\r\n") {
            break i;
        }
        let n = c
            .stream
            .read(&mut chunk)
            .map_err(|e| format!("keep-alive read: {e}"))?;
        if n == 0 {
            return Err(format!(
                "keep-alive: closed after {} bytes of a response",
                c.buf.len()
            ));
        }
        c.buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&c.buf[..head_end]).to_ascii_lowercase();
    if !head.starts_with("http/1.1 200") {
        return Err(format!("status: {}", head.lines().next().unwrap_or("")));
    }
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("no content-length in {head:?}"))?;
    let close = head
        .lines()
        .any(|l| l.starts_with("connection:") && l.contains("close"));
    let total = head_end + 4 + length;
    while c.buf.len() < total {
        let n = c
            .stream
            .read(&mut chunk)
            .map_err(|e| format!("keep-alive body read: {e}"))?;
        if n == 0 {
            return Err("keep-alive: closed in the body".into());
        }
        c.buf.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&c.buf[head_end + 4..total]).into_owned();
    c.buf.drain(..total);
    Ok((body, close))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Reads one answer from `c`: until its head and the body its
/// Content-Length announces are in, or the peer closes.
pub fn read_answer(c: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
        let text = String::from_utf8_lossy(&answer);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_owned)
                })
                .and_then(|v| v.trim().parse::<usize>().ok());
            if length.is_some_and(|n| body.len() >= n) {
                break;
            }
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

pub fn status_of(text: &str) -> u16 {
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"))
}

/// Sends `request` on a new connection and returns the status code and
/// the whole answer.
pub fn raw(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut c = TcpStream::connect(addr).unwrap();
    // Longer than one exchange: the master holds a request up to 10 s for
    // a ready worker before its 503.
    c.set_read_timeout(Some(WAIT)).unwrap();
    c.write_all(request).unwrap();
    let text = read_answer(&mut c);
    (status_of(&text), text)
}
