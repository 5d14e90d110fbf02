//! The connection loop: head parsing and chunked decoding on any input, and real sockets
//! for keep-alive, pipelining, `100 Continue`, HEAD, HTTP/1.0 and a client that goes away.

use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use proptest::prelude::*;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

use super::*;

fn head(s: &str) -> Result<Option<(Head, usize)>, BadRequest> {
    parse_head(s.as_bytes())
}

#[test]
fn heads_parse_with_their_framing_and_keep_alive() {
    let (h, n) = head("GET /v1/kv/a?index=3 HTTP/1.1\r\nHost: x\r\n\r\nrest")
        .unwrap()
        .unwrap();
    assert_eq!(n, 42);
    assert_eq!(h.method, Method::GET);
    assert_eq!(h.uri.path(), "/v1/kv/a");
    assert_eq!(h.uri.query(), Some("index=3"));
    assert_eq!(h.framing, Framing::Length(0));
    assert!(h.keep_alive && !h.expect_continue);

    let h = head("PUT /k HTTP/1.1\r\nContent-Length: 5\r\nConnection: Close\r\n\r\n");
    let (h, _) = h.unwrap().unwrap();
    assert_eq!(h.framing, Framing::Length(5));
    assert!(!h.keep_alive);

    let h =
        head("POST /k HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 3\r\n\r\n");
    assert_eq!(h.unwrap().unwrap().0.framing, Framing::Chunked);
    let h = head("PUT /k HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n");
    assert!(h.unwrap().unwrap().0.expect_continue);

    let (h, _) = head("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
    assert!(!h.keep_alive);
    let (h, _) = head("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .unwrap()
        .unwrap();
    assert!(h.keep_alive);
}

#[test]
fn bad_heads_are_refused_with_their_reason() {
    assert!(head("GET / HTTP/1.1\r\nHost: x\r\n").unwrap().is_none());
    assert_eq!(
        head("GET / HTTP/2.0\r\n\r\n").unwrap_err(),
        BadRequest::Malformed
    );
    assert_eq!(
        head("\x01\x02 / HTTP/1.1\r\n\r\n").unwrap_err(),
        BadRequest::Malformed
    );
    let two = "PUT / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
    assert_eq!(head(two).unwrap_err(), BadRequest::Malformed);
    let same = "PUT / HTTP/1.1\r\nContent-Length: 2, 2\r\n\r\n";
    assert_eq!(head(same).unwrap().unwrap().0.framing, Framing::Length(2));
    let neg = "PUT / HTTP/1.1\r\nContent-Length: -1\r\n\r\n";
    assert_eq!(head(neg).unwrap_err(), BadRequest::Malformed);
    let gzip = "PUT / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n";
    assert_eq!(head(gzip).unwrap_err(), BadRequest::UnsupportedCoding);
    let many: String = (0..=HEADERS_MAX).map(|i| format!("h{i}: v\r\n")).collect();
    let many = format!("GET / HTTP/1.1\r\n{many}\r\n");
    assert_eq!(head(&many).unwrap_err(), BadRequest::HeadTooLarge);
    let long = format!("GET /{} HTTP/1.1\r\n", "a".repeat(HEAD_MAX));
    assert_eq!(head(&long).unwrap_err(), BadRequest::HeadTooLarge);
}

/// `body` in chunked coding, cut into chunks of the given sizes (cycled), with an extension
/// and a trailer.
fn chunk(body: &[u8], sizes: &[usize]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut at = 0;
    let mut i = 0;
    while at < body.len() {
        let n = sizes[i % sizes.len()].clamp(1, body.len() - at);
        out.extend_from_slice(format!("{n:X};ext=1\r\n").as_bytes());
        out.extend_from_slice(&body[at..at + n]);
        out.extend_from_slice(b"\r\n");
        at += n;
        i += 1;
    }
    out.extend_from_slice(b"0\r\nX-Trailer: t\r\n\r\n");
    out
}

#[test]
fn chunked_bodies_decode_and_keep_their_limit() {
    let mut buf = chunk(b"hello world", &[3]);
    buf.extend_from_slice(b"NEXT");
    let mut c = Chunked::default();
    assert_eq!(c.feed(&mut buf, 100), Ok(true));
    assert_eq!(c.into_body(), b"hello world");
    assert_eq!(buf, b"NEXT");

    let mut c = Chunked::default();
    assert_eq!(
        c.feed(&mut chunk(b"hello world", &[4]), 10),
        Err(ChunkError::TooLarge)
    );
    let mut c = Chunked::default();
    assert_eq!(
        c.feed(&mut b"zz\r\n".to_vec(), 10),
        Err(ChunkError::Malformed)
    );
    let mut c = Chunked::default();
    assert_eq!(
        c.feed(&mut b"2\r\nabXY".to_vec(), 10),
        Err(ChunkError::Malformed)
    );
}

proptest! {
    #[test]
    fn any_bytes_parse_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_head(&bytes);
        let mut buf = bytes;
        let _ = Chunked::default().feed(&mut buf, 64);
    }

    #[test]
    fn any_head_prefix_is_partial_or_an_error(cut in 0usize..60) {
        let full = b"PUT /v1/kv/a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n";
        let cut = cut.min(full.len() - 1);
        prop_assert!(parse_head(&full[..cut]).map(|h| h.is_none()).unwrap_or(true));
    }

    /// However a chunked body is cut into chunks and however its bytes arrive, it decodes
    /// to itself.
    #[test]
    fn chunked_round_trips_in_any_pieces(
        body in proptest::collection::vec(any::<u8>(), 0..300),
        sizes in proptest::collection::vec(1usize..40, 1..5),
        arrivals in proptest::collection::vec(1usize..50, 1..10),
    ) {
        let wire = chunk(&body, &sizes);
        let mut c = Chunked::default();
        let mut buf = Vec::new();
        let mut at = 0;
        let mut i = 0;
        let mut done = false;
        while !done {
            prop_assert!(at < wire.len(), "ran out of input before the end");
            let n = arrivals[i % arrivals.len()].min(wire.len() - at);
            buf.extend_from_slice(&wire[at..at + n]);
            at += n;
            i += 1;
            done = c.feed(&mut buf, 1000).unwrap();
        }
        prop_assert_eq!(at, wire.len());
        prop_assert!(buf.is_empty());
        prop_assert_eq!(c.into_body(), body);
    }
}

/// A listener serving `serve` on 127.0.0.1; its port.
async fn listen(serve: Serve, body_max: usize) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        let cfg = Arc::new(ConnConfig { body_max });
        loop {
            let (s, _) = l.accept().await.unwrap();
            let (serve, cfg) = (serve.clone(), cfg.clone());
            tokio::spawn(async move { serve_conn(s, serve, &cfg).await });
        }
    });
    port
}

/// Answers `METHOD path body-length: body`, or waits for ever on `/wait` (counting the
/// waiters alive in `live`).
fn echo(live: Arc<AtomicUsize>) -> Serve {
    Arc::new(move |req: Request| {
        let live = live.clone();
        Box::pin(async move {
            if req.uri().path() == "/wait" {
                struct Alive(Arc<AtomicUsize>);
                impl Drop for Alive {
                    fn drop(&mut self) {
                        self.0.fetch_sub(1, Ordering::SeqCst);
                    }
                }
                live.fetch_add(1, Ordering::SeqCst);
                let _alive = Alive(live);
                std::future::pending::<()>().await;
            }
            let what = format!("{} {}", req.method(), req.uri());
            let body = match axum::body::to_bytes(req.into_body(), usize::MAX).await {
                Ok(b) => format!("{what} {}: {}", b.len(), String::from_utf8_lossy(&b)),
                Err(_) => format!("{what} unread"),
            };
            crate::http::text(StatusCode::OK, body)
        })
    })
}

/// Send `req`, then read until the connection closes or `want` responses have come.
async fn exchange(port: u16, req: &[u8], want: usize) -> String {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(req).await.unwrap();
    let mut got = Vec::new();
    let mut tmp = [0u8; 4096];
    let read = async {
        while String::from_utf8_lossy(&got).matches("HTTP/1.1 ").count() < want || !complete(&got) {
            let n = s.read(&mut tmp).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&tmp[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("answers in time");
    String::from_utf8_lossy(&got).into_owned()
}

/// Whether the last response in `b` has all of its body.
fn complete(b: &[u8]) -> bool {
    let s = String::from_utf8_lossy(b);
    let Some(last) = s.rfind("HTTP/1.1 ") else {
        return false;
    };
    let r = &s[last..];
    let Some(end) = r.find("\r\n\r\n") else {
        return false;
    };
    let len = r[..end]
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .map_or(0, |v| v.trim().parse().unwrap());
    r.len() >= end + 4 + len
}

#[tokio::test]
async fn keep_alive_pipelining_head_and_http10() {
    let port = listen(echo(Arc::default()), 1000).await;
    let two = b"GET /a HTTP/1.1\r\n\r\nPUT /b HTTP/1.1\r\nContent-Length: 3\r\n\r\nxyz";
    let r = exchange(port, two, 2).await;
    assert!(r.contains("GET /a 0: "), "{r}");
    let second = &r[r.find("PUT").unwrap()..];
    assert!(second.starts_with("PUT /b 3: xyz"), "{r}");
    assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
    assert!(
        r.contains("\r\ndate: ") && r.contains("content-type: text/plain"),
        "{r}"
    );

    // (closed after, since a HEAD answer's end is known only from its request)
    let r = exchange(port, b"HEAD /h HTTP/1.1\r\nConnection: close\r\n\r\n", 1).await;
    assert!(
        r.contains("content-length: 11\r\n") && r.ends_with("\r\n\r\n"),
        "{r}"
    );

    let r = exchange(port, b"GET /old HTTP/1.0\r\n\r\n", 1).await;
    assert!(
        r.contains("connection: close") && r.ends_with("GET /old 0: "),
        "{r}"
    );
    let r = exchange(
        port,
        b"GET /c HTTP/1.1\r\nConnection: close\r\n\r\nGET /d HTTP/1.1\r\n\r\n",
        2,
    )
    .await;
    assert!(
        r.contains("GET /c") && !r.contains("GET /d"),
        "served past close: {r}"
    );
}

#[tokio::test]
async fn bodies_chunked_continued_and_too_large() {
    let port = listen(echo(Arc::default()), 16).await;
    let mut chunked = b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    chunked.extend_from_slice(&chunk(b"0123456789", &[4]));
    let r = exchange(port, &chunked, 1).await;
    assert!(r.ends_with("POST /c 10: 0123456789"), "{r}");

    // Expect: 100-continue gets its interim answer before the client sends the body.
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(b"PUT /e HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
        .await
        .unwrap();
    let mut tmp = [0u8; 256];
    let n = s.read(&mut tmp).await.unwrap();
    assert_eq!(&tmp[..n], b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(b"ok").await.unwrap();
    let n = s.read(&mut tmp).await.unwrap();
    assert!(String::from_utf8_lossy(&tmp[..n]).ends_with("PUT /e 2: ok"));

    // Over the body limit: the handler finds the body unreadable, and the connection ends.
    let big = format!(
        "PUT /big HTTP/1.1\r\nContent-Length: 17\r\n\r\n{}",
        "x".repeat(17)
    );
    let r = exchange(port, big.as_bytes(), 1).await;
    assert!(
        r.contains("connection: close") && r.ends_with("PUT /big unread"),
        "{r}"
    );

    let r = exchange(port, b"GET / HTTP/9.9\r\n\r\n", 1).await;
    assert!(r.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{r}");
    let huge = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(HEAD_MAX));
    let r = exchange(port, huge.as_bytes(), 1).await;
    assert!(r.starts_with("HTTP/1.1 431 "), "{r}");
}

#[tokio::test]
async fn a_client_that_goes_away_ends_its_request() {
    let live = Arc::new(AtomicUsize::new(0));
    let port = listen(echo(live.clone()), 16).await;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(b"GET /wait HTTP/1.1\r\n\r\n").await.unwrap();
    // A request pipelined behind a waiting one does not end it.
    s.write_all(b"GET /next HTTP/1.1\r\n\r\n").await.unwrap();
    for _ in 0..100 {
        if live.load(Ordering::SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(live.load(Ordering::SeqCst), 1);
    drop(s);
    for _ in 0..100 {
        if live.load(Ordering::SeqCst) == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the request of a closed connection still runs");
}
