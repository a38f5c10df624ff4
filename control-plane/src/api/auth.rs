//! Who calls the API, and what each caller may do (docs/api.md#access-control).
//!
//! Where a connection comes from grants nothing: a loopback peer can be any local process, a
//! container of the control plane's pod, a `kubectl port-forward`, or a proxy relaying a mesh
//! connection. Every request but the probes, `/admin/metrics` and the OpenAPI document carries
//! one of:
//!
//! | credential | audit `who` | may |
//! |---|---|---|
//! | the admin token (`DATA_DIR/admin-token`), from loopback | `admin (admin token) from ADDR` | everything |
//! | an admin client certificate (`weft admin-cert`), over TLS | `admin NAME (client certificate) from ADDR` | everything but making admin certificates |
//! | a token of `--api-token-file` | `user USER (bearer token) from ADDR` | resources, audit, proxies, `/admin/config`, `/admin/shutdown`: not join tokens or the CA |
//!
//! [`Denied`] is every refusal, turned into its response in [`Denied::response`].

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use http::{header, Method, Request, Response, StatusCode};
use weft_runtime::admin_guard::Refused;
use weft_runtime::body::Body;

use super::{error_json, Api, Conn};

/// The admin token's file in the data dir.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";
const ADMIN_TOKEN_PREFIX: &str = "weft-admin.";

/// The admin token: 256 random bits made at the first start, kept in `DATA_DIR/admin-token`
/// (mode 0600, in a data dir of mode 0700), so that whoever can read the control plane's files
/// (its user, root) is its admin. Only the token's SHA-256 stays in memory. To replace it,
/// delete the file and restart.
pub struct AdminToken {
    digest: [u8; 32],
}

#[derive(Debug, thiserror::Error)]
pub enum AdminTokenError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not an admin token; delete it and `weft serve` makes a new one", .0.display())]
    Malformed(PathBuf),
}

impl AdminToken {
    /// Reads `DATA_DIR/admin-token`, or makes it when there is none.
    pub fn load_or_create(data_dir: &Path) -> Result<Self, AdminTokenError> {
        let path = data_dir.join(ADMIN_TOKEN_FILE);
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| AdminTokenError::Io { path, source }
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => return Self::parse(&path, &text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&path)(e)),
        }
        let secret = format!(
            "{ADMIN_TOKEN_PREFIX}{}",
            rand::random::<[u8; 32]>()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        // Written whole to a private temporary file, then linked into place: the link fails if
        // the file appeared meanwhile, so a token in place is never replaced or half-written.
        let tmp = data_dir.join(format!(
            ".{ADMIN_TOKEN_FILE}.{:016x}",
            rand::random::<u64>()
        ));
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| {
                f.write_all(format!("{secret}\n").as_bytes())?;
                f.sync_all()
            })
            .and_then(|()| std::fs::hard_link(&tmp, &path));
        let _ = std::fs::remove_file(&tmp);
        match written {
            Ok(()) => {
                // The new name is durable once the directory is.
                if let Ok(dir) = std::fs::File::open(data_dir) {
                    let _ = dir.sync_all();
                }
                tracing::info!(file = %path.display(), "admin token created");
                Ok(Self::of(&secret))
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let text = std::fs::read_to_string(&path).map_err(io(&path))?;
                Self::parse(&path, &text)
            }
            Err(e) => Err(io(&path)(e)),
        }
    }

    fn parse(path: &Path, text: &str) -> Result<Self, AdminTokenError> {
        let secret = text.trim();
        let hex = secret
            .strip_prefix(ADMIN_TOKEN_PREFIX)
            .ok_or_else(|| AdminTokenError::Malformed(path.to_path_buf()))?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(AdminTokenError::Malformed(path.to_path_buf()));
        }
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(file = %path.display(), mode = format!("{:o}", meta.permissions().mode() & 0o777), "the admin token can be read by other users: chmod 600 it, or delete it and restart for a new one");
            }
        }
        Ok(Self::of(secret))
    }

    /// The token whose secret is `secret` (tests make their own).
    pub fn of(secret: &str) -> Self {
        let mut digest = [0u8; 32];
        digest.copy_from_slice(
            ring::digest::digest(&ring::digest::SHA256, secret.as_bytes()).as_ref(),
        );
        Self { digest }
    }

    /// Whether `presented` is the admin token. Digests are compared, in constant time, so the
    /// time taken says nothing about the token.
    pub fn matches(&self, presented: &str) -> bool {
        let other = ring::digest::digest(&ring::digest::SHA256, presented.as_bytes());
        crate::tokens::same_digest(self.digest, other)
    }
}

/// How a caller proved who it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Credential {
    AdminToken,
    AdminCertificate,
    ApiToken,
}

/// Who made a request, as the audit log names them.
pub struct Caller {
    pub who: String,
    pub credential: Credential,
}

/// Why a request was not served.
#[derive(Debug, thiserror::Error)]
pub enum Denied {
    /// Not something a CLI sends: a browser's, or for another host name.
    #[error(transparent)]
    Request(#[from] Refused),
    /// No credential, or one that is not valid (here).
    #[error("{0}")]
    Unauthenticated(String),
    /// A valid credential that does not allow this.
    #[error("{0}")]
    Forbidden(String),
}

impl Denied {
    /// The one place a refusal becomes a response.
    pub fn response(&self) -> Response<Body> {
        match self {
            Denied::Request(r) => error_json(r.status(), r.reason(), &r.to_string(), &[]),
            Denied::Unauthenticated(why) => {
                let mut rsp = error_json(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    &format!("{why}: send `Authorization: Bearer TOKEN` with the admin token (DATA_DIR/{ADMIN_TOKEN_FILE}, from this host; the weft CLI finds it when run where `weft serve` keeps its data dir, or with --data-dir or WEFT_DATA_DIR), a token from the control plane's --api-token-file (`weft --token-file`), or present an admin client certificate over TLS (`weft admin-cert`)"),
                    &[],
                );
                rsp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer realm=\"weft\""),
                );
                rsp
            }
            Denied::Forbidden(why) => error_json(StatusCode::FORBIDDEN, "forbidden", why, &[]),
        }
    }
}

/// The name of an admin identity: `spiffe://TRUST_DOMAIN/ns/weft-system/sa/NAME`, any name
/// but the control plane's own. Only `weft admin-cert` can obtain one: workloads are refused
/// identities in that namespace (join tokens, `Certify`, and no Service may live there).
fn admin_name<'a>(identity: &'a str, trust_domain: &str) -> Option<&'a str> {
    let name = identity
        .strip_prefix("spiffe://")?
        .strip_prefix(trust_domain)?
        .strip_prefix("/ns/")?
        .strip_prefix(crate::ca::SYSTEM_NAMESPACE)?
        .strip_prefix("/sa/")?;
    (crate::resources::is_dns_label(name) && name != crate::ca::CONTROL_PLANE_SA).then_some(name)
}

impl Api {
    /// Who is calling: a client certificate first (a TLS connection that presented one), then
    /// a bearer token.
    pub(super) fn authenticate<B>(&self, conn: &Conn, req: &Request<B>) -> Result<Caller, Denied> {
        let peer = conn.peer;
        if let Some(id) = &conn.client_identity {
            let trust_domain = self.state.mesh().trust_domain.clone();
            return match admin_name(id, &trust_domain) {
                Some(name) => Ok(Caller {
                    who: format!("admin {name} (client certificate) from {peer}"),
                    credential: Credential::AdminCertificate,
                }),
                None => Err(Denied::Forbidden(format!(
                    "{id} is not an admin identity: the API takes client certificates for spiffe://{trust_domain}/ns/{}/sa/NAME, made with `weft admin-cert`",
                    crate::ca::SYSTEM_NAMESPACE
                ))),
            };
        }
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Denied::Unauthenticated("no bearer token".into()))?;
        if self.admin_token.matches(presented) {
            if !peer.ip().is_loopback() {
                // It was sent across a network, perhaps in clear text: not taken, and said so
                // in the log, for the token should be replaced.
                tracing::warn!(%peer, "the admin token was presented from off this host; refused (replace it: delete DATA_DIR/admin-token and restart)");
                return Err(Denied::Unauthenticated(
                    "the admin token is taken from this host (loopback) only; from elsewhere use a token from --api-token-file or an admin certificate".into(),
                ));
            }
            return Ok(Caller {
                who: format!("admin (admin token) from {peer}"),
                credential: Credential::AdminToken,
            });
        }
        let Some(file) = &self.api_tokens else {
            tracing::warn!(%peer, "API request with an unknown bearer token");
            return Err(Denied::Unauthenticated(
                "unknown bearer token (this control plane has no --api-token-file)".into(),
            ));
        };
        let tokens = std::fs::read_to_string(file).map_err(|e| {
            tracing::error!(file = %file.display(), error = %e, "cannot read the API token file");
            Denied::Unauthenticated("the token file cannot be read".into())
        })?;
        match crate::tokens::check_api_token(&tokens, presented) {
            Some(user) => Ok(Caller {
                who: format!("user {user} (bearer token) from {peer}"),
                credential: Credential::ApiToken,
            }),
            None => {
                tracing::warn!(%peer, "API request with an unknown bearer token");
                Err(Denied::Unauthenticated("unknown bearer token".into()))
            }
        }
    }
}

/// Whether `caller` may do `method path`. Join tokens grant identities and the CA decides what
/// is trusted: admins only. An admin certificate cannot make admin certificates: it could
/// otherwise renew itself for ever, and its expiry is what bounds a stolen one.
pub(super) fn authorize(caller: &Caller, method: &Method, path: &str) -> Result<(), Denied> {
    let privileged = path.starts_with("/api/v1/tokens") || path.starts_with("/api/v1/ca");
    match caller.credential {
        Credential::ApiToken if privileged => Err(Denied::Forbidden(
            "join tokens and the CA are for admins: the admin token (on the control plane's host) or an admin certificate; tokens from --api-token-file manage resources".into(),
        )),
        Credential::AdminCertificate
            if method == Method::POST
                && path.trim_end_matches('/') == "/api/v1/ca/admin-certificates" =>
        {
            Err(Denied::Forbidden(
                "admin certificates are made with the admin token, on the control plane's host (`weft admin-cert` there), not with another admin certificate".into(),
            ))
        }
        _ => Ok(()),
    }
}
