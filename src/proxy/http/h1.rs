//! The HTTP/1.1 that HTTP mode speaks, and no more: request and response
//! heads are parsed with `httparse` (hyper's own parser) and rewritten as
//! bytes for the other side, and bodies are forwarded as they come, their
//! end found from `Content-Length` or the chunked coding.
//!
//! Why not hyper on both sides (as the first version of HTTP mode did):
//! the master never looks inside a body and changes a few headers, so
//! two full codecs per request (a typed header map built and serialized
//! twice, a task per worker connection, two 8 KiB buffers for every idle
//! client) cost it a fifth of HAProxy's throughput and 15 KB per idle
//! client. Here a request costs one parse and one copy of its head, and an
//! idle client costs its task and socket.
//!
//! The parsing is strict where a lenient reading could let a client and a
//! worker disagree on where a request ends (request smuggling): a request
//! with both `Content-Length` and `Transfer-Encoding`, with two different
//! lengths, with a coding other than a final `chunked`, or with a malformed
//! chunk is refused with `400`.

use std::io::Write as _;
use std::mem::MaybeUninit;
use std::net::IpAddr;

/// The largest request or response head; a larger request is answered
/// `431`, a larger response `502`.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// The most header lines in a head.
const MAX_HEADERS: usize = 128;
/// The longest chunk-size line (with its extensions) and trailer section.
const MAX_CHUNK_LINE: usize = 4096;
const MAX_TRAILERS: usize = 16 * 1024;
/// The cookie that pins a client to a slot (`Builder::sticky_cookie`).
pub const STICKY_COOKIE: &str = "herd_slot";

/// How a message's body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// It has none.
    Empty,
    /// After this many bytes.
    Length(u64),
    /// With the chunked coding's last chunk.
    Chunked,
    /// When the sender closes the connection (responses only).
    Close,
}

/// A request the master answers itself, and closes the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reject {
    pub(crate) status: u16,
    pub(crate) reason: &'static str,
}

const fn reject(status: u16, reason: &'static str) -> Reject {
    Reject { status, reason }
}

/// Who sent a request, for the `X-Forwarded-*` headers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Client {
    pub(crate) ip: IpAddr,
    /// Its own `X-Forwarded-*` are kept (`--trust-proxy`).
    pub(crate) trusted: bool,
    /// Look for the sticky cookie.
    pub(crate) sticky: bool,
}

/// A request head, parsed and rewritten for a worker.
#[derive(Debug)]
pub(crate) struct RequestHead {
    /// What the worker gets: the request line as HTTP/1.1, the client's
    /// headers without the hop-by-hop ones, and `X-Forwarded-*`.
    pub(crate) bytes: Vec<u8>,
    /// How its body ends.
    pub(crate) framing: Framing,
    /// GET, HEAD, OPTIONS or TRACE: sending it twice does nothing twice.
    pub(crate) idempotent: bool,
    /// A HEAD request: the response has no body whatever it announces.
    pub(crate) head: bool,
    /// The client speaks HTTP/1.0.
    pub(crate) http10: bool,
    /// The client wants its connection kept after the response.
    pub(crate) keep_alive: bool,
    /// `Connection: Upgrade` with an `Upgrade` header (WebSocket).
    pub(crate) upgrade: bool,
    /// The slot the sticky cookie names.
    pub(crate) pinned: Option<usize>,
}

impl RequestHead {
    /// Whether it may be sent again after its worker failed before
    /// answering: idempotent and without a body.
    pub(crate) fn replayable(&self) -> bool {
        self.idempotent && self.framing == Framing::Empty
    }
}

fn is(name: &str, wanted: &str) -> bool {
    name.eq_ignore_ascii_case(wanted)
}

/// The comma-separated elements of a header value, trimmed, empty ones
/// left out.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// The tokens of every `Connection` header.
#[derive(Debug, Default)]
struct Connection<'a> {
    close: bool,
    keep_alive: bool,
    upgrade: bool,
    /// Other headers it names: hop-by-hop too.
    named: Vec<&'a [u8]>,
}

impl<'a> Connection<'a> {
    fn of(headers: &[httparse::Header<'a>]) -> Connection<'a> {
        let mut c = Connection::default();
        for h in headers.iter().filter(|h| is(h.name, "connection")) {
            for t in tokens(h.value) {
                if t.eq_ignore_ascii_case(b"close") {
                    c.close = true;
                } else if t.eq_ignore_ascii_case(b"keep-alive") {
                    c.keep_alive = true;
                } else if t.eq_ignore_ascii_case(b"upgrade") {
                    c.upgrade = true;
                } else {
                    c.named.push(t);
                }
            }
        }
        c
    }

    fn names(&self, name: &str) -> bool {
        self.named
            .iter()
            .any(|n| n.eq_ignore_ascii_case(name.as_bytes()))
    }
}

/// Headers that belong to one connection (RFC 9110, 7.6.1), and the
/// framing headers, which each side gets anew.
fn hop_by_hop(name: &str) -> bool {
    [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "upgrade",
        "transfer-encoding",
        "content-length",
    ]
    .iter()
    .any(|h| is(name, h))
}

/// The transfer codings a message announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Coding {
    /// `chunked`, last.
    Chunked,
    /// Others without `chunked`.
    Other,
    /// `chunked` followed by another coding, or applied twice.
    ChunkedNotLast,
}

/// What a message's `Content-Length` and `Transfer-Encoding` headers say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Announced {
    /// The length, if any; an error when one is not a number or two differ.
    length: Result<Option<u64>, &'static str>,
    coding: Option<Coding>,
}

fn announced(headers: &[httparse::Header<'_>]) -> Announced {
    let mut length: Result<Option<u64>, &'static str> = Ok(None);
    let mut coding = None;
    for h in headers {
        if is(h.name, "content-length") {
            for t in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                let n = (!t.is_empty() && t.len() <= 18 && t.iter().all(u8::is_ascii_digit))
                    .then(|| std::str::from_utf8(t).ok()?.parse::<u64>().ok())
                    .flatten();
                length = match (length, n) {
                    (Err(e), _) => Err(e),
                    (_, None) => Err("invalid Content-Length"),
                    (Ok(Some(l)), Some(n)) if l != n => Err("conflicting Content-Length headers"),
                    (Ok(_), Some(n)) => Ok(Some(n)),
                };
            }
        } else if is(h.name, "transfer-encoding") {
            // A coding nobody can name still means "not by length".
            if tokens(h.value).next().is_none() && coding.is_none() {
                coding = Some(Coding::Other);
            }
            for t in tokens(h.value) {
                let chunked = t.eq_ignore_ascii_case(b"chunked");
                coding = Some(match coding {
                    Some(Coding::Chunked | Coding::ChunkedNotLast) => Coding::ChunkedNotLast,
                    _ if chunked => Coding::Chunked,
                    _ => Coding::Other,
                });
            }
        }
    }
    Announced { length, coding }
}

impl Announced {
    /// A response's framing (RFC 9112, 6.3): the coding wins over a
    /// length; without either it ends when the worker closes.
    fn response(self) -> Result<Framing, &'static str> {
        match self.coding {
            Some(Coding::Chunked) => Ok(Framing::Chunked),
            Some(_) => Ok(Framing::Close),
            None => Ok(match self.length? {
                Some(n) => Framing::Length(n),
                None => Framing::Close,
            }),
        }
    }
}

/// The slot a `Cookie` header's sticky cookie names.
fn cookie_slot(value: &[u8]) -> Option<usize> {
    value.split(|&b| b == b';').find_map(|c| {
        let c = c.trim_ascii();
        let rest = c
            .strip_prefix(STICKY_COOKIE.as_bytes())?
            .strip_prefix(b"=")?;
        std::str::from_utf8(rest).ok()?.parse().ok()
    })
}

fn header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Where a head ends, found by scanning each byte once: a head that
/// comes a byte at a time costs time linear in its size, not quadratic
/// (it is parsed once, when its blank line is here).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct HeadScan {
    /// Bytes already searched for the end.
    scanned: usize,
}

/// The most empty lines (CRLF) ignored before a request line (RFC 9112,
/// 2.2: a client may send one after a body).
const MAX_LEADING_CRLF: usize = 4;

impl HeadScan {
    /// The length of the head at the start of `buf` once its final blank
    /// line is here, else `None`. Empty lines before a request line are
    /// part of the head.
    pub(crate) fn end(&mut self, buf: &[u8]) -> Option<usize> {
        let lead = buf
            .chunks_exact(2)
            .take(MAX_LEADING_CRLF + 1)
            .take_while(|pair| pair == b"\r\n")
            .count()
            * 2;
        // A terminator ("\n\r\n" or "\n\n") is at most three bytes: start
        // three back so that one split over two reads is found.
        let from = self.scanned.saturating_sub(3).max(lead);
        let mut at = from;
        while let Some(i) = buf[at..].iter().position(|&b| b == b'\n') {
            let lf = at + i;
            match &buf[lf + 1..] {
                [b'\n', ..] => return Some(lf + 2),
                [b'\r', b'\n', ..] => return Some(lf + 3),
                _ => at = lf + 1,
            }
        }
        self.scanned = buf.len();
        None
    }
}

/// `tchar` (RFC 9110, 5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// `token`: one or more `tchar`.
fn is_token(t: &[u8]) -> bool {
    !t.is_empty() && t.iter().all(|&b| is_tchar(b))
}

/// A `Host` value or URI authority (RFC 3986, 3.2): a registered name,
/// an IPv4 address or a bracketed IP literal, then an optional numeric
/// port. No user info, no white space, not empty.
fn valid_authority(a: &[u8]) -> bool {
    let port_ok = |p: &[u8]| !p.is_empty() && p.len() <= 5 && p.iter().all(u8::is_ascii_digit);
    if let Some(rest) = a.strip_prefix(b"[") {
        let Some(close) = rest.iter().position(|&b| b == b']') else {
            return false;
        };
        let literal = &rest[..close];
        let literal_ok = !literal.is_empty()
            && literal
                .iter()
                .all(|&b| b.is_ascii_hexdigit() || b":.".contains(&b));
        return literal_ok
            && match &rest[close + 1..] {
                [] => true,
                [b':', port @ ..] => port_ok(port),
                _ => false,
            };
    }
    let (name, port) = match a.iter().rposition(|&b| b == b':') {
        Some(i) => (&a[..i], Some(&a[i + 1..])),
        None => (a, None),
    };
    !name.is_empty()
        && name
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=".contains(&b))
        && port.is_none_or(port_ok)
}

/// A request target in origin form (`/path?query`), or `*`: printable
/// ASCII with no backslash and no fragment.
fn valid_origin_form(target: &[u8], method: &str) -> bool {
    if target == b"*" {
        return method == "OPTIONS";
    }
    target.first() == Some(&b'/')
        && target
            .iter()
            .all(|&b| (0x21..0x7f).contains(&b) && b != b'\\' && b != b'#')
}

/// An absolute-form target (`http://authority/path?query`), split into
/// its authority and its target in origin form.
fn absolute_form(target: &[u8]) -> Option<(&[u8], Vec<u8>)> {
    let colon = target.iter().position(|&b| b == b':')?;
    let scheme = &target[..colon];
    if !(scheme.eq_ignore_ascii_case(b"http") || scheme.eq_ignore_ascii_case(b"https")) {
        return None;
    }
    let rest = target[colon + 1..].strip_prefix(b"//")?;
    let end = rest
        .iter()
        .position(|&b| b == b'/' || b == b'?')
        .unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    let mut origin = Vec::with_capacity(path.len() + 1);
    if path.first() != Some(&b'/') {
        origin.push(b'/');
    }
    origin.extend_from_slice(path);
    Some((authority, origin))
}

/// Bare CR, bare LF or NUL anywhere in a head: a worker could split it
/// into lines where the master did not.
fn bare_line_ends(head: &[u8]) -> bool {
    head.iter().enumerate().any(|(i, &b)| match b {
        0 => true,
        b'\r' => head.get(i + 1) != Some(&b'\n'),
        b'\n' => i == 0 || head[i - 1] != b'\r',
        _ => false,
    })
}

/// The transfer codings a request may carry (RFC 9112, 7).
const KNOWN_CODINGS: [&str; 6] = [
    "chunked",
    "gzip",
    "x-gzip",
    "deflate",
    "compress",
    "x-compress",
];

/// A request's `Transfer-Encoding` headers, strictly: each a list of
/// known codings, none empty, `chunked` once and last. `Ok(None)` when
/// there is none; the codings in order otherwise.
fn request_codings<'a>(headers: &[httparse::Header<'a>]) -> Result<Option<Vec<&'a [u8]>>, Reject> {
    let mut codings: Option<Vec<&[u8]>> = None;
    for h in headers.iter().filter(|h| is(h.name, "transfer-encoding")) {
        let list = codings.get_or_insert_with(Vec::new);
        for element in h.value.split(|&b| b == b',') {
            let coding = element.trim_ascii();
            if coding.is_empty() {
                return Err(reject(400, "an empty transfer coding"));
            }
            if !is_token(coding) {
                return Err(reject(400, "an invalid transfer coding"));
            }
            if !KNOWN_CODINGS
                .iter()
                .any(|k| coding.eq_ignore_ascii_case(k.as_bytes()))
            {
                return Err(reject(501, "an unknown transfer coding"));
            }
            list.push(coding);
        }
    }
    if let Some(list) = &codings {
        let chunked = |c: &&[u8]| c.eq_ignore_ascii_case(b"chunked");
        match list.iter().position(chunked) {
            Some(i) if i + 1 == list.len() => {}
            Some(_) => return Err(reject(400, "chunked is not the last transfer coding")),
            None => {
                return Err(reject(
                    400,
                    "a request body without chunked cannot be framed",
                ))
            }
        }
    }
    Ok(codings)
}

/// Parses the request head at the start of `buf`: `Ok(None)` while it is
/// incomplete, else its length and the head rewritten for a worker.
///
/// Whatever decides where the request ends or where it goes is checked
/// strictly (see the refusals in docs/balance-modes.md, HTTP mode): one valid
/// `Host` (absent only in HTTP/1.0, when it gets one naming `local()`,
/// the address the client reached: it goes on as HTTP/1.1, which requires
/// one), a target in origin form (absolute form is turned into it, its
/// authority becoming `Host`), at most one way of framing the body, and
/// lines that end in CRLF.
#[cfg(test)]
pub(crate) fn parse_request(
    buf: &[u8],
    client: Client,
    local: impl FnOnce() -> Option<std::net::SocketAddr>,
) -> Result<Option<(usize, RequestHead)>, Reject> {
    parse_request_scanned(buf, &mut HeadScan::default(), client, local)
}

/// [`parse_request`], resuming the search for the head's end where `scan`
/// left it.
pub(crate) fn parse_request_scanned(
    buf: &[u8],
    scan: &mut HeadScan,
    client: Client,
    local: impl FnOnce() -> Option<std::net::SocketAddr>,
) -> Result<Option<(usize, RequestHead)>, Reject> {
    let Some(end) = scan.end(buf) else {
        if buf.len() > MAX_HEADER_BYTES {
            return Err(reject(431, "the request head is too large"));
        }
        if buf.len() > MAX_LEADING_CRLF * 2 && buf.iter().all(|&b| b == b'\r' || b == b'\n') {
            return Err(reject(400, "malformed request"));
        }
        return Ok(None);
    };
    if end > MAX_HEADER_BYTES {
        return Err(reject(431, "the request head is too large"));
    }
    let head = &buf[..end];
    if bare_line_ends(head) {
        return Err(reject(400, "a bare CR, LF or NUL in the request head"));
    }
    let mut slots = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_request_with_uninit_headers(&mut req, head, &mut slots)
    {
        Ok(httparse::Status::Complete(n)) if n == end => n,
        Err(httparse::Error::TooManyHeaders) => {
            return Err(reject(431, "the request head is too large"))
        }
        _ => return Err(reject(400, "malformed request")),
    };
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(reject(400, "malformed request"));
    };
    if method == "CONNECT" {
        return Err(reject(405, "CONNECT is not forwarded"));
    }
    let http10 = version == 0;
    let headers = &*req.headers;
    let connection = Connection::of(headers);

    // Framing: one length, or codings ending in chunked, never both.
    let codings = request_codings(headers)?;
    let length = announced(headers).length.map_err(|r| reject(400, r))?;
    let framing = match (&codings, length) {
        (Some(_), Some(_)) => return Err(reject(400, "both Content-Length and Transfer-Encoding")),
        (Some(_), None) if http10 => {
            return Err(reject(400, "Transfer-Encoding in an HTTP/1.0 request"))
        }
        (Some(_), None) => Framing::Chunked,
        (None, Some(0) | None) => Framing::Empty,
        (None, Some(n)) => Framing::Length(n),
    };

    // Routing: where it goes, and which host it is for.
    let mut hosts = headers.iter().filter(|h| is(h.name, "host"));
    let host_header = hosts.next().map(|h| h.value);
    if hosts.next().is_some() {
        return Err(reject(400, "more than one Host header"));
    }
    let absolute;
    let (path, host): (&[u8], Option<&[u8]>) = if target.starts_with('/') || target == "*" {
        if !valid_origin_form(target.as_bytes(), method) {
            return Err(reject(400, "an invalid request target"));
        }
        (target.as_bytes(), host_header)
    } else {
        // Absolute form: the authority wins over Host (RFC 9112, 3.2.2).
        let Some((authority, origin)) = absolute_form(target.as_bytes()) else {
            return Err(reject(400, "an invalid request target"));
        };
        if !valid_origin_form(&origin, method) {
            return Err(reject(400, "an invalid request target"));
        }
        absolute = origin;
        (&absolute, Some(authority))
    };
    match host {
        Some(h) if !valid_authority(h) => return Err(reject(400, "an invalid Host")),
        None if !http10 => return Err(reject(400, "an HTTP/1.1 request without Host")),
        _ => {}
    }
    let upgrade = connection.upgrade && headers.iter().any(|h| is(h.name, "upgrade"));

    let mut out = Vec::with_capacity(len + 128);
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path);
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if let Some(host) = host {
        header(&mut out, b"host", host);
    } else if let Some(addr) = local() {
        let _ = write!(out, "host: {addr}\r\n");
    }
    let mut chain: Option<Vec<u8>> = None;
    let (mut has_proto, mut has_host) = (false, false);
    let mut pinned = None;
    for h in headers {
        let name = h.name;
        if is(name, "x-forwarded-for") {
            if client.trusted {
                let chain = chain.get_or_insert_with(Vec::new);
                if !chain.is_empty() {
                    chain.extend_from_slice(b", ");
                }
                chain.extend_from_slice(h.value);
            }
            continue;
        }
        if is(name, "x-forwarded-proto") || is(name, "x-forwarded-host") {
            if !client.trusted {
                continue;
            }
            has_proto |= is(name, "x-forwarded-proto");
            has_host |= is(name, "x-forwarded-host");
        } else if is(name, "host") {
            // Written first, from the authority the request is for.
            continue;
        } else if is(name, "cookie") {
            if client.sticky && pinned.is_none() {
                pinned = cookie_slot(h.value);
            }
        } else if hop_by_hop(name) || is(name, "trailer") || connection.names(name) {
            continue;
        }
        header(&mut out, name.as_bytes(), h.value);
    }
    // The framing the master read, spelled once: the worker cannot read
    // another.
    if let Some(codings) = &codings {
        out.extend_from_slice(b"transfer-encoding: ");
        for (i, c) in codings.iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(b", ");
            }
            out.extend_from_slice(c);
        }
        out.extend_from_slice(b"\r\n");
    } else if let Some(n) = length {
        let _ = write!(out, "content-length: {n}\r\n");
    }
    out.extend_from_slice(b"x-forwarded-for: ");
    if let Some(chain) = chain.filter(|c| !c.is_empty()) {
        out.extend_from_slice(&chain);
        out.extend_from_slice(b", ");
    }
    let _ = write!(out, "{}\r\n", client.ip);
    if !has_proto {
        header(&mut out, b"x-forwarded-proto", b"http");
    }
    if let (false, Some(host)) = (has_host, host) {
        header(&mut out, b"x-forwarded-host", host);
    }
    if upgrade {
        out.extend_from_slice(b"connection: upgrade\r\n");
        for h in headers.iter().filter(|h| is(h.name, "upgrade")) {
            header(&mut out, b"upgrade", h.value);
        }
    }
    out.extend_from_slice(b"\r\n");
    let keep_alive = if http10 {
        connection.keep_alive && !connection.close
    } else {
        !connection.close
    };
    Ok(Some((
        len,
        RequestHead {
            bytes: out,
            framing,
            idempotent: matches!(method, "GET" | "HEAD" | "OPTIONS" | "TRACE"),
            head: method == "HEAD",
            http10,
            keep_alive,
            upgrade,
            pinned,
        },
    )))
}

/// How a response body is passed to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pass {
    /// Byte for byte.
    Verbatim,
    /// Chunked from the worker, plain to an HTTP/1.0 client.
    Dechunk,
    /// Close-delimited from the worker, chunked to an HTTP/1.1 client (so
    /// that its connection can be kept).
    Chunk,
}

/// A response head, parsed and rewritten for the client.
#[derive(Debug)]
pub(crate) struct ResponseHead {
    /// Its length in the worker's bytes.
    pub(crate) len: usize,
    pub(crate) status: u16,
    /// How its body ends on the worker's side.
    pub(crate) framing: Framing,
    /// How the body goes to the client.
    pub(crate) pass: Pass,
    /// The client's connection closes after it.
    pub(crate) close_client: bool,
    /// The worker's connection may carry another request after it.
    pub(crate) reusable: bool,
}

/// What the response is for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Answering {
    /// The request was HEAD.
    pub(crate) head: bool,
    pub(crate) http10: bool,
    pub(crate) keep_alive: bool,
    /// The request asked for an upgrade: a 101 keeps its `Upgrade`.
    pub(crate) upgrade: bool,
    /// Pin the client to this slot with the sticky cookie.
    pub(crate) set_cookie: Option<usize>,
}

/// A response the master cannot pass on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BadResponse(pub(crate) &'static str);

/// Parses the response head at the start of `buf`, and writes the head
/// the client gets to `out`: `Ok(None)` while it is incomplete.
pub(crate) fn parse_response(
    buf: &[u8],
    answering: Answering,
    out: &mut Vec<u8>,
) -> Result<Option<ResponseHead>, BadResponse> {
    let mut slots = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, &mut slots)
    {
        Ok(httparse::Status::Complete(n)) if n <= MAX_HEADER_BYTES => n,
        Ok(httparse::Status::Partial) if buf.len() <= MAX_HEADER_BYTES => return Ok(None),
        Ok(_) | Err(httparse::Error::TooManyHeaders) => {
            return Err(BadResponse("the response head is too large"))
        }
        Err(_) => return Err(BadResponse("malformed response")),
    };
    let (Some(version), Some(status)) = (resp.version, resp.code) else {
        return Err(BadResponse("malformed response"));
    };
    let headers = &*resp.headers;
    let connection = Connection::of(headers);
    let switching = status == 101 && answering.upgrade;
    let bodiless = answering.head || (100..200).contains(&status) || status == 204 || status == 304;
    let announced = announced(headers);
    let chunked = announced.coding == Some(Coding::Chunked);
    let framing = if bodiless {
        Framing::Empty
    } else {
        // Two lengths: nobody can tell where it ends.
        announced.response().map_err(BadResponse)?
    };
    let (pass, mut close_client) = match (framing, answering.http10) {
        (Framing::Chunked, true) => (Pass::Dechunk, true),
        (Framing::Close, true) => (Pass::Verbatim, true),
        (Framing::Close, false) => (Pass::Chunk, false),
        _ => (Pass::Verbatim, false),
    };
    close_client |= !answering.keep_alive;
    let reusable = framing != Framing::Close
        && !switching
        && !connection.close
        && (version == 1 || connection.keep_alive);

    out.reserve(len + 64);
    let _ = write!(
        out,
        "HTTP/1.1 {status} {}\r\n",
        resp.reason.unwrap_or_default()
    );
    for h in headers {
        let name = h.name;
        let keep = if is(name, "content-length") {
            // A HEAD or 304 answer's length describes the body it would
            // have; beside a coding, it means nothing.
            announced.coding.is_none()
        } else if is(name, "transfer-encoding") {
            // Set below from what the client gets.
            false
        } else if switching && is(name, "upgrade") {
            true
        } else {
            !(hop_by_hop(name) || connection.names(name))
        };
        if keep {
            header(out, name.as_bytes(), h.value);
        }
    }
    if bodiless && chunked && !answering.http10 {
        // A HEAD answer tells how the body would have come.
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    match (framing, pass) {
        (Framing::Chunked, Pass::Verbatim) | (_, Pass::Chunk) => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n")
        }
        _ => {}
    }
    if let Some(slot) = answering.set_cookie {
        let _ = write!(
            out,
            "set-cookie: {STICKY_COOKIE}={slot}; Path=/; HttpOnly; SameSite=Lax\r\n"
        );
    }
    if switching {
        out.extend_from_slice(b"connection: upgrade\r\n");
    } else if close_client {
        out.extend_from_slice(b"connection: close\r\n");
    } else if answering.http10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(Some(ResponseHead {
        len,
        status,
        framing,
        pass,
        close_client,
        reusable,
    }))
}

/// A body whose framing is broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BadBody(pub(crate) &'static str);

/// Where the chunked decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// In the size's hex digits (`digits` so far).
    Size {
        digits: u8,
    },
    /// After the size: white space, extensions, up to the CR.
    Extension,
    /// The LF after a size line.
    SizeLf,
    /// This many data bytes to go.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataCr,
    DataLf,
    /// At the start of a trailer line, or of the final CRLF.
    TrailerStart,
    /// In a trailer field's name.
    TrailerName,
    /// In a trailer field's value.
    TrailerValue,
    /// The LF of a trailer line.
    TrailerLf,
    /// The final LF.
    EndLf,
    /// The body is complete.
    Done,
}

/// Finds where a body ends, and passes it on as [`Pass`] says.
#[derive(Debug, Clone)]
pub(crate) struct Body {
    framing: Framing,
    /// Length: bytes to go.
    left: u64,
    chunk: Chunk,
    /// The size being read.
    size: u64,
    /// Bytes in the current chunk-size line, or trailer section.
    line: usize,
}

impl Body {
    pub(crate) fn new(framing: Framing) -> Body {
        Body {
            framing,
            left: match framing {
                Framing::Length(n) => n,
                _ => 0,
            },
            chunk: Chunk::Size { digits: 0 },
            size: 0,
            line: 0,
        }
    }

    /// Whether it is complete.
    pub(crate) fn done(&self) -> bool {
        match self.framing {
            Framing::Empty => true,
            Framing::Length(_) => self.left == 0,
            Framing::Chunked => self.chunk == Chunk::Done,
            Framing::Close => false,
        }
    }

    /// Takes from `input` what belongs to the body: the count of bytes
    /// taken (less than `input.len()` only when the body is complete).
    /// With `out`, what the client gets is appended to it: the bytes as
    /// they are, or as `pass` turns them.
    pub(crate) fn take(
        &mut self,
        input: &[u8],
        pass: Pass,
        mut out: Option<&mut Vec<u8>>,
    ) -> Result<usize, BadBody> {
        let used = match self.framing {
            Framing::Empty => 0,
            Framing::Length(_) => {
                let n = input
                    .len()
                    .min(usize::try_from(self.left).unwrap_or(usize::MAX));
                self.left -= n as u64;
                n
            }
            Framing::Close => {
                if let (Some(out), Pass::Chunk) = (out.as_deref_mut(), pass) {
                    if !input.is_empty() {
                        let _ = write!(out, "{:x}\r\n", input.len());
                        out.extend_from_slice(input);
                        out.extend_from_slice(b"\r\n");
                    }
                    return Ok(input.len());
                }
                input.len()
            }
            Framing::Chunked => {
                let dechunk = pass == Pass::Dechunk;
                let mut i = 0;
                while i < input.len() && self.chunk != Chunk::Done {
                    if let Chunk::Data(left) = self.chunk {
                        let n = (input.len() - i).min(usize::try_from(left).unwrap_or(usize::MAX));
                        if dechunk {
                            if let Some(out) = out.as_deref_mut() {
                                out.extend_from_slice(&input[i..i + n]);
                            }
                        }
                        i += n;
                        self.chunk = if left == n as u64 {
                            Chunk::DataCr
                        } else {
                            Chunk::Data(left - n as u64)
                        };
                        continue;
                    }
                    self.step(input[i])?;
                    i += 1;
                }
                if !dechunk {
                    if let Some(out) = out.as_deref_mut() {
                        out.extend_from_slice(&input[..i]);
                    }
                }
                return Ok(i);
            }
        };
        if let Some(out) = out {
            out.extend_from_slice(&input[..used]);
        }
        Ok(used)
    }

    /// One byte of the chunked coding outside a chunk's data.
    fn step(&mut self, b: u8) -> Result<(), BadBody> {
        const BAD: BadBody = BadBody("malformed chunked body");
        self.chunk = match self.chunk {
            Chunk::Size { digits } => {
                self.line += 1;
                match (b as char).to_digit(16) {
                    Some(d) if digits < 15 => {
                        self.size = self.size * 16 + u64::from(d);
                        Chunk::Size { digits: digits + 1 }
                    }
                    Some(_) => return Err(BadBody("chunk size too large")),
                    None if digits == 0 => return Err(BAD),
                    None => return self.after_size(b),
                }
            }
            Chunk::Extension => {
                self.line += 1;
                if self.line > MAX_CHUNK_LINE {
                    return Err(BadBody("chunk extension too long"));
                }
                return self.after_size(b);
            }
            Chunk::SizeLf if b == b'\n' => {
                self.line = 0;
                if self.size == 0 {
                    Chunk::TrailerStart
                } else {
                    Chunk::Data(std::mem::take(&mut self.size))
                }
            }
            Chunk::DataCr if b == b'\r' => Chunk::DataLf,
            Chunk::DataLf if b == b'\n' => Chunk::Size { digits: 0 },
            Chunk::TrailerStart if b == b'\r' => Chunk::EndLf,
            // A trailer line is a header field, or the body is refused:
            // a worker that reads it as a request line would see two.
            Chunk::TrailerStart | Chunk::TrailerName | Chunk::TrailerValue => {
                self.line += 1;
                if self.line > MAX_TRAILERS {
                    return Err(BadBody("trailers too long"));
                }
                match (self.chunk, b) {
                    (Chunk::TrailerStart | Chunk::TrailerName, _) if is_tchar(b) => {
                        Chunk::TrailerName
                    }
                    (Chunk::TrailerName, b':') => Chunk::TrailerValue,
                    (Chunk::TrailerValue, b'\r') => Chunk::TrailerLf,
                    (Chunk::TrailerValue, b'\t' | 0x20..=0x7e | 0x80..=0xff) => Chunk::TrailerValue,
                    _ => return Err(BadBody("a trailer line that is not a header field")),
                }
            }
            Chunk::TrailerLf if b == b'\n' => Chunk::TrailerStart,
            Chunk::EndLf if b == b'\n' => Chunk::Done,
            _ => return Err(BAD),
        };
        Ok(())
    }

    /// A byte after the size digits: extension text, or the line's CR.
    fn after_size(&mut self, b: u8) -> Result<(), BadBody> {
        self.chunk = match b {
            b'\r' => Chunk::SizeLf,
            // White space straight after the size is refused: servers
            // disagree on whether it ends the size.
            b';' => Chunk::Extension,
            b' ' | b'\t' | 0x21..=0x7e | 0x80..=0xff if self.chunk == Chunk::Extension => {
                Chunk::Extension
            }
            b'\n' | 0 | 0x01..=0x1f | 0x7f => return Err(BadBody("malformed chunked body")),
            _ => return Err(BadBody("malformed chunk size")),
        };
        Ok(())
    }

    /// The sender closed: whether the body was complete then. A
    /// close-delimited body passed on chunked gets its last chunk.
    pub(crate) fn closed(&mut self, pass: Pass, out: &mut Vec<u8>) -> bool {
        if self.framing == Framing::Close {
            if pass == Pass::Chunk {
                out.extend_from_slice(b"0\r\n\r\n");
            }
            return true;
        }
        self.done()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(trusted: bool) -> Client {
        Client {
            ip: IpAddr::from([10, 0, 0, 7]),
            trusted,
            sticky: true,
        }
    }

    fn request(text: &str) -> Result<Option<(usize, RequestHead)>, Reject> {
        parse_request(text.as_bytes(), client(false), || None)
    }

    fn forwarded(text: &str) -> String {
        let (_, head) = request(text).unwrap().unwrap();
        String::from_utf8(head.bytes).unwrap()
    }

    #[test]
    fn a_request_goes_on_as_http11_without_hop_by_hop_headers_and_with_forwarded_ones() {
        let text = forwarded(
            "GET /a?b HTTP/1.1\r\nHost: example.com\r\nConnection: keep-alive, X-Private\r\n\
             X-Private: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nX-Forwarded-For: 6.6.6.6\r\n\
             X-Forwarded-Proto: https\r\nAccept: */*\r\n\r\n",
        );
        assert_eq!(
            text,
            "GET /a?b HTTP/1.1\r\nhost: example.com\r\nAccept: */*\r\n\
             x-forwarded-for: 10.0.0.7\r\nx-forwarded-proto: http\r\n\
             x-forwarded-host: example.com\r\n\r\n"
        );
    }

    #[test]
    fn a_trusted_proxy_keeps_its_forwarded_headers() {
        let (_, head) = parse_request(
            b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 1.1.1.1\r\nX-Forwarded-For: 2.2.2.2\r\n\
              X-Forwarded-Proto: https\r\nX-Forwarded-Host: public\r\n\r\n",
            client(true),
            || None,
        )
        .unwrap()
        .unwrap();
        let text = String::from_utf8(head.bytes).unwrap();
        assert!(
            text.contains("x-forwarded-for: 1.1.1.1, 2.2.2.2, 10.0.0.7\r\n"),
            "{text}"
        );
        assert!(text.contains("X-Forwarded-Proto: https\r\n"), "{text}");
        assert!(text.contains("X-Forwarded-Host: public\r\n"), "{text}");
        assert!(!text.contains("x-forwarded-proto"), "{text}");
        assert!(!text.contains("x-forwarded-host"), "{text}");
    }

    #[test]
    fn an_incomplete_head_waits_and_a_complete_one_says_how_long_it_is() {
        assert!(request("GET / HTTP/1.1\r\nHost: x\r\n").unwrap().is_none());
        let (len, head) = request("GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /next")
            .unwrap()
            .unwrap();
        assert_eq!(len, "GET / HTTP/1.1\r\nHost: x\r\n\r\n".len());
        assert!(head.keep_alive && head.idempotent && head.replayable());
        assert_eq!(head.framing, Framing::Empty);
    }

    #[test]
    fn a_request_without_host_gets_the_address_the_client_reached() {
        let local = || Some(std::net::SocketAddr::from(([127, 0, 0, 1], 8080)));
        let (_, head) = parse_request(b"OPTIONS / HTTP/1.0\r\n\r\n", client(false), local)
            .unwrap()
            .unwrap();
        let text = String::from_utf8(head.bytes).unwrap();
        assert!(text.starts_with("OPTIONS / HTTP/1.1\r\n"), "{text}");
        assert!(text.contains("host: 127.0.0.1:8080\r\n"), "{text}");
        let (_, head) = parse_request(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", client(false), local)
            .unwrap()
            .unwrap();
        let text = String::from_utf8(head.bytes).unwrap();
        assert!(!text.contains("127.0.0.1:8080"), "{text}");
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection_header() {
        let keep = |t: &str| request(t).unwrap().unwrap().1.keep_alive;
        assert!(keep("GET / HTTP/1.1\r\nHost: h\r\n\r\n"));
        assert!(!keep(
            "GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
        ));
        assert!(!keep("GET / HTTP/1.0\r\n\r\n"));
        assert!(keep("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
    }

    #[test]
    fn the_body_framing_is_read_and_contradictions_are_refused() {
        let framing = |t: &str| request(t).map(|r| r.unwrap().1.framing);
        assert_eq!(
            framing("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n"),
            Ok(Framing::Length(5))
        );
        assert_eq!(
            framing("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n"),
            Ok(Framing::Empty)
        );
        assert_eq!(
            framing("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            Ok(Framing::Chunked)
        );
        assert_eq!(
            framing("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n"),
            Ok(Framing::Length(5))
        );
        for bad in [
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1e3\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "NONSENSE\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: h\r\nBad Header: x\r\n\r\n",
        ] {
            assert_eq!(framing(bad).map_err(|r| r.status), Err(400), "{bad:?}");
        }
        assert_eq!(
            framing("CONNECT a:443 HTTP/1.1\r\n\r\n").map_err(|r| r.status),
            Err(405)
        );
        let posted = request("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n")
            .unwrap()
            .unwrap()
            .1;
        assert!(!posted.idempotent && !posted.replayable());
    }

    /// The status of the master's refusal, or 0 for a request it forwards.
    fn refused(text: &[u8]) -> u16 {
        match parse_request(text, client(false), || None) {
            Ok(Some(_)) => 0,
            Ok(None) => panic!("incomplete: {:?}", String::from_utf8_lossy(text)),
            Err(r) => r.status,
        }
    }

    #[test]
    fn routing_is_refused_when_it_is_ambiguous() {
        for (bad, why) in [
            (
                &b"GET / HTTP/1.1\r\nHost: good.example\r\nHost: evil.example\r\n\r\n"[..],
                "two Hosts",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n",
                "two equal Hosts",
            ),
            (b"GET / HTTP/1.1\r\nHost:\r\n\r\n", "empty Host"),
            (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", "space in Host"),
            (b"GET / HTTP/1.1\r\nHost: user@evil\r\n\r\n", "@ in Host"),
            (b"GET / HTTP/1.1\r\nHost: a:80x\r\n\r\n", "bad port"),
            (b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", "slash in Host"),
            (b"GET / HTTP/1.1\r\n\r\n", "HTTP/1.1 without Host"),
            (b"GET x HTTP/1.1\r\nHost: a\r\n\r\n", "no leading slash"),
            (b"GET /a\\b HTTP/1.1\r\nHost: a\r\n\r\n", "backslash"),
            (b"GET /a#b HTTP/1.1\r\nHost: a\r\n\r\n", "fragment"),
            (
                b"GET * HTTP/1.1\r\nHost: a\r\n\r\n",
                "asterisk without OPTIONS",
            ),
            (b"GET ftp://a/ HTTP/1.1\r\nHost: a\r\n\r\n", "other scheme"),
            (b"GET http://u@a/ HTTP/1.1\r\nHost: a\r\n\r\n", "user info"),
            (b"GET http:/a/ HTTP/1.1\r\nHost: a\r\n\r\n", "no authority"),
            (
                b"GET /\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n",
                "raw non-ASCII target",
            ),
        ] {
            assert_eq!(refused(bad), 400, "{why}");
        }
        for good in [
            &b"GET / HTTP/1.0\r\n\r\n"[..],
            b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
            b"GET /a%20b?c=d&e HTTP/1.1\r\nHost: x-y.example:3000\r\n\r\n",
            b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            assert_eq!(refused(good), 0, "{:?}", String::from_utf8_lossy(good));
        }
    }

    #[test]
    fn an_absolute_target_goes_on_in_origin_form_with_its_authority_as_host() {
        let text = forwarded("GET http://Right.example:8080?q=1 HTTP/1.1\r\nHost: wrong\r\n\r\n");
        assert!(
            text.starts_with("GET /?q=1 HTTP/1.1\r\nhost: Right.example:8080\r\n"),
            "{text}"
        );
        assert!(!text.contains("wrong"), "{text}");
        assert!(
            text.contains("x-forwarded-host: Right.example:8080\r\n"),
            "{text}"
        );
        let text = forwarded("GET https://a/p/q HTTP/1.1\r\n\r\n");
        assert!(
            text.starts_with("GET /p/q HTTP/1.1\r\nhost: a\r\n"),
            "{text}"
        );
    }

    #[test]
    fn a_transfer_coding_that_is_not_a_clean_list_ending_in_chunked_is_refused() {
        for te in [
            "",
            " ",
            ",",
            ", ,",
            "\t",
            "chunked,",
            ",chunked",
            "chunked, , chunked",
            "chunked, chunked",
            "chunked;x=1",
            "\"chunked\"",
            "gzip",
            "chunked, gzip",
        ] {
            let text = format!("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: {te}\r\n\r\n");
            assert_eq!(refused(text.as_bytes()), 400, "{te:?}");
            // Beside a length, in any spelling: refused as well.
            let text = format!(
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: {te}\r\n\r\nabc"
            );
            assert_eq!(refused(text.as_bytes()), 400, "CL + {te:?}");
        }
        for te in ["foo, chunked", "identity, chunked", "chunked2"] {
            let text = format!("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: {te}\r\n\r\n");
            assert_eq!(refused(text.as_bytes()), 501, "{te:?}");
        }
        let text = forwarded(
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: GZIP\r\nTransfer-Encoding:  chunked \r\n\r\n",
        );
        assert!(
            text.contains("transfer-encoding: GZIP, chunked\r\n"),
            "{text}"
        );
        assert_eq!(text.matches("ransfer-").count(), 1, "spelled once: {text}");
        let text = forwarded(
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2, 2\r\nContent-Length: 2\r\n\r\nhi",
        );
        assert!(text.contains("content-length: 2\r\n"), "{text}");
        assert_eq!(
            text.to_ascii_lowercase().matches("content-length").count(),
            1,
            "{text}"
        );
    }

    #[test]
    fn a_head_with_bare_line_ends_obs_fold_or_nul_is_refused() {
        for bad in [
            &b"GET / HTTP/1.1\nHost: a\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: a\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r2\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n 2\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n\t2\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX: \x001\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX : 1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n\n",
            b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            assert_eq!(refused(bad), 400, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn a_trailer_line_that_is_not_a_header_field_is_refused() {
        for bad in [
            &b"0\r\nGET /x HTTP/1.1\r\n\r\n"[..],
            b"0\r\n: v\r\n\r\n",
            b"0\r\nX y: v\r\n\r\n",
            b"0\r\nX: v\x01\r\n\r\n",
            b"0\r\nX: v\n\r\n",
            b"1;a\x01\r\nx\r\n0\r\n\r\n",
        ] {
            let mut body = Body::new(Framing::Chunked);
            assert!(
                body.take(bad, Pass::Verbatim, None).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut body = Body::new(Framing::Chunked);
        let good = b"0\r\nX-Sum: a b\r\nY:\r\n\r\n";
        assert_eq!(body.take(good, Pass::Verbatim, None), Ok(good.len()));
        assert!(body.done());
    }

    #[test]
    fn the_end_of_a_head_is_found_once_however_the_head_is_cut() {
        let head = b"GET / HTTP/1.1\r\nHost: a\r\nX: y\r\n\r\nrest";
        let end = head.len() - 4;
        for step in 1..8 {
            let mut scan = HeadScan::default();
            let mut found = None;
            let mut have = 0;
            while found.is_none() && have < head.len() {
                have = (have + step).min(head.len());
                found = scan.end(&head[..have]);
            }
            assert_eq!(found, Some(end), "step {step}");
        }
        let mut scan = HeadScan::default();
        assert_eq!(
            scan.end(b"\r\n\r\nGET"),
            None,
            "leading empty lines are not an end"
        );
        assert_eq!(
            scan.end(b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"),
            Some(31)
        );
        // Many empty lines and nothing else: refused, not waited for.
        assert_eq!(
            request(&"\r\n".repeat(40)).map_err(|r| r.status).err(),
            Some(400)
        );
    }

    #[test]
    fn an_oversized_head_is_431_complete_or_not() {
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_HEADER_BYTES));
        assert_eq!(request(&big).map_err(|r| r.status).err(), Some(431));
        let many: String = (0..200).map(|i| format!("X-{i}: 1\r\n")).collect();
        let text = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(request(&text).map_err(|r| r.status).err(), Some(431));
    }

    #[test]
    fn an_upgrade_keeps_its_upgrade_headers_and_the_sticky_cookie_is_read() {
        let (_, head) = request(
            "GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Cookie: a=1; herd_slot=3\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert!(head.upgrade);
        assert_eq!(head.pinned, Some(3));
        let text = String::from_utf8(head.bytes).unwrap();
        assert!(
            text.ends_with("connection: upgrade\r\nupgrade: websocket\r\n\r\n"),
            "{text}"
        );
        assert_eq!(cookie_slot(b"herd_slot=x"), None);
        assert_eq!(cookie_slot(b"herd_slots=1"), None);
        assert_eq!(cookie_slot(b"b=2;herd_slot=0"), Some(0));
    }

    fn response(text: &str, answering: Answering) -> (ResponseHead, String) {
        let mut out = Vec::new();
        let head = parse_response(text.as_bytes(), answering, &mut out)
            .unwrap()
            .unwrap();
        (head, String::from_utf8(out).unwrap())
    }

    const PLAIN: Answering = Answering {
        head: false,
        http10: false,
        keep_alive: true,
        upgrade: false,
        set_cookie: None,
    };

    #[test]
    fn a_response_loses_the_workers_connection_headers_and_keeps_the_clients_connection() {
        let (head, text) = response(
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\nKeep-Alive: x\r\n\r\nhi",
            PLAIN,
        );
        assert_eq!(text, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n");
        assert_eq!(head.framing, Framing::Length(2));
        assert!(!head.reusable && !head.close_client);
        assert_eq!(
            head.len,
            text.len() + "Connection: close\r\nKeep-Alive: x\r\n".len()
        );
    }

    #[test]
    fn bodies_are_framed_for_what_the_client_speaks() {
        // Close-delimited: chunked to HTTP/1.1, as it is to HTTP/1.0.
        let (head, text) = response("HTTP/1.0 200 OK\r\n\r\n", PLAIN);
        assert_eq!((head.framing, head.pass), (Framing::Close, Pass::Chunk));
        assert!(text.contains("transfer-encoding: chunked\r\n") && !head.reusable);
        let old = Answering {
            http10: true,
            keep_alive: true,
            ..PLAIN
        };
        let (head, text) = response("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", old);
        assert_eq!(head.pass, Pass::Dechunk);
        assert!(head.close_client && head.reusable);
        assert!(text.contains("connection: close\r\n") && !text.contains("chunked"));
        let (head, text) = response("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n", old);
        assert!(!head.close_client);
        assert!(text.contains("connection: keep-alive\r\n"));
        // No body: HEAD, 204, 304, 1xx, whatever they announce.
        let head_req = Answering {
            head: true,
            ..PLAIN
        };
        let (head, text) = response("HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n", head_req);
        assert_eq!(head.framing, Framing::Empty);
        assert!(text.contains("Content-Length: 99\r\n"));
        for status in ["204 No Content", "304 Not Modified", "100 Continue"] {
            let (head, _) = response(&format!("HTTP/1.1 {status}\r\n\r\n"), PLAIN);
            assert_eq!(head.framing, Framing::Empty, "{status}");
        }
        let mut out = Vec::new();
        let two = "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
        assert!(parse_response(two.as_bytes(), PLAIN, &mut out).is_err());
        // Both a coding and a length: the coding wins, the length goes.
        let (head, text) = response(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            PLAIN,
        );
        assert_eq!(
            (head.framing, head.pass),
            (Framing::Chunked, Pass::Verbatim)
        );
        assert!(!text.contains("Content-Length"), "{text}");
        // chunked not last: the body ends when the worker closes.
        let (head, _) = response(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            PLAIN,
        );
        assert_eq!(head.framing, Framing::Close);
    }

    #[test]
    fn a_switch_keeps_its_upgrade_and_the_sticky_cookie_is_set() {
        let ws = Answering {
            upgrade: true,
            set_cookie: Some(2),
            ..PLAIN
        };
        let (head, text) = response(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            ws,
        );
        assert_eq!(head.status, 101);
        assert!(!head.reusable);
        assert_eq!(
            text,
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
             set-cookie: herd_slot=2; Path=/; HttpOnly; SameSite=Lax\r\nconnection: upgrade\r\n\r\n"
        );
    }

    /// Feeds `input` in pieces of `step` bytes.
    fn pass(framing: Framing, pass: Pass, input: &[u8], step: usize) -> (Vec<u8>, usize, bool) {
        let mut body = Body::new(framing);
        let mut out = Vec::new();
        let mut used = 0;
        while used < input.len() && !body.done() {
            let piece = &input[used..(used + step).min(input.len())];
            let n = body.take(piece, pass, Some(&mut out)).unwrap();
            used += n;
            if n < piece.len() {
                break;
            }
        }
        (out, used, body.done())
    }

    #[test]
    fn a_chunked_body_ends_at_its_last_chunk_however_it_is_cut() {
        let body = b"5;ext=1\r\nhello\r\n0006\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\nGET /next";
        let end = body.len() - "GET /next".len();
        for step in [1, 2, 3, 7, 100] {
            let (out, used, done) = pass(Framing::Chunked, Pass::Verbatim, body, step);
            assert!(done, "step {step}");
            assert_eq!(used, end, "step {step}");
            assert_eq!(out, &body[..end], "step {step}");
            let (out, used, done) = pass(Framing::Chunked, Pass::Dechunk, body, step);
            assert!(done && used == end);
            assert_eq!(out, b"hello world", "step {step}");
        }
    }

    #[test]
    fn a_malformed_chunked_body_is_an_error() {
        for bad in [
            &b"x\r\n"[..],
            b"5\nhello",
            b"5\r\nhelloXY",
            b"fffffffffffffffff\r\n",
            b"-1\r\n",
            b"0\r\nX: 1\n",
        ] {
            let mut body = Body::new(Framing::Chunked);
            assert!(body.take(bad, Pass::Verbatim, None).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn lengths_and_close_delimited_bodies_end_where_they_should() {
        let (out, used, done) = pass(Framing::Length(5), Pass::Verbatim, b"helloGET", 3);
        assert_eq!((out.as_slice(), used, done), (&b"hello"[..], 5, true));
        let mut body = Body::new(Framing::Close);
        let mut out = Vec::new();
        assert_eq!(body.take(b"abc", Pass::Chunk, Some(&mut out)), Ok(3));
        assert!(!body.done());
        assert!(body.closed(Pass::Chunk, &mut out));
        assert_eq!(out, b"3\r\nabc\r\n0\r\n\r\n");
        let mut short = Body::new(Framing::Length(5));
        short.take(b"abc", Pass::Verbatim, None).unwrap();
        assert!(!short.closed(Pass::Verbatim, &mut out), "truncated");
    }
}

/// Generated and mutated input for the codec: it never panics, a request
/// it accepts is rewritten into a head that it reads back the same way
/// (so a worker with a strict parser frames it as the master did), and a
/// body ends at the same byte however its bytes are cut.
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    /// Inputs per property per `cargo test` run.
    pub(super) const CASES: u32 = 4096;

    fn client() -> Client {
        Client {
            ip: IpAddr::from([10, 0, 0, 9]),
            trusted: false,
            sticky: true,
        }
    }

    fn parse(bytes: &[u8]) -> Result<Option<(usize, RequestHead)>, Reject> {
        parse_request(bytes, client(), || {
            Some(std::net::SocketAddr::from(([127, 0, 0, 1], 80)))
        })
    }

    /// A request a well-behaved client could send, with framing headers
    /// and a body.
    fn request() -> impl Strategy<Value = Vec<u8>> {
        let method = prop::sample::select(vec![
            "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH",
        ]);
        let path = "(/[a-zA-Z0-9._~%!$&'()*+,;=:@-]{0,12}){1,4}(\\?[a-z0-9=&]{0,10})?";
        let version = prop::sample::select(vec!["HTTP/1.0", "HTTP/1.1"]);
        let header = ("[A-Za-z][A-Za-z0-9-]{0,10}", "[ -~]{0,20}")
            .prop_filter("not a framing or hop-by-hop header", |(n, _)| {
                !hop_by_hop(n) && !is(n, "host") && !is(n, "trailer")
            });
        let headers = prop::collection::vec(header, 0..6);
        let body = prop::option::of(("[a-z]{0,40}", any::<bool>()));
        (
            method,
            path,
            version,
            "[a-z0-9.-]{1,12}(:[0-9]{1,5})?",
            headers,
            body,
        )
            .prop_map(|(method, path, version, host, headers, body)| {
                let mut text = format!("{method} {path} {version}\r\nHost: {host}\r\n");
                for (n, v) in headers {
                    text.push_str(&format!("{n}: {}\r\n", v.trim()));
                }
                match body {
                    Some((b, true)) if version == "HTTP/1.1" => text.push_str(&format!(
                        "Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
                        b.len()
                    )),
                    Some((b, _)) => {
                        text.push_str(&format!("Content-Length: {}\r\n\r\n{b}", b.len()))
                    }
                    None => text.push_str("\r\n"),
                }
                text.into_bytes()
            })
    }

    /// The head the worker gets, and what the master read from it.
    fn forwarded(bytes: &[u8]) -> Option<(Vec<u8>, Framing, bool, bool)> {
        let (_, head) = parse(bytes).ok()??;
        Some((head.bytes, head.framing, head.keep_alive, head.idempotent))
    }

    /// Reading the rewritten head again changes nothing but the
    /// forwarding chain, which grows by one hop.
    fn reads_back(bytes: &[u8]) -> Result<(), TestCaseError> {
        let Some((once, framing, _, idempotent)) = forwarded(bytes) else {
            return Ok(());
        };
        let (twice, framing2, keep2, idempotent2) = forwarded(&once).ok_or_else(|| {
            TestCaseError::fail(format!(
                "refused its own head: {:?}",
                String::from_utf8_lossy(&once)
            ))
        })?;
        prop_assert_eq!(framing, framing2);
        prop_assert_eq!(idempotent, idempotent2);
        prop_assert!(keep2);
        let (thrice, ..) = forwarded(&twice).unwrap();
        prop_assert_eq!(
            String::from_utf8_lossy(&twice),
            String::from_utf8_lossy(&thrice),
            "rewriting is a fixed point after one hop"
        );
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            // PROPTEST_CASES=200000 for a longer run.
            cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(CASES),
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn a_valid_request_is_accepted_and_reads_back_the_same(bytes in request()) {
            let parsed = parse(&bytes);
            prop_assert!(matches!(parsed, Ok(Some(_))), "{:?}: {:?}", String::from_utf8_lossy(&bytes), parsed.err());
            reads_back(&bytes)?;
        }

        #[test]
        fn a_mutated_request_never_panics_and_what_is_accepted_reads_back(
            bytes in request(),
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0..3u8), 1..4),
        ) {
            let mut bytes = bytes;
            for (at, byte, kind) in edits {
                let i = at.index(bytes.len() + 1);
                match kind {
                    0 if i < bytes.len() => bytes[i] = byte,
                    1 => bytes.insert(i, byte),
                    _ if i < bytes.len() => { bytes.remove(i); }
                    _ => {}
                }
            }
            reads_back(&bytes)?;
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse(&bytes);
            let mut out = Vec::new();
            let answering = Answering { head: false, http10: false, keep_alive: true, upgrade: false, set_cookie: None };
            let _ = parse_response(&bytes, answering, &mut out);
            for framing in [Framing::Chunked, Framing::Length(7), Framing::Close] {
                let _ = Body::new(framing).take(&bytes, Pass::Dechunk, Some(&mut out));
            }
        }

        #[test]
        fn a_chunked_body_ends_at_the_same_byte_however_it_is_cut(
            chunks in prop::collection::vec("[a-z]{1,20}", 0..5),
            cuts in prop::collection::vec(1..16usize, 1..40),
        ) {
            let mut body = String::new();
            for c in &chunks {
                body.push_str(&format!("{:x}\r\n{c}\r\n", c.len()));
            }
            body.push_str("0\r\nX-Sum: 1\r\n\r\nNEXT");
            let end = body.len() - 4;
            let mut whole = Body::new(Framing::Chunked);
            prop_assert_eq!(whole.take(body.as_bytes(), Pass::Verbatim, None), Ok(end));
            let mut cut = Body::new(Framing::Chunked);
            let (mut at, mut out) = (0, Vec::new());
            for n in cuts.iter().cycle() {
                if cut.done() || at >= body.len() {
                    break;
                }
                let piece = &body.as_bytes()[at..(at + n).min(body.len())];
                at += cut.take(piece, Pass::Dechunk, Some(&mut out)).unwrap();
            }
            prop_assert!(cut.done());
            prop_assert_eq!(at, end);
            prop_assert_eq!(out, chunks.concat().into_bytes());
        }
    }
}
