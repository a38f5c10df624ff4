//! The one body type every proxied request and response is converted into.

use bytes::Bytes;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn boxed<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// A body that keeps `guard` alive until the body is finished or dropped: an endpoint's
/// outstanding-request count covers a streamed response, not only its head.
pub struct Guarded<B, G> {
    body: B,
    _guard: G,
}

impl<B: http_body::Body + Unpin, G: Unpin> http_body::Body for Guarded<B, G> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

pub fn guarded<B, G>(body: B, guard: G) -> Guarded<B, G> {
    Guarded {
        body,
        _guard: guard,
    }
}

/// A response body with time limits: `deadline` for the whole body (the request timeout), and
/// `idle` between frames (the stream idle timeout). When one expires the body fails, which
/// resets the stream toward the caller; `on_expiry` is told which one it was.
pub struct Timed<B> {
    body: B,
    deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    idle: Option<(std::time::Duration, std::pin::Pin<Box<tokio::time::Sleep>>)>,
    on_expiry: Option<Box<dyn FnOnce(&'static str) + Send>>,
}

impl<B> Timed<B> {
    pub fn new(
        body: B,
        deadline: Option<tokio::time::Instant>,
        idle: Option<std::time::Duration>,
        on_expiry: impl FnOnce(&'static str) + Send + 'static,
    ) -> Self {
        Self {
            body,
            deadline: deadline.map(|d| Box::pin(tokio::time::sleep_until(d))),
            idle: idle.map(|i| (i, Box::pin(tokio::time::sleep(i)))),
            on_expiry: Some(Box::new(on_expiry)),
        }
    }

    fn expire(&mut self, kind: &'static str) -> BoxError {
        if let Some(f) = self.on_expiry.take() {
            f(kind);
        }
        format!("response body {kind} timeout").into()
    }
}

impl<B> http_body::Body for Timed<B>
where
    B: http_body::Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        use std::task::Poll;
        let this = &mut *self;
        match std::pin::Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(frame) => {
                if let Some((idle, sleep)) = &mut this.idle {
                    sleep.as_mut().reset(tokio::time::Instant::now() + *idle);
                }
                return Poll::Ready(frame);
            }
            Poll::Pending => {}
        }
        if let Some(d) = &mut this.deadline {
            if std::future::Future::poll(d.as_mut(), cx).is_ready() {
                return Poll::Ready(Some(Err(this.expire("request"))));
            }
        }
        if let Some((_, sleep)) = &mut this.idle {
            if std::future::Future::poll(sleep.as_mut(), cx).is_ready() {
                return Poll::Ready(Some(Err(this.expire("idle"))));
            }
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
