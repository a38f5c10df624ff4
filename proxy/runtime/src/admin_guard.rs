//! What the local admin listeners — the proxy's admin listener and the control plane's API —
//! refuse before looking at who is calling: requests that only a browser would make for
//! another site.
//!
//! - **Host allow-list** (DNS rebinding): a page of `evil.example` whose name is made to
//!   resolve to 127.0.0.1 talks to a loopback listener as a same-origin page, but its requests
//!   still carry `Host: evil.example`. Only IP literals (which cannot be rebound), `localhost`
//!   and the names a listener is configured with are answered.
//! - **No cross-site browser requests** (CSRF): browsers add `Origin` to every cross-origin
//!   request and to every POST, and `Sec-Fetch-Site` to every request; no CLI, probe or
//!   scraper sends either. A request with `Origin`, or whose `Sec-Fetch-Site` is not `none` or
//!   `same-origin`, is refused.
//! - **JSON or YAML bodies only**: `text/plain`, `application/x-www-form-urlencoded` and
//!   `multipart/form-data` are the types a page may send anywhere without a CORS preflight;
//!   a request body must declare JSON or YAML.

use std::net::IpAddr;

use http::{header, Method, Request, StatusCode};

/// Why a request was refused; [`Refused::status`] is its HTTP status.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refused {
    #[error("Host {host:?} is not a name this listener answers to (a page that rebinds its DNS name to this host sends its own); use an IP address or localhost{hint}")]
    Host { host: String, hint: String },
    #[error("requests made by a web browser are refused here ({why}): use the weft CLI, curl or a probe")]
    Browser { why: String },
    #[error("a request body must be JSON or YAML: send Content-Type: application/json or application/yaml (was {found})")]
    MediaType { found: String },
}

impl Refused {
    pub fn status(&self) -> StatusCode {
        match self {
            Refused::Host { .. } => StatusCode::MISDIRECTED_REQUEST,
            Refused::Browser { .. } => StatusCode::FORBIDDEN,
            Refused::MediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        }
    }

    /// The `reason` the control plane's API puts in its JSON errors.
    pub fn reason(&self) -> &'static str {
        match self {
            Refused::Host { .. } => "misdirected",
            Refused::Browser { .. } => "browser-refused",
            Refused::MediaType { .. } => "unsupported-media-type",
        }
    }
}

/// Runs all three checks. `names` are host names allowed besides IP literals and
/// `localhost`; `hint` ends the Host refusal (e.g. which setting adds a name).
pub fn check<B: http_body::Body>(
    req: &Request<B>,
    names: &[String],
    hint: &str,
) -> Result<(), Refused> {
    check_host(req, names, hint)?;
    check_browser(req)?;
    check_content_type(req)
}

/// The request's Host (the `Host` header, else the URI's authority as HTTP/2 carries it) is an
/// IP literal, `localhost`, or one of `names`. A request with neither is not from a browser
/// and passes.
pub fn check_host<B>(req: &Request<B>, names: &[String], hint: &str) -> Result<(), Refused> {
    let host = match req.headers().get(header::HOST) {
        Some(v) => v.to_str().unwrap_or("\u{fffd}").to_string(),
        None => match req.uri().authority() {
            Some(a) => a.as_str().to_string(),
            None => return Ok(()),
        },
    };
    if host_allowed(&host, names) {
        Ok(())
    } else {
        Err(Refused::Host {
            host,
            hint: hint.to_string(),
        })
    }
}

/// Whether `host` (`NAME[:PORT]`, `IPV4[:PORT]`, `[IPV6][:PORT]`) is allowed.
pub fn host_allowed(host: &str, names: &[String]) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((ip, "")) => ip.parse::<std::net::Ipv6Addr>().is_ok(),
            Some((ip, port)) => {
                port.strip_prefix(':').is_some_and(is_port)
                    && ip.parse::<std::net::Ipv6Addr>().is_ok()
            }
            None => false,
        };
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if is_port(port) => name,
            Some(_) => return false,
            None => host,
        }
    };
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    name.parse::<IpAddr>().is_ok()
        || name == "localhost"
        || names
            .iter()
            .any(|n| n.trim_end_matches('.').eq_ignore_ascii_case(&name))
}

fn is_port(s: &str) -> bool {
    !s.is_empty() && s.parse::<u16>().is_ok()
}

/// No `Origin`, and `Sec-Fetch-Site` (if any) `none` (typed in the address bar) or
/// `same-origin`.
pub fn check_browser<B>(req: &Request<B>) -> Result<(), Refused> {
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        return Err(Refused::Browser {
            why: format!("Origin: {}", origin.to_str().unwrap_or("?")),
        });
    }
    match req
        .headers()
        .get("sec-fetch-site")
        .map(|v| v.to_str().unwrap_or("?"))
    {
        None | Some("none" | "same-origin") => Ok(()),
        Some(site) => Err(Refused::Browser {
            why: format!("Sec-Fetch-Site: {site}"),
        }),
    }
}

/// A request that has a body declares it JSON or YAML. Requests without one (GET, a bare
/// `POST /shutdown`) pass: those are what the other two checks are for.
pub fn check_content_type<B: http_body::Body>(req: &Request<B>) -> Result<(), Refused> {
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS)
        || req.body().is_end_stream()
    {
        return Ok(());
    }
    let declared = req
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or("?"));
    let essence = declared
        .map(|t| t.split(';').next().unwrap_or(t).trim().to_ascii_lowercase())
        .unwrap_or_default();
    match essence.as_str() {
        "application/json" | "application/yaml" | "application/x-yaml" | "text/yaml" => Ok(()),
        _ => Err(Refused::MediaType {
            found: declared.map_or_else(|| "none".into(), str::to_string),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)], method: &str, body: &'static str) -> Request<String> {
        let mut r = Request::builder().method(method).uri("/x");
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.body(body.to_string()).unwrap()
    }

    #[test]
    fn hosts() {
        let names = ["cp.example".to_string()];
        for ok in [
            "localhost",
            "localhost:15080",
            "LOCALHOST.",
            "127.0.0.1",
            "127.0.0.1:1",
            "10.1.2.3:15080",
            "[::1]",
            "[::1]:15080",
            "[fe80::1]:80",
            "cp.example",
            "CP.example:443",
        ] {
            assert!(host_allowed(ok, &names), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:15080",
            "127.0.0.1.nip.io",
            "localhost.evil.example",
            "::1",
            "[::1]x",
            "[evil]:80",
            "localhost:port",
            "localhost:",
            "",
            "cp.example.evil",
        ] {
            assert!(!host_allowed(bad, &names), "{bad}");
        }
        assert!(check_host(&req(&[], "GET", ""), &[], "").is_ok(), "no Host");
        let e = check_host(
            &req(&[("host", "evil.example")], "GET", ""),
            &[],
            "; or --x",
        )
        .unwrap_err();
        assert_eq!(e.status(), StatusCode::MISDIRECTED_REQUEST);
        assert!(e.to_string().ends_with("localhost; or --x"), "{e}");
    }

    #[test]
    fn browsers() {
        assert!(check_browser(&req(&[], "POST", "")).is_ok());
        assert!(check_browser(&req(&[("sec-fetch-site", "none")], "GET", "")).is_ok());
        assert!(check_browser(&req(&[("sec-fetch-site", "same-origin")], "GET", "")).is_ok());
        for h in [
            ("origin", "http://evil.example"),
            ("origin", "null"),
            ("sec-fetch-site", "cross-site"),
            ("sec-fetch-site", "same-site"),
        ] {
            let e = check_browser(&req(&[h], "POST", "")).unwrap_err();
            assert_eq!(e.status(), StatusCode::FORBIDDEN, "{h:?}");
        }
    }

    #[test]
    fn content_types() {
        for t in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/YAML",
            "application/x-yaml",
            "text/yaml",
        ] {
            assert!(
                check_content_type(&req(&[("content-type", t)], "POST", "{}")).is_ok(),
                "{t}"
            );
        }
        for t in [
            "text/plain",
            "text/plain;charset=UTF-8",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
        ] {
            let e = check_content_type(&req(&[("content-type", t)], "PUT", "{}")).unwrap_err();
            assert_eq!(e.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "{t}");
        }
        let e = check_content_type(&req(&[], "POST", "{}")).unwrap_err();
        assert!(e.to_string().contains("was none"), "{e}");
        assert!(check_content_type(&req(&[], "POST", "")).is_ok(), "no body");
        assert!(check_content_type(&req(&[], "GET", "x")).is_ok(), "a read");
    }
}
