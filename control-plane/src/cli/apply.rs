//! `weft apply` and `weft delete`: writes through the API, with answers a person can act on.

use bytes::Bytes;
use serde_json::Value;

use super::client::ApiClient;
use crate::resources;

/// Applies every document of `text` (YAML or JSON), all or nothing. Returns the lines to print
/// (`httproute/shop/orders configured`), or every problem. A dry run checks everything and
/// says what would happen, storing nothing.
pub async fn apply(api: &ApiClient, text: String, dry_run: bool) -> Result<String, String> {
    let path = if dry_run {
        "/api/v1/apply?dryRun=true"
    } else {
        "/api/v1/apply"
    };
    let (status, body) = api
        .send(
            http::Method::POST,
            path,
            Bytes::from(text),
            "application/yaml",
        )
        .await?;
    let doc: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    if status != 200 {
        return Err(explain(status, &doc, &body));
    }
    let mut out = String::new();
    for r in doc["results"].as_array().into_iter().flatten() {
        let s = |f: &str| r[f].as_str().unwrap_or("?").to_string();
        out.push_str(&format!(
            "{}/{}/{} {}{}\n",
            s("kind").to_ascii_lowercase(),
            s("namespace"),
            s("name"),
            s("action"),
            if dry_run { " (dry run)" } else { "" }
        ));
    }
    Ok(out)
}

/// Deletes one resource.
pub async fn delete(
    api: &ApiClient,
    kind: &str,
    name: &str,
    namespace: Option<&str>,
) -> Result<String, String> {
    let Some(kind) = resources::kind_named(kind) else {
        return Err(format!(
            "unknown kind {kind:?}; known kinds: {} (singular or plural, any case)",
            resources::known_kinds()
        ));
    };
    let ns = namespace.unwrap_or("default");
    let (status, body) = api
        .request(
            http::Method::DELETE,
            &format!("/api/v1/{kind}/{ns}/{name}"),
            None,
        )
        .await?;
    let doc: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    if status != 200 {
        return Err(explain(status, &doc, &body));
    }
    Ok(format!(
        "{}/{ns}/{name} deleted\n",
        kind.to_ascii_lowercase()
    ))
}

/// An error answer as lines: the message, then each problem with its place.
fn explain(status: u16, doc: &Value, body: &str) -> String {
    let Some(message) = doc["message"].as_str() else {
        return format!("the control plane answered {status}: {}", body.trim());
    };
    let mut out = message.to_string();
    for p in doc["problems"].as_array().into_iter().flatten() {
        out.push_str(&format!("\n  document {}", p["document"]));
        if let Some(r) = p["resource"].as_str() {
            out.push_str(&format!(" ({r})"));
        }
        match p["field"].as_str().filter(|f| !f.is_empty()) {
            Some(f) => out.push_str(&format!(": {f}: ")),
            None => out.push_str(": "),
        }
        out.push_str(p["message"].as_str().unwrap_or(""));
    }
    out
}
