//! The proxy's settings: flags and `WEFT_PROXY_*` environment variables (docs/configuration.md, "Proxy settings").
//!
//! Every setting is read as text first, then all are checked together, so that one run reports
//! every bad value (name and value) before the process exits with status 64.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use weft_runtime::duration::{parse_duration, ser_duration};

use crate::routes::ServiceKey;

/// `weft-proxy run` flags, as given. Checked into a [`Config`] by [`Config::from_args`].
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Args {
    /// Control plane gRPC URL.
    #[arg(
        long,
        env = "WEFT_PROXY_CONTROL_PLANE",
        default_value = "https://127.0.0.1:15012"
    )]
    pub control_plane: String,
    /// PEM file of trust anchors (the mesh CA).
    #[arg(long, env = "WEFT_PROXY_TRUST_ANCHORS")]
    pub trust_anchors: Option<PathBuf>,
    /// The mesh's SPIFFE trust domain, in which the control plane's identity is expected until
    /// the control plane publishes the mesh's [default: weft.local].
    #[arg(long, env = "WEFT_PROXY_TRUST_DOMAIN")]
    pub trust_domain: Option<String>,
    /// The workload's namespace.
    #[arg(long, env = "WEFT_PROXY_NAMESPACE")]
    pub namespace: Option<String>,
    /// The workload's service account.
    #[arg(long, env = "WEFT_PROXY_SERVICE_ACCOUNT")]
    pub service_account: Option<String>,
    /// The Service this instance serves [default: the service account].
    #[arg(long, env = "WEFT_PROXY_SERVICE")]
    pub service: Option<String>,
    /// Join token proving the workload's identity. On the command line it is visible to other
    /// local users (`ps`, /proc/PID/cmdline): prefer the environment variable or
    /// --join-token-file.
    #[arg(long, env = "WEFT_PROXY_JOIN_TOKEN", hide_env_values = true)]
    pub join_token: Option<String>,
    /// A file holding the join token (its first line).
    #[arg(long, env = "WEFT_PROXY_JOIN_TOKEN_FILE")]
    pub join_token_file: Option<PathBuf>,
    /// Whether `join_token` came from the command line (set by the CLI, which can tell).
    #[arg(skip)]
    pub join_token_on_command_line: bool,
    /// Kubernetes service-account token file proving the workload's identity.
    #[arg(long, env = "WEFT_PROXY_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// mTLS listener for traffic from other proxies.
    #[arg(long, env = "WEFT_PROXY_INBOUND_ADDR", default_value = "0.0.0.0:15006")]
    pub inbound_addr: String,
    /// Listener for traffic from the local app.
    #[arg(
        long,
        env = "WEFT_PROXY_OUTBOUND_ADDR",
        default_value = "127.0.0.1:15001"
    )]
    pub outbound_addr: String,
    /// Admin HTTP listener.
    #[arg(long, env = "WEFT_PROXY_ADMIN_ADDR", default_value = "127.0.0.1:15020")]
    pub admin_addr: String,
    /// Let `POST /shutdown` on the admin listener start a drain (from loopback callers only).
    /// Off by default: any local process could otherwise stop the proxy.
    #[arg(
        long,
        env = "WEFT_PROXY_ADMIN_SHUTDOWN",
        default_value = "false",
        num_args = 0..=1,
        default_missing_value = "true",
        value_name = "BOOL"
    )]
    pub admin_shutdown: String,
    /// Where inbound traffic goes when it was not redirected transparently.
    #[arg(long, env = "WEFT_PROXY_APP_ADDR", default_value = "127.0.0.1:8080")]
    pub app_addr: String,
    /// LOCAL_ADDR=SERVICE[.NAMESPACE]:PORT — a plain local listener for one service.
    #[arg(long, env = "WEFT_PROXY_UPSTREAM", value_delimiter = ',')]
    pub upstream: Vec<String>,
    /// The address peers use to reach this proxy's inbound listener, reported to the control
    /// plane [default: inbound-addr].
    #[arg(long, env = "WEFT_PROXY_ADVERTISE_ADDR")]
    pub advertise_addr: Option<String>,
    /// How long a drain waits for in-flight requests before exiting.
    #[arg(long, env = "WEFT_PROXY_DRAIN_TIMEOUT", default_value = "10s")]
    pub drain_timeout: String,
    /// Worker threads of the proxy's runtime.
    #[arg(long, env = "WEFT_PROXY_WORKERS", default_value = "1")]
    pub workers: String,
    /// Where access log lines go when MeshConfig `accessLog` is `json`: a file (appended to),
    /// or `-` for standard output.
    #[arg(long, env = "WEFT_PROXY_ACCESS_LOG", default_value = "-")]
    pub access_log: String,
    /// Protocols a request may upgrade to (HTTP/1.1 `Upgrade`), comma-separated; `h2c` is never
    /// one [default: websocket].
    #[arg(long, env = "WEFT_PROXY_ALLOWED_UPGRADES")]
    pub allowed_upgrades: Option<String>,
    /// Connections each listener holds at once (the admin listener: at most 128)
    /// [default: 10000].
    #[arg(long, env = "WEFT_PROXY_MAX_CONNECTIONS")]
    pub max_connections: Option<String>,
    /// How long a new connection may take to bring its first request (TLS handshake
    /// included) [default: 10s].
    #[arg(long, env = "WEFT_PROXY_FIRST_REQUEST_TIMEOUT")]
    pub first_request_timeout: Option<String>,
    /// An HTTP connection with no request in flight this long is closed [default: 1h].
    #[arg(long, env = "WEFT_PROXY_CONNECTION_IDLE_TIMEOUT")]
    pub connection_idle_timeout: Option<String>,
    /// Drain and exit when the process that started this one exits (for `weft demo`, whose
    /// sidecars run in process groups of their own).
    #[arg(long, env = "WEFT_PROXY_EXIT_WITH_PARENT", hide = true)]
    pub exit_with_parent: bool,
}

/// A local listener bound to one service (the `upstream` setting).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Upstream {
    pub listen: SocketAddr,
    /// `None` namespace: the proxy's own.
    pub service: String,
    pub namespace: Option<String>,
    pub port: u16,
}

impl Upstream {
    pub fn key(&self, own_namespace: &str) -> ServiceKey {
        ServiceKey::new(
            &self.service,
            self.namespace.as_deref().unwrap_or(own_namespace),
        )
    }
}

impl std::str::FromStr for Upstream {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, target) = s
            .split_once('=')
            .ok_or("expected LOCAL_ADDR=SERVICE[.NAMESPACE]:PORT")?;
        let listen = addr
            .parse()
            .map_err(|e| format!("local address {addr:?}: {e}"))?;
        let (svc, port) = target
            .rsplit_once(':')
            .ok_or("missing :PORT after the service")?;
        let port = port.parse().map_err(|e| format!("port {port:?}: {e}"))?;
        let (service, namespace) = match svc.split_once('.') {
            Some((s, ns)) => (s.to_string(), Some(ns.to_string())),
            None => (svc.to_string(), None),
        };
        if service.is_empty()
            || namespace
                .as_deref()
                .is_some_and(|ns| ns.is_empty() || ns.contains('.'))
        {
            return Err(format!("service {svc:?}: expected NAME or NAME.NAMESPACE"));
        }
        Ok(Self {
            listen,
            service,
            namespace,
            port,
        })
    }
}

/// The trust domain `weft serve` uses unless told otherwise.
pub const DEFAULT_TRUST_DOMAIN: &str = "weft.local";

/// A SPIFFE trust domain: lowercase letters, digits, `.`, `-`, `_` (as the SPIFFE spec allows).
fn is_trust_domain(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
        })
}

/// How the proxy proves its identity to the control plane.
#[derive(Clone, Debug, Serialize)]
pub enum Proof {
    /// A join token (never dumped).
    JoinToken(#[serde(skip)] String),
    TokenFile(PathBuf),
}

/// The proxy's checked settings; dumped at `/config`.
#[derive(Clone, Debug, Serialize)]
pub struct Config {
    pub control_plane: String,
    pub trust_anchors: Option<PathBuf>,
    /// The content of `trust_anchors`, read and checked at start-up.
    #[serde(skip)]
    pub trust_anchors_pem: String,
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
    pub service: String,
    pub proof: Proof,
    pub inbound_addr: SocketAddr,
    pub outbound_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// Whether `POST /shutdown` on the admin listener may start a drain.
    pub admin_shutdown: bool,
    pub app_addr: SocketAddr,
    pub advertise_addr: SocketAddr,
    pub upstreams: Vec<Upstream>,
    #[serde(serialize_with = "ser_duration")]
    pub drain_timeout: Duration,
    pub workers: usize,
    /// `None`: standard output.
    pub access_log: Option<PathBuf>,
    pub allowed_upgrades: crate::upgrade::Upgrades,
    /// Every listener's connection limits.
    pub limits: weft_runtime::server::Limits,
    /// Settings that work but should change, one line each; logged at start-up.
    #[serde(skip)]
    pub warnings: Vec<String>,
}

impl Config {
    /// Checks every setting; on failure returns one line per bad setting.
    pub fn from_args(a: Args) -> Result<Self, Vec<String>> {
        let mut errors = Vec::new();
        let mut addr = |name: &str, v: &str| -> SocketAddr {
            v.parse().unwrap_or_else(|e| {
                errors.push(format!("{name}={v:?}: {e} (expected IP:PORT)"));
                SocketAddr::from(([0, 0, 0, 0], 0))
            })
        };
        let inbound_addr = addr("inbound-addr", &a.inbound_addr);
        let outbound_addr = addr("outbound-addr", &a.outbound_addr);
        let admin_addr = addr("admin-addr", &a.admin_addr);
        let app_addr = addr("app-addr", &a.app_addr);
        let advertise_addr = match &a.advertise_addr {
            Some(v) => addr("advertise-addr", v),
            None => inbound_addr,
        };

        let mut required = |name: &str, v: Option<String>| -> String {
            match v.filter(|s| !s.is_empty()) {
                Some(v) if is_dns_label(&v) => v,
                Some(v) => {
                    errors.push(format!(
                        "{name}={v:?}: not a valid name (lowercase letters, digits, '-')"
                    ));
                    String::new()
                }
                None => {
                    errors.push(format!("{name}: required"));
                    String::new()
                }
            }
        };
        let namespace = required("namespace", a.namespace);
        let service_account = required("service-account", a.service_account);
        let service = match a.service {
            Some(s) => required("service", Some(s)),
            None => service_account.clone(),
        };

        let mut upstreams = Vec::new();
        for u in &a.upstream {
            match u.parse::<Upstream>() {
                Ok(u) => upstreams.push(u),
                Err(e) => errors.push(format!("upstream={u:?}: {e}")),
            }
        }

        let control_plane = a.control_plane.clone();
        match control_plane.split_once("://") {
            Some(("https", rest)) if !rest.is_empty() => {}
            Some(("http", _)) => errors.push(format!(
                "control-plane={control_plane:?}: the control plane is reached over TLS only; use https://"
            )),
            _ => errors.push(format!(
                "control-plane={control_plane:?}: expected an https:// URL"
            )),
        }

        let trust_anchors_pem = match &a.trust_anchors {
            None => {
                errors.push(
                    "trust-anchors: required (the mesh CA's roots; `weft serve` writes them to DATA_DIR/trust-anchors.pem)"
                        .into(),
                );
                String::new()
            }
            Some(path) => match std::fs::read_to_string(path) {
                Ok(pem) => match weft_runtime::tls::parse_anchors(&pem) {
                    Ok(_) => pem,
                    Err(e) => {
                        errors.push(format!("trust-anchors={}: {e}", path.display()));
                        String::new()
                    }
                },
                Err(e) => {
                    errors.push(format!("trust-anchors={}: {e}", path.display()));
                    String::new()
                }
            },
        };

        let trust_domain = a
            .trust_domain
            .unwrap_or_else(|| DEFAULT_TRUST_DOMAIN.into());
        if !is_trust_domain(&trust_domain) {
            errors.push(format!(
                "trust-domain={trust_domain:?}: expected a DNS-style name (lowercase letters, digits, '.', '-')"
            ));
        }

        let mut warnings = Vec::new();
        if a.join_token.is_some() && a.join_token_on_command_line {
            warnings.push(
                "join-token was given on the command line, where other local users can read it (ps, /proc/PID/cmdline): prefer WEFT_PROXY_JOIN_TOKEN or --join-token-file"
                    .to_string(),
            );
        }
        let join_token_file = a
            .join_token_file
            .map(|path| match std::fs::read_to_string(&path) {
                Ok(text) => match text.lines().next().map(str::trim).filter(|t| !t.is_empty()) {
                    Some(token) => token.to_string(),
                    None => {
                        errors.push(format!("join-token-file={}: empty", path.display()));
                        String::new()
                    }
                },
                Err(e) => {
                    errors.push(format!("join-token-file={}: {e}", path.display()));
                    String::new()
                }
            });
        let proof = match (a.join_token, join_token_file, a.token_file) {
            (Some(t), None, None) | (None, Some(t), None) => Proof::JoinToken(t),
            (None, None, Some(f)) => Proof::TokenFile(f),
            (None, None, None) => {
                errors.push(
                    "join-token or token-file: required (proof of the workload's identity: a join token from `weft token create NS/SA`, in WEFT_PROXY_JOIN_TOKEN or --join-token-file; or a service-account token file)"
                        .into(),
                );
                Proof::JoinToken(String::new())
            }
            _ => {
                errors.push(
                    "join-token, join-token-file and token-file: give one of them, not several"
                        .into(),
                );
                Proof::JoinToken(String::new())
            }
        };

        let admin_shutdown = match a.admin_shutdown.as_str() {
            "true" => true,
            "" | "false" => false,
            v => {
                errors.push(format!("admin-shutdown={v:?}: expected true or false"));
                false
            }
        };
        let drain_timeout = parse_duration(&a.drain_timeout).unwrap_or_else(|e| {
            errors.push(format!("drain-timeout={:?}: {e}", a.drain_timeout));
            Duration::ZERO
        });
        let workers = match a.workers.parse::<usize>() {
            Ok(n) if (1..=64).contains(&n) => n,
            _ => {
                errors.push(format!(
                    "workers={:?}: expected a whole number from 1 to 64",
                    a.workers
                ));
                1
            }
        };

        let mut allowed_upgrades = Vec::new();
        let upgrades = a.allowed_upgrades.as_deref().unwrap_or("websocket");
        for p in upgrades.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let p = p.to_ascii_lowercase();
            if p == "h2c" {
                errors.push(format!(
                    "allowed-upgrades={upgrades:?}: h2c cannot be allowed (an h2c tunnel would carry requests past policy)"
                ));
            } else if !p
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            {
                errors.push(format!(
                    "allowed-upgrades={upgrades:?}: {p:?} is not a protocol name"
                ));
            } else {
                allowed_upgrades.push(p);
            }
        }

        let defaults = weft_runtime::server::Limits::default();
        let mut duration = |name: &str, v: &Option<String>, default: Duration| match v {
            None => default,
            Some(v) => match parse_duration(v) {
                Ok(d) if !d.is_zero() => d,
                Ok(_) => {
                    errors.push(format!("{name}={v:?}: must be more than 0"));
                    default
                }
                Err(e) => {
                    errors.push(format!("{name}={v:?}: {e}"));
                    default
                }
            },
        };
        let first_request = duration(
            "first-request-timeout",
            &a.first_request_timeout,
            defaults.first_request,
        );
        let idle = duration(
            "connection-idle-timeout",
            &a.connection_idle_timeout,
            defaults.idle,
        );
        let max_connections = match a.max_connections.as_deref().map(str::parse::<usize>) {
            None => defaults.max_connections,
            Some(Ok(n)) if n > 0 => n,
            Some(_) => {
                errors.push(format!(
                    "max-connections={:?}: expected a whole number above 0",
                    a.max_connections.as_deref().unwrap_or_default()
                ));
                defaults.max_connections
            }
        };

        if errors.is_empty() {
            Ok(Self {
                control_plane,
                trust_anchors: a.trust_anchors,
                trust_anchors_pem,
                trust_domain,
                namespace,
                service_account,
                service,
                proof,
                inbound_addr,
                outbound_addr,
                admin_addr,
                admin_shutdown,
                app_addr,
                advertise_addr,
                upstreams,
                drain_timeout,
                workers,
                access_log: match a.access_log.as_str() {
                    "" | "-" => None,
                    p => Some(PathBuf::from(p)),
                },
                allowed_upgrades: crate::upgrade::Upgrades(allowed_upgrades),
                limits: weft_runtime::server::Limits {
                    first_request,
                    idle,
                    max_connections,
                },
                warnings,
            })
        } else {
            Err(errors)
        }
    }
}

fn is_dns_label(s: &str) -> bool {
    s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

#[cfg(test)]
mod tests;
