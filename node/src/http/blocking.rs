//! Consul's blocking query, for every endpoint that reads the state.
//!
//! [`respond`] is what an endpoint calls: it takes the topic to watch and a read function,
//! runs the read until its index passes `?index` (or the wait ends), renders the result and
//! sets `X-Consul-Index`, `X-Consul-KnownLeader`, `X-Consul-LastContact` and
//! `X-Consul-Effective-Consistency` on whatever the render returns (a 404 included).
//! [`blocking`] is the loop itself, also run by the agent's own watches.

use std::sync::atomic::AtomicI64;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::http::HeaderValue;
use axum::response::Response;
use tribune_core::fsm::StateMachine;

use super::error::ApiError;
use super::query::QueryOptions;
use super::Api;
use crate::hub::Topic;
use crate::metrics::Metrics;
use crate::store;
use crate::store::Consistency;
use crate::store::ReadMeta;
use crate::store::Store;

/// What a blocking read runs with: the consistency mode, the index to pass, the wait.
pub struct ReadOpts {
    pub mode: Consistency,
    pub min_index: u64,
    pub wait: Duration,
}

impl From<&QueryOptions> for ReadOpts {
    fn from(o: &QueryOptions) -> ReadOpts {
        ReadOpts {
            mode: o.consistency,
            min_index: o.min_index,
            wait: o.wait,
        }
    }
}

/// Add Consul's random jitter of up to wait/16.
pub fn jittered(wait: Duration) -> Duration {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    let max = (wait.as_nanos() / 16) as u64;
    if max == 0 {
        return wait;
    }
    wait + Duration::from_nanos(u64::from_le_bytes(b) % max)
}

/// Counts a blocking query as open while it lives.
struct OpenGuard<'a>(&'a AtomicI64);

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Consul's blocking query: run `f` until its index exceeds `opts.min_index` or the wait
/// ends (then the current result is returned). `f` returns (result, index).
pub async fn blocking<R>(
    store: &dyn Store,
    metrics: &Metrics,
    topic: Topic,
    opts: &ReadOpts,
    f: impl Fn(&StateMachine) -> (R, u64),
) -> Result<(R, u64, ReadMeta), store::StoreError> {
    if opts.min_index == 0 {
        let ((r, idx), meta) = store::read(store, opts.mode, &f).await?;
        return Ok((r, idx, meta));
    }
    metrics.blocking_open.fetch_add(1, Ordering::Relaxed);
    let _guard = OpenGuard(&metrics.blocking_open);
    let deadline = tokio::time::Instant::now() + jittered(opts.wait);
    loop {
        // Subscribe before reading: a write between the read and the wait still wakes us.
        let mut sub = store.hub().subscribe(topic.clone());
        let ((r, idx), meta) = store::read(store, opts.mode, &f).await?;
        if idx > opts.min_index || tokio::time::Instant::now() >= deadline {
            return Ok((r, idx, meta));
        }
        // The result is read again when woken: an idle query holds none of it (a health
        // listing's entries are kilobytes each).
        drop(r);
        tokio::select! {
            _ = sub.changed() => { metrics.blocking_wakeups.fetch_add(1, Ordering::Relaxed); }
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}

/// Serve a read: block on `topic` as `opts` asks, render the result with `render`, and set
/// the read headers on the response.
pub async fn respond<R>(
    api: &Api,
    opts: &QueryOptions,
    topic: Topic,
    read: impl Fn(&StateMachine) -> (R, u64),
    render: impl FnOnce(R) -> Response,
) -> Result<Response, ApiError> {
    let read_opts = ReadOpts::from(opts);
    let (r, index, meta) = blocking(&*api.store, &api.metrics, topic, &read_opts, read).await?;
    Ok(with_read_headers(render(r), index, &meta, read_opts.mode))
}

/// The headers of every read: the index (never 0), leader knowledge, last contact, and the
/// consistency mode served.
pub fn with_read_headers(
    mut r: Response,
    index: u64,
    meta: &ReadMeta,
    mode: Consistency,
) -> Response {
    let known = if meta.known_leader { "true" } else { "false" };
    let h = r.headers_mut();
    h.insert("X-Consul-Index", HeaderValue::from(index.max(1)));
    h.insert("X-Consul-KnownLeader", HeaderValue::from_static(known));
    h.insert(
        "X-Consul-LastContact",
        HeaderValue::from(meta.last_contact_ms),
    );
    h.insert(
        "X-Consul-Effective-Consistency",
        HeaderValue::from_static(mode.header()),
    );
    r
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tribune_core::fsm::Command;
    use tribune_core::kv::KvOp;

    use super::*;
    use crate::store::DevStore;

    fn opts(min_index: u64, wait_ms: u64) -> ReadOpts {
        ReadOpts {
            mode: Consistency::Default,
            min_index,
            wait: Duration::from_millis(wait_ms),
        }
    }

    async fn put(s: &DevStore, k: &str, v: &str) -> u64 {
        let op = KvOp::Set {
            key: k.into(),
            value: v.into(),
            flags: 0,
        };
        match s.write(Command::Kv(op)).await.unwrap() {
            tribune_core::fsm::Response::Kv { index, .. } => index,
            r => panic!("{r:?}"),
        }
    }

    #[test]
    fn jitter_is_bounded() {
        for _ in 0..100 {
            let j = jittered(Duration::from_secs(16));
            assert!(j >= Duration::from_secs(16) && j < Duration::from_secs(17));
        }
    }

    #[tokio::test]
    async fn blocking_returns_on_change_of_its_key_only() {
        let s = Arc::new(DevStore::new("127.0.0.1:8300".into()));
        let m = Arc::new(Metrics::default());
        let idx = put(&s, "a/b", "1").await;
        let (s2, m2) = (s.clone(), m.clone());
        let waiter = tokio::spawn(async move {
            let started = std::time::Instant::now();
            let topic = Topic::Key("a/b".into());
            let r = blocking(&*s2, &m2, topic, &opts(idx, 3000), |sm| {
                (
                    sm.kv().get("a/b").map(|e| e.value.clone()),
                    sm.kv().key_index("a/b"),
                )
            })
            .await
            .unwrap();
            (r.0, r.1, started.elapsed())
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(m.blocking_open.load(Ordering::Relaxed), 1);
        put(&s, "c/d", "x").await; // unrelated
        put(&s, "a/b", "1").await; // identical: no change
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiter.is_finished());
        let new = put(&s, "a/b", "2").await;
        let (v, i, took) = waiter.await.unwrap();
        assert_eq!(v, Some(b"2".to_vec()));
        assert_eq!(i, new);
        assert!(took < Duration::from_secs(2));
        assert_eq!(m.blocking_open.load(Ordering::Relaxed), 0);
        assert_eq!(s.hub().topics(), (0, 0, 0));
    }

    #[tokio::test]
    async fn blocking_times_out_with_current_result() {
        let s = DevStore::new("127.0.0.1:8300".into());
        let m = Metrics::default();
        let idx = put(&s, "k", "v").await;
        let started = std::time::Instant::now();
        let topic = Topic::Key("k".into());
        let (_, i, _) = blocking(&s, &m, topic, &opts(idx, 200), |sm| {
            ((), sm.kv().key_index("k"))
        })
        .await
        .unwrap();
        assert_eq!(i, idx);
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(200) && took < Duration::from_millis(1000),
            "{took:?}"
        );
    }

    #[tokio::test]
    async fn blocking_prefix_woken_by_tree_delete() {
        let s = Arc::new(DevStore::new("127.0.0.1:8300".into()));
        let m = Arc::new(Metrics::default());
        put(&s, "p/a", "1").await;
        let idx = put(&s, "p/b", "1").await;
        let (s2, m2) = (s.clone(), m.clone());
        let waiter = tokio::spawn(async move {
            blocking(
                &*s2,
                &m2,
                Topic::Prefix("p/".into()),
                &opts(idx, 3000),
                |sm| {
                    let (es, i) = sm.kv().list("p/");
                    (es.len(), i)
                },
            )
            .await
            .unwrap()
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        s.write(Command::Kv(KvOp::DeleteTree { prefix: "p".into() }))
            .await
            .unwrap();
        let (n, i, _) = tokio::time::timeout(Duration::from_secs(2), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 0);
        assert!(i > idx);
    }

    #[test]
    fn read_headers() {
        let meta = ReadMeta {
            known_leader: false,
            last_contact_ms: 7,
        };
        let r = with_read_headers(Response::default(), 0, &meta, Consistency::Stale);
        let h = r.headers();
        assert_eq!(h["X-Consul-Index"], "1", "never 0");
        assert_eq!(h["X-Consul-KnownLeader"], "false");
        assert_eq!(h["X-Consul-LastContact"], "7");
        assert_eq!(h["X-Consul-Effective-Consistency"], "stale");
    }
}
