//! The CLI's side of the control plane API: one request, with errors that say what to do.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

pub struct ApiClient {
    base: String,
    http: Client<HttpConnector, Full<Bytes>>,
    token: Option<String>,
}

/// The default `--server`.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:15080";

impl ApiClient {
    pub fn new(base: &str) -> Self {
        Self {
            base: base.trim_end_matches('/').to_string(),
            http: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
            token: None,
        }
    }

    /// Sends `Authorization: Bearer TOKEN` with every request, the token read from `file` (its
    /// first line that is not a comment; `TOKEN[,USER]` as in `weft serve --api-token-file`).
    pub fn with_token_file(mut self, file: Option<&std::path::Path>) -> Result<Self, String> {
        if let Some(file) = file {
            let text = std::fs::read_to_string(file)
                .map_err(|e| format!("--token-file {}: {e}", file.display()))?;
            let token = text
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty() && !l.starts_with('#'))
                .map(|l| l.split(',').next().unwrap_or(l).trim().to_string())
                .ok_or_else(|| format!("--token-file {}: holds no token", file.display()))?;
            self.token = Some(token);
        }
        Ok(self)
    }

    /// Sends one request; returns the status and body, or a message for the user.
    pub async fn request(
        &self,
        method: http::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(u16, String), String> {
        match body {
            Some(v) => {
                self.send(method, path, Bytes::from(v.to_string()), "application/json")
                    .await
            }
            None => self.send(method, path, Bytes::new(), "").await,
        }
    }

    /// Sends one request with a body of this content type (none when empty).
    pub async fn send(
        &self,
        method: http::Method,
        path: &str,
        bytes: Bytes,
        content_type: &str,
    ) -> Result<(u16, String), String> {
        let url = format!("{}{path}", self.base);
        let mut req = http::Request::builder().method(method).uri(&url);
        if !content_type.is_empty() {
            req = req.header(http::header::CONTENT_TYPE, content_type);
        }
        if let Some(t) = &self.token {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
        }
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
