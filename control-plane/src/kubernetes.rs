//! Kubernetes service-account tokens as proof of identity, checked with the cluster's
//! TokenReview API (`authentication.k8s.io/v1`) through the `kube` client.
//!
//! A proxy in a pod sends the projected service-account token the injector mounts for it
//! (audience [`TOKEN_AUDIENCE`]). The control plane asks the API server to review it for that
//! audience; an authenticated `system:serviceaccount:NS:SA` whose review names that audience in
//! `status.audiences` entitles the caller to `spiffe://TRUST_DOMAIN/ns/NS/sa/SA`, and nothing
//! else does. The API server is found the way kubectl finds it: `--kubeconfig`, else the
//! in-cluster service account, else `$KUBECONFIG` or `~/.kube/config`. The client is made on
//! first use and kept.

use std::path::PathBuf;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use tokio::sync::Mutex;

use crate::tokens::Workload;

/// The audience weft's projected tokens carry; a token for any other audience is refused.
pub const TOKEN_AUDIENCE: &str = "weft";

#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// The token does not prove a service account (expired, wrong audience, forged, ...).
    #[error("the Kubernetes API did not authenticate this token: {0}")]
    Unauthenticated(String),
    /// The API server could not be asked.
    #[error("cannot review the token with the Kubernetes API: {0}")]
    Unavailable(String),
}

pub struct TokenReviewer {
    kubeconfig: Option<PathBuf>,
    client: Mutex<Option<kube::Client>>,
}

impl TokenReviewer {
    pub fn new(kubeconfig: Option<PathBuf>) -> Self {
        Self {
            kubeconfig,
            client: Mutex::new(None),
        }
    }

    async fn client(&self) -> Result<kube::Client, ReviewError> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let unavailable = |e: &dyn std::fmt::Display| ReviewError::Unavailable(e.to_string());
        let config = match &self.kubeconfig {
            Some(path) => {
                let kubeconfig = kube::config::Kubeconfig::read_from(path)
                    .map_err(|e| unavailable(&format!("--kubeconfig {}: {e}", path.display())))?;
                kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                    .await
                    .map_err(|e| unavailable(&format!("--kubeconfig {}: {e}", path.display())))?
            }
            None => kube::Config::infer().await.map_err(|e| {
                unavailable(&format!(
                    "no Kubernetes API configured (not in a cluster, no --kubeconfig): {e}"
                ))
            })?,
        };
        let client = kube::Client::try_from(config).map_err(|e| unavailable(&e))?;
        *slot = Some(client.clone());
        Ok(client)
    }

    /// The workload a service-account token proves.
    pub async fn review(&self, token: &str) -> Result<Workload, ReviewError> {
        let api: Api<TokenReview> = Api::all(self.client().await?);
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: Some(vec![TOKEN_AUDIENCE.to_string()]),
            },
            ..Default::default()
        };
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| ReviewError::Unavailable(e.to_string()))?;
        workload_of(&answer)
    }
}

/// Reads the API server's verdict.
fn workload_of(review: &TokenReview) -> Result<Workload, ReviewError> {
    let refused = |why: String| Err(ReviewError::Unauthenticated(why));
    let Some(status) = &review.status else {
        return refused("the TokenReview came back without a status".into());
    };
    if status.authenticated != Some(true) {
        return refused(
            status
                .error
                .clone()
                .unwrap_or_else(|| "not authenticated".into()),
        );
    }
    // An answer without audiences may come from an API server (or authenticator webhook) that
    // ignored the audiences asked for: the token could be one minted for any other audience.
    let audiences = status.audiences.as_deref().unwrap_or_default();
    if !audiences.iter().any(|a| a == TOKEN_AUDIENCE) {
        return refused(format!(
            "the token is for {audiences:?}, not {TOKEN_AUDIENCE:?} (the review must name it in status.audiences)"
        ));
    }
    let username = status
        .user
        .as_ref()
        .and_then(|u| u.username.as_deref())
        .unwrap_or_default();
    match username
        .strip_prefix("system:serviceaccount:")
        .map(|r| r.split(':'))
    {
        Some(mut parts) => match (parts.next(), parts.next(), parts.next()) {
            (Some(ns), Some(sa), None) => format!("{ns}/{sa}")
                .parse()
                .map_err(|e| ReviewError::Unauthenticated(format!("{username}: {e}"))),
            _ => refused(format!("{username:?} is not a service account")),
        },
        None => refused(format!(
            "{username:?} is not a service account; only service-account tokens are accepted"
        )),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn review(audiences: Option<&[&str]>) -> TokenReview {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {},
            "status": {
                "authenticated": true,
                "user": {"username": "system:serviceaccount:shop:orders"},
                "audiences": audiences,
            },
        }))
        .unwrap()
    }

    #[test]
    fn the_answer_must_name_weft_among_its_audiences() {
        let ok = workload_of(&review(Some(&["other", TOKEN_AUDIENCE]))).unwrap();
        assert_eq!(ok.to_string(), "shop/orders");
        for audiences in [None, Some(&[][..]), Some(&["kubernetes"][..])] {
            let err = workload_of(&review(audiences)).unwrap_err();
            assert!(
                matches!(&err, ReviewError::Unauthenticated(m) if m.contains("\"weft\"")),
                "{audiences:?}: {err}"
            );
        }
    }
}
