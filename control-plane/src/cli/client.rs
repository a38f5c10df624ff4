//! The CLI's side of the control plane API: the arguments every command that calls it takes
//! ([`ClientArgs`]: `--server` and the credentials), one request with errors that say what to
//! do, and the credential it carries ([`connect`]): `--token-file`, an admin certificate, or,
//! for a control plane on this host's loopback, the admin token found in its data dir.

use bytes::Bytes;
use clap::parser::ValueSource;
use clap::ArgMatches;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How a command reaches the API: declared once, flattened into every command that calls it.
#[derive(clap::Args, Clone, Debug)]
pub struct ClientArgs {
    /// The control plane's API.
    #[arg(long, env = "WEFT_SERVER", default_value = DEFAULT_SERVER, global = true)]
    pub server: String,
    #[command(flatten)]
    pub credentials: CredentialArgs,
}

/// What the CLI may authenticate with. Accepted before a command's name (`weft --token-file
/// FILE get services`, the root's own flags) and after it (each API command's, global there so
/// that `weft token create --token-file FILE` works too).
#[derive(clap::Args, Clone, Debug)]
pub struct CredentialArgs {
    /// A file holding an API bearer token (`TOKEN[,USER]`, as in `weft serve
    /// --api-token-file`), sent instead of the admin token.
    #[arg(long, env = "WEFT_TOKEN_FILE", global = true, display_order = CREDENTIALS_ORDER)]
    pub token_file: Option<PathBuf>,
    /// For an https:// --server: the mesh's trust anchors, to verify the control plane.
    #[arg(long, env = "WEFT_CERTIFICATE_AUTHORITY", global = true, display_order = CREDENTIALS_ORDER + 1)]
    pub certificate_authority: Option<PathBuf>,
    /// For an https:// --server: the mesh's trust domain; the server must present
    /// spiffe://THIS/ns/weft-system/sa/weft-control-plane.
    #[arg(
        long,
        env = "WEFT_SERVER_TRUST_DOMAIN",
        global = true,
        default_value = "weft.local",
        display_order = CREDENTIALS_ORDER + 2
    )]
    pub server_trust_domain: String,
    /// An admin client certificate (from `weft admin-cert`) for an https:// --server.
    #[arg(
        long,
        env = "WEFT_CLIENT_CERTIFICATE",
        global = true,
        requires = "client_key",
        display_order = CREDENTIALS_ORDER + 3
    )]
    pub client_certificate: Option<PathBuf>,
    /// The key of --client-certificate.
    #[arg(
        long,
        env = "WEFT_CLIENT_KEY",
        global = true,
        requires = "client_certificate",
        display_order = CREDENTIALS_ORDER + 4
    )]
    pub client_key: Option<PathBuf>,
}

/// Where help lists the credentials: after `--data-dir`, as when they were the root's global
/// flags (a command's own flags come first, then the root's).
const CREDENTIALS_ORDER: usize = 100;

impl CredentialArgs {
    /// The clap ids of these flags.
    pub const IDS: [&'static str; 5] = [
        "token_file",
        "certificate_authority",
        "server_trust_domain",
        "client_certificate",
        "client_key",
    ];

    /// Takes each flag given on the command line before the command's name (in `top`) unless it
    /// was given after it too (in `command`): the nearer wins, and either over the environment
    /// and the defaults, which both copies read alike.
    pub fn prefer_given(&mut self, before: &Self, top: &ArgMatches, command: &ArgMatches) {
        let given = |m: &ArgMatches, id: &str| m.value_source(id) == Some(ValueSource::CommandLine);
        let take = |id: &str| given(top, id) && !given(command, id);
        if take("token_file") {
            self.token_file.clone_from(&before.token_file);
        }
        if take("certificate_authority") {
            self.certificate_authority
                .clone_from(&before.certificate_authority);
        }
        if take("server_trust_domain") {
            self.server_trust_domain
                .clone_from(&before.server_trust_domain);
        }
        if take("client_certificate") {
            self.client_certificate
                .clone_from(&before.client_certificate);
        }
        if take("client_key") {
            self.client_key.clone_from(&before.client_key);
        }
    }
}

impl ClientArgs {
    /// The API client for `--server` with these credentials (`data_dir`: where to look for
    /// the admin token); an error names the flag that is wrong.
    pub fn connect(&self, data_dir: Option<PathBuf>) -> Result<ApiClient, String> {
        let c = &self.credentials;
        let creds = Credentials {
            token_file: c.token_file.clone(),
            tls: TlsFiles {
                certificate_authority: c.certificate_authority.clone(),
                trust_domain: c.server_trust_domain.clone(),
                client_certificate: c.client_certificate.clone(),
                client_key: c.client_key.clone(),
            },
            data_dir,
        };
        connect(&self.server, &creds)
    }
}

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
        let anchors = weft_proxy::tls::parse_anchors(&anchors)
            .map_err(|e| format!("--certificate-authority {}: {e}", ca.display()))?;
        let builder = weft_proxy::control::verifying(Arc::new(anchors), &files.trust_domain)?;
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
                .map_err(|e| unreachable(weft_proxy::transport::error_chain(&e)))?,
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

/// What the CLI may authenticate with: `--token-file`, `--certificate-authority` and the client
/// certificate, `--data-dir` (where `weft serve` keeps the admin token).
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    pub token_file: Option<PathBuf>,
    pub tls: TlsFiles,
    /// `--data-dir` / `WEFT_DATA_DIR`; `./weft-data` (`weft serve`'s default) when not given.
    pub data_dir: Option<PathBuf>,
}

/// `weft serve`'s default `--data-dir`.
pub const DEFAULT_DATA_DIR: &str = "./weft-data";

/// The client for `server` with the credential the user gave, else, for a control plane on
/// this host's loopback, the admin token from the data dir. The admin token is never sent to
/// any other server.
pub fn connect(server: &str, creds: &Credentials) -> Result<ApiClient, String> {
    let api = ApiClient::new(server)
        .with_token_file(creds.token_file.as_deref())?
        .with_tls(&creds.tls)?;
    if creds.token_file.is_some() || creds.tls.client_certificate.is_some() {
        return Ok(api);
    }
    if !is_loopback(server) {
        return Ok(ApiClient {
            no_credential: Some("a control plane off this host takes --token-file FILE (a token of its --api-token-file) or an admin certificate (--certificate-authority, --client-certificate, --client-key; made with `weft admin-cert` on its host)".into()),
            ..api
        });
    }
    let dir = creds
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    match read_admin_token(&dir) {
        Ok(token) => Ok(api.with_token(token)),
        Err(why) => Ok(ApiClient {
            no_credential: Some(format!("{why}; run weft where `weft serve` keeps its data dir (as the user that runs it), or pass --data-dir DIR or WEFT_DATA_DIR, or --token-file FILE")),
            ..api
        }),
    }
}

/// The admin token in `data_dir`, or why it cannot be read.
pub fn read_admin_token(data_dir: &Path) -> Result<String, String> {
    let path = data_dir.join(crate::api::ADMIN_TOKEN_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!("no admin token at {}", path.display()),
        _ => format!("cannot read the admin token {}: {e}", path.display()),
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(token.to_string())
}

/// Whether `url`'s host is this host's loopback: `localhost`, `127.0.0.0/8`, `[::1]`.
pub fn is_loopback(url: &str) -> bool {
    let Some(host) = url
        .parse::<http::Uri>()
        .ok()
        .and_then(|u| u.host().map(str::to_string))
    else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
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
    let tls = weft_proxy::control::connect_tls(&uri, config)
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
        .map_err(|e| weft_proxy::transport::error_chain(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_servers() {
        for url in [
            "http://127.0.0.1:15080",
            "http://127.1.2.3:1",
            "http://localhost:15080",
            "https://[::1]:15080",
            "http://LOCALHOST",
        ] {
            assert!(is_loopback(url), "{url}");
        }
        for url in [
            "http://10.0.0.1:15080",
            "http://cp.example:15080",
            "http://localhost.evil.example",
            "http://127.0.0.1.nip.io",
            "not a url",
        ] {
            assert!(!is_loopback(url), "{url}");
        }
    }

    #[test]
    fn the_admin_token_goes_to_a_loopback_server_only() {
        let dir = std::env::temp_dir().join(format!("weft-client-{:x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(crate::api::ADMIN_TOKEN_FILE), "weft-admin.x\n").unwrap();
        let creds = Credentials {
            data_dir: Some(dir.clone()),
            ..Credentials::default()
        };
        let local = connect("http://127.0.0.1:15080", &creds).unwrap();
        assert_eq!(local.token.as_deref(), Some("weft-admin.x"));
        for remote in ["http://10.0.0.1:15080", "http://cp.example:15080"] {
            let api = connect(remote, &creds).unwrap();
            assert!(api.token.is_none(), "{remote}");
            assert!(api.no_credential.unwrap().contains("--token-file"));
        }
        // A credential given is sent instead.
        std::fs::write(dir.join("t"), "user-token\n").unwrap();
        let given = Credentials {
            token_file: Some(dir.join("t")),
            ..creds
        };
        let api = connect("http://127.0.0.1:15080", &given).unwrap();
        assert_eq!(api.token.as_deref(), Some("user-token"));
        std::fs::remove_dir_all(dir).unwrap();
    }

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
