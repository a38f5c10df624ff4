//! What one request looked like, for its span and its access-log line: the one place both
//! directions turn a request and its response into trace attributes and a log entry.

use std::net::SocketAddr;
use std::time::SystemTime;

use http::{header, Request, Response, Version};

use crate::access_log::{self, AccessLog, Entry};
use crate::errors;
use crate::trace::{self, KeyValue as Kv, Span, Tracer};

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

/// What the proxy learned while handling the request.
#[derive(Debug, Default)]
pub struct Info {
    /// Outbound: the service addressed; inbound: this proxy's own (`name.namespace`).
    pub service: String,
    /// The HTTPRoute rule that took it (outbound).
    pub route: String,
    /// Outbound: the endpoint of the last try; inbound: the app.
    pub upstream: Option<SocketAddr>,
    /// Outbound: the identity the endpoint proved; inbound: the caller's.
    pub peer_identity: String,
    /// Inbound: the caller's address.
    pub peer: Option<SocketAddr>,
    pub retries: u32,
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
                start: access_log::rfc3339(self.start),
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
                service: info.service.clone(),
                route: info.route.clone(),
                upstream: info.upstream.map(|a| a.to_string()),
                peer_identity: info.peer_identity.clone(),
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
            Kv::new("weft.service", info.service.clone()),
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
                a.push(Kv::new("weft.route", info.route.clone()));
            }
            if let Some(ep) = info.upstream {
                a.push(Kv::new("network.peer.address", ep.ip().to_string()));
                a.push(Kv::new("network.peer.port", i64::from(ep.port())));
            }
        } else {
            a.push(Kv::new("server.address", info.service.clone()));
            if let Some(peer) = info.peer {
                a.push(Kv::new("client.address", peer.ip().to_string()));
                a.push(Kv::new("network.peer.address", peer.ip().to_string()));
                a.push(Kv::new("network.peer.port", i64::from(peer.port())));
            }
        }
        if !info.peer_identity.is_empty() {
            a.push(Kv::new("weft.peer.identity", info.peer_identity.clone()));
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
