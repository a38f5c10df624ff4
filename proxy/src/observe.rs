//! What one request looked like, for its span and its access-log line: the one place both
//! directions turn a request and its response into trace attributes and a log entry.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use http::{header, Request, Response, Version};

use crate::access_log::{AccessLog, Entry};
use crate::errors;
use crate::metrics::no_label;
use weft_runtime::trace::{self, KeyValue as Kv, Span, Tracer};

/// The parts of a request that its span and log line report, taken before the request is
/// consumed; `None` of it is taken when neither is on.
pub struct RequestLine {
    method: http::Method,
    path: String,
    authority: Option<http::uri::Authority>,
    version: Version,
    grpc: bool,
    start: SystemTime,
    /// The caller's trace context, when tracing is off (for the log line).
    caller_ids: Option<(String, String)>,
    direction: &'static str,
    span: Option<Span>,
}

/// What the proxy learned while handling the request. Its names are shared with the snapshot
/// in force and become the request's metric labels as they are.
#[derive(Debug)]
pub struct Info {
    /// Outbound: the service addressed; inbound: this proxy's own (`name.namespace`).
    pub service: Arc<str>,
    /// The HTTPRoute rule that took it (outbound).
    pub route: Arc<str>,
    /// Outbound: the endpoint of the last try; inbound: the app.
    pub upstream: Option<SocketAddr>,
    /// Outbound: the identity the endpoint proved; inbound: the caller's.
    pub peer_identity: Arc<str>,
    /// Inbound: the caller's address.
    pub peer: Option<SocketAddr>,
    pub retries: u32,
}

impl Default for Info {
    fn default() -> Self {
        Self {
            service: no_label(),
            route: no_label(),
            upstream: None,
            peer_identity: no_label(),
            peer: None,
            retries: 0,
        }
    }
}

impl RequestLine {
    pub fn of<B>(req: &Request<B>, direction: &'static str, span: Option<Span>) -> Self {
        let authority = req
            .uri()
            .authority()
            .cloned()
            .or_else(|| req.headers().get(header::HOST)?.to_str().ok()?.parse().ok());
        let caller_ids = match &span {
            Some(_) => None,
            None => trace::extract(req.headers())
                .and_then(|p| p.ids)
                .map(|(t, s)| (t.to_string(), s.to_string())),
        };
        Self {
            method: req.method().clone(),
            path: req.uri().path().to_string(),
            authority,
            version: req.version(),
            grpc: errors::is_grpc(req),
            start: SystemTime::now(),
            caller_ids,
            direction,
            span,
        }
    }

    /// Ends the span (if any) and logs the line (if asked), for `direction`.
    pub fn finish<B>(
        mut self,
        rsp: &Response<B>,
        info: &Info,
        error: &str,
        tracer: &Tracer,
        log: Option<&AccessLog>,
    ) {
        let span = self.span.take();
        let direction = self.direction;
        let ids = span.as_ref().map(Span::ids).or(self.caller_ids.clone());
        if let Some(log) = log {
            let (trace_id, span_id) = ids.unwrap_or_default();
            log.log(&Entry {
                start: weft_runtime::timestamp::rfc3339(self.start),
                direction,
                method: self.method.to_string(),
                path: self.path.clone(),
                authority: self
                    .authority
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
                protocol: format!("{:?}", self.version),
                status: rsp.status().as_u16(),
                duration_ms: self.start.elapsed().unwrap_or_default().as_secs_f64() * 1000.0,
                service: info.service.to_string(),
                route: info.route.to_string(),
                upstream: info.upstream.map(|a| a.to_string()),
                peer_identity: info.peer_identity.to_string(),
                peer_address: info.peer.map(|a| a.to_string()),
                error: error.to_string(),
                retries: info.retries,
                trace_id,
                span_id,
            });
        }
        if let Some(span) = span {
            let kind_is_client = span.kind == trace::SpanKind::Client;
            let (attributes, failed) = self.span_attributes(rsp, info, error, kind_is_client);
            let name = format!("{} {}", self.method, info.service);
            tracer.finish(span, name, attributes, failed);
        }
    }

    /// Attributes by the OpenTelemetry HTTP semantic conventions, plus weft's, and the span's
    /// error status.
    fn span_attributes<B>(
        &self,
        rsp: &Response<B>,
        info: &Info,
        error: &str,
        client: bool,
    ) -> (Vec<Kv>, Option<String>) {
        let status = rsp.status().as_u16();
        let mut a = vec![
            Kv::new("http.request.method", self.method.to_string()),
            Kv::new("url.path", self.path.clone()),
            Kv::new("http.response.status_code", i64::from(status)),
            Kv::new("weft.service", info.service.to_string()),
        ];
        if client {
            if let Some(auth) = &self.authority {
                a.push(Kv::new("server.address", auth.host().to_string()));
                if let Some(p) = auth.port_u16() {
                    a.push(Kv::new("server.port", i64::from(p)));
                }
            }
            a.push(Kv::new("weft.retries", i64::from(info.retries)));
            if !info.route.is_empty() {
                a.push(Kv::new("weft.route", info.route.to_string()));
            }
            if let Some(ep) = info.upstream {
                a.push(Kv::new("network.peer.address", ep.ip().to_string()));
                a.push(Kv::new("network.peer.port", i64::from(ep.port())));
            }
        } else {
            a.push(Kv::new("server.address", info.service.to_string()));
            if let Some(peer) = info.peer {
                a.push(Kv::new("client.address", peer.ip().to_string()));
                a.push(Kv::new("network.peer.address", peer.ip().to_string()));
                a.push(Kv::new("network.peer.port", i64::from(peer.port())));
            }
        }
        if !info.peer_identity.is_empty() {
            a.push(Kv::new(
                "weft.peer.identity",
                info.peer_identity.to_string(),
            ));
        }
        if !error.is_empty() {
            a.push(Kv::new("weft.error", error.to_string()));
            a.push(Kv::new("error.type", error.to_string()));
        }
        if self.grpc {
            if let Some(code) = rsp
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i64>().ok())
            {
                a.push(Kv::new("rpc.grpc.status_code", code));
            }
        }
        let failed = (!error.is_empty() || status >= 500).then(|| {
            if error.is_empty() {
                format!("HTTP {status}")
            } else {
                error.to_string()
            }
        });
        (a, failed)
    }
}

/// A response body that calls `done` once, when it ends (or is dropped), with the gRPC status:
/// from its trailers, else from the response head (`head_grpc`, a trailers-only response).
pub struct OnEnd<B> {
    body: B,
    grpc: Option<u16>,
    done: Option<Box<dyn FnOnce(Option<u16>) + Send>>,
}

impl<B> OnEnd<B> {
    pub fn new(
        body: B,
        head_grpc: Option<u16>,
        done: impl FnOnce(Option<u16>) + Send + 'static,
    ) -> Self {
        Self {
            body,
            grpc: head_grpc,
            done: Some(Box::new(done)),
        }
    }

    fn finish(&mut self) {
        if let Some(done) = self.done.take() {
            done(self.grpc);
        }
    }
}

impl<B> Drop for OnEnd<B> {
    fn drop(&mut self) {
        self.finish();
    }
}

impl<B> http_body::Body for OnEnd<B>
where
    B: http_body::Body<Data = bytes::Bytes> + Unpin,
{
    type Data = bytes::Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, B::Error>>> {
        let this = &mut *self;
        let polled = std::pin::Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            std::task::Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(grpc_status) {
                    this.grpc = Some(code);
                }
                if frame.is_trailers() || this.body.is_end_stream() {
                    this.finish();
                }
            }
            std::task::Poll::Ready(None | Some(Err(_))) => this.finish(),
            std::task::Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// The `grpc-status` in a header map, if any.
pub fn grpc_status(headers: &http::HeaderMap) -> Option<u16> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// Records a request's metrics when its response ends: the duration histogram covers the whole
/// exchange, and a gRPC status sent in trailers is counted too.
pub fn record_on_end(
    rsp: Response<weft_runtime::body::Body>,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    mut labels: crate::metrics::RequestLabels,
    grpc: bool,
    start: tokio::time::Instant,
) -> Response<weft_runtime::body::Body> {
    let head = grpc_status(rsp.headers());
    rsp.map(|b| {
        weft_runtime::body::boxed(OnEnd::new(b, head, move |status| {
            if grpc {
                // gRPC has codes 0–16; an app's other numbers count as UNKNOWN (2), so that an
                // upstream cannot mint series.
                labels.grpc_status = status
                    .map(|s| if s <= 16 { s } else { 2 }.to_string())
                    .unwrap_or_default();
            }
            metrics.record_request(labels, start.elapsed().as_secs_f64());
        }))
    })
}
