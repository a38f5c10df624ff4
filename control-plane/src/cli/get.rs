//! `weft get`: the resources in force, the connected proxies and the audit log, as a table
//! (laid out by `table`), YAML or JSON.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::client::{ApiClient, ClientArgs};
use super::table::{remaining, table};
use super::Error;
use crate::resources;

const SAID_BY: &str = "weft get";

#[derive(clap::Args)]
pub struct Args {
    /// A kind (Service, HTTPRoute, TrafficPolicy, AuthorizationPolicy, MeshConfig; singular or
    /// plural, any case), `proxies` or `audit`.
    kind: String,
    /// One resource's name (a proxy: its identity, service or id).
    name: Option<String>,
    /// The namespace [default: all for a list, `default` for a name].
    #[arg(short = 'n', long)]
    namespace: Option<String>,
    /// Print YAML or JSON instead of a table.
    #[arg(short = 'o', long, value_enum)]
    output: Option<Output>,
    #[command(flatten)]
    pub client: ClientArgs,
}

impl Args {
    pub async fn run(self, data_dir: Option<std::path::PathBuf>) -> Result<(), Error> {
        let api = self
            .client
            .connect(data_dir)
            .map_err(|e| Error::usage(SAID_BY, e))?;
        let out = get(
            &api,
            &self.kind,
            self.name.as_deref(),
            self.namespace.as_deref(),
            self.output,
        )
        .await
        // An unknown kind too exits 1, as the API's answer for one would.
        .map_err(|e| Error::failed(SAID_BY, e))?;
        print!("{out}");
        if !out.ends_with('\n') {
            println!();
        }
        Ok(())
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

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
