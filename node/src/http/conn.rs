//! One HTTP/1.1 connection: read a request, run it, write the response, as long as the
//! client keeps the connection alive.
//!
//! The API is served by this small loop rather than by hyper's server because of what an
//! idle blocking query costs. Hyper gives every connection an 8 KiB read buffer and an
//! 8 KiB write buffer for its whole life, so 15,000 idle long-polls held about 280 MB. Here
//! a connection owns no buffer while its request runs: the request's bytes are parsed
//! (`httparse`) into the request and the buffer is freed, and a response is encoded only when
//! it is ready. What an idle long-poll holds is its request and its handler's state.
//!
//! Bounds: a request head is at most [`HEAD_MAX`] bytes and [`HEADERS_MAX`] headers (431
//! beyond), and must arrive within [`HEAD_TIMEOUT`] of its first byte, its body within the
//! same time; a body is at most the `body_max` the listener gives (a larger one reaches the
//! handler as a body that fails to read, and the connection closes after the answer); a
//! connection idle between requests for [`IDLE_TIMEOUT`] is closed. A request whose client
//! closes its side while the request runs is dropped, which ends a blocking query at once.
//! Requests are answered in order (pipelining), with `Content-Length` bodies, and
//! `Expect: 100-continue`, chunked request bodies and HTTP/1.0 keep-alive are understood.

use std::io;
use std::pin::Pin;
use std::task::Context;
use std::task::Poll;
use std::time::Duration;

use axum::body::Body;
use axum::body::Bytes;
use axum::extract::Request;
use axum::http::header;
use axum::http::HeaderMap;
use axum::http::HeaderName;
use axum::http::HeaderValue;
use axum::http::Method;
use axum::http::StatusCode;
use axum::http::Uri;
use axum::http::Version;
use axum::response::Response;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::forward::Serve;
use crate::store::BoxFuture;

/// The largest request head (request line and headers) taken.
pub const HEAD_MAX: usize = 64 * 1024;
/// The most headers a request may carry.
pub const HEADERS_MAX: usize = 100;
/// How long a request may take to arrive once its first byte has.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a kept-alive connection may sit idle between requests.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// How much a read asks for at first; the buffer doubles up to [`HEAD_MAX`] as needed.
const READ_CHUNK: usize = 1024;
/// Response bodies up to this size go out in one write with their head.
const COALESCE_MAX: usize = 16 * 1024;

/// Why a request could not be read.
#[derive(Debug, PartialEq, Eq)]
pub enum BadRequest {
    /// Not HTTP/1.x, or a malformed line or header: 400.
    Malformed,
    /// The head is over [`HEAD_MAX`] or has over [`HEADERS_MAX`] headers: 431.
    HeadTooLarge,
    /// A transfer coding other than `chunked`: 501.
    UnsupportedCoding,
}

impl BadRequest {
    fn status(&self) -> StatusCode {
        match self {
            BadRequest::Malformed => StatusCode::BAD_REQUEST,
            BadRequest::HeadTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            BadRequest::UnsupportedCoding => StatusCode::NOT_IMPLEMENTED,
        }
    }
}

/// How a request's body is framed.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Framing {
    /// `Content-Length` bytes (0 without a body).
    Length(u64),
    Chunked,
}

/// A parsed request head.
#[derive(Debug)]
pub struct Head {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
    pub framing: Framing,
    /// Whether the client asked to keep the connection open after this request.
    pub keep_alive: bool,
    /// Whether the client waits for `100 Continue` before sending its body.
    pub expect_continue: bool,
}

/// Parse a request head from the start of `buf`: the head and its length once complete,
/// `None` while more bytes are needed. Never panics on any input.
pub fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, BadRequest> {
    let mut slots = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut req = httparse::Request::new(&mut slots);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= HEAD_MAX => {
            return Err(BadRequest::HeadTooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(BadRequest::HeadTooLarge),
        Err(_) => return Err(BadRequest::Malformed),
    };
    if len > HEAD_MAX {
        return Err(BadRequest::HeadTooLarge);
    }
    let method = req.method.ok_or(BadRequest::Malformed)?;
    let method = Method::from_bytes(method.as_bytes()).map_err(|_| BadRequest::Malformed)?;
    let path = req.path.ok_or(BadRequest::Malformed)?;
    let uri: Uri = path.parse().map_err(|_| BadRequest::Malformed)?;
    let version = match req.version {
        Some(0) => Version::HTTP_10,
        Some(1) => Version::HTTP_11,
        _ => return Err(BadRequest::Malformed),
    };
    let mut headers = HeaderMap::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| BadRequest::Malformed)?;
        let value = HeaderValue::from_bytes(h.value).map_err(|_| BadRequest::Malformed)?;
        headers.append(name, value);
    }
    let framing = framing(&headers)?;
    let close = has_token(&headers, header::CONNECTION, "close");
    let keep_alive = match version {
        Version::HTTP_10 => has_token(&headers, header::CONNECTION, "keep-alive") && !close,
        _ => !close,
    };
    let expect_continue = version == Version::HTTP_11
        && headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let head = Head {
        method,
        uri,
        version,
        headers,
        framing,
        keep_alive,
        expect_continue,
    };
    Ok(Some((head, len)))
}

/// The body framing the headers give: chunked wins over a length (RFC 9112 §6.3); lengths
/// that disagree, or one that is not a number, are malformed.
fn framing(headers: &HeaderMap) -> Result<Framing, BadRequest> {
    let codings: Vec<&HeaderValue> = headers.get_all(header::TRANSFER_ENCODING).iter().collect();
    if !codings.is_empty() {
        let last = codings
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .map(|c| c.trim_ascii())
            .rfind(|c| !c.is_empty());
        return match last {
            Some(c) if c.eq_ignore_ascii_case(b"chunked") => Ok(Framing::Chunked),
            Some(_) => Err(BadRequest::UnsupportedCoding),
            None => Err(BadRequest::Malformed),
        };
    }
    let mut length = None;
    for v in headers.get_all(header::CONTENT_LENGTH) {
        for part in v.as_bytes().split(|b| *b == b',') {
            let part = part.trim_ascii();
            if part.is_empty() || !part.iter().all(u8::is_ascii_digit) || part.len() > 19 {
                return Err(BadRequest::Malformed);
            }
            let n: u64 = std::str::from_utf8(part)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or(BadRequest::Malformed)?;
            if length.is_some_and(|l| l != n) {
                return Err(BadRequest::Malformed);
            }
            length = Some(n);
        }
    }
    Ok(Framing::Length(length.unwrap_or(0)))
}

/// Whether a comma-separated header holds `token` (any case).
fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// A chunked body being decoded as its bytes arrive.
#[derive(Debug, Default)]
pub struct Chunked {
    state: ChunkState,
    body: Vec<u8>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Expecting a chunk-size line.
    #[default]
    Size,
    /// Inside a chunk's data, with this much left.
    Data(u64),
    /// Expecting the CRLF that ends a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one.
    Trailer,
    Done,
}

/// Why a chunked body could not be decoded.
#[derive(Debug, PartialEq, Eq)]
pub enum ChunkError {
    Malformed,
    /// Over the body limit.
    TooLarge,
}

impl Chunked {
    /// Consume what can be decoded from the front of `buf` (removing it), keeping the body
    /// within `max` bytes. `Ok(true)` once the body is complete.
    pub fn feed(&mut self, buf: &mut Vec<u8>, max: usize) -> Result<bool, ChunkError> {
        let mut at = 0;
        let result = loop {
            match self.state {
                ChunkState::Done => break Ok(true),
                ChunkState::Size | ChunkState::Trailer => {
                    let Some(end) = find_crlf(&buf[at..]) else {
                        if buf.len() - at > 4096 {
                            break Err(ChunkError::Malformed);
                        }
                        break Ok(false);
                    };
                    let line = &buf[at..at + end];
                    at += end + 2;
                    if self.state == ChunkState::Trailer {
                        if line.is_empty() {
                            self.state = ChunkState::Done;
                        }
                        continue;
                    }
                    let size = line
                        .split(|b| *b == b';')
                        .next()
                        .unwrap_or(&[])
                        .trim_ascii();
                    let size = parse_hex(size).ok_or(ChunkError::Malformed)?;
                    if self.body.len() as u64 + size > max as u64 {
                        break Err(ChunkError::TooLarge);
                    }
                    self.state = if size == 0 {
                        ChunkState::Trailer
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(left) => {
                    let have = (buf.len() - at) as u64;
                    if have == 0 {
                        break Ok(false);
                    }
                    let take = have.min(left) as usize;
                    self.body.extend_from_slice(&buf[at..at + take]);
                    at += take;
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left)
                    };
                }
                ChunkState::DataEnd => {
                    if buf.len() - at < 2 {
                        break Ok(false);
                    }
                    if &buf[at..at + 2] != b"\r\n" {
                        break Err(ChunkError::Malformed);
                    }
                    at += 2;
                    self.state = ChunkState::Size;
                }
            }
        };
        buf.drain(..at);
        result
    }

    /// The decoded body.
    pub fn into_body(self) -> Vec<u8> {
        self.body
    }
}

fn find_crlf(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\r\n")
}

/// A chunk size: 1 to 15 hex digits.
fn parse_hex(b: &[u8]) -> Option<u64> {
    if b.is_empty() || b.len() > 15 {
        return None;
    }
    b.iter().try_fold(0u64, |n, c| {
        let d = (*c as char).to_digit(16)?;
        Some(n * 16 + u64::from(d))
    })
}

/// A request body that could not be taken whole: reading it fails, as reading a body over
/// a handler's own limit does.
struct Unread;

impl http_body::Body for Unread {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, io::Error>>> {
        Poll::Ready(Some(Err(io::Error::other("request body too large"))))
    }
}

/// How a connection is served.
pub struct ConnConfig {
    /// The largest request body read (see the module's bounds).
    pub body_max: usize,
}

impl ConnConfig {
    /// For an agent whose KV values may be `kv_max_value_size` bytes: bodies up to that
    /// (and at least 1 MiB), plus the slack the KV handler reads past its limit to answer
    /// 413 with Consul's text.
    pub fn for_values(kv_max_value_size: u64) -> ConnConfig {
        let max = kv_max_value_size.max(1 << 20) + 128 * 1024;
        ConnConfig {
            body_max: usize::try_from(max).unwrap_or(usize::MAX),
        }
    }
}

/// The connection ends: the client closed, timed out, or sent what cannot be answered.
struct End;

impl From<io::Error> for End {
    fn from(_: io::Error) -> End {
        End
    }
}

/// Serve requests on `stream` with `serve` until the connection ends.
pub async fn serve_conn(mut stream: TcpStream, serve: Serve, cfg: &ConnConfig) {
    let mut buf = Vec::new();
    while let Ok(true) = one_request(&mut stream, &mut buf, &serve, cfg).await {}
    let _ = stream.shutdown().await;
}

/// Read, run and answer one request; whether the connection stays open.
///
/// What lives across the wait for the answer is only the handler's future and three
/// flags: the request is read and handed over in [`start`], boxed, so that its state (and
/// the head's) is not part of every connection's.
async fn one_request(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    serve: &Serve,
    cfg: &ConnConfig,
) -> Result<bool, End> {
    let Some((run, flags)) = Box::pin(start(stream, buf, serve, cfg)).await? else {
        return Ok(false);
    };
    if buf.is_empty() {
        // Nothing pipelined: hold no buffer while the request runs.
        *buf = Vec::new();
    }
    let resp = tokio::select! {
        r = run => r,
        () = closed(stream, buf) => return Err(End),
    };
    let keep_alive = flags.keep_alive && !has_token(resp.headers(), header::CONNECTION, "close");
    Box::pin(write_response(
        stream,
        resp,
        flags.version,
        flags.is_head,
        keep_alive,
    ))
    .await?;
    if buf.is_empty() {
        *buf = Vec::new();
    }
    Ok(keep_alive)
}

/// What answering a request needs to know of it.
struct Flags {
    version: Version,
    is_head: bool,
    keep_alive: bool,
}

/// Read a request and start it: its run and flags, or `None` when the connection ends
/// (closed, timed out, or answered with an error for a request that cannot be read).
async fn start(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    serve: &Serve,
    cfg: &ConnConfig,
) -> Result<Option<(BoxFuture<'static, Response>, Flags)>, End> {
    let Some((head, deadline)) = read_head(stream, buf).await? else {
        return Ok(None);
    };
    let (head, len) = match head {
        Ok(h) => h,
        Err(e) => {
            let resp = crate::http::text(e.status(), e_text(&e));
            write_response(stream, resp, Version::HTTP_11, false, false).await?;
            return Ok(None);
        }
    };
    buf.drain(..len);
    let (body, whole) = read_body(stream, buf, &head, deadline, cfg).await?;
    let flags = Flags {
        version: head.version,
        is_head: head.method == Method::HEAD,
        keep_alive: whole && head.keep_alive,
    };
    let mut req = Request::new(body);
    *req.method_mut() = head.method;
    *req.uri_mut() = head.uri;
    *req.version_mut() = head.version;
    *req.headers_mut() = head.headers;
    Ok(Some((serve(req), flags)))
}

fn e_text(e: &BadRequest) -> &'static str {
    match e {
        BadRequest::Malformed => "400 Bad Request",
        BadRequest::HeadTooLarge => "431 Request Header Fields Too Large",
        BadRequest::UnsupportedCoding => "Unsupported transfer encoding",
    }
}

type HeadRead = Result<(Head, usize), BadRequest>;

/// Read until a whole head is in `buf`: the parse (or why it failed) and the deadline for
/// the rest of the request; `None` when the client closed or idled out between requests.
async fn read_head(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> Result<Option<(HeadRead, Instant)>, End> {
    let mut deadline = None;
    loop {
        // Blank lines before a request are ignored (RFC 9112 §2.2).
        let blank = buf
            .iter()
            .take_while(|b| **b == b'\r' || **b == b'\n')
            .count();
        buf.drain(..blank);
        if !buf.is_empty() {
            let deadline = *deadline.get_or_insert_with(|| Instant::now() + HEAD_TIMEOUT);
            match parse_head(buf) {
                Ok(Some(h)) => return Ok(Some((Ok(h), deadline))),
                Ok(None) => {}
                Err(e) => return Ok(Some((Err(e), deadline))),
            }
        }
        let until = deadline.unwrap_or_else(|| Instant::now() + IDLE_TIMEOUT);
        let room = buf.capacity() - buf.len();
        if room == 0 {
            buf.reserve(buf.capacity().clamp(READ_CHUNK, HEAD_MAX));
        }
        match tokio::time::timeout_at(until, stream.read_buf(buf)).await {
            Ok(Ok(0)) | Err(_) => return Ok(None),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e.into()),
        }
    }
}

/// Read the request's body as its head frames it: the body, and whether the connection can
/// go on after this request (not when the body was left unread).
async fn read_body(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    head: &Head,
    deadline: Instant,
    cfg: &ConnConfig,
) -> Result<(Body, bool), End> {
    let continue_sent = |buf: &Vec<u8>| !head.expect_continue || !buf.is_empty();
    match head.framing {
        Framing::Length(0) => Ok((Body::empty(), true)),
        Framing::Length(n) if n > cfg.body_max as u64 => Ok((Body::new(Unread), false)),
        Framing::Length(n) => {
            let n = n as usize;
            if !continue_sent(buf) {
                send_continue(stream).await?;
            }
            while buf.len() < n {
                buf.reserve(n - buf.len());
                read_more(stream, buf, deadline).await?;
            }
            let rest = buf.split_off(n);
            let body = std::mem::replace(buf, rest);
            Ok((Body::from(body), true))
        }
        Framing::Chunked => {
            if !continue_sent(buf) {
                send_continue(stream).await?;
            }
            let mut chunked = Chunked::default();
            loop {
                match chunked.feed(buf, cfg.body_max) {
                    Ok(true) => return Ok((Body::from(chunked.into_body()), true)),
                    Ok(false) => {
                        buf.reserve(READ_CHUNK);
                        read_more(stream, buf, deadline).await?;
                    }
                    Err(ChunkError::TooLarge) => return Ok((Body::new(Unread), false)),
                    Err(ChunkError::Malformed) => return Err(End),
                }
            }
        }
    }
}

async fn send_continue(stream: &mut TcpStream) -> Result<(), End> {
    stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
    Ok(())
}

/// Read more of the request before `deadline`; the client closing first ends the
/// connection.
async fn read_more(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    deadline: Instant,
) -> Result<(), End> {
    match tokio::time::timeout_at(deadline, stream.read_buf(buf)).await {
        Ok(Ok(0)) | Err(_) => Err(End),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.into()),
    }
}

/// Returns once the client has closed its side while its request runs. Pipelined requests
/// that arrive meanwhile are kept in `buf` (up to [`HEAD_MAX`]; then it stops reading).
async fn closed(stream: &TcpStream, buf: &mut Vec<u8>) {
    loop {
        if buf.len() >= HEAD_MAX || stream.readable().await.is_err() {
            std::future::pending::<()>().await;
        }
        if buf.capacity() == buf.len() {
            buf.reserve(READ_CHUNK);
        }
        match stream.try_read_buf(buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}

/// Write `resp`: its status, headers, `Date`, the `Content-Length` of its (collected) body,
/// `Connection: close` when the connection ends after it; no body for HEAD, 204 and 304.
async fn write_response(
    stream: &mut TcpStream,
    resp: Response,
    version: Version,
    is_head: bool,
    keep_alive: bool,
) -> Result<(), End> {
    let (parts, body) = resp.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .map_err(|_| End)?;
    let status = parts.status;
    let bodiless = status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || status.is_informational();
    let mut out = Vec::with_capacity(
        256 + if body.len() <= COALESCE_MAX {
            body.len()
        } else {
            0
        },
    );
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        if [
            header::CONTENT_LENGTH,
            header::TRANSFER_ENCODING,
            header::CONNECTION,
        ]
        .contains(name)
        {
            continue;
        }
        push_header(&mut out, name.as_str(), value.as_bytes());
    }
    if !bodiless {
        push_header(
            &mut out,
            "content-length",
            body.len().to_string().as_bytes(),
        );
    }
    if !parts.headers.contains_key(header::DATE) {
        let date = httpdate::fmt_http_date(std::time::SystemTime::now());
        push_header(&mut out, "date", date.as_bytes());
    }
    if !keep_alive {
        push_header(&mut out, "connection", b"close");
    } else if version == Version::HTTP_10 {
        push_header(&mut out, "connection", b"keep-alive");
    }
    out.extend_from_slice(b"\r\n");
    let send_body = !is_head && !bodiless;
    if send_body && body.len() <= COALESCE_MAX {
        out.extend_from_slice(&body);
        stream.write_all(&out).await?;
    } else {
        stream.write_all(&out).await?;
        if send_body {
            stream.write_all(&body).await?;
        }
    }
    Ok(())
}

fn push_header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
#[path = "conn_test.rs"]
mod conn_test;
