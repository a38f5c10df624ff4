//! `weft get`: the resources in force and the connected proxies, as a table, YAML or JSON.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::client::ApiClient;
use crate::resources;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Yaml,
    Json,
}

/// What `weft get KIND [NAME]` prints, or the message to print instead.
pub async fn get(
    api: &ApiClient,
    kind: &str,
    name: Option<&str>,
    namespace: Option<&str>,
    output: Option<Output>,
) -> Result<String, String> {
    let is_proxies = matches!(kind.to_ascii_lowercase().as_str(), "proxies" | "proxy");
    let is_audit = kind.eq_ignore_ascii_case("audit");
    let path = if is_proxies {
        "/api/v1/proxies".to_string()
    } else if is_audit {
        // `weft get audit [N]`: the last N writes (default 20).
        let limit = name.map_or(Ok(20), str::parse::<usize>).map_err(|_| {
            format!(
                "weft get audit [N]: {:?} is not a number of entries",
                name.unwrap_or("")
            )
        })?;
        format!("/api/v1/audit?limit={limit}")
    } else {
        let Some(kind) = resources::kind_named(kind) else {
            return Err(format!(
                "unknown kind {kind:?}; known kinds: proxies, audit, {} (singular or plural, any case)",
                resources::known_kinds()
            ));
        };
        match (name, namespace) {
            (Some(name), ns) => format!("/api/v1/{kind}/{}/{name}", ns.unwrap_or("default")),
            (None, Some(ns)) => format!("/api/v1/{kind}?namespace={ns}"),
            (None, None) => format!("/api/v1/{kind}"),
        }
    };
    let (status, body) = api.request(http::Method::GET, &path, None).await?;
    if status != 200 {
        return Err(format!(
            "the control plane answered {status}: {}",
            body.trim()
        ));
    }
    let doc: Value =
        serde_json::from_str(&body).map_err(|e| format!("unexpected answer ({e}): {body}"))?;
    let mut doc = if is_proxies {
        if let Some(name) = name {
            // Proxies by identity, service or id.
            let items = doc["items"].as_array().cloned().unwrap_or_default();
            let items: Vec<Value> = items
                .into_iter()
                .filter(|p| {
                    ["id", "identity", "service"]
                        .iter()
                        .any(|f| p[f].as_str() == Some(name))
                })
                .collect();
            serde_json::json!({ "items": items })
        } else {
            doc
        }
    } else {
        doc
    };
    if let Some(obj) = doc.as_object_mut().filter(|o| o.contains_key("items")) {
        // A list's own `kind` is the API's; each item keeps its kind.
        obj.remove("kind");
    }
    match output {
        Some(Output::Json) => serde_json::to_string_pretty(&doc).map_err(|e| e.to_string()),
        Some(Output::Yaml) => serde_saphyr::to_string(&doc).map_err(|e| e.to_string()),
        None => {
            let items = match doc.get("items").and_then(Value::as_array) {
                Some(items) => items.clone(),
                None => vec![doc],
            };
            Ok(if is_proxies {
                proxies_table(&items)
            } else if is_audit {
                audit_table(&items)
            } else {
                resources_table(&items)
            })
        }
    }
}

fn proxies_table(items: &[Value]) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let rows = items
        .iter()
        .map(|p| {
            let s = |f: &str| p[f].as_str().unwrap_or("-").to_string();
            let expires = p["certificate"]["expiresAt"]
                .as_i64()
                .map_or("-".to_string(), |at| remaining(at - now));
            vec![
                format!("{}.{}", s("service"), s("namespace")),
                s("identity"),
                s("address"),
                s("ackedVersion"),
                s("lastNack"),
                expires,
            ]
        })
        .collect();
    table(
        &[
            "SERVICE",
            "IDENTITY",
            "ADDRESS",
            "ACKED VERSION",
            "LAST NACK",
            "CERT EXPIRES IN",
        ],
        rows,
    )
}

fn audit_table(items: &[Value]) -> String {
    let rows = items
        .iter()
        .map(|e| {
            let s = |f: &str| e[f].as_str().unwrap_or("-").to_string();
            let changed: Vec<&str> = e["changed"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            // Whole seconds are enough to read.
            let time = s("time");
            let time = time
                .split('.')
                .next()
                .unwrap_or(&time)
                .trim_end_matches('Z');
            vec![
                format!("{time}Z"),
                s("who"),
                s("action"),
                s("resource"),
                s("resourceVersion"),
                changed.join(", "),
            ]
        })
        .collect();
    table(
        &["TIME", "WHO", "ACTION", "RESOURCE", "VERSION", "CHANGED"],
        rows,
    )
}

/// `2h5m`, `45s`, or `expired`.
/// A time left (`secs` from now) as `weft get` tables show it: `23h59m`, `4m10s`, `expired`.
pub fn remaining(secs: i64) -> String {
    if secs <= 0 {
        return "expired".into();
    }
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, m) => format!("{m}m{s}s"),
        (h, m) => format!("{h}h{m}m"),
    }
}

fn resources_table(items: &[Value]) -> String {
    let rows = items
        .iter()
        .map(|r| {
            let meta = &r["metadata"];
            let spec = &r["spec"];
            let name = |v: &Value| v.as_str().unwrap_or("-").to_string();
            let summary = match r["kind"].as_str().unwrap_or("") {
                "Service" => {
                    let ports: Vec<String> = spec["ports"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|p| {
                            format!("{}/{}", p["port"], p["protocol"].as_str().unwrap_or("HTTP"))
                        })
                        .collect();
                    let endpoints = spec["endpoints"].as_array().map_or(0, Vec::len);
                    format!("ports {}; endpoints: {endpoints}", ports.join(","))
                }
                "HTTPRoute" => {
                    let parents: Vec<String> = spec["parentRefs"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|p| name(&p["name"]))
                        .collect();
                    let rules = spec["rules"].as_array().map_or(0, Vec::len);
                    format!("parents {}; rules: {rules}", parents.join(","))
                }
                "TrafficPolicy" | "AuthorizationPolicy" => {
                    // Each part the policy sets, with its value when it is one word
                    // (`loadBalancer round-robin`), its count when a list (`rules 2`).
                    let parts: Vec<String> = spec
                        .as_object()
                        .into_iter()
                        .flatten()
                        .filter(|(k, _)| *k != "targetRef")
                        .map(|(k, v)| match v {
                            Value::String(s) => format!("{k} {s}"),
                            Value::Number(n) => format!("{k} {n}"),
                            Value::Bool(b) => format!("{k} {b}"),
                            Value::Array(a) => format!("{k} {}", a.len()),
                            _ => k.clone(),
                        })
                        .collect();
                    format!(
                        "target {}: {}",
                        name(&spec["targetRef"]["name"]),
                        parts.join(", ")
                    )
                }
                "MeshConfig" => format!(
                    "mtls {}, trust domain {}",
                    spec["mtls"].as_str().unwrap_or("strict"),
                    spec["trustDomain"].as_str().unwrap_or("(--trust-domain)")
                ),
                _ => String::new(),
            };
            // Resources applied through the API carry a version; those from files do not.
            let source = match meta["resourceVersion"].as_str() {
                Some(v) => format!("api (v{v})"),
                None => "file".to_string(),
            };
            vec![
                name(&r["kind"]),
                name(&meta["namespace"]),
                name(&meta["name"]),
                source,
                summary,
            ]
        })
        .collect();
    table(&["KIND", "NAMESPACE", "NAME", "SOURCE", "SUMMARY"], rows)
}

/// Left-aligned columns, two spaces apart.
fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.trim_end().to_string()
    };
    let mut out = line(header.iter().map(ToString::to_string).collect());
    out.push('\n');
    for row in rows {
        out.push_str(&line(row));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_durations_read() {
        let t = table(
            &["A", "BB"],
            vec![
                vec!["long-value".into(), "x".into()],
                vec!["y".into(), "z".into()],
            ],
        );
        assert_eq!(t, "A           BB\nlong-value  x\ny           z\n");
        assert_eq!(remaining(7500), "2h5m");
        assert_eq!(remaining(45), "45s");
        assert_eq!(remaining(-1), "expired");
    }

    #[test]
    fn a_policy_summary_shows_what_it_sets_with_its_values() {
        let items = vec![serde_json::json!({
            "kind": "TrafficPolicy",
            "metadata": {"namespace": "shop", "name": "orders"},
            "spec": {
                "targetRef": {"kind": "Service", "name": "orders"},
                "loadBalancer": "round-robin",
                "retries": {"attempts": 3},
            }
        })];
        let t = resources_table(&items);
        assert!(
            t.contains("target orders: loadBalancer round-robin, retries"),
            "{t}"
        );
    }
}
