//! Authorization of inbound traffic: the AuthorizationPolicy rules that target this proxy's
//! Service. A Service with any policy denies what no rule allows.
//!
//! A rule allows a request when each of its parts matches (an empty part matches everything):
//! the caller's SPIFFE ID against `identities` (exact, or a glob where `*` stands for any run of
//! characters), the path against `paths` (likewise), the method against `methods`. A rule that
//! names identities never matches a caller without one (plaintext under `mtls: permissive`).
//! Opaque TCP has no path or method: only rules without them apply to it.

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
    /// Whether an HTTP request from `caller` may reach the app.
    pub fn allows(&self, caller: Option<&str>, method: &Method, path: &str) -> bool {
        self.rules.iter().any(|r| {
            r.caller_matches(caller)
                && (r.paths.is_empty() || r.paths.iter().any(|p| glob(p, path)))
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

/// `*` matches any run of characters (including none); everything else matches itself.
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
