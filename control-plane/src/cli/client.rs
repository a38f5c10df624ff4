//! The CLI's side of the control plane API: one request, with errors that say what to do, and
//! the answer read into the type the command expects ([`answer`]) or, refused, explained
//! ([`explain`]). Which credential it carries, and the flags every command that calls the API
//! takes, are `credentials`.

mod credentials;

pub use self::credentials::{
    connect, read_admin_token, ClientArgs, CredentialArgs, Credentials, DEFAULT_DATA_DIR,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub struct ApiClient {
    base: String,
    http: Client<HttpConnector, Full<Bytes>>,
    token: Option<String>,
    /// Why no credential is sent, said with a 401.
    no_credential: Option<String>,
    /// For an `https://` server: verifies the control plane (its chain to the mesh's trust
    /// anchors and its SPIFFE ID) and may present an admin client certificate.
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// What `weft --certificate-authority/--client-certificate/--client-key` name.
#[derive(Clone, Debug, Default)]
pub struct TlsFiles {
    pub certificate_authority: Option<PathBuf>,
    /// The trust domain the control plane's identity must be in.
    pub trust_domain: String,
    pub client_certificate: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

/// The default `--server`.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:15080";

impl ApiClient {
    pub fn new(base: &str) -> Self {
        Self {
            base: base.trim_end_matches('/').to_string(),
            http: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
            token: None,
            no_credential: None,
            tls: None,
        }
    }

    /// Sends `Authorization: Bearer TOKEN` with every request.
    pub fn with_token(mut self, token: String) -> Self {
        self.token = Some(token);
        self
    }

    /// TLS settings for an `https://` server.
    pub fn with_tls(mut self, files: &TlsFiles) -> Result<Self, String> {
        let read = |flag: &str, p: &Path| {
            std::fs::read(p).map_err(|e| format!("--{flag} {}: {e}", p.display()))
        };
        let Some(ca) = &files.certificate_authority else {
            if files.client_certificate.is_some() || self.base.starts_with("https://") {
                return Err("an https:// server needs --certificate-authority: the mesh's trust anchors (DATA_DIR/trust-anchors.pem, or the ca.crt `weft admin-cert` wrote)".into());
            }
            return Ok(self);
        };
        let anchors = String::from_utf8_lossy(&read("certificate-authority", ca)?).into_owned();
        let anchors = weft_runtime::tls::parse_anchors(&anchors)
            .map_err(|e| format!("--certificate-authority {}: {e}", ca.display()))?;
        let builder =
            weft_runtime::control_channel::verifying(Arc::new(anchors), &files.trust_domain)?;
        let mut config = match (&files.client_certificate, &files.client_key) {
            (Some(cert), Some(key)) => {
                let chain = rustls::pki_types::CertificateDer::pem_slice_iter(&read(
                    "client-certificate",
                    cert,
                )?)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("--client-certificate {}: {e}", cert.display()))?;
                let key_der =
                    rustls::pki_types::PrivateKeyDer::from_pem_slice(&read("client-key", key)?)
                        .map_err(|e| format!("--client-key {}: {e}", key.display()))?;
                builder
                    .with_client_auth_cert(chain, key_der)
                    .map_err(|e| format!("--client-certificate/--client-key: {e}"))?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => return Err("--client-certificate and --client-key go together".into()),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        self.tls = Some(Arc::new(config));
        Ok(self)
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
        let unreachable = |e: String| {
            format!(
                "cannot reach the weft control plane at {} ({e}); is `weft serve` running? Point --server or WEFT_SERVER at it",
                self.base,
            )
        };
        let rsp = match &self.tls {
            Some(tls) if self.base.starts_with("https://") => {
                send_tls(tls.clone(), req).await.map_err(unreachable)?
            }
            _ => self
                .http
                .request(req)
                .await
                .map_err(|e| unreachable(weft_runtime::error_chain(&e)))?,
        };
        let status = rsp.status().as_u16();
        let body = rsp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let body = String::from_utf8_lossy(&body).into_owned();
        if let (401, Some(why)) = (status, &self.no_credential) {
            let said = serde_json::from_str::<Refusal>(&body)
                .map_or_else(|_| body.trim().to_string(), |r| r.message);
            return Err(format!(
                "the control plane at {} wants a credential: {why}\n  (it answered 401: {said})",
                self.base
            ));
        }
        Ok((status, body))
    }
}

/// An answer's body as `T`; a body that is not one (a field missing, another type) is an
/// error that says so, never a silent default.
pub fn answer<T: serde::de::DeserializeOwned>(body: &str) -> Result<T, String> {
    serde_json::from_str(body).map_err(|e| {
        format!(
            "unexpected answer from the control plane ({e}): {}",
            body.trim()
        )
    })
}

/// The API's error document: `{"reason", "message", "problems"}` (`api::error_json`).
#[derive(serde::Deserialize)]
struct Refusal {
    message: String,
    #[serde(default)]
    problems: Vec<Problem>,
}

/// One problem of a refused write, with its place.
#[derive(serde::Deserialize)]
struct Problem {
    /// 1-based, within the request.
    document: usize,
    /// `Kind/namespace/name`, when known.
    resource: Option<String>,
    /// A dotted path; empty for the document as a whole.
    #[serde(default)]
    field: String,
    message: String,
}

/// An error answer (`status`, `body`) as lines: the API's message, then each problem with its
/// place; the body itself when it is not the API's error document.
pub fn explain(status: u16, body: &str) -> String {
    let Ok(refusal) = serde_json::from_str::<Refusal>(body) else {
        return format!("the control plane answered {status}: {}", body.trim());
    };
    let mut out = refusal.message;
    for p in refusal.problems {
        out.push_str(&format!("\n  document {}", p.document));
        if let Some(r) = p.resource {
            out.push_str(&format!(" ({r})"));
        }
        if p.field.is_empty() {
            out.push_str(": ");
        } else {
            out.push_str(&format!(": {}: ", p.field));
        }
        out.push_str(&p.message);
    }
    out
}

/// One HTTP/1.1 request over its own TLS connection (the CLI makes one or two per run).
async fn send_tls(
    config: Arc<rustls::ClientConfig>,
    req: http::Request<Full<Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, String> {
    let uri = req.uri().clone();
    let tls = weft_runtime::control_channel::connect_tls(&uri, config)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let (mut parts, body) = req.into_parts();
    if let Some(authority) = uri.authority() {
        if let Ok(v) = http::HeaderValue::from_str(authority.as_str()) {
            parts.headers.insert(http::header::HOST, v);
        }
    }
    parts.uri = uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .parse()
        .map_err(|e: http::uri::InvalidUri| e.to_string())?;
    sender
        .send_request(http::Request::from_parts(parts, body))
        .await
        .map_err(|e| weft_runtime::error_chain(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_reads_as_its_message_and_each_problem_in_place() {
        let body = r#"{"reason":"Invalid","message":"2 problems","problems":[
            {"document":1,"resource":"Service/shop/orders","field":"spec.ports","message":"required"},
            {"document":2,"resource":null,"field":"","message":"not YAML"}]}"#;
        assert_eq!(
            explain(422, body),
            "2 problems\n  document 1 (Service/shop/orders): spec.ports: required\n  document 2: not YAML"
        );
        assert_eq!(
            explain(502, "bad gateway\n"),
            "the control plane answered 502: bad gateway"
        );
    }
}
