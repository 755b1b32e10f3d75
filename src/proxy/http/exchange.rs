//! One request's exchange with a worker: sending it, streaming the body
//! both ways, answering the client, tunnelling an upgrade.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{tcp, TcpStream};

use super::buffers::Buffers;
use super::h1::{self, Answering, Body, Framing, Pass, RequestHead};
use super::pool::{UpRead, Worker};
use super::{Answered, Failed, Shared, READ, READ_MIN};
use crate::proxy::{relay, Upstream};

/// Sends `request` (its head, then its body as the client sends it) on
/// `up`, and passes the answer to the client.
pub(super) async fn forward(
    client: &mut TcpStream,
    buf: &mut Vec<u8>,
    up: &mut Upstream,
    request: &RequestHead,
    (shared, worker): (&Shared, Worker),
    set_cookie: Option<usize>,
    started: Instant,
) -> Result<Answered, Failed> {
    let (mut client_read, mut client_write) = client.split();
    let (mut up_read, mut up_write) = up.split();
    let mut body = Body::new(request.framing);
    // The head goes with what of the body is here already, in one write.
    let mut first = Vec::new();
    let here = if request.framing == Framing::Empty {
        0
    } else {
        let n = body
            .take(buf, Pass::Verbatim, None)
            .map_err(|e| Failed::BadRequest(e.0))?;
        first.reserve(request.bytes.len() + n);
        first.extend_from_slice(&request.bytes);
        first.extend_from_slice(&buf[..n]);
        n
    };
    let head = if first.is_empty() {
        &request.bytes
    } else {
        &first
    };
    match up_write.write(head).await {
        Ok(n) if n > 0 => {
            if up_write.write_all(&head[n..]).await.is_err() {
                return Err(Failed::Unanswered);
            }
        }
        _ => return Err(Failed::Unwritten),
    }
    buf.drain(..here);

    let answered = AtomicBool::new(false);
    let answering = Answering {
        head: request.head,
        http10: request.http10,
        keep_alive: request.keep_alive,
        upgrade: request.upgrade,
        set_cookie,
    };
    let respond = respond(
        &mut up_read,
        &mut client_write,
        answering,
        (shared, worker),
        started,
        &answered,
    );
    // The rest of the body goes on while the answer is awaited: a worker
    // may answer before it has read it all.
    let mut sent = body.done();
    let send = pump(
        &mut body,
        Pass::Verbatim,
        buf,
        &mut client_read,
        &mut up_write,
        Vec::new(),
        shared.config.idle_timeout,
    );
    // The response timeout counts from the end of the request.
    let timeout = shared.config.response_timeout;
    let timer = tokio::time::sleep(timeout);
    let mut timing = sent;
    tokio::pin!(respond, send, timer);
    loop {
        tokio::select! {
            biased;
            result = &mut respond => {
                let mut answered = result?;
                if !sent {
                    // Its body was never all read: the client's
                    // connection cannot carry another request.
                    answered.keep_client = false;
                    answered.reusable = false;
                    answered.body_left = true;
                }
                return Ok(answered);
            }
            result = &mut send, if !sent => {
                sent = true;
                match result {
                    // The worker has the request, or failed while it was
                    // sent: its answer, or its absence, tells. Either
                    // way the response timeout runs from now.
                    Ok(()) | Err(Pumped::Write) => {
                        timer.as_mut().reset(tokio::time::Instant::now() + timeout);
                        timing = true;
                    }
                    Err(Pumped::Read) => return Err(Failed::Client),
                    Err(Pumped::Idle) if !answered.load(Ordering::Relaxed) => {
                        return Err(Failed::Stalled)
                    }
                    Err(Pumped::Idle) => return Err(Failed::Broken),
                    Err(Pumped::Bad(reason)) if !answered.load(Ordering::Relaxed) => {
                        return Err(Failed::BadRequest(reason))
                    }
                    Err(Pumped::Bad(_)) => return Err(Failed::Broken),
                }
            }
            () = &mut timer, if timing => {
                if !answered.load(Ordering::Relaxed) {
                    return Err(Failed::Timeout);
                }
                timing = false;
            }
        }
    }
}

/// Reads the worker's answer and passes it to the client: interim `1xx`
/// heads, the final head, and its body.
pub(super) async fn respond(
    from: &mut UpRead<'_>,
    to: &mut tcp::WriteHalf<'_>,
    answering: Answering,
    (shared, worker): (&Shared, Worker),
    started: Instant,
    answered: &AtomicBool,
) -> Result<Answered, Failed> {
    let mut buf = Buffers::take();
    let result = answer(
        from,
        to,
        answering,
        (shared, worker),
        started,
        answered,
        &mut buf,
    )
    .await;
    Buffers::give(buf);
    result
}

/// [`respond`], reading into `buf`.
pub(super) async fn answer(
    from: &mut UpRead<'_>,
    to: &mut tcp::WriteHalf<'_>,
    answering: Answering,
    (shared, worker): (&Shared, Worker),
    started: Instant,
    answered: &AtomicBool,
    buf: &mut Vec<u8>,
) -> Result<Answered, Failed> {
    let mut out = Vec::new();
    let mut interim = false;
    let head = loop {
        let mut scan = h1::HeadScan::default();
        let head = loop {
            if scan.end(buf).is_some() || buf.len() > h1::MAX_HEADER_BYTES {
                match h1::parse_response(buf, answering, &mut out) {
                    Ok(Some(head)) => break head,
                    Ok(None) => {}
                    Err(e) => return Err(Failed::BadResponse(e.0)),
                }
            }
            if buf.capacity() - buf.len() < READ_MIN {
                buf.reserve(READ);
            }
            match from.read_buf(buf).await {
                Ok(n) if n > 0 => {}
                _ if buf.is_empty() && !interim => return Err(Failed::Unanswered),
                _ => {
                    return Err(Failed::BadResponse(
                        "the worker closed the connection in the middle of its answer",
                    ))
                }
            }
        };
        buf.drain(..head.len);
        if head.status >= 200 || (head.status == 101 && answering.upgrade) {
            break head;
        }
        // 100 Continue, 103 Early Hints: on to an HTTP/1.1 client, and
        // the final answer follows.
        interim = true;
        if !answering.http10 {
            to.write_all(&out).await.map_err(|_| Failed::Client)?;
        }
        out.clear();
    };
    answered.store(true, Ordering::Relaxed);
    shared.metrics.record(head.status, started.elapsed());
    if head.status == 101 {
        to.write_all(&out).await.map_err(|_| Failed::Client)?;
        return Ok(Answered {
            keep_client: false,
            reusable: false,
            switched: Some(std::mem::take(buf)),
            body_left: false,
            stray: false,
        });
    }
    let mut body = Body::new(head.framing);
    pump(
        &mut body,
        head.pass,
        buf,
        from,
        to,
        out,
        shared.config.idle_timeout,
    )
    .await
    .map_err(|e| match e {
        Pumped::Write => Failed::Client,
        Pumped::Read | Pumped::Bad(_) => Failed::Broken,
        Pumped::Idle => {
            shared.counters.idle_closed.fetch_add(1, Ordering::Relaxed);
            Failed::Broken
        }
    })?;
    let stray = !buf.is_empty();
    if stray {
        // More than the answer: the worker sent a response nobody asked
        // for, or will; this connection cannot be trusted again.
        worker.stray(&shared.counters, "right after its answer");
    }
    Ok(Answered {
        keep_client: !head.close_client,
        reusable: head.reusable && !stray,
        switched: None,
        body_left: false,
        stray,
    })
}

/// How a body could not be passed on.
#[derive(Debug)]
pub(super) enum Pumped {
    /// Its sender failed or closed before its end.
    Read,
    /// Its recipient failed.
    Write,
    /// Its framing is broken.
    Bad(&'static str),
    /// Its sender sent nothing for the idle timeout.
    Idle,
}

/// Passes `body` from `from` to `to` as `pass` says, starting with what
/// is in `buf` and after `out` (a head to go first). What follows the
/// body is left in `buf`. A sender that sends nothing for `idle` in the
/// middle of a body has failed.
pub(super) async fn pump<R, W>(
    body: &mut Body,
    pass: Pass,
    buf: &mut Vec<u8>,
    from: &mut R,
    to: &mut W,
    mut out: Vec<u8>,
    idle: Option<Duration>,
) -> Result<(), Pumped>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    loop {
        let n = body
            .take(buf, pass, Some(&mut out))
            .map_err(|e| Pumped::Bad(e.0))?;
        buf.drain(..n);
        if !out.is_empty() {
            to.write_all(&out).await.map_err(|_| Pumped::Write)?;
            out.clear();
        }
        if body.done() {
            return Ok(());
        }
        if buf.capacity() - buf.len() < READ_MIN {
            buf.reserve(READ);
        }
        let read = match idle {
            Some(limit) => tokio::time::timeout(limit, from.read_buf(buf))
                .await
                .map_err(|_| Pumped::Idle)?,
            None => from.read_buf(buf).await,
        };
        match read {
            Ok(n) if n > 0 => {}
            Ok(_) => {
                if !body.closed(pass, &mut out) {
                    return Err(Pumped::Read);
                }
                to.write_all(&out).await.map_err(|_| Pumped::Write)?;
                return Ok(());
            }
            Err(_) => return Err(Pumped::Read),
        }
    }
}

/// After a `101`: what either side sent early goes first, then the bytes
/// go both ways until either closes, or nothing moved for the idle
/// timeout.
pub(super) async fn tunnel(
    client: &mut TcpStream,
    buf: &mut Vec<u8>,
    mut up: Upstream,
    early: &[u8],
    shared: &Shared,
) {
    if client.write_all(early).await.is_err() {
        return;
    }
    if !buf.is_empty() {
        let (_, mut up_write) = up.split();
        if up_write.write_all(buf).await.is_err() {
            return;
        }
        buf.clear();
    }
    if relay::relay(&*client, &up, shared.config.idle_timeout).await == relay::Ended::Idle {
        shared.counters.idle_closed.fetch_add(1, Ordering::Relaxed);
    }
}
