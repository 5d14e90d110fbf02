//! A minimal HTTP/1.1 client (one request per connection) for the CLI and watch handlers,
//! and the path escaping both use to name keys.

use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Percent-escape a key for a URL path (keeps `/`).
pub fn escape_key(k: &str) -> String {
    let mut out = String::with_capacity(k.len());
    for b in k.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A request as errors name it: `GET http://127.0.0.1:8500/v1/kv/a`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub method: String,
    pub addr: String,
    pub path: String,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} http://{}{}", self.method, self.addr, self.path)
    }
}

/// Why a request got no response, by what the caller can do about it.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A URL this client cannot use (https, a unix socket, no host): give an `http://` one.
    #[error("{url}: {why}")]
    BadUrl { url: String, why: &'static str },
    /// The connection failed (refused, reset): is an agent up at that address?
    #[error("{target}: {source}")]
    Io {
        target: Target,
        #[source]
        source: std::io::Error,
    },
    /// No whole response within the timeout: retry, or allow longer.
    #[error("{target}: timed out after {timeout:?}")]
    Timeout { target: Target, timeout: Duration },
    /// The response is not HTTP this client reads: the address is probably not an agent.
    #[error("{target}: {source}")]
    BadResponse {
        target: Target,
        #[source]
        source: ResponseError,
    },
}

/// Why bytes are not an HTTP/1.1 response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    #[error("incomplete response")]
    Incomplete,
    #[error("response head is not UTF-8")]
    HeadNotUtf8,
    #[error("bad status line {0:?}")]
    BadStatusLine(String),
    #[error("truncated response body")]
    TruncatedBody,
    #[error("bad chunked body")]
    BadChunks,
    #[error("bad chunk size")]
    BadChunkSize,
    #[error("truncated chunk")]
    TruncatedChunk,
}

/// Split `http://host:port/path` (or `host:port`) into (host:port, base path).
pub fn split_url(url: &str) -> Result<(String, String), ClientError> {
    let bad = |why| ClientError::BadUrl {
        url: url.to_string(),
        why,
    };
    if url.starts_with("https://") {
        return Err(bad("https is not supported by this build"));
    }
    if url.starts_with("unix://") {
        return Err(bad("unix sockets are not supported by this build"));
    }
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if host.is_empty() {
        return Err(bad("missing host"));
    }
    let host = if host
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        host.to_string()
    } else {
        format!("{host}:80")
    };
    Ok((host, path.to_string()))
}

/// Send one request to `addr` (`host:port`). `timeout` bounds the whole exchange.
pub async fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: &[u8],
    timeout: Duration,
) -> Result<HttpResponse, ClientError> {
    let target = Target {
        method: method.to_string(),
        addr: addr.to_string(),
        path: path.to_string(),
    };
    match tokio::time::timeout(timeout, exchange(&target, headers, body)).await {
        Ok(r) => r,
        Err(_) => Err(ClientError::Timeout { target, timeout }),
    }
}

async fn exchange(
    target: &Target,
    headers: &[(String, String)],
    body: &[u8],
) -> Result<HttpResponse, ClientError> {
    let Target { method, addr, path } = target;
    let err = |source| ClientError::Io {
        target: target.clone(),
        source,
    };
    let mut stream = TcpStream::connect(addr).await.map_err(err)?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: tribune\r\nConnection: \
        close\r\nContent-Length: {}\r\n",
        body.len(),
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.map_err(err)?;
    stream.write_all(body).await.map_err(err)?;
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await.map_err(err)?;
    parse_response(&buf).map_err(|source| ClientError::BadResponse {
        target: target.clone(),
        source,
    })
}

pub fn parse_response(buf: &[u8]) -> Result<HttpResponse, ResponseError> {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or(ResponseError::Incomplete)?;
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| ResponseError::HeadNotUtf8)?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ResponseError::BadStatusLine(status_line.to_string()))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let raw = &buf[end + 4..];
    let find = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.as_str())
    };
    let body = if find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        dechunk(raw)?
    } else if let Some(len) = find("content-length").and_then(|v| v.parse::<usize>().ok()) {
        if raw.len() < len {
            return Err(ResponseError::TruncatedBody);
        }
        raw[..len].to_vec()
    } else {
        raw.to_vec()
    };
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(mut raw: &[u8]) -> Result<Vec<u8>, ResponseError> {
    let mut out = Vec::new();
    loop {
        let eol = raw
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or(ResponseError::BadChunks)?;
        let size_s = std::str::from_utf8(&raw[..eol]).map_err(|_| ResponseError::BadChunkSize)?;
        let size = usize::from_str_radix(size_s.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| ResponseError::BadChunkSize)?;
        raw = &raw[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        // A chunk and its CRLF must be in what arrived; a size no response can have (up
        // to usize::MAX, from whatever a URL answers) is only a truncated chunk.
        let Some(chunk) = raw.get(..size).filter(|_| raw.len() - size >= 2) else {
            return Err(ResponseError::TruncatedChunk);
        };
        out.extend_from_slice(chunk);
        raw = &raw[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_length_and_chunked() {
        let r = parse_response(
            b"HTTP/1.1 404 Not Found\r\nX-Consul-Index: 7\r\nContent-Length: 2\r\n\r\nhiXX",
        )
        .unwrap();
        assert_eq!(
            (r.status, r.body.as_slice(), r.header("x-consul-index")),
            (404, &b"hi"[..], Some("7"))
        );
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
              3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.body, b"abcde");
    }

    #[test]
    fn a_chunk_size_past_the_bytes_received_is_an_error() {
        let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for chunks in [
            &b"ffffffffffffffff\r\nabc\r\n0\r\n\r\n"[..],
            b"fffffffffffffffe\r\nabc",
            b"7fffffffffffffff\r\n",
            b"3\r\nabc",
            b"4\r\nabc\r\n",
        ] {
            let r = parse_response(&[&head[..], chunks].concat());
            assert_eq!(r.unwrap_err(), ResponseError::TruncatedChunk, "{chunks:?}");
        }
        let r = parse_response(&[&head[..], b"1ffffffffffffffff\r\n"].concat());
        assert_eq!(
            r.unwrap_err(),
            ResponseError::BadChunkSize,
            "more than usize holds"
        );
    }

    #[test]
    fn escapes_keys() {
        assert_eq!(escape_key("a/b c?d"), "a/b%20c%3Fd");
        assert_eq!(
            escape_key("redis/config/connections"),
            "redis/config/connections"
        );
    }

    #[test]
    fn urls() {
        assert_eq!(
            split_url("http://127.0.0.1:8500").unwrap(),
            ("127.0.0.1:8500".into(), "".into())
        );
        assert_eq!(
            split_url("localhost:9000/x/y").unwrap(),
            ("localhost:9000".into(), "/x/y".into())
        );
        assert_eq!(
            split_url("http://example").unwrap(),
            ("example:80".into(), "".into())
        );
        assert!(split_url("https://x:1").is_err());
    }
}
