//! The CLI's side of the control plane API: one request, with errors that say what to do.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

pub struct ApiClient {
    base: String,
    http: Client<HttpConnector, Full<Bytes>>,
}

/// The default `--server`.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:15080";

impl ApiClient {
    pub fn new(base: &str) -> Self {
        Self {
            base: base.trim_end_matches('/').to_string(),
            http: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
        }
    }

    /// Sends one request; returns the status and body, or a message for the user.
    pub async fn request(
        &self,
        method: http::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(u16, String), String> {
        let url = format!("{}{path}", self.base);
        let mut req = http::Request::builder().method(method).uri(&url);
        let bytes = match body {
            Some(v) => {
                req = req.header(http::header::CONTENT_TYPE, "application/json");
                Bytes::from(v.to_string())
            }
            None => Bytes::new(),
        };
        let req = req
            .body(Full::new(bytes))
            .map_err(|e| format!("--server {}: {e}", self.base))?;
        let rsp = self.http.request(req).await.map_err(|e| {
            format!(
                "cannot reach the weft control plane at {} ({}); is `weft serve` running? Point --server or WEFT_SERVER at it",
                self.base,
                weft_proxy::transport::error_chain(&e)
            )
        })?;
        let status = rsp.status().as_u16();
        let body = rsp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}
