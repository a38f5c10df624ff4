//! Header rewriting between hops: what is removed, added and moved as a request crosses the
//! proxies.

use http::header::{self, HeaderMap, HeaderName};
use http::{request::Parts, Uri, Version};

use crate::errors::ProxyError;

/// Removed from every request and response a proxy forwards (RFC 9110 §7.6.1), along with any
/// header the `Connection` header names.
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::TE,
];

pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    // `te: trailers` is allowed in HTTP/2 and gRPC needs it.
    let te_trailers = headers.get(header::TE).is_some_and(|v| v == "trailers");
    for name in HOP_BY_HOP.iter().chain(named.iter()) {
        headers.remove(name);
    }
    if te_trailers {
        headers.insert(header::TE, http::HeaderValue::from_static("trailers"));
    }
}

/// Removes `name` and every header that differs from it only by `_` for `-`
/// (`x_weft_client_identity`): CGI, WSGI and Rack servers fold both into the same variable, so a
/// look-alike would reach the app as the header itself. `name` is lowercase with `-`.
pub fn remove_with_lookalikes(headers: &mut HeaderMap, name: &'static str) {
    headers.remove(name);
    let lookalike = |k: &HeaderName| {
        let k = k.as_str().as_bytes();
        k.len() == name.len()
            && k.contains(&b'_')
            && k.iter()
                .zip(name.as_bytes())
                .all(|(a, b)| a == b || (*a == b'_' && *b == b'-'))
    };
    // Rare: collect only when there is one, so the usual request allocates nothing.
    if headers.keys().any(lookalike) {
        let found: Vec<HeaderName> = headers.keys().filter(|k| lookalike(k)).cloned().collect();
        for k in found {
            headers.remove(k);
        }
    }
}

/// Whether the request asks to switch protocols (WebSocket and the like): it cannot ride an
/// HTTP/2 stream and needs its own connection.
pub fn is_upgrade(parts: &Parts) -> bool {
    parts.version <= Version::HTTP_11
        && parts.headers.contains_key(header::UPGRADE)
        && parts
            .headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

/// The request's authority: the URI's (absolute-form or HTTP/2 `:authority`) or the Host header.
pub fn authority(parts: &Parts) -> Option<http::uri::Authority> {
    if let Some(a) = parts.uri.authority() {
        return Some(a.clone());
    }
    let host = parts.headers.get(header::HOST)?.to_str().ok()?;
    host.parse().ok()
}

/// Makes the URI absolute (`http://authority/path?query`), as both the HTTP/2 hop and the
/// pooled HTTP/1 client need it.
pub fn absolute_uri(parts: &Parts, authority: &http::uri::Authority) -> Result<Uri, ProxyError> {
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    Uri::builder()
        .scheme("http")
        .authority(authority.clone())
        .path_and_query(path)
        .build()
        .map_err(|e| ProxyError::BadRequest(format!("cannot forward URI: {e}")))
}

/// The deadline a gRPC caller set in `grpc-timeout` (e.g. `100m`: 100 ms), if any and valid.
pub fn grpc_timeout(headers: &HeaderMap) -> Option<std::time::Duration> {
    use std::time::Duration;
    let v = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert("grpc-timeout", v.parse().unwrap());
            grpc_timeout(&m)
        };
        use std::time::Duration;
        assert_eq!(h("100m"), Some(Duration::from_millis(100)));
        assert_eq!(h("2S"), Some(Duration::from_secs(2)));
        assert_eq!(h("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(h("5u"), Some(Duration::from_micros(5)));
        assert_eq!(h("123456789m"), None, "at most 8 digits");
        assert_eq!(h("m"), None);
        assert_eq!(h("10x"), None);
    }

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_names_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, x-private".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-private", "1".parse().unwrap());
        h.insert(header::TE, "trailers".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h[header::TE], "trailers");
        assert_eq!(h["x-kept"], "1");
    }

    #[test]
    fn lookalikes_of_a_header_are_removed_with_it() {
        let mut h = HeaderMap::new();
        for name in [
            "x-weft-client-identity",
            "x_weft_client_identity",
            "x-weft_client-identity",
        ] {
            h.append(name, "forged".parse().unwrap());
        }
        h.insert("x-weft-client-identityx", "kept".parse().unwrap());
        h.insert("x_other", "kept".parse().unwrap());
        remove_with_lookalikes(&mut h, "x-weft-client-identity");
        assert_eq!(h.len(), 2, "{h:?}");
    }

    #[test]
    fn upgrade_needs_both_headers() {
        let req = |conn: &str| {
            http::Request::builder()
                .header("upgrade", "websocket")
                .header("connection", conn)
                .body(())
                .unwrap()
                .into_parts()
                .0
        };
        assert!(is_upgrade(&req("keep-alive, Upgrade")));
        assert!(!is_upgrade(&req("keep-alive")));
    }
}
