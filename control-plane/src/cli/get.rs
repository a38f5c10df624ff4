//! `weft get`: the resources in force, the connected proxies and the audit log, as a table
//! (laid out by `table`), YAML or JSON.

use std::time::SystemTime;

use serde::Deserialize;
use serde_json::Value;

use super::client::{self, ApiClient, ClientArgs};
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
    let doc: Value = client::answer(&body)?;
    warn_refused_files(api).await;
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
            if is_proxies {
                Ok(proxies_table(&rows(items)?))
            } else if is_audit {
                Ok(audit_table(&rows(items)?))
            } else {
                Ok(resources_table(&items))
            }
        }
    }
}

/// A list's items as the rows of a table; an item missing a field the table shows is an error.
fn rows<T: serde::de::DeserializeOwned>(items: Vec<Value>) -> Result<Vec<T>, String> {
    items
        .into_iter()
        .map(serde_json::from_value)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("unexpected answer from the control plane: {e}"))
}

/// A connected proxy, as `GET /api/v1/proxies` lists it (`discovery::ProxyStatus`).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Proxy {
    service: String,
    namespace: String,
    identity: String,
    address: String,
    acked_version: Option<String>,
    last_nack: Option<String>,
    certificate: Option<Certificate>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Certificate {
    /// RFC 3339 in the API, read as Unix seconds.
    #[serde(deserialize_with = "weft_runtime::timestamp::de_unix")]
    expires_at: i64,
}

/// One write, as `GET /api/v1/audit` lists it (`store::AuditEntry`).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AuditEntry {
    /// RFC 3339, UTC.
    time: String,
    who: String,
    action: String,
    resource: String,
    resource_version: String,
    changed: Vec<String>,
}

fn proxies_table(proxies: &[Proxy]) -> String {
    let now = weft_runtime::timestamp::unix_seconds(SystemTime::now());
    let or_dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_string());
    let rows = proxies
        .iter()
        .map(|p| {
            let expires = p
                .certificate
                .as_ref()
                .map_or("-".to_string(), |c| remaining(c.expires_at - now));
            vec![
                format!("{}.{}", p.service, p.namespace),
                p.identity.clone(),
                p.address.clone(),
                or_dash(&p.acked_version),
                or_dash(&p.last_nack),
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

fn audit_table(entries: &[AuditEntry]) -> String {
    let rows = entries
        .iter()
        .map(|e| {
            // Whole seconds are enough to read.
            let time = e
                .time
                .split('.')
                .next()
                .unwrap_or(&e.time)
                .trim_end_matches('Z');
            vec![
                format!("{time}Z"),
                e.who.clone(),
                e.action.clone(),
                e.resource.clone(),
                e.resource_version.clone(),
                e.changed.join(", "),
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

/// Says on stderr which `--config` files the control plane refuses now, with their problems:
/// what `weft get` shows is the last config it accepted, not what those files say.
async fn warn_refused_files(api: &ApiClient) {
    let Ok((200, body)) = api.request(http::Method::GET, "/admin/config", None).await else {
        return;
    };
    let config: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let refused = config["refusedFiles"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if refused.is_empty() {
        return;
    }
    eprintln!(
        "warning: the control plane refuses {} config file{}; the config in force is the last one accepted:",
        refused.len(),
        if refused.len() == 1 { "" } else { "s" }
    );
    for f in &refused {
        eprintln!("  {}:", f["file"].as_str().unwrap_or("?"));
        for p in f["problems"].as_array().into_iter().flatten() {
            eprintln!("    {}", p.as_str().unwrap_or("?"));
        }
    }
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

    #[test]
    fn proxy_and_audit_rows_read_the_api_answer_and_a_missing_field_is_an_error() {
        let proxy = serde_json::json!({
            "id": "7", "identity": "spiffe://weft.local/ns/shop/sa/orders", "service": "orders",
            "namespace": "shop", "address": "127.0.0.1:1", "ackedVersion": "3", "lastNack": null,
            "certificate": null,
        });
        let t = proxies_table(&rows(vec![proxy]).unwrap());
        let cells: Vec<&str> = t.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(
            cells,
            [
                "orders.shop",
                "spiffe://weft.local/ns/shop/sa/orders",
                "127.0.0.1:1",
                "3",
                "-",
                "-"
            ],
            "{t}"
        );
        let e = rows::<Proxy>(vec![serde_json::json!({"service": "orders"})])
            .err()
            .unwrap_or_default();
        assert!(e.contains("missing field"), "{e}");
        let entry = serde_json::json!({
            "seq": 1, "time": "2026-01-02T03:04:05.678Z", "who": "loopback", "action": "created",
            "resource": "Service/shop/orders", "resourceVersion": "1", "changed": ["spec"],
        });
        let t = audit_table(&rows(vec![entry]).unwrap());
        assert!(t.contains("2026-01-02T03:04:05Z  loopback  created"), "{t}");
    }
}
