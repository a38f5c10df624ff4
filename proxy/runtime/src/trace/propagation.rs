//! Trace context on the wire: the span a request is part of ([`Span`]), read from the headers a
//! request arrives with (W3C Trace Context, else B3 single or multiple headers) and written onward
//! in the format it came in.
//!
//! Pure header work: no sampling decision (that is [`super::Tracer::start`]) and no export.

use std::time::SystemTime;

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::trace::{SpanId, SpanKind, TraceId};

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
const B3: HeaderName = HeaderName::from_static("b3");
const B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
const B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
const B3_PARENT: HeaderName = HeaderName::from_static("x-b3-parentspanid");
const B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
const B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");

/// Every header that carries trace context, W3C and B3: what an app passes on from the request
/// it serves to the requests it makes.
pub const HEADER_NAMES: [&str; 8] = [
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
];

/// How a request carried its trace context; the same format is injected onward.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// W3C Trace Context (`traceparent`, `tracestate`): also the format for new traces.
    #[default]
    W3c,
    /// B3 single header (`b3`).
    B3Single,
    /// B3 multiple headers (`x-b3-*`).
    B3Multi,
}

/// The trace context a request arrived with.
#[derive(Clone, Debug, PartialEq)]
pub struct Parent {
    /// `None` for a B3 sampling-only header (`b3: 0`): a decision without ids.
    pub ids: Option<(TraceId, SpanId)>,
    /// The caller's sampling decision; `None` when it deferred it.
    pub sampled: Option<bool>,
    pub tracestate: Option<HeaderValue>,
    pub format: Format,
}

/// Reads the trace context of a request: W3C when present (also when B3 is too), else B3.
pub fn extract(headers: &HeaderMap) -> Option<Parent> {
    if let Some(p) = headers
        .get(TRACEPARENT)
        .and_then(|v| parse_traceparent(v.to_str().ok()?))
    {
        return Some(Parent {
            tracestate: headers.get(TRACESTATE).cloned(),
            ..p
        });
    }
    if let Some(v) = headers.get(B3).and_then(|v| v.to_str().ok()) {
        return parse_b3_single(v);
    }
    let id = |h: &HeaderName| headers.get(h).and_then(|v| v.to_str().ok());
    let sampled = match (id(&B3_FLAGS), id(&B3_SAMPLED)) {
        (Some("1"), _) => Some(true),
        (_, Some("1" | "true")) => Some(true),
        (_, Some("0" | "false")) => Some(false),
        _ => None,
    };
    let ids = match (id(&B3_TRACE_ID), id(&B3_SPAN_ID)) {
        (Some(t), Some(s)) => Some((parse_trace_id(t)?, parse_span_id(s)?)),
        _ => None,
    };
    (ids.is_some() || sampled.is_some()).then_some(Parent {
        ids,
        sampled,
        tracestate: None,
        format: Format::B3Multi,
    })
}

/// `version-traceid-spanid-flags`, version 00 (a later version is read the same way, as the
/// spec asks).
fn parse_traceparent(v: &str) -> Option<Parent> {
    let mut parts = v.trim().split('-');
    let version = parts.next()?;
    let (trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?);
    if version.len() != 2 || version == "ff" || (version == "00" && parts.next().is_some()) {
        return None;
    }
    if trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some(Parent {
        ids: Some((parse_trace_id(trace)?, parse_span_id(span)?)),
        sampled: Some(flags & 1 == 1),
        tracestate: None,
        format: Format::W3c,
    })
}

/// `traceid-spanid[-sampled[-parentspanid]]`, or a lone sampling state (`0`, `1`, `d`).
fn parse_b3_single(v: &str) -> Option<Parent> {
    let parts: Vec<&str> = v.trim().split('-').collect();
    let sampled = |s: &str| match s {
        "1" | "d" => Some(Some(true)),
        "0" => Some(Some(false)),
        _ => None,
    };
    let (ids, decision) = match parts.as_slice() {
        [s] => (None, sampled(s)?),
        [t, s] => (Some((parse_trace_id(t)?, parse_span_id(s)?)), None),
        [t, s, d] | [t, s, d, _] => (Some((parse_trace_id(t)?, parse_span_id(s)?)), sampled(d)?),
        _ => return None,
    };
    Some(Parent {
        ids,
        sampled: decision,
        tracestate: None,
        format: Format::B3Single,
    })
}

/// 32 hex digits (or B3's 16, left-padded), not all zero.
fn parse_trace_id(s: &str) -> Option<TraceId> {
    if !(s.len() == 32 || s.len() == 16) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let id = u128::from_str_radix(s, 16).ok()?;
    (id != 0).then(|| TraceId::from(id))
}

fn parse_span_id(s: &str) -> Option<SpanId> {
    if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let id = u64::from_str_radix(s, 16).ok()?;
    (id != 0).then(|| SpanId::from(id))
}

/// Removes every trace header (they are rewritten at each hop).
pub fn strip(headers: &mut HeaderMap) {
    for h in [
        TRACEPARENT,
        TRACESTATE,
        B3,
        B3_TRACE_ID,
        B3_SPAN_ID,
        B3_PARENT,
        B3_SAMPLED,
        B3_FLAGS,
    ] {
        headers.remove(h);
    }
}

/// Writes a span's context as the parent of the next hop, in `format`.
pub fn inject(headers: &mut HeaderMap, span: &Span) {
    strip(headers);
    let (trace, id, sampled) = (span.trace_id, span.span_id, span.sampled);
    let value = |s: String| HeaderValue::from_str(&s).ok();
    match span.format {
        Format::W3c => {
            if let Some(v) = value(format!("00-{trace}-{id}-0{}", u8::from(sampled))) {
                headers.insert(TRACEPARENT, v);
            }
            if let Some(ts) = &span.tracestate {
                headers.insert(TRACESTATE, ts.clone());
            }
        }
        Format::B3Single => {
            if let Some(v) = value(format!("{trace}-{id}-{}", u8::from(sampled))) {
                headers.insert(B3, v);
            }
        }
        Format::B3Multi => {
            for (h, v) in [
                (B3_TRACE_ID, trace.to_string()),
                (B3_SPAN_ID, id.to_string()),
                (B3_SAMPLED, u8::from(sampled).to_string()),
            ] {
                if let Some(v) = value(v) {
                    headers.insert(h, v);
                }
            }
            if span.parent_span_id != SpanId::INVALID {
                if let Some(v) = value(span.parent_span_id.to_string()) {
                    headers.insert(B3_PARENT, v);
                }
            }
        }
    }
}

/// A span in progress: its identity, its parent, and when it started.
#[derive(Clone, Debug)]
pub struct Span {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent_span_id: SpanId,
    pub parent_remote: bool,
    pub sampled: bool,
    pub kind: SpanKind,
    pub format: Format,
    pub tracestate: Option<HeaderValue>,
    pub start: SystemTime,
}

impl Span {
    /// W3C `trace-id` and `span-id` as hex, for logs.
    pub fn ids(&self) -> (String, String) {
        (self.trace_id.to_string(), self.span_id.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const SPAN: &str = "00f067aa0ba902b7";

    #[test]
    fn w3c_is_read_and_preferred_over_b3() {
        let h = headers(&[
            ("traceparent", &format!("00-{TRACE}-{SPAN}-01")),
            ("tracestate", "vendor=x"),
            ("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
        ]);
        let p = extract(&h).unwrap();
        assert_eq!(p.format, Format::W3c);
        assert_eq!(p.ids.unwrap().0.to_string(), TRACE);
        assert_eq!(p.sampled, Some(true));
        assert_eq!(p.tracestate.unwrap(), "vendor=x");
    }

    #[test]
    fn invalid_traceparent_is_ignored() {
        for bad in [
            format!("00-{}-{SPAN}-01", "0".repeat(32)),
            format!("00-{TRACE}-{}-01", "0".repeat(16)),
            format!("ff-{TRACE}-{SPAN}-01"),
            format!("00-{TRACE}-{SPAN}"),
            "garbage".to_string(),
        ] {
            assert!(
                extract(&headers(&[("traceparent", &bad)])).is_none(),
                "{bad}"
            );
        }
    }

    #[test]
    fn b3_single_and_multi() {
        let p = extract(&headers(&[("b3", &format!("{TRACE}-{SPAN}-0"))])).unwrap();
        assert_eq!((p.format, p.sampled), (Format::B3Single, Some(false)));
        let p = extract(&headers(&[("b3", "0")])).unwrap();
        assert_eq!((p.ids, p.sampled), (None, Some(false)));
        let p = extract(&headers(&[
            ("x-b3-traceid", "a3ce929d0e0e4736"),
            ("x-b3-spanid", SPAN),
            ("x-b3-sampled", "1"),
        ]))
        .unwrap();
        assert_eq!(p.format, Format::B3Multi);
        assert_eq!(
            p.ids.unwrap().0.to_string(),
            "0000000000000000a3ce929d0e0e4736",
            "64-bit B3 trace ids are left-padded"
        );
    }

    #[test]
    fn injection_follows_the_incoming_format() {
        let span = |format| Span {
            trace_id: TraceId::from(1u128),
            span_id: SpanId::from(2u64),
            parent_span_id: SpanId::from(3u64),
            parent_remote: true,
            sampled: true,
            kind: SpanKind::Client,
            format,
            tracestate: None,
            start: SystemTime::now(),
        };
        let mut h = headers(&[("b3", "junk"), ("x-b3-sampled", "0")]);
        inject(&mut h, &span(Format::W3c));
        assert_eq!(
            h["traceparent"],
            "00-00000000000000000000000000000001-0000000000000002-01"
        );
        assert!(!h.contains_key("b3") && !h.contains_key("x-b3-sampled"));
        let mut h = HeaderMap::new();
        inject(&mut h, &span(Format::B3Single));
        assert_eq!(
            h["b3"],
            "00000000000000000000000000000001-0000000000000002-1"
        );
        let mut h = HeaderMap::new();
        inject(&mut h, &span(Format::B3Multi));
        assert_eq!(h["x-b3-spanid"], "0000000000000002");
        assert_eq!(h["x-b3-parentspanid"], "0000000000000003");
        assert_eq!(h["x-b3-sampled"], "1");
    }
}
