//! The API's OpenAPI document, served at `/api/v1/openapi.json` (see docs/api.md).
pub const DOCUMENT: &str = include_str!("openapi.json");

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::DOCUMENT;
    use crate::resources::KINDS;

    fn document() -> Value {
        serde_json::from_str(DOCUMENT).expect("openapi.json is not valid JSON")
    }

    /// The kind's path segment, as `resources::kind_named` reads it: `services`, `trafficpolicies`.
    fn plural(kind: &str) -> String {
        let k = kind.to_ascii_lowercase();
        match k.strip_suffix('y') {
            Some(stem) => format!("{stem}ies"),
            None => format!("{k}s"),
        }
    }

    fn assert_methods(doc: &Value, path: &str, methods: &[&str]) {
        let item = doc["paths"]
            .get(path)
            .unwrap_or_else(|| panic!("openapi.json has no path {path}"));
        for m in methods {
            assert!(
                item.get(*m).is_some_and(Value::is_object),
                "openapi.json: {path} has no {m}"
            );
        }
    }

    #[test]
    fn is_an_openapi_3_document() {
        let doc = document();
        assert_eq!(doc["openapi"], "3.0.3");
        assert_eq!(doc["info"]["title"], "weft control plane API");
        assert_eq!(doc["info"]["version"], "v1");
        assert_eq!(
            doc["components"]["securitySchemes"]["bearerAuth"]["scheme"],
            "bearer"
        );
    }

    #[test]
    fn every_kind_has_its_paths_and_schema() {
        let doc = document();
        for (kind, api_version) in KINDS {
            let plural = plural(kind);
            assert_methods(&doc, &format!("/api/v1/{plural}"), &["get"]);
            assert_methods(
                &doc,
                &format!("/api/v1/{plural}/{{namespace}}/{{name}}"),
                &["get", "put", "delete"],
            );
            let schema = &doc["components"]["schemas"][kind];
            let narrowed = &schema["allOf"][1]["properties"];
            assert_eq!(narrowed["kind"]["enum"][0], kind, "schema of {kind}");
            assert_eq!(
                narrowed["apiVersion"]["enum"][0], api_version,
                "schema of {kind}"
            );
        }
    }

    #[test]
    fn the_other_endpoints_are_documented() {
        let doc = document();
        for (path, methods) in [
            ("/api/v1/apply", &["post"][..]),
            ("/api/v1/proxies", &["get"]),
            ("/api/v1/audit", &["get"]),
            ("/api/v1/tokens", &["get", "post"]),
            ("/api/v1/tokens/{id}", &["delete"]),
            ("/api/v1/ca", &["get"]),
            ("/api/v1/ca/rotate", &["post"]),
            ("/api/v1/ca/admin-certificates", &["post"]),
            ("/api/v1/openapi.json", &["get"]),
        ] {
            assert_methods(&doc, path, methods);
        }
    }

    #[test]
    fn every_reference_resolves() {
        fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
            match v {
                Value::Object(m) => {
                    if let Some(Value::String(r)) = m.get("$ref") {
                        out.push(r);
                    }
                    m.values().for_each(|v| refs(v, out));
                }
                Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
                _ => {}
            }
        }
        let doc = document();
        let mut found = Vec::new();
        refs(&doc, &mut found);
        assert!(!found.is_empty());
        for r in found {
            let pointer = r
                .strip_prefix('#')
                .unwrap_or_else(|| panic!("{r}: only local references"));
            assert!(doc.pointer(pointer).is_some(), "{r} does not resolve");
        }
    }
}
