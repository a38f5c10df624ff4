//! Retries: the budget that caps them, and the request body kept for replay.
//!
//! The retry loop itself is in `outbound`; what a try's outcome allows is decided by
//! [`decide`]. See docs/resilience/retries.md.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body as _, Frame, SizeHint};
use tokio::time::Instant;

use crate::policy::{is_idempotent, BudgetParams, RetryPolicy};
use weft_runtime::body::{Body, BoxError};

/// How long a request's deposit counts toward the budget.
const WINDOW: Duration = Duration::from_secs(10);
const SLOTS: usize = 10;
const SLOT: Duration = Duration::from_secs(1);

/// A retry budget (as Finagle and Linkerd): every request deposits `ratio` of a retry, which
/// stays available for `WINDOW`; a reserve refills at `minPerSecond` (holding at most one
/// second's worth, full at start). Over any run of S seconds with R requests, retries therefore
/// stay within `ratio × R + minPerSecond × (S + 1)`.
#[derive(Debug)]
pub struct Budget {
    inner: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    /// Deposits per one-second slot; `newest` is the current one.
    slots: [f64; SLOTS],
    newest: usize,
    newest_start: Instant,
    reserve: f64,
    refilled: Instant,
    /// `None` until the first use, so the reserve starts full at the policy's size.
    started: bool,
}

impl Default for Budget {
    fn default() -> Self {
        let now = Instant::now();
        Self {
            inner: Mutex::new(Window {
                slots: [0.0; SLOTS],
                newest: 0,
                newest_start: now,
                reserve: 0.0,
                refilled: now,
                started: false,
            }),
        }
    }
}

impl Window {
    fn advance(&mut self, now: Instant, params: &BudgetParams) {
        if !self.started {
            self.started = true;
            self.reserve = f64::from(params.min_per_second);
            self.refilled = now;
            self.newest_start = now;
        }
        let elapsed = now.saturating_duration_since(self.newest_start);
        if elapsed >= WINDOW {
            self.slots = [0.0; SLOTS];
            self.newest_start = now;
        } else {
            while now.saturating_duration_since(self.newest_start) >= SLOT {
                self.newest = (self.newest + 1) % SLOTS;
                self.slots[self.newest] = 0.0;
                self.newest_start += SLOT;
            }
        }
        let min = f64::from(params.min_per_second);
        let since = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.reserve = (self.reserve + since * min).min(min);
        self.refilled = now;
    }
}

impl Budget {
    /// Counts an original request.
    pub fn deposit(&self, params: &BudgetParams) {
        if params.ratio <= 0.0 {
            return;
        }
        if let Ok(mut w) = self.inner.lock() {
            w.advance(Instant::now(), params);
            let newest = w.newest;
            w.slots[newest] += params.ratio;
        }
    }

    /// Takes one retry from the budget; false when it is exhausted.
    pub fn withdraw(&self, params: &BudgetParams) -> bool {
        let Ok(mut w) = self.inner.lock() else {
            return false;
        };
        w.advance(Instant::now(), params);
        if w.reserve >= 1.0 {
            w.reserve -= 1.0;
            return true;
        }
        if w.slots.iter().sum::<f64>() < 1.0 - 1e-9 {
            return false;
        }
        // Spend the oldest deposits first: they expire first.
        let mut need = 1.0;
        for i in 1..=SLOTS {
            let slot = (w.newest + i) % SLOTS;
            let take = w.slots[slot].min(need);
            w.slots[slot] -= take;
            need -= take;
            if need <= 1e-9 {
                break;
            }
        }
        true
    }
}

/// What one try came to, as far as retrying is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The request never reached an upstream (connect or TLS failure, refused stream).
    NotSent,
    /// Sent, then the connection or stream broke.
    Reset,
    /// Sent, and no response head within the per-try timeout.
    TimedOut,
    /// A response head arrived.
    Response { status: u16, grpc: Option<u16> },
}

impl Outcome {
    /// The `reason` label of a retry of this outcome.
    pub fn label(&self) -> &'static str {
        match self {
            Self::NotSent => "connect-failure",
            Self::Reset => "reset",
            Self::TimedOut => "timeout",
            Self::Response { grpc: Some(_), .. } => "grpc-status",
            Self::Response { .. } => "status",
        }
    }

    /// Whether an endpoint's breaker counts this as a failure.
    pub fn is_failure(&self) -> bool {
        match self {
            Self::NotSent | Self::Reset | Self::TimedOut => true,
            Self::Response { status, .. } => *status >= 500,
        }
    }
}

/// Whether the policy allows retrying a try with this outcome. `replayable`: the request body
/// is still available; `sent_ok`: the request may be repeated once sent (idempotent method or
/// opted in).
pub fn decide(outcome: Outcome, policy: &RetryPolicy, sent_ok: bool, replayable: bool) -> bool {
    if !replayable {
        return false;
    }
    let on = &policy.on;
    match outcome {
        Outcome::NotSent => on.connect_failure,
        Outcome::Reset | Outcome::TimedOut => sent_ok && on.retries_reset(),
        // A listed gRPC status is retried whatever the method (gRPC calls are all POST): naming
        // it is the opt-in, as in gRPC's own retry policy.
        Outcome::Response { grpc: Some(g), .. } if on.grpc.contains(&g) => true,
        Outcome::Response { status, .. } => sent_ok && on.retries_status(status),
    }
}

/// Whether a sent request with this method may be retried under `policy`.
pub fn may_repeat(method: &http::Method, policy: &RetryPolicy) -> bool {
    policy.non_idempotent || is_idempotent(method)
}

/// A request body that can be sent again: each try's body replays what earlier tries read and
/// then goes on reading from the caller. Once more than `limit` bytes have been read, the
/// copy is dropped and no further try is possible (the body streams on for the current one).
pub struct Replay {
    shared: Arc<Mutex<Shared>>,
    size_hint: SizeHint,
}

struct Shared {
    source: Option<Body>,
    chunks: Vec<Bytes>,
    /// Chunks read from the source so far (`chunks` holds them unless the copy was dropped).
    read: usize,
    bytes: usize,
    limit: usize,
    overflowed: bool,
    trailers: Option<HeaderMap>,
    ended: bool,
    /// The try whose body may read; an earlier try's body fails instead.
    current: u32,
}

impl Replay {
    pub fn new(body: Body, limit: usize) -> Self {
        let size_hint = body.size_hint();
        Self {
            shared: Arc::new(Mutex::new(Shared {
                source: Some(body),
                chunks: Vec::new(),
                read: 0,
                bytes: 0,
                limit,
                overflowed: size_hint.lower() > limit as u64,
                trailers: None,
                ended: false,
                current: 0,
            })),
            size_hint,
        }
    }

    /// Whether another try can still be given the whole body: it was kept, or none of it has
    /// been read yet (a try that never left, with a body too large to keep).
    pub fn replayable(&self) -> bool {
        self.shared
            .lock()
            .is_ok_and(|s| !s.overflowed || (s.read == 0 && s.source.is_some()))
    }

    /// The body of try number `n` (0-based); earlier tries' bodies stop.
    pub fn body(&self, n: u32) -> TryBody {
        if let Ok(mut s) = self.shared.lock() {
            s.current = n;
        }
        TryBody {
            shared: self.shared.clone(),
            n,
            pos: 0,
            trailers_sent: false,
            size_hint: self.size_hint,
        }
    }
}

/// One try's view of a [`Replay`] body.
pub struct TryBody {
    shared: Arc<Mutex<Shared>>,
    n: u32,
    pos: usize,
    trailers_sent: bool,
    size_hint: SizeHint,
}

impl http_body::Body for TryBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let Ok(mut s) = this.shared.lock() else {
            return Poll::Ready(Some(Err("request body lock poisoned".into())));
        };
        if s.current != this.n {
            return Poll::Ready(Some(Err("request body taken over by a retry".into())));
        }
        if this.pos < s.read {
            let first_kept = s.read - s.chunks.len();
            let Some(chunk) = this
                .pos
                .checked_sub(first_kept)
                .and_then(|i| s.chunks.get(i))
            else {
                return Poll::Ready(Some(Err("request body no longer available".into())));
            };
            let chunk = chunk.clone();
            this.pos += 1;
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if s.ended {
            return Poll::Ready(match s.trailers.clone() {
                Some(t) if !this.trailers_sent => {
                    this.trailers_sent = true;
                    Some(Ok(Frame::trailers(t)))
                }
                _ => None,
            });
        }
        let Some(source) = s.source.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(source).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                s.ended = true;
                s.source = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                // A broken request body cannot be sent again.
                s.overflowed = true;
                s.chunks.clear();
                s.source = None;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => {
                    s.read += 1;
                    this.pos = s.read;
                    if !s.overflowed {
                        s.bytes += data.len();
                        if s.bytes > s.limit {
                            s.overflowed = true;
                            s.chunks = Vec::new();
                        } else {
                            s.chunks.push(data.clone());
                        }
                    }
                    Poll::Ready(Some(Ok(Frame::data(data))))
                }
                Err(frame) => {
                    if let Some(t) = frame.trailers_ref() {
                        s.trailers = Some(t.clone());
                        this.trailers_sent = true;
                    }
                    s.ended = true;
                    s.source = None;
                    Poll::Ready(Some(Ok(frame)))
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.shared.lock().is_ok_and(|s| {
            s.current == self.n
                && s.ended
                && self.pos >= s.read
                && (s.trailers.is_none() || self.trailers_sent)
        })
    }

    fn size_hint(&self) -> SizeHint {
        self.size_hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use weft_runtime::body;

    fn params(ratio: f64, min: u32) -> BudgetParams {
        BudgetParams {
            ratio,
            min_per_second: min,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn budget_allows_ratio_of_requests_plus_reserve() {
        let b = Budget::default();
        let p = params(0.2, 2);
        // The reserve: one second's worth.
        assert!(b.withdraw(&p));
        assert!(b.withdraw(&p));
        assert!(!b.withdraw(&p));
        for _ in 0..10 {
            b.deposit(&p);
        }
        assert!(b.withdraw(&p));
        assert!(b.withdraw(&p));
        assert!(!b.withdraw(&p), "10 requests × 0.2 = 2 retries");
        // The reserve refills at minPerSecond.
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(b.withdraw(&p));
        assert!(!b.withdraw(&p));
    }

    #[tokio::test(start_paused = true)]
    async fn deposits_expire_after_the_window() {
        let b = Budget::default();
        let p = params(0.5, 0);
        for _ in 0..4 {
            b.deposit(&p);
        }
        tokio::time::advance(WINDOW + Duration::from_millis(1)).await;
        assert!(!b.withdraw(&p));
        for _ in 0..2 {
            b.deposit(&p);
        }
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(b.withdraw(&p), "still inside the window");
    }

    #[tokio::test(start_paused = true)]
    async fn budget_bound_holds_under_constant_failure() {
        let b = Budget::default();
        let p = params(0.2, 5);
        let (mut requests, mut retries) = (0u32, 0u32);
        // 100 requests a second for 30 s, every one wanting 3 retries.
        for _ in 0..3000 {
            b.deposit(&p);
            requests += 1;
            for _ in 0..3 {
                if b.withdraw(&p) {
                    retries += 1;
                } else {
                    break;
                }
            }
            tokio::time::advance(Duration::from_millis(10)).await;
        }
        let bound = 0.2 * f64::from(requests) + 5.0 * 31.0;
        assert!(f64::from(retries) <= bound, "{retries} > {bound}");
        assert!(
            f64::from(retries) >= 0.9 * bound,
            "{retries} is far below {bound}"
        );
    }

    #[tokio::test]
    async fn replay_gives_every_try_the_whole_body() {
        let replay = Replay::new(body::full("hello world"), 1024);
        let first = replay.body(0).collect().await.unwrap().to_bytes();
        assert_eq!(&first[..], b"hello world");
        assert!(replay.replayable());
        let second = replay.body(1).collect().await.unwrap().to_bytes();
        assert_eq!(&second[..], b"hello world");
    }

    #[tokio::test]
    async fn replay_of_many_chunks() {
        let chunks: Vec<Result<Frame<Bytes>, BoxError>> = (0..8)
            .map(|i| Ok(Frame::data(Bytes::from(vec![i as u8; 4096]))))
            .collect();
        let stream = http_body_util::StreamBody::new(tokio_stream::iter(chunks));
        let replay = Replay::new(body::boxed(stream), 65536);
        let a = replay.body(0).collect().await.unwrap().to_bytes();
        let b = replay.body(1).collect().await.unwrap().to_bytes();
        assert_eq!(a.len(), 32768);
        assert_eq!(a, b);
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_not_replayable() {
        let replay = Replay::new(body::full(vec![7u8; 2048]), 1024);
        assert!(
            replay.replayable(),
            "nothing read yet: a try that never left may go again"
        );
        let _unsent = replay.body(0);
        let mut first = replay.body(1);
        let got = (&mut first).collect().await.unwrap().to_bytes();
        assert_eq!(got.len(), 2048, "the body streams for its try");
        assert!(!replay.replayable(), "read and not kept: no further try");
    }

    #[tokio::test]
    async fn a_retry_takes_over_from_a_half_read_body() {
        use tokio_stream::StreamExt as _;
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
        let stream = http_body_util::StreamBody::new(
            tokio_stream::wrappers::ReceiverStream::new(rx)
                .map(|b| Ok::<_, BoxError>(Frame::data(b))),
        );
        let replay = Replay::new(body::boxed(stream), 1024);
        let mut first = replay.body(0);
        tx.send(Bytes::from_static(b"ab")).await.unwrap();
        let f = first.frame().await.unwrap().unwrap();
        assert_eq!(f.into_data().unwrap(), "ab");
        let second = replay.body(1);
        assert!(first.frame().await.unwrap().is_err(), "the old try stops");
        tx.send(Bytes::from_static(b"cd")).await.unwrap();
        drop(tx);
        let all = second.collect().await.unwrap().to_bytes();
        assert_eq!(&all[..], b"abcd");
    }

    #[test]
    fn sent_requests_retry_only_when_allowed() {
        let p = RetryPolicy::explicit();
        let rsp = Outcome::Response {
            status: 503,
            grpc: None,
        };
        assert!(decide(rsp, &p, true, true));
        assert!(!decide(rsp, &p, false, true), "POST without opting in");
        assert!(!decide(rsp, &p, true, false), "body not replayable");
        assert!(
            decide(Outcome::NotSent, &p, false, true),
            "never sent: always"
        );
        let default = RetryPolicy::default();
        assert!(!decide(rsp, &default, true, true));
        assert!(!decide(Outcome::Reset, &default, true, true));
        assert!(decide(Outcome::NotSent, &default, false, true));
        let mut grpc = RetryPolicy::explicit();
        grpc.on.grpc.push(14);
        let unavailable = Outcome::Response {
            status: 200,
            grpc: Some(14),
        };
        assert!(
            decide(unavailable, &grpc, false, true),
            "a listed gRPC status, even for POST"
        );
        assert!(may_repeat(&http::Method::GET, &p));
        assert!(!may_repeat(&http::Method::POST, &p));
    }
}
