//! `/api/v1/tokens`: join tokens, the proofs of identity for proxies outside Kubernetes
//! (docs/identity.md). Admin callers only (the router checks): a token grants an identity.

use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use weft_runtime::body::Body;

use super::auth::Caller;
use super::{json, read_json, text, Api, RequestBody};
use crate::tokens::{Record, Workload};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateToken {
    workload: String,
    #[serde(default)]
    ttl: Option<String>,
}

fn ser_time(unix: u64) -> String {
    weft_runtime::timestamp::rfc3339_seconds(i64::try_from(unix).unwrap_or(i64::MAX))
}

/// A token as the API shows it: never its secret or the secret's hash.
fn token_view(r: &Record) -> serde_json::Value {
    serde_json::json!({
        "id": r.id,
        "workload": r.workload.to_string(),
        "createdAt": ser_time(r.created_at),
        "expiresAt": ser_time(r.expires_at),
        "revoked": r.revoked,
    })
}

impl Api {
    /// `POST /api/v1/tokens`, `GET /api/v1/tokens`, `DELETE /api/v1/tokens/{id}`.
    pub(super) async fn tokens_api<B: RequestBody>(
        &self,
        caller: &Caller,
        req: Request<B>,
    ) -> Response<Body> {
        let path = req.uri().path().to_string();
        match (req.method().clone(), path.trim_end_matches('/')) {
            (Method::GET, "/api/v1/tokens") => {
                let items: Vec<_> = self.tokens.list().iter().map(token_view).collect();
                json(&serde_json::json!({ "items": items }))
            }
            (Method::POST, "/api/v1/tokens") => {
                let create: CreateToken = match read_json(req).await {
                    Ok(c) => c,
                    Err(rsp) => return rsp,
                };
                let workload: Workload = match create.workload.parse() {
                    Ok(Workload { namespace, .. }) if namespace == crate::ca::SYSTEM_NAMESPACE => {
                        return text(
                            StatusCode::UNPROCESSABLE_ENTITY,
                            &format!(
                                "workload: namespace {namespace} is reserved for the control plane"
                            ),
                        )
                    }
                    Ok(w) => w,
                    Err(e) => {
                        return text(StatusCode::UNPROCESSABLE_ENTITY, &format!("workload: {e}"))
                    }
                };
                let ttl = match create
                    .ttl
                    .as_deref()
                    .map(weft_runtime::duration::parse_duration)
                {
                    None => Duration::from_secs(24 * 3600),
                    Some(Ok(d)) if d >= Duration::from_secs(1) => d,
                    Some(Ok(_)) => {
                        return text(StatusCode::UNPROCESSABLE_ENTITY, "ttl: must be at least 1s")
                    }
                    Some(Err(e)) => {
                        return text(StatusCode::UNPROCESSABLE_ENTITY, &format!("ttl: {e}"))
                    }
                };
                match self.tokens.create(workload, ttl) {
                    Ok((record, token)) => {
                        tracing::info!(id = %record.id, workload = %record.workload, by = %caller.who, "join token created");
                        let mut view = token_view(&record);
                        view["token"] = serde_json::Value::String(token);
                        let mut rsp = json(&view);
                        *rsp.status_mut() = StatusCode::CREATED;
                        rsp
                    }
                    Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
                }
            }
            (Method::DELETE, p) if p.starts_with("/api/v1/tokens/") => {
                let id = &p["/api/v1/tokens/".len()..];
                match self.tokens.revoke(id) {
                    Ok(true) => {
                        tracing::info!(%id, by = %caller.who, "join token revoked");
                        json(&serde_json::json!({ "revoked": id }))
                    }
                    Ok(false) => text(StatusCode::NOT_FOUND, &format!("no join token {id}")),
                    Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
                }
            }
            _ => text(
                StatusCode::METHOD_NOT_ALLOWED,
                "use GET or POST /api/v1/tokens, DELETE /api/v1/tokens/ID",
            ),
        }
    }
}
