//! Authorization of inbound traffic: the AuthorizationPolicy rules that target this proxy's
//! Service. A Service with any policy denies what no rule allows.
//!
//! A rule allows a request when each of its parts matches (an empty part matches everything):
//! the caller's SPIFFE ID against `identities` (exact, or a glob where `*` stands for any run of
//! characters, [`glob`]), the path against `paths` (exact, or a segment-aware glob,
//! [`path_glob`]), the method against `methods`. A rule that names identities never matches a
//! caller without one (plaintext under `mtls: permissive`). Opaque TCP has no path or method:
//! only rules without them apply to it.
//!
//! The path given to [`Policy::allows`] must be normalized (`path::normalize`): patterns are
//! compared with the one spelling the app receives, never with the raw path.

use http::Method;
use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct Policy {
    pub rules: Vec<Rule>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Rule {
    pub identities: Vec<String>,
    pub paths: Vec<String>,
    #[serde(serialize_with = "ser_methods")]
    pub methods: Vec<Method>,
}

fn ser_methods<S: serde::Serializer>(m: &[Method], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(m.iter().map(Method::as_str))
}

impl Policy {
    /// Whether an HTTP request from `caller` may reach the app; `path` is normalized.
    pub fn allows(&self, caller: Option<&str>, method: &Method, path: &str) -> bool {
        self.rules.iter().any(|r| {
            r.caller_matches(caller)
                && (r.paths.is_empty() || r.paths.iter().any(|p| path_glob(p, path)))
                && (r.methods.is_empty() || r.methods.contains(method))
        })
    }

    /// Whether an opaque TCP connection from `caller` may reach the app.
    pub fn allows_connection(&self, caller: Option<&str>) -> bool {
        self.rules
            .iter()
            .any(|r| r.paths.is_empty() && r.methods.is_empty() && r.caller_matches(caller))
    }
}

impl Rule {
    fn caller_matches(&self, caller: Option<&str>) -> bool {
        self.identities.is_empty()
            || caller.is_some_and(|c| self.identities.iter().any(|p| glob(p, c)))
    }
}

/// The glob of identities: `*` matches any run of characters (including none, and `/`);
/// everything else matches itself.
pub fn glob(pattern: &str, s: &str) -> bool {
    let Some((first, rest_pattern)) = pattern.split_once('*') else {
        return pattern == s;
    };
    let Some(mut rest) = s.strip_prefix(first) else {
        return false;
    };
    let (middle, last) = rest_pattern.rsplit_once('*').unwrap_or(("", rest_pattern));
    for part in middle.split('*').filter(|p| !p.is_empty()) {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// The glob of paths, aware of segments:
/// - `**` matches any run of characters, `/` included (including none);
/// - a `*` that ends the pattern matches the rest of the path, `/` included, as every `*` did
///   before globs knew segments: `/api/*` still matches `/api/v1/users`;
/// - any other `*` matches a run of characters inside one segment (no `/`): `/api/*/users`
///   matches `/api/v1/users`, not `/api/v1/admin/users`;
/// - everything else matches itself.
pub fn path_glob(pattern: &str, path: &str) -> bool {
    let Some(star) = pattern.find('*') else {
        return pattern == path;
    };
    let (head, tail) = pattern.split_at(star);
    if tail.bytes().all(|b| b == b'*') {
        // Only stars at the end (`/api/*`, `/api/**`): a prefix. Most patterns, no allocation.
        return path.starts_with(head);
    }
    let Some(rest) = path.strip_prefix(head) else {
        return false;
    };
    Nfa::new(tail.as_bytes()).matches(rest.as_bytes())
}

/// A path pattern from its first `*` on, run as a set of positions in the pattern over the
/// path's bytes: linear in the path for a given pattern, whatever the path (a backtracking
/// matcher is exponential in the number of stars, and the path comes from the caller).
struct Nfa<'a> {
    pattern: &'a [u8],
}

/// What stands at a position of the pattern.
enum Token {
    /// `**`, or the `*` that ends the pattern: any run; the next token is `len` bytes on.
    Any {
        len: usize,
    },
    /// `*` elsewhere: any run without `/`.
    Segment,
    Byte(u8),
    End,
}

impl Nfa<'_> {
    fn new(pattern: &[u8]) -> Nfa<'_> {
        Nfa { pattern }
    }

    fn token(&self, at: usize) -> Token {
        match self.pattern.get(at..) {
            None | Some([]) => Token::End,
            Some([b'*', b'*', ..]) => {
                // A run of stars is one `**`.
                let len = self.pattern[at..]
                    .iter()
                    .take_while(|&&b| b == b'*')
                    .count();
                Token::Any { len }
            }
            Some([b'*']) => Token::Any { len: 1 },
            Some([b'*', ..]) => Token::Segment,
            Some([b, ..]) => Token::Byte(*b),
        }
    }

    /// Adds `at` to `set`, and every position a star there can skip to without consuming.
    fn add(&self, set: &mut [bool], mut at: usize) {
        loop {
            if set[at] {
                return;
            }
            set[at] = true;
            match self.token(at) {
                Token::Any { len } => at += len,
                Token::Segment => at += 1,
                Token::Byte(_) | Token::End => return,
            }
        }
    }

    fn matches(&self, s: &[u8]) -> bool {
        let n = self.pattern.len() + 1;
        let (mut now, mut next) = (vec![false; n], vec![false; n]);
        self.add(&mut now, 0);
        for &c in s {
            next.iter_mut().for_each(|b| *b = false);
            for at in (0..n).filter(|&at| now[at]) {
                match self.token(at) {
                    Token::Any { .. } => self.add(&mut next, at),
                    Token::Segment if c != b'/' => self.add(&mut next, at),
                    Token::Byte(b) if b == c => self.add(&mut next, at + 1),
                    _ => {}
                }
            }
            std::mem::swap(&mut now, &mut next);
            if !now.contains(&true) {
                return false;
            }
        }
        now[n - 1]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("*", "anything"));
        assert!(glob("/api/*", "/api/x/y"));
        assert!(!glob("/api/*", "/apix"));
        assert!(glob(
            "spiffe://weft.local/ns/shop/*",
            "spiffe://weft.local/ns/shop/sa/a"
        ));
        assert!(glob("a*b*c", "aXXbYYc"));
        assert!(!glob("a*b*c", "aXXcYYb"));
        assert!(glob("exact", "exact"));
        assert!(!glob("exact", "exactly"));
        assert!(
            !glob("ab*ba", "aba"),
            "the prefix and suffix may not overlap"
        );
    }

    #[test]
    fn path_globs_know_segments() {
        // What patterns meant before globs knew segments, still true.
        assert!(path_glob("*", "/anything/at/all"));
        assert!(path_glob("/api/*", "/api/x/y"));
        assert!(path_glob("/api/*", "/api/"));
        assert!(!path_glob("/api/*", "/apix"));
        assert!(!path_glob("/api/*", "/api"));
        assert!(path_glob("/api*", "/api/x/y"));
        assert!(path_glob("/exact", "/exact"));
        assert!(!path_glob("/exact", "/exactly"));
        assert!(path_glob("/a*b*c", "/aXXbYYc"));
        assert!(!path_glob("/a*b*c", "/aXXcYYb"));
        assert!(
            !path_glob("/ab*ba", "/aba"),
            "the prefix and suffix may not overlap"
        );
        // `**` crosses segments anywhere.
        assert!(path_glob("/api/**", "/api/x/y"));
        assert!(path_glob("/api/**/users", "/api/v1/x/users"));
        assert!(path_glob("/api/**/users", "/api//users"));
        assert!(!path_glob("/api/**/users", "/api/users"));
        assert!(path_glob("/**.json", "/a/b/c.json"));
        assert!(path_glob("/a/***/z", "/a/b/c/z"), "a run of stars is `**`");
        // Any other `*` stays inside its segment.
        assert!(path_glob("/api/*/users", "/api/v1/users"));
        assert!(
            path_glob("/api/*/users", "/api//users"),
            "an empty segment run"
        );
        assert!(!path_glob("/api/*/users", "/api/v1/admin/users"));
        assert!(path_glob("/files/*.txt", "/files/a.txt"));
        assert!(!path_glob("/files/*.txt", "/files/a/b.txt"));
        assert!(path_glob("/v*/x/*", "/v2/x/y/z"));
        assert!(!path_glob("/v*/x/*", "/v2/y/x/z"));
        assert!(path_glob("/a/*/*/d", "/a/b/c/d"));
        assert!(!path_glob("/a/*/*/d", "/a/b/d"));
    }

    #[test]
    fn path_globs_are_linear_in_the_path() {
        let path = format!("/{}", "a/".repeat(5000));
        let start = std::time::Instant::now();
        assert!(!path_glob("/**a**a**a**a**a**b/x", &path));
        assert!(!path_glob("/*a*a*a*a*a*b/x", &path));
        assert!(start.elapsed() < std::time::Duration::from_secs(2));
    }

    #[test]
    fn rules_allow_by_identity_path_and_method() {
        let policy = Policy {
            rules: vec![
                Rule {
                    identities: vec!["spiffe://td/ns/shop/sa/frontend".into()],
                    paths: vec!["/public/*".into()],
                    methods: vec![Method::GET],
                },
                Rule {
                    identities: vec!["spiffe://td/ns/ops/*".into()],
                    ..Default::default()
                },
            ],
        };
        let fe = Some("spiffe://td/ns/shop/sa/frontend");
        assert!(policy.allows(fe, &Method::GET, "/public/a"));
        assert!(!policy.allows(fe, &Method::POST, "/public/a"));
        assert!(!policy.allows(fe, &Method::GET, "/private"));
        assert!(policy.allows(Some("spiffe://td/ns/ops/sa/admin"), &Method::DELETE, "/x"));
        assert!(
            !policy.allows(None, &Method::GET, "/public/a"),
            "no identity, no identity rule"
        );
        assert!(
            !policy.allows_connection(fe),
            "the frontend rule names paths: not for TCP"
        );
        assert!(policy.allows_connection(Some("spiffe://td/ns/ops/sa/admin")));
        assert!(
            !Policy { rules: vec![] }.allows(fe, &Method::GET, "/"),
            "no rule: deny"
        );
    }
}
