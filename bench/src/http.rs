//! A minimal HTTP/1.1 keep-alive client: one TCP connection, one request in flight.
//! Responses are framed by Content-Length or chunked transfer encoding; a response
//! with neither (read-until-close framing) is rejected as an error.

use std::io;

use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

#[derive(Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
    /// The server asked to close the connection after this response.
    pub close: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub enum ParseError {
    BadStatusLine,
    BadHeader,
    BadContentLength,
    BadChunk,
    /// Neither Content-Length nor chunked: the body would be framed by connection close.
    UnframedBody,
    HeadTooLarge,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

const MAX_HEAD: usize = 64 * 1024;

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Parses one complete response from the front of `buf`. Ok(None) means more bytes
/// are needed; Ok(Some((response, consumed))) gives the bytes it used.
/// Interim 1xx responses are skipped (their bytes are counted as consumed).
pub fn parse_response(buf: &[u8]) -> Result<Option<(Response, usize)>, ParseError> {
    let mut start = 0;
    loop {
        let rest = &buf[start..];
        let Some(head_end) = find(rest, b"\r\n\r\n") else {
            return if rest.len() > MAX_HEAD {
                Err(ParseError::HeadTooLarge)
            } else {
                Ok(None)
            };
        };
        let head = std::str::from_utf8(&rest[..head_end]).map_err(|_| ParseError::BadHeader)?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or("");
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or("");
        if !version.starts_with("HTTP/1.") {
            return Err(ParseError::BadStatusLine);
        }
        let status: u16 = parts
            .next()
            .filter(|s| s.len() == 3)
            .and_then(|s| s.parse().ok())
            .ok_or(ParseError::BadStatusLine)?;
        let mut content_length: Option<usize> = None;
        let mut chunked = false;
        let mut close = version == "HTTP/1.0";
        for line in lines {
            let (name, value) = line.split_once(':').ok_or(ParseError::BadHeader)?;
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                let n = value.parse().map_err(|_| ParseError::BadContentLength)?;
                if content_length.is_some_and(|c| c != n) {
                    return Err(ParseError::BadContentLength);
                }
                content_length = Some(n);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value
                    .to_ascii_lowercase()
                    .split(',')
                    .any(|t| t.trim() == "chunked");
            } else if name.eq_ignore_ascii_case("connection") {
                let v = value.to_ascii_lowercase();
                if v.split(',').any(|t| t.trim() == "close") {
                    close = true;
                } else if v.split(',').any(|t| t.trim() == "keep-alive") {
                    close = false;
                }
            }
        }
        let body_start = start + head_end + 4;
        if (100..200).contains(&status) {
            start = body_start;
            continue;
        }
        if status == 204 || status == 304 {
            return Ok(Some((
                Response {
                    status,
                    body: Vec::new(),
                    close,
                },
                body_start,
            )));
        }
        if chunked {
            return Ok(parse_chunked(&buf[body_start..])?.map(|(body, used)| {
                (
                    Response {
                        status,
                        body,
                        close,
                    },
                    body_start + used,
                )
            }));
        }
        let Some(len) = content_length else {
            return Err(ParseError::UnframedBody);
        };
        if buf.len() < body_start + len {
            return Ok(None);
        }
        let body = buf[body_start..body_start + len].to_vec();
        return Ok(Some((
            Response {
                status,
                body,
                close,
            },
            body_start + len,
        )));
    }
}

/// Decodes a chunked body from the front of `buf` (trailers are skipped).
fn parse_chunked(buf: &[u8]) -> Result<Option<(Vec<u8>, usize)>, ParseError> {
    let mut body = Vec::new();
    let mut pos = 0;
    loop {
        let Some(eol) = find(&buf[pos..], b"\r\n") else {
            return if buf.len() - pos > 1024 {
                Err(ParseError::BadChunk)
            } else {
                Ok(None)
            };
        };
        let line = std::str::from_utf8(&buf[pos..pos + eol]).map_err(|_| ParseError::BadChunk)?;
        let size_hex = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16).map_err(|_| ParseError::BadChunk)?;
        pos += eol + 2;
        if size == 0 {
            // Trailers end with an empty line.
            loop {
                let Some(eol) = find(&buf[pos..], b"\r\n") else {
                    return Ok(None);
                };
                pos += eol + 2;
                if eol == 0 {
                    return Ok(Some((body, pos)));
                }
            }
        }
        if buf.len() < pos + size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&buf[pos..pos + size]);
        if &buf[pos + size..pos + size + 2] != b"\r\n" {
            return Err(ParseError::BadChunk);
        }
        pos += size + 2;
    }
}

/// Serializes a request with a Content-Length body (always sent, even when 0).
pub fn build_request(method: &str, path: &str, content_type: Option<&str>, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + body.len());
    out.extend_from_slice(format!("{method} {path} HTTP/1.1\r\nHost: bench\r\n").as_bytes());
    if let Some(ct) = content_type {
        out.extend_from_slice(format!("Content-Type: {ct}\r\n").as_bytes());
    }
    out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
    out.extend_from_slice(body);
    out
}

pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    closed: bool,
}

impl Conn {
    pub async fn connect(addr: &str) -> io::Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: Vec::with_capacity(4096),
            closed: false,
        })
    }

    /// False once the server asked to close (or an error happened): reconnect.
    pub fn reusable(&self) -> bool {
        !self.closed
    }

    /// Sends one serialized request and reads its response.
    pub async fn round_trip(&mut self, request: &[u8]) -> io::Result<Response> {
        self.closed = true; // until a full response proves otherwise
        self.stream.write_all(request).await?;
        loop {
            match parse_response(&self.buf) {
                Ok(Some((resp, used))) => {
                    self.buf.drain(..used);
                    self.closed = resp.close;
                    return Ok(resp);
                }
                Ok(None) => {}
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
            }
            let mut chunk = [0u8; 8192];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed mid-response",
                ));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_response_and_pipelined_rest() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\ncontent-length: 5\r\n\r\n\
                    true\nHTTP/1.1 404";
        let (r, used) = parse_response(raw).unwrap().unwrap();
        assert_eq!(
            r,
            Response {
                status: 200,
                body: b"true\n".to_vec(),
                close: false
            }
        );
        assert_eq!(&raw[used..], b"HTTP/1.1 404");
    }

    #[test]
    fn incomplete_head_or_body_needs_more() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789";
        for cut in 0..raw.len() {
            assert_eq!(parse_response(&raw[..cut]), Ok(None), "cut at {cut}");
        }
        assert!(parse_response(raw).unwrap().is_some());
    }

    #[test]
    fn chunked_body_with_extension_and_trailer() {
        let raw = b"HTTP/1.1 500 Internal Server Error\r\nTransfer-Encoding: chunked\r\n\
                    Connection: close\r\n\r\n\
                    4;x=y\r\nNo c\r\nb\r\nluster lead\r\n0\r\nX-T: 1\r\n\r\nextra";
        let (r, used) = parse_response(raw).unwrap().unwrap();
        assert_eq!(r.status, 500);
        assert_eq!(r.body, b"No cluster lead");
        assert!(r.close);
        assert_eq!(&raw[used..], b"extra");
        for cut in 0..raw.len() - 5 {
            assert_eq!(parse_response(&raw[..cut]), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn interim_no_body_and_errors() {
        let raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n";
        let (r, used) = parse_response(raw).unwrap().unwrap();
        assert_eq!((r.status, r.body.len(), used), (204, 0, raw.len()));
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\n\r\nabc"),
            Err(ParseError::UnframedBody)
        );
        assert_eq!(
            parse_response(b"SMTP 220 hi\r\n\r\n"),
            Err(ParseError::BadStatusLine)
        );
        assert_eq!(
            parse_response(b"HTTP/1.1 2x0 OK\r\n\r\n"),
            Err(ParseError::BadStatusLine)
        );
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n"),
            Err(ParseError::BadContentLength)
        );
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
            Err(ParseError::BadChunk)
        );
        let (r, _) = parse_response(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(r.close);
    }

    #[test]
    fn request_has_content_length() {
        let r = build_request("PUT", "/v1/kv/a", None, b"xyz");
        assert_eq!(
            r,
            b"PUT /v1/kv/a HTTP/1.1\r\nHost: bench\r\nContent-Length: 3\r\n\r\nxyz"
        );
    }
}
