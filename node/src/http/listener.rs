//! The HTTP listener: connection caps per client and overall.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::PoisonError;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::conn::serve_conn;
use super::conn::ConnConfig;
use crate::forward::Serve;

/// Consul's answer to a client over `limits.http_max_conns_per_client`.
const TOO_MANY: &str =
    "Your IP is issuing too many concurrent connections, please rate limit your calls\n";

/// Serve the API (`serve`) on `listener`, each connection as [`super::conn`] serves it: at
/// most `max_per_client` concurrent connections per client IP (more get a 429 and are
/// closed) and `max_total` overall (further accepts wait).
pub async fn serve(
    listener: TcpListener,
    serve: Serve,
    conn: ConnConfig,
    max_per_client: u64,
    max_total: usize,
) {
    let conn = Arc::new(conn);
    let per_client: Arc<Mutex<HashMap<IpAddr, u64>>> = Arc::default();
    let total = Arc::new(Semaphore::new(max_total));
    loop {
        let permit = total.clone().acquire_owned().await.expect("semaphore open");
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "http: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let ip = peer.ip();
        let admitted = {
            let mut m = per_client.lock().unwrap_or_else(PoisonError::into_inner);
            let n = m.entry(ip).or_default();
            if *n >= max_per_client {
                false
            } else {
                *n += 1;
                true
            }
        };
        if !admitted {
            tokio::spawn(async move {
                let mut stream = stream;
                let head = format!(
                    "HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/plain\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n",
                    TOO_MANY.len()
                );
                let _ = stream
                    .write_all(format!("{head}{TOO_MANY}").as_bytes())
                    .await;
                drop(permit);
            });
            continue;
        }
        let _ = stream.set_nodelay(true);
        let (serve, conn) = (serve.clone(), conn.clone());
        let per_client = per_client.clone();
        tokio::spawn(async move {
            serve_conn(stream, serve, &conn).await;
            let mut m = per_client.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(n) = m.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    m.remove(&ip);
                }
            }
            drop(permit);
        });
    }
}
