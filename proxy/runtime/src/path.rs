//! Request-path normalization: the one spelling of a path that authorization checks, HTTPRoute
//! rules match and the app receives; and the check that a rule's path is in that spelling
//! ([`check_pattern`]), without which it could never match.
//!
//! Apps resolve paths before they pick a handler (dot segments, escapes, repeated slashes), so a
//! rule checked against the raw path can be walked around: `/public/%2e%2e/admin` is `/admin` to
//! most servers. [`normalize`] does what RFC 3986 §6.2.2 and Envoy's `normalize_path` +
//! `merge_slashes` do, in this order:
//!
//! 1. percent-escapes of unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded, every other
//!    escape keeps its byte with its hex digits in upper case (`%3f` becomes `%3F`);
//! 2. dot segments are removed (`/a/./b/../c` becomes `/a/c`; `..` above the root stays at the
//!    root), including those spelled with escapes (`%2e%2E`);
//! 3. repeated slashes are merged (`//a///b` becomes `/a/b`); a trailing slash is kept.
//!
//! Some spellings have no single meaning across servers, and are refused instead (400
//! `bad-request`, as Envoy's `path_with_escaped_slashes_action: REJECT_REQUEST`): an encoded
//! slash or backslash (`%2F`, `%5C`), a literal backslash (IIS and some servlet containers read it
//! as `/`), a `;` literal or encoded (Tomcat and Spring drop `;params` from a segment, so
//! `/admin;x` is `/admin` to them and `/admin;x` to a rule), an encoded control character (`%00`
//! to `%1F`, `%7F`), and an invalid escape (`%zz`, a `%` at the end). Case is kept: paths are
//! case-sensitive. The query is not a path and is left as it is.

use std::borrow::Cow;

use http::uri::{PathAndQuery, Uri};

/// Why a request path is refused rather than normalized.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path contains an encoded slash or backslash (%2F, %5C)")]
    EncodedSlash,
    #[error("the path contains a backslash")]
    Backslash,
    #[error("the path contains ';' (path parameters are not accepted)")]
    Semicolon,
    #[error("the path contains an encoded control character")]
    EncodedControl,
    #[error("the path contains an invalid percent-escape")]
    InvalidEscape,
    #[error("the path does not start with '/'")]
    NotAbsolute,
}

/// Why a path in a rule (AuthorizationPolicy `to.paths`, HTTPRoute `path.value`) could never
/// match a request, which is always normalized first.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("must start with '/'")]
    NotAbsolute,
    #[error("can never match: requests whose path has this are refused ({0})")]
    Refused(PathError),
    #[error("can never match: request paths are normalized before matching; write {0:?}")]
    NotNormalized(String),
}

/// Checks a path in a rule: `*` alone, or a path that is its own normalized form (a `*` is an
/// ordinary character to normalization, so globs are checked the same way).
pub fn check_pattern(pattern: &str) -> Result<(), PatternError> {
    if pattern == "*" {
        return Ok(());
    }
    if !pattern.starts_with('/') {
        return Err(PatternError::NotAbsolute);
    }
    match normalize(pattern) {
        Ok(Cow::Borrowed(_)) => Ok(()),
        Ok(Cow::Owned(normal)) => Err(PatternError::NotNormalized(normal)),
        Err(PathError::NotAbsolute) => Err(PatternError::NotAbsolute),
        Err(e) => Err(PatternError::Refused(e)),
    }
}

/// `path` normalized (see the module header), borrowed when it already was.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    // `OPTIONS *` and CONNECT's authority-form have no path to resolve.
    if path.is_empty() || path == "*" {
        return Ok(Cow::Borrowed(path));
    }
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if is_normal(path) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(path)?;
    let normal = remove_dot_segments(&decoded);
    // Borrowed means unchanged, whichever way it was found: `/a%20b` takes the slow path.
    Ok(if normal == path {
        Cow::Borrowed(path)
    } else {
        Cow::Owned(normal)
    })
}

/// Normalizes the path of `uri` in place, keeping its query as it is.
pub fn normalize_uri(uri: &mut Uri) -> Result<(), PathError> {
    let Cow::Owned(path) = normalize(uri.path())? else {
        return Ok(());
    };
    let path_and_query = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    let mut parts = std::mem::take(uri).into_parts();
    // Only bytes the URI already had, plus `%XX` escapes: always a valid path. Refusing rather
    // than panicking keeps that an assumption, not a crash.
    parts.path_and_query =
        Some(PathAndQuery::try_from(path_and_query).map_err(|_| PathError::InvalidEscape)?);
    *uri = Uri::from_parts(parts).map_err(|_| PathError::InvalidEscape)?;
    Ok(())
}

/// Whether `path` (starting with `/`) is already normalized: one byte scan, no allocation.
fn is_normal(path: &str) -> bool {
    let b = path.as_bytes();
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'%' | b'\\' | b';' => return false,
            // A segment that is empty (`//`), `.` or `..` starts right after a `/`.
            b'/' => match &b[i + 1..] {
                [b'/', ..] | [b'.'] | [b'.', b'/', ..] | [b'.', b'.'] | [b'.', b'.', b'/', ..] => {
                    return false
                }
                _ => {}
            },
            _ => {}
        }
    }
    true
}

/// Step 1, plus the refusals: unreserved escapes decoded, the rest in upper case.
fn decode_unreserved(path: &str) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => return Err(PathError::Backslash),
            b';' => return Err(PathError::Semicolon),
            b'%' => {
                let hex = |at: usize| {
                    bytes
                        .get(at)
                        .and_then(|&c| (c as char).to_digit(16))
                        .ok_or(PathError::InvalidEscape)
                };
                // Both digits are below 16: the byte fits.
                let byte = (hex(i + 1)? * 16 + hex(i + 2)?) as u8;
                match byte {
                    b'/' | b'\\' => return Err(PathError::EncodedSlash),
                    b';' => return Err(PathError::Semicolon),
                    0..=0x1f | 0x7f => return Err(PathError::EncodedControl),
                    b if is_unreserved(b) => out.push(b as char),
                    b => {
                        out.push('%');
                        out.push_str(&format!("{b:02X}"));
                    }
                }
                i += 3;
            }
            _ => {
                // Copy the run up to the next byte that needs a look (keeps UTF-8 whole).
                let end = bytes[i..]
                    .iter()
                    .position(|b| matches!(b, b'%' | b'\\' | b';'))
                    .map_or(bytes.len(), |n| i + n);
                out.push_str(&path[i..end]);
                i = end;
            }
        }
    }
    Ok(out)
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Steps 2 and 3 on a path that starts with `/`.
fn remove_dot_segments(path: &str) -> String {
    let mut kept: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for s in path[1..].split('/') {
        trailing_slash = matches!(s, "" | "." | "..");
        match s {
            "" | "." => {}
            ".." => {
                kept.pop();
            }
            s => kept.push(s),
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &kept {
        out.push('/');
        out.push_str(s);
    }
    if trailing_slash || kept.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_paths_are_borrowed() {
        for p in [
            "/",
            "/a",
            "/a/b/",
            "/static/app.min.js",
            "/a/.well-known",
            "/é",
            "*",
            "",
        ] {
            assert!(
                matches!(normalize(p), Ok(Cow::Borrowed(s)) if s == p),
                "{p}"
            );
        }
    }

    #[test]
    fn paths_are_normalized() {
        for (raw, want) in [
            ("/a/./b/../c", "/a/c"),
            ("/..", "/"),
            ("/../../a", "/a"),
            ("/a/..", "/"),
            ("/a/b/..", "/a/"),
            ("/a/.", "/a/"),
            ("//a///b//", "/a/b/"),
            ("//", "/"),
            ("/public/%2e%2e/admin", "/admin"),
            ("/public/%2E%2e/admin", "/admin"),
            ("/public/.%2e/admin", "/admin"),
            ("/%61dmin", "/admin"),
            ("/%7Euser/%2D%5F", "/~user/-_"),
            ("/a%3fb/%c3%a9", "/a%3Fb/%C3%A9"),
            ("/a%20b", "/a%20b"),
            ("/%25", "/%25"),
            ("/%252e%252e/x", "/%252e%252e/x"),
            ("/ADMIN", "/ADMIN"),
            ("/a/..%2e", "/a/..."),
        ] {
            assert_eq!(normalize(raw).as_deref(), Ok(want), "{raw}");
        }
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        for (raw, want) in [
            ("/a%2fb", PathError::EncodedSlash),
            ("/a%2Fb", PathError::EncodedSlash),
            ("/a%5cb", PathError::EncodedSlash),
            ("/a\\b", PathError::Backslash),
            ("/admin;x=1", PathError::Semicolon),
            ("/public/..;/admin", PathError::Semicolon),
            ("/admin%3Bx", PathError::Semicolon),
            ("/a%00", PathError::EncodedControl),
            ("/a%0a", PathError::EncodedControl),
            ("/a%7f", PathError::EncodedControl),
            ("/a%zz", PathError::InvalidEscape),
            ("/a%2", PathError::InvalidEscape),
            ("/a%", PathError::InvalidEscape),
            ("a/b", PathError::NotAbsolute),
        ] {
            assert_eq!(normalize(raw), Err(want), "{raw}");
        }
    }

    #[test]
    fn patterns_must_be_able_to_match() {
        for ok in ["*", "/", "/public/*", "/api/**/users", "/a.json", "/%20x"] {
            assert_eq!(check_pattern(ok), Ok(()), "{ok}");
        }
        let not_normal = |s: &str| Err(PatternError::NotNormalized(s.into()));
        assert_eq!(check_pattern("/a/../b"), not_normal("/b"));
        assert_eq!(check_pattern("//admin"), not_normal("/admin"));
        assert_eq!(check_pattern("/%61dmin"), not_normal("/admin"));
        assert_eq!(check_pattern("/a%3f"), not_normal("/a%3F"));
        assert_eq!(
            check_pattern("/a%2fb"),
            Err(PatternError::Refused(PathError::EncodedSlash))
        );
        assert_eq!(
            check_pattern("/a;b"),
            Err(PatternError::Refused(PathError::Semicolon))
        );
        assert_eq!(check_pattern("admin"), Err(PatternError::NotAbsolute));
        assert_eq!(check_pattern(""), Err(PatternError::NotAbsolute));
    }

    /// `cargo test --release -p weft-proxy --lib path::tests::cost -- --ignored --nocapture`
    #[test]
    #[ignore = "a timing, not a check"]
    fn cost() {
        for p in [
            "/api/v1/orders/12345/items",
            "/api/v1/./orders/%31/../items",
        ] {
            let n = 1_000_000;
            let start = std::time::Instant::now();
            for _ in 0..n {
                std::hint::black_box(normalize(std::hint::black_box(p)).is_ok());
            }
            println!("{p}: {:?} a call", start.elapsed() / n);
        }
    }

    #[test]
    fn the_query_is_kept_as_it_is() {
        let mut uri: Uri = "http://h:1/a/../b%2e?x=%2e%2e/..&y=%2f".parse().unwrap();
        normalize_uri(&mut uri).unwrap();
        assert_eq!(uri.to_string(), "http://h:1/b.?x=%2e%2e/..&y=%2f");
        let mut uri: Uri = "/a//b".parse().unwrap();
        normalize_uri(&mut uri).unwrap();
        assert_eq!(uri.to_string(), "/a/b");
    }
}
